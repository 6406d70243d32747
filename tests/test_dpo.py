"""DPO / IPO / SimPO: losses against hand-worked numbers, selective-LM-head log-probs against full logits,
ln 2 at step 0 (also from a loaded SFT LoRA), and a margin that grows on held-out pairs."""

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import base_dir, write_prefs
from posttrain.data.preference import PairSample, pair_collate
from posttrain.objectives.dpo import (
    LOSSES,
    DPOArgs,
    DPOObjective,
    PairLogps,
    dpo_loss,
    ipo_loss,
    sequence_logps,
    simpo_loss,
)


def _lp(pc, pr, rc=None, rr=None, lc=None, lr=None):
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32)  # noqa: E731
    n = len(pc)
    return PairLogps(t(pc), t(pr), t(rc), t(rr), t(lc or [1.0] * n), t(lr or [1.0] * n))


def test_dpo_loss_by_hand():
    """Pair 1: pi_c=-1, pi_r=-3, ref_c=ref_r=-2, beta=0.5.
    log-ratios: chosen -1-(-2) = 1, rejected -3-(-2) = -1; logits = 0.5 * (1 - (-1)) = 1
    loss = -log sigmoid(1) = log(1 + e^-1) = 0.3132617; rewards 0.5 * 1 = 0.5 and 0.5 * -1 = -0.5.
    Pair 2: policy == reference: loss = ln 2 = 0.6931472, rewards 0.
    cDPO with label smoothing 0.1 on pair 1:
    0.9 * 0.3132617 + 0.1 * log(1 + e) = 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617."""
    lp = _lp([-1.0, -5.0], [-3.0, -7.0], [-2.0, -5.0], [-2.0, -7.0])
    losses, rc, rr = dpo_loss(lp, beta=0.5)
    assert torch.allclose(losses, torch.tensor([0.3132617, 0.6931472]), atol=1e-6)
    assert torch.allclose(rc, torch.tensor([0.5, 0.0])) and torch.allclose(rr, torch.tensor([-0.5, 0.0]))
    smoothed, _, _ = dpo_loss(lp, beta=0.5, label_smoothing=0.1)
    assert math.isclose(smoothed[0].item(), 0.4132617, abs_tol=1e-6)


def test_ipo_loss_by_hand():
    """pi_c=-2, ref_c=-4 over 2 tokens: (2)/2 = 1 per token; pi_r=-6, ref_r=-3 over 3 tokens: (-3)/3 = -1.
    h = 1 - (-1) = 2. tau = beta = 0.5: (2 - 1/(2*0.5))^2 = (2 - 1)^2 = 1. tau = 0.25: (2 - 2)^2 = 0.
    Rewards are beta * summed log-ratio: 0.5 * 2 = 1 and 0.5 * -3 = -1.5."""
    lp = _lp([-2.0], [-6.0], [-4.0], [-3.0], [2.0], [3.0])
    losses, rc, rr = ipo_loss(lp, beta=0.5)
    assert math.isclose(losses.item(), 1.0, abs_tol=1e-6)
    assert math.isclose(rc.item(), 1.0) and math.isclose(rr.item(), -1.5)
    assert math.isclose(ipo_loss(lp, beta=0.25)[0].item(), 0.0, abs_tol=1e-6)


def test_simpo_loss_by_hand():
    """pi_c=-4 over 2 tokens: avg -2; pi_r=-9 over 3 tokens: avg -3. beta=2, gamma=0.5:
    beta * (-2 - (-3)) - gamma = 2 - 0.5 = 1.5; loss = log(1 + e^-1.5) = 0.2014133. Rewards 2*-2 = -4, 2*-3 =
    -6. No reference is used (None passes)."""
    lp = _lp([-4.0], [-9.0], None, None, [2.0], [3.0])
    losses, rc, rr = simpo_loss(lp, beta=2.0, simpo_gamma=0.5)
    assert math.isclose(losses.item(), 0.2014133, abs_tol=1e-6)
    assert math.isclose(rc.item(), -4.0) and math.isclose(rr.item(), -6.0)


def test_loss_table_names_every_loss():
    assert LOSSES == {"dpo": dpo_loss, "ipo": ipo_loss, "simpo": simpo_loss}
    with pytest.raises(ValueError, match="dpo.loss"):
        DPOObjective(DPOArgs(loss="kto"))


def _samples(n, seed=0, lo=3, hi=9):
    g = torch.Generator().manual_seed(seed)

    def rnd():
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(4, 500, (n,), generator=g).tolist()

    return [PairSample([2, *rnd()], [*rnd(), 3], [*rnd(), 3]) for _ in range(n)]


def test_sequence_logps_match_full_logits(llama):
    """The selective LM head gives the same numbers as log_softmax over the full logits, summed over
    responses."""
    samples = _samples(3)
    batch = pair_collate(samples, pad_id=1)
    logps, lengths = sequence_logps(llama, batch)
    full = (
        llama(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        )
        .logits.float()
        .log_softmax(-1)
    )
    want = []
    for row in range(6):
        s = samples[row % 3]
        resp = s.chosen_ids if row < 3 else s.rejected_ids
        p = len(s.prompt_ids)
        want.append(sum(full[row, p + j - 1, t].item() for j, t in enumerate(resp)))
        assert lengths[row].item() == len(resp)
    assert torch.allclose(logps, torch.tensor(want), atol=1e-4)


def test_step_zero_is_ln2_with_reference_self(llama):
    """Reference = the policy itself before any update: every log-ratio is 0, so the loss is ln 2 and rewards
    0."""
    batch = pair_collate(_samples(4), pad_id=1)
    loss, m = DPOObjective(DPOArgs(), ref="self").loss(llama, batch)
    assert math.isclose(loss.item() / 4, math.log(2), abs_tol=1e-5)
    assert abs(m["rewards/chosen"]) < 1e-5 and abs(m["rewards/margins"]) < 1e-5


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_step_zero_is_ln2_with_the_initial_policy_for_every_peft_method(method):
    """The reference is the policy at step 0 also for prefix and prompt tuning, whose fresh virtual tokens change
    the outputs from the start: 'adapters off' would be the raw base (loss 0.79-0.95 before this was fixed)."""
    from posttrain.models import tiny_model
    from posttrain.peft import PeftConfig, apply_peft

    model = apply_peft(tiny_model("llama"), PeftConfig(method=method))
    batch = pair_collate(_samples(4), pad_id=1)
    loss, m = DPOObjective(DPOArgs(), ref="initial_policy").loss(model, batch)
    assert math.isclose(loss.item() / 4, math.log(2), abs_tol=1e-6)
    assert abs(m["rewards/margins"]) < 1e-6


def test_rpo_adds_the_chosen_nll_per_token(llama):
    """rpo_alpha adds alpha * (-log p(chosen) / chosen tokens) to each pair's loss; 0 leaves DPO alone."""
    batch = pair_collate(_samples(3), pad_id=1)
    plain, _ = DPOObjective(DPOArgs(), ref="self").loss(llama, batch)
    rpo, m = DPOObjective(DPOArgs(rpo_alpha=0.5), ref="self").loss(llama, batch)
    logps, lengths = sequence_logps(llama, batch)
    nll = -(logps[:3] / lengths[:3]).sum()
    assert math.isclose(rpo.item(), plain.item() + 0.5 * nll.item(), rel_tol=1e-5)
    assert math.isclose(m["nll/chosen"].item(), nll.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="dpo.pairs"):
        DPOObjective(DPOArgs(pairs="top"))


def test_precomputed_reference_is_used(llama):
    """ref_logps carried in the batch replace the reference forward (shifting them moves the loss)."""
    samples = _samples(2)
    from posttrain.objectives.dpo import precompute_reference

    precompute_reference(llama, samples, pad_id=1)
    batch = pair_collate(samples, pad_id=1)
    assert batch["ref_logps"].shape == (4,)
    loss, _ = DPOObjective(DPOArgs(beta=1.0), ref=None).loss(llama, batch)
    assert math.isclose(loss.item() / 2, math.log(2), abs_tol=1e-5)
    for s in samples:
        s.ref_chosen -= 1.0  # chosen now looks better than the reference: loss = log(1 + e^-1) per pair
    loss, _ = DPOObjective(DPOArgs(beta=1.0), ref=None).loss(llama, pair_collate(samples, pad_id=1))
    assert math.isclose(loss.item() / 2, 0.3132617, abs_tol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# `posttrain dpo` end to end


_base_dir, _prefs = base_dir, write_prefs


def _sft_lora(tmp_path, base):
    """An 'SFT' LoRA whose B is perturbed, so the SFT policy differs from the raw base."""
    from posttrain.models import tiny_model
    from posttrain.peft import LoraConfig, PeftConfig, apply_peft, save_adapter

    model = apply_peft(tiny_model("llama"), PeftConfig(method="lora", lora=LoraConfig(r=4)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return str(save_adapter(model, tmp_path / "sft"))


@pytest.mark.parametrize("method", ["none", "lora"])
def test_step_zero_ln2_from_loaded_sft_lora(tmp_path, method):
    """Start from an SFT LoRA. method=none trains that adapter further: the reference is the SFT policy,
    precomputed with the adapter ON. method=lora merges the SFT LoRA and adds a fresh one: adapters off is the
    SFT policy. Either way step 0 gives loss ln 2 and zero rewards, and the reference is NOT the raw base
    model."""
    from posttrain.peft import disable_adapters
    from posttrain.run.dpo import DPOConfig, prepare, reference_plan

    base = _base_dir(tmp_path)
    cfg = DPOConfig(
        model=base,
        adapter=_sft_lora(tmp_path, base),
        data=_prefs(tmp_path / "p.jsonl", 8),
        output_dir=str(tmp_path / "out"),
    )
    cfg.peft.method = method
    cfg.train.batch_size = 4
    assert reference_plan(cfg) == ("precompute" if method == "none" else "initial_policy")
    model, _, objective, source, _ = prepare(cfg)
    model.train()
    batch = source.next_step()[0]
    loss, m = objective.loss(model, batch)
    assert math.isclose(loss.item() / 4, math.log(2), abs_tol=1e-5)
    assert abs(m["rewards/chosen"]) < 1e-4 and abs(m["rewards/rejected"]) < 1e-4
    # the raw base scores these pairs differently: a reference taken from it would not give ln 2
    from posttrain.models import load_model

    raw = load_model(base, dtype="fp32", device="cpu")
    raw_logps, _ = sequence_logps(raw, batch)
    ref = batch["ref_logps"] if method == "none" else None
    if ref is None:
        with torch.no_grad(), disable_adapters(model):
            ref = sequence_logps(model, batch)[0]
    assert (raw_logps - ref).abs().max() > 1e-2


def test_final_adapter_on_merged_sft_lora_loads_back_exactly(tmp_path):
    """SFT LoRA -> DPO LoRA on top: final/ holds only the DPO adapter and records the merged SFT LoRA, so
    load_for_inference(base, final) merges it back and gives the trained policy's logits; so does a further run
    starting from final/ (its own reference = adapters off). Without the SFT merge the logits differ."""
    from posttrain.config import TrainConfig
    from posttrain.models import load_model
    from posttrain.peft import load_adapter
    from posttrain.run.common import BASE_ADAPTERS_FILE, load_for_inference, save_final, setup_model
    from posttrain.run.dpo import DPOConfig, prepare
    from posttrain.train.loop import fit

    base = _base_dir(tmp_path)
    sft = _sft_lora(tmp_path, base)
    cfg = DPOConfig(
        model=base, adapter=sft, data=_prefs(tmp_path / "p.jsonl", 8), output_dir=str(tmp_path / "o")
    )
    cfg.peft.method, cfg.train.batch_size = "lora", 4
    model, tok, objective, source, _ = prepare(cfg)
    t = TrainConfig(max_steps=3, batch_size=4, lr=5e-2, progress=False)
    fit(model, objective, source, t, tmp_path / "o", save_fn=lambda m, d: save_final(m, tok, cfg, d))
    final = tmp_path / "o" / "final"
    record = json.loads((final / BASE_ADAPTERS_FILE).read_text())
    assert record["base_adapters"] == ["base_adapters/0"] and record["copied_from"] == [
        str(Path(sft).resolve())
    ]
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        want = model.eval()(input_ids=ids).logits
        loaded, _ = load_for_inference(base, adapter=str(final), dtype="fp32", device="cpu")
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        plain = load_adapter(load_model(base, dtype="fp32", device="cpu"), final).eval()
        assert (plain(input_ids=ids).logits - want).abs().max() > 1e-2  # the SFT LoRA matters
        nxt = DPOConfig(model=base, adapter=str(final), data=cfg.data, output_dir=str(tmp_path / "o2"))
        nxt.peft.method = (
            "lora"  # e.g. PPO after DPO: final/ and its own bases merged, a fresh adapter on top
        )
        again, _ = setup_model(nxt, verbose=False)
        torch.testing.assert_close(again.eval()(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        # `posttrain merge` folds the recorded SFT LoRA in first, then the DPO LoRA: a plain HF model of the policy
        from transformers import AutoModelForCausalLM

        from posttrain.run.merge import merge

        merged = AutoModelForCausalLM.from_pretrained(
            merge(base, str(final), str(tmp_path / "merged"))
        ).eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_precomputed_reference_is_reused_on_resume(tmp_path):
    from posttrain.run.dpo import REF_FILE, DPOConfig, prepare

    cfg = DPOConfig(
        model=_base_dir(tmp_path), data=_prefs(tmp_path / "p.jsonl", 6), output_dir=str(tmp_path / "o")
    )
    _, _, _, source, _ = prepare(cfg)  # peft.method none: reference precomputed
    first = source.samples[0].ref_chosen
    saved = torch.load(tmp_path / "o" / REF_FILE)
    saved["chosen"] += 1.0  # a run that resumes must read these back, not recompute from the updated policy
    torch.save(saved, tmp_path / "o" / REF_FILE)
    _, _, _, again, _ = prepare(cfg)
    assert math.isclose(again.samples[0].ref_chosen, first + 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo"])
def test_dpo_raises_heldout_margin(tmp_path, loss):
    import json

    from posttrain.cli import main
    from posttrain.config import load_config
    from posttrain.objectives.dpo import evaluate_pairs
    from posttrain.run.dpo import DPOConfig, prepare

    out = tmp_path / "out"
    beta = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}[loss]
    argv = [
        f"model={_base_dir(tmp_path)}",
        f"data={_prefs(tmp_path / 'p.jsonl', 48)}",
        f"eval_data={_prefs(tmp_path / 'e.jsonl', 16, seed=1)}",
        f"output_dir={out}",
        f"dpo.loss={loss}",
        f"dpo.beta={beta}",
        "peft.method=lora",
        "train.lr=2e-3",
        "train.batch_size=8",
        "train.epochs=4",
        "train.eval_every=6",
        "train.progress=false",
        "train.max_length=64",
    ]
    model, tok, objective, _, eval_s = prepare(load_config(DPOConfig, None, argv))
    before = evaluate_pairs(model, objective, eval_s, tok.pad_token_id)
    assert loss == "simpo" or abs(before["rewards/margins"]) < 1e-4  # fresh LoRA: policy == reference
    assert main(["dpo", *argv]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_rewards/margins" in r]
    assert len(evals) == 4
    assert evals[-1]["eval_rewards/margins"] > before["rewards/margins"] + 0.2
    assert evals[-1]["eval_rewards/accuracy"] >= 0.9 and evals[-1]["eval_loss"] < before["loss"]
    assert (out / "final" / "adapter_config.json").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_shared_prompt_rows_match_separate_rows(arch):
    """[prompt, chosen, rejected] in one row with a 4D mask gives the same log-probs as two separate rows,
    also through a LoRA-wrapped model and its gradients."""
    from posttrain.data.preference import shared_prompt_collate
    from posttrain.models import tiny_model
    from posttrain.peft import PeftConfig, apply_peft

    samples = _samples(5, seed=3, lo=1)
    model = apply_peft(tiny_model(arch), PeftConfig(method="lora"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    grads = []
    for collate in (lambda s, pad: pair_collate(s, pad), shared_prompt_collate):
        logps, lengths = sequence_logps(model, collate(samples, 1))
        logps.sum().backward()
        g = next(p for n, p in model.named_parameters() if "lora_A" in n).grad
        grads.append((logps.detach(), lengths, g.clone()))
        model.zero_grad()
    (a, la, ga), (b, lb, gb) = grads
    assert torch.equal(la, lb)
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ga, gb, atol=1e-4)


def test_pick_collate():
    from posttrain.data.preference import shared_prompt_collate
    from posttrain.models import tiny_model
    from posttrain.run.dpo import DPOConfig, pick_collate

    cfg = DPOConfig()
    cfg.peft.method = "lora"
    assert pick_collate(cfg, tiny_model("llama"), 1024) is shared_prompt_collate
    from posttrain.peft import PeftConfig, apply_peft

    prefixed = apply_peft(tiny_model("llama"), PeftConfig(method="prefix"))  # virtual tokens need a 2-D mask
    assert pick_collate(cfg, prefixed, 1024) is pair_collate
    cfg.peft.method, cfg.dpo.share_prompt = "lora", False
    assert pick_collate(cfg, tiny_model("llama"), 1024) is pair_collate
