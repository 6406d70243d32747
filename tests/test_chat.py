"""Chat rendering: one BOS, assistant masks by prefix diff for any template, prompt ids a prefix of the ids."""

from pathlib import Path

import pytest

from posttrain.data.chat import encode_conversation, encode_prompt, get_template, render, template_names
from posttrain.models import tiny_tokenizer

ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""A Zephyr-like template set as the tokenizer's own (ends every turn with eos_token, no BOS)."""

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "The answer is 5."},
    {"role": "user", "content": "Reverse the word cat."},
    {"role": "assistant", "content": "tac"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am posttrain's assistant."},
]

TEMPLATES = ["chatml", "llama3", "alpaca", "plain", "own"]


def _tok_and_template(name):
    if name == "own":
        return tiny_tokenizer(chat_template=ZEPHYR), "auto"
    return tiny_tokenizer(), name


def _source(tok, name):
    return tok.chat_template if name == "auto" else (get_template(name, tok))


def _expected_reply_texts(tok, source, msgs):  # -> (full text, reply texts, reply char spans)
    """Independent reference: transformers' own renderer, prefix diff on text (trailing whitespace dropped)."""
    full = tok.apply_chat_template(msgs, chat_template=source, tokenize=False)
    out, spans = [], []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            before = tok.apply_chat_template(
                msgs[:i], chat_template=source, tokenize=False, add_generation_prompt=True
            )
            upto = tok.apply_chat_template(msgs[: i + 1], chat_template=source, tokenize=False)
            assert full.startswith(upto) and upto.startswith(before)
            out.append(upto[len(before) :].rstrip())
            spans.append((len(before), len(before) + len(out[-1])))
    return full, out, spans


def _masked_runs(tok, ids, mask):
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def _bos_count(tok, ids):
    return ids.count(tok.bos_token_id) + ids.count(tok.convert_tokens_to_ids("<|begin_of_text|>"))


@pytest.mark.parametrize("name", ["chatml", "llama3", "own"])
def test_assistant_mask_equals_prefix_diff(name):
    tok, template = _tok_and_template(name)
    ids, mask = encode_conversation(tok, CONV, template)
    full, expected, spans = _expected_reply_texts(tok, _source(tok, template), CONV)
    assert len(expected) == 3
    assert _masked_runs(tok, ids, mask) == expected
    # token-exact: tokenise the reference text once, mark tokens that overlap a reply span
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ref = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]]
    added_bos = ids[0] == tok.bos_token_id and not full.startswith("<s>")
    assert ids == [tok.bos_token_id] * added_bos + enc["input_ids"]
    assert mask == [False] * added_bos + ref


@pytest.mark.parametrize("name", ["chatml", "llama3", "own"])
def test_exactly_one_bos(name):
    tok, template = _tok_and_template(name)
    ids, mask = encode_conversation(tok, CONV, template)
    prompt = encode_prompt(tok, CONV[:2], template)
    for seq in (ids, prompt):
        assert _bos_count(tok, seq) == 1
        assert seq[0] in (tok.bos_token_id, tok.convert_tokens_to_ids("<|begin_of_text|>"))


def test_template_rendering_bos_token_is_not_doubled():
    tok = tiny_tokenizer(chat_template="{{ bos_token }}" + ZEPHYR)
    ids, _ = encode_conversation(tok, CONV, "auto")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_no_bos_added_when_tokenizer_adds_none():
    tok = tiny_tokenizer(add_bos=False)
    ids, _ = encode_conversation(tok, CONV, "chatml")
    assert tok.bos_token_id not in ids


def test_pad_is_eos_keeps_eos_in_mask():
    tok = tiny_tokenizer(pad_is_eos=True, chat_template=ZEPHYR)
    ids, mask = encode_conversation(tok, CONV, "auto")
    eos_in_mask = [t for t, m in zip(ids, mask) if m and t == tok.eos_token_id]
    assert len(eos_in_mask) == 3  # one per reply


@pytest.mark.parametrize("name", ["alpaca", "plain"])
def test_templates_without_eot_token_append_eos(name):
    tok = tiny_tokenizer()
    ids, mask = encode_conversation(tok, CONV, name)
    runs = _masked_runs(tok, ids, mask)
    assert runs == [m["content"] + "</s>" for m in CONV if m["role"] == "assistant"]


TRICKY = ["\nstarts with a newline", "  two leading spaces", "ends with spaces  ", "", "x"]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("reply", TRICKY)
def test_prompt_ids_prefix_of_conversation_ids(name, reply):
    tok, template = _tok_and_template(name)
    prompt = CONV[:4] + [{"role": "user", "content": "Sort these numbers: 3 1 2 "}]
    p = encode_prompt(tok, prompt, template)
    ids, mask = encode_conversation(tok, prompt + [{"role": "assistant", "content": reply}], template)
    assert ids[: len(p)] == p
    assert not any(mask[: len(p)][-1:])  # the generation prompt itself is not trained
    assert any(mask[len(p) :])


def test_prompt_ends_with_generation_prompt():
    tok = tiny_tokenizer()
    p = encode_prompt(tok, CONV[:2], "chatml")
    assert tok.decode(p).endswith("<|im_start|>assistant\n")


def test_token_diff_fallback_when_prefixes_are_not_text_prefixes():
    # renders a closing marker only at the very end, so earlier renderings are not prefixes of the full text
    odd = ZEPHYR + "{% if not add_generation_prompt %}{{ '<|endoftext|>' }}{% endif %}"
    tok = tiny_tokenizer(chat_template=odd)
    ids, mask = encode_conversation(tok, CONV, "auto")
    runs = _masked_runs(tok, ids, mask)
    assert runs[:2] == ["The answer is 5.</s>", "tac</s>"]
    assert runs[2].startswith("I am posttrain's assistant.</s>")
    assert _bos_count(tok, ids) == 1


def test_render_matches_transformers():
    tok = tiny_tokenizer()
    for name in ("chatml", "llama3", "alpaca", "plain"):
        src = get_template(name, tok)
        for gen in (False, True):
            ours = render(tok, CONV, name, add_generation_prompt=gen)
            assert ours == tok.apply_chat_template(
                CONV, chat_template=src, tokenize=False, add_generation_prompt=gen
            )


def test_get_template_names_paths_and_errors(tmp_path):
    tok = tiny_tokenizer()
    assert {"chatml", "llama3", "alpaca", "plain"} <= set(template_names())
    assert get_template("auto", tok) == get_template("chatml", tok)  # no template of its own -> chatml
    assert get_template("auto", tiny_tokenizer(chat_template=ZEPHYR)) == ZEPHYR
    f = tmp_path / "mine.jinja"
    f.write_text(ZEPHYR)
    assert get_template(str(f), tok) == ZEPHYR
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        get_template("nope", tok)


def test_every_template_has_a_note():
    notes = (
        Path(__file__).resolve().parents[1] / "src" / "posttrain" / "templates" / "README.md"
    ).read_text()
    for name in template_names():
        assert f"`{name}`" in notes


def _merging_tokenizer():
    """A BPE tokenizer with no regex pre-splitting (merges across newlines), no BOS, no chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(["hello\n\nworld\n\n"] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def test_cut_where_bpe_would_merge_prompt_and_reply():
    """A tokenizer that merges freely across the prompt/reply boundary ("\\n" + "\\nworld" -> "ĊĊwor"): the text
    is cut there, so the prompt's ids stay a prefix and the mask starts exactly at the reply."""
    tok = _merging_tokenizer()
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "\nworld"}]
    one_pass = tok.convert_ids_to_tokens(tok(render(tok, msgs, "plain"))["input_ids"])
    assert "ĊĊwor" in one_pass  # a token would straddle the boundary
    ids, mask = encode_conversation(tok, msgs, "plain")
    p = encode_prompt(tok, msgs[:1], "plain")
    assert ids[: len(p)] == p
    assert mask[: len(p)] == [False] * len(p)
    assert _masked_runs(tok, ids, mask) == ["\nworld</s>"]


def test_auto_without_template_or_chatml_tokens_warns():
    with pytest.warns(UserWarning, match="template=alpaca or template=plain"):
        assert get_template("auto", _merging_tokenizer()) == get_template("chatml", tiny_tokenizer())


T0_ROW = [
    {"role": "user", "content": "Is this a piece of news regarding world politics, sports, business?"},
    {"role": "assistant", "content": "Business<|endoftext|>"},
]
"""A T0/P3 prompt/completion row as it is on disk: the completion ends in GPT-2's end-of-text marker."""


def _trained(tok, ids, mask):
    return [t for t, m in zip(ids, mask) if m]


def _contains(seq, sub):
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.mark.parametrize("marker", ["<|endoftext|>", "<|end|>", "</s>", " <|eot_id|>\n"])
def test_end_markers_written_as_text_are_never_trained(marker):
    """The tiny tokenizer has `<|endoftext|>` and `</s>` as special tokens (one id each, the latter its EOS) and
    writes `<|end|>` (Phi-3's) as seven ordinary pieces: none of them may be trained before the real end of turn."""
    from collections import Counter

    tok = tiny_tokenizer()
    row = [T0_ROW[0], {"role": "assistant", "content": "Business" + marker}]
    counts = Counter()
    ids, mask = encode_conversation(tok, row, "chatml", counts=counts)
    trained = _trained(tok, ids, mask)
    clean_ids, clean_mask = encode_conversation(
        tok, [T0_ROW[0], {"role": "assistant", "content": "Business"}]
    )
    assert ids == clean_ids and trained == _trained(tok, clean_ids, clean_mask)
    assert tok.decode(trained) == "Business<|im_end|>"
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert trained.count(eot) == 1 and trained[-1] == eot
    for text in ("<|endoftext|>", "</s>", "<|eot_id|>"):
        assert tok.convert_tokens_to_ids(text) not in trained
    assert not _contains(trained, tok("<|end|>", add_special_tokens=False)["input_ids"])
    assert counts == {"end_markers_stripped": 1, "end_markers_mapped": 0}


def test_markers_inside_a_message_become_the_tokenizers_eos_and_prompts_stay_prefixes():
    from collections import Counter

    tok = tiny_tokenizer()
    prompt = [{"role": "user", "content": "first<|im_end|>second<|end|>"}]
    counts = Counter()
    ids, _ = encode_conversation(
        tok, [*prompt, {"role": "assistant", "content": "ok"}], "chatml", counts=counts
    )
    assert counts == {"end_markers_stripped": 1, "end_markers_mapped": 1}
    user = ids[
        : ids.index(tok.convert_tokens_to_ids("<|im_end|>"))
    ]  # the first <|im_end|> now ends the user turn
    assert tok.decode(user).endswith("user\nfirst</s>second") and tok.eos_token_id in user
    assert encode_prompt(tok, prompt, "chatml") == ids[: len(encode_prompt(tok, prompt, "chatml"))]


def test_preference_pairs_get_the_same_cleaning():
    """DPO / reward models encode through the same functions: a chosen reply ending in `</s>` (the tiny tokenizer's
    EOS) trains one end of turn, not an EOS and then an end of turn."""
    from posttrain.data.preference import tokenize_pairs
    from posttrain.data.schema import Message, Preference

    tok = tiny_tokenizer()
    pair = Preference(
        [Message("user", "Hi")], [Message("assistant", "Hello!</s>")], [Message("assistant", "Go away.")]
    )
    (sample,), _ = tokenize_pairs([pair], tok, "chatml")
    assert tok.decode(sample.chosen_ids) == "Hello!<|im_end|>" and tok.eos_token_id not in sample.chosen_ids
