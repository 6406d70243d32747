"""The in-process memo of tokenised SFT data: a hit only when conversations, tokenizer, template and length
settings are all the same; the same samples, report and warnings either way."""

import pytest

from posttrain.data import collate, memo
from posttrain.data.collate import tokenize_sft
from posttrain.data.schema import Conversation, Message
from posttrain.models import tiny_tokenizer


def conv(user, reply):
    return Conversation([Message("user", user), Message("assistant", reply)])


CONVS = [conv("What is 2 + 3?", "The answer is 5."), conv("Hi", "tac")]


@pytest.fixture(autouse=True)
def empty_memo():
    memo.clear()
    yield
    memo.clear()


def counting(monkeypatch):
    calls = []
    real = collate._tokenize_all
    monkeypatch.setattr(collate, "_tokenize_all", lambda *a: calls.append(1) or real(*a))
    return calls


def test_same_inputs_tokenise_once_and_give_the_same_samples(monkeypatch):
    calls = counting(monkeypatch)
    tok = tiny_tokenizer()
    a, ra = tokenize_sft(CONVS, tok, "chatml", 256)
    b, rb = tokenize_sft([conv("What is 2 + 3?", "The answer is 5."), conv("Hi", "tac")], tok, "chatml", 256)
    c, _ = tokenize_sft(CONVS, tiny_tokenizer(), "chatml", 256)  # an equal tokenizer loaded again
    assert len(calls) == 1
    assert [s.input_ids for s in a] == [s.input_ids for s in b] == [s.input_ids for s in c]
    assert ra == rb and ra is not rb and a is not b


@pytest.mark.parametrize(
    "change",
    [
        lambda tok: (CONVS[:1] + [conv("Hi", "tad")], tok, "chatml", 256, "right"),  # content
        lambda tok: (CONVS, tok, "alpaca", 256, "right"),  # template
        lambda tok: (CONVS, tok, "chatml", 12, "right"),  # max_length
        lambda tok: (CONVS, tok, "chatml", 12, "left"),  # truncation
        lambda tok: (CONVS, tok.add_tokens(["<extra>"]) and tok, "chatml", 256, "right"),  # vocabulary
    ],
)
def test_any_change_is_a_miss(monkeypatch, change):
    calls = counting(monkeypatch)
    tok = tiny_tokenizer()
    tokenize_sft(CONVS, tok, "chatml", 256, "right")
    convs, tok, template, n, cut = change(tok)
    got, _ = tokenize_sft(convs, tok, template, n, cut)
    assert len(calls) == 2
    memo.clear()
    want, _ = tokenize_sft(convs, tok, template, n, cut)
    assert [s.input_ids for s in got] == [s.input_ids for s in want]


def test_warnings_are_given_on_every_call():
    tok = tiny_tokenizer()
    convs = [conv("The quick brown fox jumps over the lazy dog. " * 4, "5"), conv("Hi", "ok")]
    for _ in range(2):
        with pytest.warns(UserWarning, match="dropped 1 sample"):
            tokenize_sft(convs, tok, "chatml", 20, "right")


def test_a_tokenizer_without_a_serialisable_backend_has_no_key():
    class Slow:  # a slow tokenizer: nothing to fingerprint, so never memoised
        backend_tokenizer = None

    assert memo.key(CONVS, Slow(), "chatml", 256, "right") is None
