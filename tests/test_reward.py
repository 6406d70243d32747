"""Reward model: Bradley-Terry and Plackett-Luce by hand, scores independent of padding and batch companions,
the head surviving save/reload, and `posttrain rm` end to end on a tiny model."""

import json
import math

import pytest
import torch

from helpers import base_dir, token_rows, write_prefs
from posttrain.data.preference import pad_rows
from posttrain.objectives.reward import (
    ListwiseRewardObjective,
    PairwiseRewardObjective,
    RewardModel,
    bradley_terry_loss,
    last_token_index,
    plackett_luce_loss,
)


def test_bradley_terry_by_hand():
    """r_c=2, r_r=1: -log sigmoid(1) = log(1 + e^-1) = 0.3132617.
    With margin 1: -log sigmoid(0) = ln 2 = 0.6931472. Reversed (r_c=1, r_r=2): log(1 + e) = 1.3132617."""
    c, r = torch.tensor([2.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 2.0])
    got = bradley_terry_loss(c, r, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(got, torch.tensor([0.3132617, 0.6931472, 1.3132617]), atol=1e-6)
    assert torch.allclose(bradley_terry_loss(c[:1], r[:1]), torch.tensor([0.3132617]), atol=1e-6)


def test_plackett_luce_by_hand():
    """Scores best first [2, 1, 0]:
    term 1 = 2 - log(e^2 + e + 1) = 2 - 2.4076060 = -0.4076060
    term 2 = 1 - log(e + 1)       = 1 - 1.3132617 = -0.3132617
    term 3 = 0 - log(e^0)         = 0
    loss = 0.7208677. A padded ranking [1, 0, pad] is plain Bradley-Terry: log(1 + e^-1) = 0.3132617."""
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = plackett_luce_loss(scores, mask)
    assert torch.allclose(got, torch.tensor([0.7208677, 0.3132617]), atol=1e-6)
    two = torch.tensor([[0.3, -1.2]])
    assert torch.allclose(plackett_luce_loss(two), bradley_terry_loss(two[:, 0], two[:, 1]), atol=1e-6)


def test_last_token_index_from_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_score_invariant_to_padding_side_and_companions(llama):
    torch.manual_seed(0)
    rm = RewardModel(llama).eval()
    rows = token_rows([7, 12, 3, 9])
    empty = [[] for _ in rows]
    alone = torch.stack(
        [rm.score(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows]
    )
    for side in ("left", "right"):
        b = pad_rows(rows, empty, pad_id=1, side=side)
        assert torch.allclose(rm.score(b["input_ids"], b["attention_mask"]), alone, atol=1e-5), side
    # different companions (a much longer one) and a different order change nothing
    b = pad_rows([rows[2], token_rows([40], seed=1)[0], rows[0]], [[], [], []], pad_id=1, side="left")
    got = rm.score(b["input_ids"], b["attention_mask"])
    assert torch.allclose(got[[0, 2]], alone[[2, 0]], atol=1e-5)
    # the score really depends on the last real token (guards against reading a pad position)
    changed = rows[0][:-1] + [(rows[0][-1] + 1) % 500]
    assert not torch.allclose(
        rm.score(torch.tensor([changed]), torch.ones(1, 7, dtype=torch.long)), alone[:1]
    )


def test_score_ignores_pad_token_identity(llama):
    """Pad id equal to a real token id (pad = eos) must not move the read-out position."""
    rm = RewardModel(llama).eval()
    rows = [[5, 6, 3], [5, 6, 7, 8, 3]]  # both end in id 3 (eos), used as pad too
    b = pad_rows(rows, [[], []], pad_id=3, side="right")
    alone = rm.score(torch.tensor([rows[0]]), torch.ones(1, 3, dtype=torch.long))
    assert torch.allclose(rm.score(b["input_ids"], b["attention_mask"])[0], alone[0], atol=1e-5)


def test_pairwise_objective_and_gradients(llama):
    rm = RewardModel(llama)
    b = pad_rows(token_rows([5, 6, 7, 8]), [[], [], [], []], pad_id=1)
    b.update(margin=torch.zeros(2), num_pairs=2)
    obj = PairwiseRewardObjective()
    loss, metrics = obj.loss(rm, b)
    s = rm(b["input_ids"], b["attention_mask"])
    assert obj.units(b) == 2
    assert math.isclose(loss.item(), bradley_terry_loss(s[:2], s[2:]).sum().item(), rel_tol=1e-5)
    assert metrics["accuracy"] == float((s[:2] > s[2:]).sum())
    loss.backward()
    assert rm.score_head.weight.grad is not None and rm.score_head.weight.grad.abs().sum() > 0


def test_settled_pairs_give_exact_zero_gradients(llama):
    """A pair separated by ~95 gets sigmoid(-95) ~ 5e-42, a denormal float that makes CPU matmuls crawl; the
    score's gradient hook turns it into an exact zero. A normal margin still trains."""
    rm = RewardModel(llama)
    b = pad_rows(token_rows([5, 6]), [[], []], pad_id=1)
    b.update(num_pairs=1)
    for margin, moves in ((-95.0, False), (-5.0, True)):
        rm.zero_grad()
        loss, _ = PairwiseRewardObjective().loss(rm, {**b, "margin": torch.tensor([margin])})
        loss.backward()
        assert (rm.score_head.weight.grad.abs().max() > 0) == moves, margin


def test_listwise_objective_matches_plackett_luce(llama):
    rm = RewardModel(llama).eval()
    b = pad_rows(token_rows([4, 5, 6, 7, 8]), [[]] * 5, pad_id=1)
    b.update(group_sizes=[3, 2], num_rankings=2)
    loss, _ = ListwiseRewardObjective().loss(rm, b)
    s = rm(b["input_ids"], b["attention_mask"]).detach()
    want = plackett_luce_loss(s[:3][None]).sum() + plackett_luce_loss(s[3:][None]).sum()
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_reward_model_other_archs(arch):
    from posttrain.models import tiny_model

    rm = RewardModel(tiny_model(arch)).eval()
    rows = token_rows([4, 9])
    b = pad_rows(rows, [[], []], pad_id=1, side="left")
    alone = rm.score(torch.tensor([rows[0]]), torch.ones(1, 4, dtype=torch.long))
    assert torch.allclose(rm.score(b["input_ids"], b["attention_mask"])[0], alone[0], atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# `posttrain rm` end to end


_base_dir, _prefs = base_dir, write_prefs


@pytest.mark.parametrize("method", ["lora", "none"])
def test_head_survives_save_and_reload(tmp_path, method):
    from posttrain.artifacts.reward import load_reward_model, save_reward_model
    from posttrain.run.rm import RMConfig, prepare

    cfg = RMConfig(
        model=_base_dir(tmp_path), data=_prefs(tmp_path / "p.jsonl", 6), output_dir=str(tmp_path / "o")
    )
    cfg.peft.method = method
    rm, tok, _, source, _ = prepare(cfg)
    with torch.no_grad():  # move away from the init so a lost head or adapter would show
        rm.score_head.weight.add_(torch.randn_like(rm.score_head.weight))
        for n, p in rm.lm.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    batch = source.next_step()[0]
    before = rm.score(batch["input_ids"], batch["attention_mask"])
    save_reward_model(rm, tok, cfg, tmp_path / "rm")
    layout = json.loads((tmp_path / "rm" / "reward_config.json").read_text())["layout"]
    assert layout == {"lora": "peft_seq_cls", "none": "seq_cls"}[method]
    assert (tmp_path / "rm" / "adapter_config.json").exists() == (method == "lora")
    again = load_reward_model(tmp_path / "rm")
    assert torch.allclose(again.score(batch["input_ids"], batch["attention_mask"]), before, atol=1e-5)
    texts = again.score_texts(again.tokenizer, ["Say hello 1"], ["fox dog"], again.template)
    assert len(texts) == 1 and isinstance(texts[0], float)


@pytest.mark.parametrize("loss", ["pairwise", "listwise"])
def test_rm_command_learns_preference(tmp_path, loss):
    import json

    from posttrain.artifacts.reward import load_reward_model
    from posttrain.cli import main

    out = tmp_path / "out"
    rc = main(
        [
            "rm",
            f"model={_base_dir(tmp_path)}",
            f"data={_prefs(tmp_path / 'p.jsonl', 48)}",
            f"eval_data={_prefs(tmp_path / 'e.jsonl', 16, seed=1)}",
            f"output_dir={out}",
            f"rm.loss={loss}",
            "peft.method=lora",
            "peft.lora.r=8",
            "train.lr=3e-3",
            "train.batch_size=8",
            "train.epochs=3",
            "train.progress=false",
            "train.max_length=64",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["eval_accuracy"] >= 0.9 and final["eval_margin"] > 0.5
    assert rows[0]["loss"] > rows[-2]["loss"]
    rm = load_reward_model(out / "final")
    good, bad = rm.score_texts(
        rm.tokenizer, ["Say hello 99"] * 2, ["quick brown fox", "lazy cat"], rm.template
    )
    assert good > bad


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_score_invariance_under_every_peft_method(llama, method):
    from posttrain.peft import PeftConfig, apply_peft

    model = apply_peft(llama, PeftConfig(method=method))
    with torch.no_grad():  # adapters away from their identity init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    rm = RewardModel(model).eval()
    rows = token_rows([6, 11, 3])
    alone = torch.stack(
        [rm.score(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows]
    )
    for side in ("left", "right"):
        b = pad_rows(rows, [[], [], []], pad_id=1, side=side)
        assert torch.allclose(rm.score(b["input_ids"], b["attention_mask"]), alone, atol=1e-5), side


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_reward_model_on_an_sft_then_dpo_adapter_chain_reloads_with_its_scores(tmp_path):
    """SFT LoRA -> DPO LoRA on it -> reward model LoRA on that: the reward model's directory records both merged
    adapters, and loading it gives the trained scores. Before, its loader merged only the DPO adapter (scores
    -1.69 instead of -1.04): there were two base-adapter mechanisms."""
    from posttrain.artifacts import save_final
    from posttrain.artifacts.reward import load_reward_model, save_reward_model
    from posttrain.config import SFTConfig
    from posttrain.run.common import setup_model

    base = base_dir(tmp_path)
    stages = {}
    for name, parent in (("sft", None), ("dpo", "sft")):
        cfg = SFTConfig(model=base, adapter=stages.get(parent), output_dir=str(tmp_path / name))
        cfg.peft.method = "lora"
        model, tok = setup_model(cfg, verbose=False)
        stages[name] = str(save_final(_perturbed(model, len(stages)), tok, cfg, tmp_path / name / "final"))
    cfg = SFTConfig(model=base, adapter=stages["dpo"])
    cfg.peft.method = "lora"
    lm, tok = setup_model(cfg, verbose=False)
    rm = _perturbed(RewardModel(lm), 7).eval()
    b = pad_rows(token_rows([5, 3, 8], seed=1), token_rows([4, 6, 2], seed=2), pad_id=1)
    want = rm.score(b["input_ids"], b["attention_mask"])
    save_reward_model(rm, tok, cfg, tmp_path / "rm")
    got = load_reward_model(tmp_path / "rm").score(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
