"""Critic-free RL in the one RL trainer: GRPO, RLOO and REINFORCE++ advantages in the rollout, equal-reward groups,
KL in the loss, the reward rising on a toy task, exact resume, the `grpo` / `rloo` commands and their checks."""

import json

import pytest
import torch

from posttrain.config import ConfigError, load_config
from posttrain.objectives.advantages import group_advantages
from posttrain.run.ppo import GRPOConfig, PPOArgs, RLOOConfig, check_args, objective_for
from test_ppo import make_source


class Recorded:
    """A reward function that remembers what it returned."""

    def __init__(self, fn):
        self.fn, self.scores = fn, []

    def __call__(self, rows, texts, response_ids):
        out = self.fn(rows, texts, response_ids)
        self.scores.append(torch.tensor(out))
        return out


def half_constant(rows, texts, response_ids):
    """Share of low ids for prompts of 6+ tokens; a constant 0.5 for shorter prompts (their groups are equal)."""
    return [
        sum(t < 64 for t in ids) / max(1, len(ids)) if len(r.ids) >= 6 else 0.5
        for r, ids in zip(rows, response_ids)
    ]


def grpo_source(tmp_path, reward=None, **kw):
    args = dict(estimator="grpo", samples_per_prompt=4, ppo_epochs=1, kl_in="loss", kl_estimator="k3")
    model, source = make_source(tmp_path, **{**args, **kw})
    if reward is not None:
        source.reward = reward
    return model, source


def fit_rows(model, source, out, steps, lr):
    from posttrain.config import TrainConfig
    from posttrain.train.loop import fit

    cfg = TrainConfig(max_steps=steps, batch_size=source.micro, lr=lr, schedule="constant", progress=False)
    fit(model, objective_for(source.args), source, cfg, out, log_extra=source.stats)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_rollout_advantages_are_the_group_estimator_of_the_rewards(tmp_path, estimator):
    """Rows come in groups of k = 4 samples of one prompt; every response token of a row carries its group
    estimator's advantage; groups whose rewards are all equal get exactly 0; the first rollout's KL is 0."""
    reward = Recorded(half_constant)
    _, source = grpo_source(tmp_path, reward=reward, estimator=estimator, kl_in="none")
    exp = source.make_experience()
    data, mask = exp["data"], exp["data"]["mask"]
    assert exp["stats"]["kl"] == 0.0 and "ref_logprobs" not in data
    want = group_advantages(reward.scores[0], 4, estimator)
    got = (data["advantages"] * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not data["advantages"][~mask].any()
    equal = torch.tensor([len(set(g.tolist())) == 1 for g in reward.scores[0].view(-1, 4)]).repeat_interleave(
        4
    )
    assert 0 < exp["stats"]["equal_groups"] < 1 and not data["advantages"][equal].any()


def test_drop_equal_groups_takes_them_out_of_the_loss(tmp_path):
    reward = Recorded(half_constant)
    _, source = grpo_source(tmp_path, reward=reward, drop_equal_groups=True)
    data = source.make_experience()["data"]
    equal = torch.tensor([len(set(g.tolist())) == 1 for g in reward.scores[0].view(-1, 4)]).repeat_interleave(
        4
    )
    assert equal.any() and not data["mask"][equal].any() and data["mask"][~equal].any(1).all()
    assert "ref_logprobs" in data  # kl_in=loss keeps the reference for the objective


def test_kl_in_the_loss_is_zero_at_step_0(tmp_path):
    """k3(pi, ref) = 0 when pi is ref: the first step's kl_loss is exactly 0, later ones are not."""
    model, source = grpo_source(tmp_path, kl_coef=0.1)
    rows = fit_rows(model, source, tmp_path / "run", steps=5, lr=5e-2)
    assert rows[0]["kl_loss"] == 0.0 and rows[-1]["kl_loss"] > 0 and "value_loss" not in rows[0]


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_raise_a_programmatic_reward(tmp_path, estimator):
    """Full fine-tuning, 8 prompts x 4 samples of 12 tokens per rollout: the share of ids < 64 climbs from ~0.13
    to above 0.3 within 30 optimiser steps, with no value model."""
    kw = dict(rollout_batch_size=32, mini_batch_size=16, max_new_tokens=12, micro=16, ppo_epochs=2)
    model, source = grpo_source(tmp_path, estimator=estimator, kl_in="reward", kl_estimator="k1", **kw)
    rows = fit_rows(model, source, tmp_path / "run", steps=30, lr=1e-2)
    first, last = rows[0]["reward"], rows[-1]["reward"]
    assert last > 0.3 and last > first + 0.15, (first, last)


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    """GRPO with KL in the loss, clip-higher, Dr. GRPO aggregation and the equal-group filter: stopped after 3 steps
    (mid buffer) and resumed to 6, steps 4-6 equal the straight run."""
    kw = dict(
        method="lora",
        drop_equal_groups=True,
        cliprange_high=0.28,
        loss_aggregation="seq_mean_token_sum_norm",
        scale_rewards=False,
        ppo_epochs=2,
    )
    model, source = grpo_source(tmp_path / "a", reward=half_constant, **kw)
    straight = fit_rows(model, source, tmp_path / "a" / "run", steps=6, lr=2e-2)
    model, source = grpo_source(tmp_path / "b", reward=half_constant, **kw)
    fit_rows(model, source, tmp_path / "b" / "run", steps=3, lr=2e-2)
    model, source = grpo_source(tmp_path / "b", reward=half_constant, **kw)
    resumed = fit_rows(model, source, tmp_path / "b" / "run", steps=6, lr=2e-2)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight[3:], resumed[3:]):
        for k in a:
            if k not in ("tokens_per_s", "elapsed_s"):
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)


def test_commands_preset_their_estimator():
    grpo = load_config(GRPOConfig, None, ["model=m", "data=d"])
    assert (grpo.ppo.estimator, grpo.ppo.kl_in, grpo.ppo.kl_estimator, grpo.ppo.samples_per_prompt) == (
        "grpo",
        "loss",
        "k3",
        4,
    )
    rloo = load_config(RLOOConfig, None, ["model=m", "data=d", "ppo.samples_per_prompt=8"])
    assert rloo.ppo.estimator == "rloo" and rloo.ppo.samples_per_prompt == 8 and rloo.ppo.kl_in == "reward"
    assert objective_for(grpo.ppo).critic is False and objective_for(PPOArgs()).critic is True


@pytest.mark.parametrize(
    "bad, key",
    [
        (["ppo.samples_per_prompt=1"], "samples_per_prompt"),
        (["ppo.value_head=separate"], "value_head"),
        (["ppo.estimator=gae", "ppo.drop_equal_groups=true"], "drop_equal_groups"),
        (["ppo.rewards={number: high}"], "rewards"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        load_config(GRPOConfig, None, ["model=m", "data=d", *bad])


def test_adaptive_kl_needs_the_kl_in_the_reward():
    with pytest.raises(ConfigError, match="kl_in=reward"):
        check_args(PPOArgs(estimator="grpo", samples_per_prompt=4, kl_in="loss", adaptive_kl=True), 8)


def _prompt_file(tmp_path, rows):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return data


def test_posttrain_grpo_end_to_end_with_a_builtin_checker(tmp_path, capsys):
    """`posttrain grpo` with ppo.reward=number plus a weighted format term: runs, logs reward and kl_loss, saves
    the adapter; a prompt without the answer field stops the run with exit 1 and one line naming file:line."""
    from helpers import base_dir
    from posttrain.cli import main

    base = base_dir(tmp_path)
    rows = [{"prompt": f"What is {i} + 1?", "meta": {"answer": str(i + 1)}} for i in range(8)]
    data = _prompt_file(tmp_path, rows)
    common = [
        f"model={base}",
        "peft.method=lora",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.progress=false",
        "ppo.rollout_batch_size=8",
        "ppo.mini_batch_size=4",
        "ppo.max_new_tokens=4",
        "ppo.reward=number",
        "ppo.rewards={'regex:^\\d+$': 0.5}",
        "device=cpu",
    ]
    assert main(["grpo", f"data={data}", f"output_dir={tmp_path / 'out'}", *common]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert (
        [m["step"] for m in metrics] == [1, 2] and "kl_loss" in metrics[0] and "value_loss" not in metrics[0]
    )
    assert (tmp_path / "out" / "final" / "adapter_config.json").exists()
    (tmp_path / "bad").mkdir()
    bad = _prompt_file(tmp_path / "bad", [*rows[:3], {"prompt": "Spell cat."}, *rows[4:]])
    capsys.readouterr()
    code = main(["grpo", f"data={bad}", f"output_dir={tmp_path / 'bad_out'}", *common, "train.max_steps=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert (
        f"reward number failed on prompt 'Spell cat.' ({bad}:4)" in err[-1] and "no 'answer' field" in err[-1]
    )


def test_on_policy_is_one_step_per_rollout_of_unbiased_samples_without_policy_terms_in_the_reward():
    on = dict(estimator="grpo", samples_per_prompt=4, ppo_epochs=1, rollout_batch_size=16, mini_batch_size=16)
    assert PPOArgs(**on, kl_in="loss").on_policy and PPOArgs(**on, kl_in="none").on_policy
    assert PPOArgs(**on, kl_in="reward", kl_coef=0.0).on_policy
    for off in (
        dict(kl_in="reward"),  # the policy's log-probs go into the advantages
        dict(kl_in="loss", ppo_epochs=2),
        dict(kl_in="loss", mini_batch_size=8),
        dict(kl_in="loss", top_k=5),
        dict(kl_in="loss", estimator="gae", samples_per_prompt=1),
    ):
        assert not PPOArgs(**{**on, **off}).on_policy, off


def test_on_policy_rollout_skips_the_policy_forward_and_gives_the_same_gradient(tmp_path, monkeypatch):
    """With one optimiser step per rollout the old log-probs are the new ones, so the rollout scores the reference
    only and the loss uses its own log-probs detached: the gradient equals the one from explicitly recomputed
    old log-probs, and the sampler's log-probs (kept for the KL figure) are the policy's own."""
    import dataclasses

    import posttrain.run.ppo_source as ppo_source
    from posttrain.objectives.ppo import response_forward

    model, source = grpo_source(tmp_path, rollout_batch_size=16, mini_batch_size=16)
    assert source.args.on_policy

    def refuse(*a, **k):
        raise AssertionError("the policy was scored in an on-policy rollout")

    monkeypatch.setattr(ppo_source, "response_forward", refuse)
    data = source.make_experience()["data"]
    monkeypatch.undo()
    mask = data["mask"]
    model.eval()
    with torch.no_grad():
        own, _, _ = response_forward(model, data)
    torch.testing.assert_close(data["logprobs"] * mask, own * mask, atol=1e-4, rtol=1e-4)

    def grad(objective, batch):
        model.zero_grad()
        loss, _ = objective.loss(model, batch)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    on = objective_for(source.args)
    assert on.on_policy
    off = dataclasses.replace(on, on_policy=False)
    for a, b in zip(grad(on, data), grad(off, {**data, "logprobs": own})):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
