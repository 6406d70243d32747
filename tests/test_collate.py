"""SFT batching: labels, truncation, padding, packing and the seeded, resumable, shardable batch source."""

import pytest
import torch
import torch.nn.functional as F

from posttrain.data.collate import IGNORE, Sample, SFTBatches, pack_collate, pad_collate, tokenize_sft
from posttrain.data.schema import Conversation, Message
from posttrain.models import tiny_tokenizer

ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def conv(user, reply):
    return Conversation([Message("user", user), Message("assistant", reply)])


def test_pad_is_eos_keeps_eos_label():
    tok = tiny_tokenizer(pad_is_eos=True, chat_template=ZEPHYR)
    assert tok.pad_token_id == tok.eos_token_id
    samples, _ = tokenize_sft([conv("Hello world!", "The answer is 5."), conv("Hi", "tac")], tok, "auto", 256)
    batch = pad_collate(samples, pad_id=tok.pad_token_id)
    for row, s in enumerate(samples):
        n = len(s)
        labels = batch["labels"][row]
        trained = labels[labels != IGNORE].tolist()
        assert trained[-1] == tok.eos_token_id  # the reply's EOS is trained although it equals pad
        assert (labels[n:] == IGNORE).all()  # padding (also EOS ids) carries no loss
    assert (batch["input_ids"][1, len(samples[1]) :] == tok.eos_token_id).all()


def test_labels_only_on_assistant_tokens(tok):
    samples, report = tokenize_sft([conv("What is 2 + 3?", "The answer is 5.")], tok, "chatml", 256)
    s = samples[0]
    trained = [t for t, lab in zip(s.input_ids, s.labels) if lab != IGNORE]
    assert tok.decode(trained) == "The answer is 5.<|im_end|>"
    assert report == dict(
        samples=1,
        truncated=0,
        dropped_too_long=0,
        dropped_no_loss=0,
        tokens=len(s),
        loss_tokens=len(trained),
        end_markers_stripped=0,
        end_markers_mapped=0,
    )


def test_t0_completion_trains_one_real_end_of_turn_and_the_report_counts_the_marker(tok):
    """A T0 row as read from disk ends in `<|endoftext|>`: the labels hold the answer and one `<|im_end|>`, none of
    the marker, and the report says one marker was stripped."""
    (s,), report = tokenize_sft(
        [conv("Is this news about business?", "Business<|endoftext|>")], tok, "auto", 256
    )
    trained = [t for t in s.labels if t != IGNORE]
    assert tok.decode(trained) == "Business<|im_end|>"
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in s.input_ids
    assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) == 1
    assert report["end_markers_stripped"] == 1 and report["end_markers_mapped"] == 0


def test_text_format_documents_joined_by_a_marker_are_split_by_eos(tok):
    c = Conversation([Message("assistant", "Hello world!<|endoftext|>The quick brown fox.<|endoftext|>")])
    c.meta["format"] = "text"
    (s,), report = tokenize_sft([c], tok, "chatml", 256)
    assert tok.decode(s.input_ids) == "<s>Hello world!</s>The quick brown fox.</s>"
    assert (
        s.input_ids.count(tok.eos_token_id) == 2
        and tok.convert_tokens_to_ids("<|endoftext|>") not in s.input_ids
    )
    assert report["end_markers_stripped"] == 1 and report["end_markers_mapped"] == 1


def test_text_format_trains_every_token(tok):
    c = Conversation([Message("assistant", "The quick brown fox.")], {"format": "text"})
    (s,), report = tokenize_sft([c], tok, "chatml", 256)
    assert s.input_ids[0] == tok.bos_token_id and s.input_ids[-1] == tok.eos_token_id
    assert tok.decode(s.input_ids[1:-1]) == "The quick brown fox."
    assert s.labels == s.input_ids
    assert report["loss_tokens"] == len(s) - 1


def test_truncation_policies_and_counts(tok):
    convs = [conv("Hi", "The quick brown fox jumps over the lazy dog. " * 4), conv("Hi", "ok")]
    full, _ = tokenize_sft(convs, tok, "chatml", 1024)
    n = len(full[1]) + 3  # the short sample fits, the long one does not
    right, rep = tokenize_sft(convs, tok, "chatml", n, "right")
    assert rep["truncated"] == 1 and rep["samples"] == 2
    assert right[0].input_ids == full[0].input_ids[:n] and right[1].input_ids == full[1].input_ids
    left, rep = tokenize_sft(convs, tok, "chatml", n, "left")
    assert rep["truncated"] == 1
    assert left[0].input_ids == [tok.bos_token_id, *full[0].input_ids[-(n - 1) :]]
    assert left[0].labels[0] == IGNORE and left[0].labels[1:] == full[0].labels[-(n - 1) :]
    dropped, rep = tokenize_sft(convs, tok, "chatml", n, "drop")
    assert rep["dropped_too_long"] == 1 and rep["samples"] == 1 and dropped[0].input_ids == full[1].input_ids
    with pytest.raises(ValueError, match="truncation"):
        tokenize_sft(convs, tok, "chatml", n, "middle")


def test_sample_without_loss_tokens_is_dropped_with_warning(tok):
    convs = [conv("The quick brown fox jumps over the lazy dog. " * 4, "5"), conv("Hi", "ok")]
    with pytest.warns(UserWarning, match="dropped 1 sample"):
        samples, rep = tokenize_sft(convs, tok, "chatml", 20, "right")
    assert rep["dropped_no_loss"] == 1 and rep["truncated"] == 1 and rep["samples"] == 1
    assert all(s.loss_tokens > 0 for s in samples)


def _two_samples(tok):
    samples, _ = tokenize_sft(
        [conv("What is 2 + 3?", "The answer is 5."), conv("Hi", "tac")], tok, "chatml", 256
    )
    assert len(samples[0]) != len(samples[1])
    return samples


def test_left_and_right_padding_give_same_logits(tok, llama):
    samples = _two_samples(tok)
    with torch.no_grad():
        outs = {}
        for side in ("left", "right"):
            b = pad_collate(samples, tok.pad_token_id, side)
            logits = llama(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]
            ).logits
            outs[side] = [logits[i][b["attention_mask"][i].bool()] for i in range(len(samples))]
            assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()
    for a, b in zip(outs["left"], outs["right"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    left = pad_collate(samples, tok.pad_token_id, "left")
    short = len(samples[1])
    assert left["position_ids"][1, -short:].tolist() == list(range(short))


def _summed_ce(logits, labels):
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_equals_separate(tok, arch):
    from posttrain.models import tiny_model

    llama = tiny_model(arch)  # fp32; gpt2 has absolute position embeddings, so positions must restart too
    a, b = _two_samples(tok)
    packed = pack_collate([a, b])
    assert set(packed) == {
        "input_ids",
        "labels",
        "position_ids",
    }  # no attention_mask: packed-sequence detection
    assert packed["position_ids"][0].tolist() == list(range(len(a))) + list(range(len(b)))
    assert packed["labels"][0, 0] == IGNORE and packed["labels"][0, len(a)] == IGNORE
    with torch.no_grad():
        lp = llama(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        sep = [llama(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits for s in (a, b)]
    torch.testing.assert_close(lp[:, : len(a)], sep[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp[:, len(a) :], sep[1], atol=1e-5, rtol=1e-5)
    loss_sep = sum(_summed_ce(lg, torch.tensor([s.labels])) for lg, s in zip(sep, (a, b)))
    torch.testing.assert_close(_summed_ce(lp, packed["labels"]), loss_sep, atol=1e-5, rtol=1e-5)


def _fake_samples(lengths):
    return [Sample(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in lengths]


def _first_ids(step):
    """Each micro-batch's rows identified by their length (unique per sample in these tests)."""
    return [tuple(int(m.sum()) for m in mb["attention_mask"]) for mb in step]


def test_batches_seeded_cover_epoch_and_reshuffle():
    samples = _fake_samples(range(2, 42))  # 40 samples, lengths unique
    src = SFTBatches(samples, batch_size=4, grad_accum=2, group_by_length=False, seed=1, pad_id=0)
    assert src.steps_per_epoch() == 5
    epochs = [[_first_ids(src.next_step()) for _ in range(5)] for _ in range(2)]
    seen = [sorted(n for step in ep for mb in step for n in mb) for ep in epochs]
    assert seen[0] == seen[1] == list(range(2, 42))  # every sample once per epoch
    assert epochs[0] != epochs[1]  # a new permutation each epoch
    again = SFTBatches(samples, batch_size=4, grad_accum=2, group_by_length=False, seed=1, pad_id=0)
    assert [_first_ids(again.next_step()) for _ in range(5)] == epochs[0]


def test_group_by_length_sorts_within_micro_batches():
    samples = _fake_samples(range(2, 130))
    grouped = SFTBatches(samples, batch_size=4, group_by_length=True, seed=0, pad_id=0)
    plain = SFTBatches(samples, batch_size=4, group_by_length=False, seed=0, pad_id=0)

    def padding(src):
        return sum(
            int((mb["attention_mask"] == 0).sum())
            for _ in range(src.steps_per_epoch())
            for mb in src.next_step()
        )

    assert padding(grouped) < padding(plain)


def test_resume_from_state_dict_is_exact():
    samples = _fake_samples(range(2, 30))
    src = SFTBatches(samples, batch_size=3, grad_accum=2, seed=5, pad_id=0)
    for _ in range(7):  # into the second epoch
        src.next_step()
    state = src.state_dict()
    assert state == {"epoch": 1, "position": 2}
    expected = [_first_ids(src.next_step()) for _ in range(6)]
    resumed = SFTBatches(samples, batch_size=3, grad_accum=2, seed=5, pad_id=0)
    resumed.load_state_dict(state)
    assert [_first_ids(resumed.next_step()) for _ in range(6)] == expected


def test_ranks_shard_the_global_order_of_one_process():
    samples = _fake_samples(range(2, 34))
    one = SFTBatches(samples, batch_size=2, grad_accum=4, seed=3, pad_id=0)
    ranks = [
        SFTBatches(samples, batch_size=2, grad_accum=2, seed=3, pad_id=0, rank=r, world_size=2)
        for r in (0, 1)
    ]
    assert one.steps_per_epoch() == ranks[0].steps_per_epoch() == 4
    for _ in range(6):
        assert _first_ids(one.next_step()) == sum((_first_ids(r.next_step()) for r in ranks), [])


def test_packing_puts_each_micro_batch_in_one_row():
    samples = _fake_samples([3, 5, 7, 9])
    src = SFTBatches(samples, batch_size=2, grad_accum=2, packing=True, seed=0, pad_id=0)
    step = src.next_step()
    assert len(step) == 2 and all(mb["input_ids"].shape[0] == 1 for mb in step)
    assert "attention_mask" not in step[0]
    assert sorted(mb["input_ids"].shape[1] for mb in step) in ([8, 16], [10, 14], [12, 12])
