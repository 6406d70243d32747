"""The architecture matrix: every family of `posttrain.tiny.TINY_ARCHS` x every PEFT method, checked against
independent references (the model's own logits, an uncached argmax loop, `peft` loading our files).

Per family: the shared model path (`posttrain.modeling`) gives exactly the log-softmax of `model(...).logits`.
Per family and method: a training step lowers the loss; greedy rollout equals an uncached argmax loop; save ->
reload gives identical logits; LoRA, prefix and prompt adapters load in `peft` with identical logits; a LoRA merge
gives identical logits. A method that cannot apply to a family must be refused by `apply_peft` with a reason
(REFUSED below names each such pair and the words its message must contain).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from posttrain.modeling import lm_forward, logits_path, takes_custom_4d_mask, token_logprobs
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.objectives.sft import sft_loss
from posttrain.peft import PeftConfig, apply_peft, load_adapter, merge_and_unload, save_adapter
from posttrain.rollout import generate, left_pad, position_ids_from_mask
from posttrain.tiny import TINY_ARCHS

FAMILIES = sorted(TINY_ARCHS)
METHODS = ["lora", "adapter", "prefix", "prompt"]
REFUSED: dict[tuple[str, str], str] = {
    ("deepseek_v3", "prefix"): "caches keys of size 16 and values of size 8",  # MLA caches latents
}
"""(family, method) -> a phrase the refusal must contain."""

PROMPTS = [[2, 40, 41, 42, 43, 44, 45], [2, 50, 51], [2, 60, 61, 62, 63]]


def peft_cfg(method: str) -> PeftConfig:
    cfg = PeftConfig(method=method)
    cfg.lora.r = 4
    cfg.adapter.reduction_factor = 8
    cfg.prefix.num_virtual_tokens = cfg.prompt.num_virtual_tokens = 3
    return cfg


def sft_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three right-padded rows with their first four tokens unlabelled (a prompt)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 500, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 6:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids_from_mask(mask),
        "labels": labels,
    }


def own_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_model_path_equals_the_models_own_logits(family):
    model = tiny_model(family)
    batch = sft_batch()
    assert logits_path(model).selective, f"{family} should take the selective head path"
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = lm_forward(model, batch, select=real).logits.log_softmax(-1)
    want = own_logits(model, batch)[real].log_softmax(-1)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def _logprob_alone(model, prompt: list[int], response: list[int]) -> float:
    """Independent reference: one unpadded row through the model's own forward, summed log-softmax."""
    with torch.no_grad():
        logp = model(torch.tensor([prompt + response])).logits[0].float().log_softmax(-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return float(logp[pos, torch.tensor(response)].sum())


PAIRS = [([2, 40, 41, 42], [50, 51, 52], [60, 61]), ([2, 70, 71], [80], [90, 91, 92, 93])]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_consumer_reads_the_models_own_logprobs(family):
    """SFT, DPO (separate and shared-prompt rows), the reward model's likelihood term, PPO's policy forward, the
    rollout's response scoring and eval's token NLL all equal log-softmax of the model's own logits."""
    from posttrain.data.preference import PairSample, pad_rows, pair_collate, shared_prompt_collate
    from posttrain.eval.likelihood import token_nll
    from posttrain.objectives.dpo import sequence_logps
    from posttrain.objectives.ppo import PolicyWithValue, response_forward
    from posttrain.objectives.reward import RewardModel
    from posttrain.rollout import prompt_response_rows, response_logprobs

    model = tiny_model(family)
    prompts = [p for p, _, _ in PAIRS] * 2
    responses = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]
    want = torch.tensor([_logprob_alone(model, p, r) for p, r in zip(prompts, responses)])
    close = dict(atol=2e-4, rtol=1e-5)

    samples = [PairSample(p, c, r) for p, c, r in PAIRS]
    shared = takes_custom_4d_mask(
        model, max_length=16
    )  # `posttrain dpo` shares prompts exactly where this holds
    assert shared == (family not in ("gemma2", "gemma3_text", "gpt_oss")), "only sliding windows stop sharing"
    with torch.no_grad():
        for collate in (pair_collate, shared_prompt_collate)[: 1 + shared]:  # chosen sequences, then rejected
            torch.testing.assert_close(sequence_logps(model, collate(samples, 1))[0], want, **close)
        b = pad_rows(prompts, responses, pad_id=1)
        sft = sft_loss(model, b)
        torch.testing.assert_close(-sft, want.sum(), **close)
        rows = [(p + r, [False] * len(p) + [True] * len(r)) for p, r in zip(prompts, responses)]
        nll, count = token_nll(model, rows, pad_id=1)
        assert count == sum(map(len, responses)) and nll == pytest.approx(-float(want.sum()), abs=1e-3)

        torch.manual_seed(0)
        rm, plain = RewardModel(model, likelihood_coef=1.0).eval(), RewardModel(model).eval()
        plain.score_head.load_state_dict(rm.score_head.state_dict())
        loglik = rm.score(b["input_ids"], b["attention_mask"], b["labels"]) - plain.score(
            b["input_ids"], b["attention_mask"]
        )
        torch.testing.assert_close(loglik, want, **close)

        ppo_batch = prompt_response_rows(prompts, responses, pad_id=1)
        lp, _, _ = response_forward(PolicyWithValue(model), ppo_batch)
        lp = lp * ppo_batch["mask"]
        torch.testing.assert_close(lp.sum(1), want, **close)
        got = torch.tensor([sum(x) for x in response_logprobs(model, prompts, responses, pad_id=1)])
        torch.testing.assert_close(got, want, **close)
        if shared:  # GRPO's groups as one packed row per prompt (`group_rows`): chosen, rejected per pair
            from posttrain.objectives.group_rows import pack_groups

            grouped = prompt_response_rows(
                [p for p, _, _ in PAIRS for _ in range(2)], [x for _, c, r in PAIRS for x in (c, r)], pad_id=1
            )
            grouped["packed"] = pack_groups(grouped, 2)
            lp, _, _ = response_forward(PolicyWithValue(model), grouped)
            order = torch.tensor([0, 2, 1, 3])  # want: chosen of both pairs, then rejected
            torch.testing.assert_close((lp * grouped["mask"]).sum(1), want[order], **close)


def _trained(family: str, method: str) -> torch.nn.Module:
    """The family with `method` applied and three Adam steps taken (which must lower the loss)."""
    torch.manual_seed(0)
    model = apply_peft(tiny_model(family), peft_cfg(method))
    model.train()
    batch = sft_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = sft_loss(model, batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0], f"{family}/{method}: loss {losses}"
    return model.eval()


def _uncached_greedy(model, prompts, n: int, pad_id: int = 1) -> list[list[int]]:
    """Argmax decoding that recomputes the whole left-padded batch at every step (no KV cache)."""
    ids, mask = left_pad(prompts, pad_id)
    out = [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(n):
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).logits
            nxt = logits[:, -1].float().argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                out[i].append(t)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_method_trains_decodes_saves_and_loads(tmp_path, family, method):
    if (family, method) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[(family, method)]):
            apply_peft(tiny_model(family), peft_cfg(method))
        return
    model = _trained(family, method)
    batch = sft_batch(seed=1)
    real = batch["attention_mask"].bool()  # logits at padding are nobody's business
    want = own_logits(model, batch)[real]

    # the shared model path sees the adapters exactly as the model's own forward does
    with torch.no_grad():
        ours = lm_forward(model, batch, select=real).logits
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)

    # greedy rollout (KV cache, in-place layers) equals recomputing everything each step
    ro = generate(model, tiny_tokenizer(), PROMPTS, max_new_tokens=6, do_sample=False, stop_ids=[])
    assert ro.response_ids == _uncached_greedy(model, PROMPTS, 6)

    # save -> reload into a fresh base
    save_adapter(model, tmp_path)
    reloaded = load_adapter(tiny_model(family), tmp_path).eval()
    torch.testing.assert_close(own_logits(reloaded, batch)[real], want, atol=1e-5, rtol=1e-5)

    if method in ("lora", "prefix", "prompt"):  # PEFT's own formats: PEFT reads our files
        peft = pytest.importorskip("peft")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path)).eval()
            got = own_logits(theirs, batch)
        n = 3 if method == "prompt" else 0  # PEFT's prompt tuning returns the virtual positions too
        torch.testing.assert_close(got[:, n:][real], want, atol=1e-5, rtol=1e-5)

    if method == "lora":
        merged = merge_and_unload(copy.deepcopy(model))
        torch.testing.assert_close(own_logits(merged, batch)[real], want, atol=1e-5, rtol=1e-5)


def test_logprob_helper_by_hand():
    """logits [0, ln 3] (probabilities 1/4, 3/4): log p(token 1) = ln 3/4, log p(token 0) = ln 1/4."""
    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]] * 2)
    got = token_logprobs(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(got, torch.log(torch.tensor([0.75, 0.25])))


def test_shared_prompt_rows_only_where_they_are_exact():
    """Eager attention reads a custom boolean 4D mask differently (0.13 nats off on Llama): separate rows."""
    model = tiny_model("llama")
    assert takes_custom_4d_mask(model, 64)
    model.set_attn_implementation("eager")
    assert not takes_custom_4d_mask(model, 64)


def test_methods_that_cannot_apply_are_refused_with_the_reason():
    """OPT computes its MLP inline (fc1 -> act -> fc2): a parallel adapter, which reads the MLP's input, is refused;
    DeepSeek-V3's dense MLP linears are named like the experts `peft` re-reads from those names: naming them is
    refused (all-linear skips them with a warning)."""
    cfg = peft_cfg("adapter")
    cfg.adapter.kind = "parallel"
    with pytest.raises(ValueError, match="computes its MLP inline"):
        apply_peft(tiny_model("opt"), cfg)
    cfg = peft_cfg("lora")
    cfg.lora.target_modules = ["down_proj"]
    with pytest.raises(ValueError, match="fused mixture-of-experts"):
        apply_peft(tiny_model("deepseek_v3"), cfg)
