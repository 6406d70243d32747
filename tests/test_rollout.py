"""Rollout engine: parity with `model.generate`, logprobs against a teacher-forced forward, EOS stops, filters."""

import pytest
import torch

from posttrain.models import tiny_model
from posttrain.rollout import (
    decode,
    filter_logits,
    generate,
    left_pad,
    position_ids_from_mask,
    stop_token_ids,
)

PROMPTS = [[2, 40, 41, 42, 43, 44, 45], [2, 50, 51], [2, 60, 61, 62, 63]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_matches_hf_generate_left_padded(arch, tok):
    model = tiny_model(arch)
    ro = generate(model, tok, PROMPTS, max_new_tokens=12, do_sample=False, stop_ids=[3])
    ids, mask = left_pad(PROMPTS, pad_id=1)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=1,
            eos_token_id=3,
        )
    for i, resp in enumerate(ro.response_ids):
        expected = ref[i, ids.shape[1] :].tolist()
        if 3 in expected:
            expected = expected[: expected.index(3) + 1]
        assert resp == expected


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logprobs_match_teacher_forced_forward(arch, tok):
    model = tiny_model(arch)
    ro = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0.7, seed=0, stop_ids=[3])
    for p, r, lp in zip(ro.prompt_ids, ro.response_ids, ro.logprobs):
        assert len(r) == len(lp) > 0
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1].float() / 0.7
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(lp), expected, atol=1e-4, rtol=0)


def test_stop_per_row_and_pad_after(tok):
    """Make token 3 (EOS) the argmax everywhere for row 1 only by biasing: instead, stop on whatever row 0 emits
    first, and check that only rows that emitted it stop while the others run to max_new_tokens."""
    model = tiny_model("llama")
    free = generate(model, tok, PROMPTS, max_new_tokens=8, do_sample=False, stop_ids=[])
    stop = free.response_ids[0][2]  # row 0 stops at its third token
    ro = generate(model, tok, PROMPTS, max_new_tokens=8, do_sample=False, stop_ids=[stop])
    assert ro.response_ids[0] == free.response_ids[0][:3] and ro.finished[0]
    for i in (1, 2):
        cut = free.response_ids[i]
        expected = cut[: cut.index(stop) + 1] if stop in cut else cut
        assert ro.response_ids[i] == expected
        assert ro.finished[i] == (stop in cut)


def test_decode_pads_finished_rows_and_stops_early(tok):
    model = tiny_model("llama")
    ids, mask = left_pad(PROMPTS, pad_id=1)
    first = generate(model, tok, PROMPTS, max_new_tokens=1, do_sample=False, stop_ids=[]).response_ids
    stops = sorted({r[0] for r in first})  # every row stops on its first token
    from posttrain.rollout import Sampler

    tokens, logps, lengths, done = decode(model, ids, mask, 20, Sampler(do_sample=False), stops, pad_id=1)
    assert lengths.tolist() == [1, 1, 1] and done.all()
    assert (tokens[:, 1:] == 1).all() and (logps[:, 1:] == 0).all()


def test_min_new_tokens_blocks_stop(tok):
    model = tiny_model("llama")
    first = generate(model, tok, PROMPTS, max_new_tokens=1, do_sample=False, stop_ids=[]).response_ids
    stops = sorted({r[0] for r in first})
    ro = generate(model, tok, PROMPTS, max_new_tokens=6, do_sample=False, stop_ids=stops, min_new_tokens=6)
    assert all(len(r) == 6 and r[0] not in stops for r in ro.response_ids)


def test_seeded_sampling_reproducible_and_varies_with_seed(tok):
    model = tiny_model("llama")
    a = generate(model, tok, PROMPTS, max_new_tokens=16, seed=1, stop_ids=[])
    b = generate(model, tok, PROMPTS, max_new_tokens=16, seed=1, stop_ids=[])
    c = generate(model, tok, PROMPTS, max_new_tokens=16, seed=2, stop_ids=[])
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    assert a.response_ids != c.response_ids


def test_batch_size_split_keeps_order(tok):
    model = tiny_model("llama")
    whole = generate(model, tok, PROMPTS, max_new_tokens=5, do_sample=False, stop_ids=[])
    split = generate(model, tok, PROMPTS, max_new_tokens=5, do_sample=False, stop_ids=[], batch_size=2)
    assert whole.response_ids == split.response_ids
    assert whole.texts == tok.batch_decode(whole.response_ids, skip_special_tokens=True)


def test_filter_logits_top_k_and_top_p():
    """probs 0.5, 0.25, 0.125, 0.125: top_k=2 keeps the first two; top_p=0.6 needs 0.5+0.25 (two tokens);
    top_p=0.5 is reached by the first token alone."""
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    keep = lambda x: torch.isfinite(x)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert keep(filter_logits(logits, top_p=1.0)) == [True] * 4


def test_positions_and_stop_ids(tok):
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    ids = stop_token_ids(tok)
    vocab = tok.get_vocab()
    assert tok.eos_token_id in ids and vocab["<|im_end|>"] in ids and vocab["<|eot_id|>"] in ids
    assert tok.pad_token_id not in ids


def test_bad_temperature(tok):
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model("llama"), tok, PROMPTS, max_new_tokens=2, temperature=0.0)


def test_inverse_cdf_sampling_follows_the_distribution():
    """20k draws from p = [0.5, 0.25, 0, 0.25]: frequencies within 0.02 of p and the zero-probability token never
    drawn (also when it sits first, where a naive CDF search with u = 0 would pick it)."""
    from posttrain.rollout import sample_inverse_cdf

    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.25, 0.0, 0.25], [0.0, 0.5, 0.25, 0.25]]).repeat(10000, 1)
    draws = sample_inverse_cdf(probs, g).view(10000, 2)
    freq0 = torch.bincount(draws[:, 0], minlength=4).float() / 10000
    freq1 = torch.bincount(draws[:, 1], minlength=4).float() / 10000
    torch.testing.assert_close(freq0, torch.tensor([0.5, 0.25, 0.0, 0.25]), atol=0.02, rtol=0)
    torch.testing.assert_close(freq1, torch.tensor([0.0, 0.5, 0.25, 0.25]), atol=0.02, rtol=0)
    assert freq0[2] == 0 and freq1[0] == 0


@pytest.mark.parametrize("method", ["prefix", "prompt", "lora"])
def test_rollout_with_peft_adapters(tok, method):
    """Adapters that pre-fill the cache (prefix / prompt tuning) and LoRA: greedy equals `model.generate`, logprobs
    equal a teacher-forced forward through the adapted model."""
    from posttrain.peft import PeftConfig, apply_peft

    model = apply_peft(tiny_model("llama"), PeftConfig(method=method))
    with (
        torch.no_grad()
    ):  # make the adapter matter (LoRA starts as a no-op; virtual tokens are random already)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    ro = generate(model, tok, PROMPTS, max_new_tokens=8, do_sample=False, stop_ids=[3])
    ids, mask = left_pad(PROMPTS, pad_id=1)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=1,
            eos_token_id=3,
        )
    base = generate(tiny_model("llama"), tok, PROMPTS, max_new_tokens=8, do_sample=False, stop_ids=[3])
    assert ro.response_ids != base.response_ids  # the adapter is really in the loop
    for i, resp in enumerate(ro.response_ids):
        expected = ref[i, ids.shape[1] :].tolist()
        assert resp == (expected[: expected.index(3) + 1] if 3 in expected else expected)
        p = PROMPTS[i]
        with torch.no_grad():
            logits = model(torch.tensor([p + resp])).logits[0, len(p) - 1 : -1].float()
        expected_lp = logits.log_softmax(-1).gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(ro.logprobs[i]), expected_lp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["none", "prefix", "lora"])
def test_repeated_prompts_are_prefilled_once_with_the_same_samples(tok, method):
    """GRPO's k samples of one prompt are k equal rows: the prompt forward runs on the distinct prompts only (rows
    counted), and the cache copied to the duplicates gives what a batch without the sharing gives: the greedy
    responses of the prompts alone, and the same sampled tokens and log-probs as running every row."""
    from posttrain import rollout_cache
    from posttrain.peft import PeftConfig, apply_peft

    model = tiny_model("llama")
    if method != "none":
        model = apply_peft(model, PeftConfig(method=method))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
    prompts = [p for p in PROMPTS for _ in range(3)]
    rows = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape), with_kwargs=True
    )
    greedy = generate(model, tok, prompts, max_new_tokens=6, do_sample=False, stop_ids=[])
    handle.remove()
    assert rows[0] == (3, 7) and rows[1][0] == 9  # the prefill: 3 distinct prompts; decoding: all 9 rows
    alone = generate(model, tok, PROMPTS, max_new_tokens=6, do_sample=False, stop_ids=[])
    assert greedy.response_ids == [r for r in alone.response_ids for _ in range(3)]

    shared = generate(model, tok, prompts, max_new_tokens=6, temperature=0.8, seed=5, stop_ids=[])
    inner, rollout_cache.DynamicLayer = rollout_cache.DynamicLayer, type("NotPlain", (), {})  # no sharing
    try:
        every = generate(model, tok, prompts, max_new_tokens=6, temperature=0.8, seed=5, stop_ids=[])
    finally:
        rollout_cache.DynamicLayer = inner
    assert shared.response_ids == every.response_ids
    torch.testing.assert_close(torch.tensor(shared.logprobs), torch.tensor(every.logprobs), atol=1e-5, rtol=0)
