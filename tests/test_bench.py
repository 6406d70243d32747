"""Benchmarks: the shared workload draws exactly the anchors' data, and `posttrain bench` runs every workload
with `all` and prints one JSON object last with `--json` (fake workloads: the real ones take minutes)."""

import json

import pytest

from posttrain.bench import cli
from posttrain.bench.workload import dpo_texts, result, rl_prompts, sft_rows, words


def test_generators_draw_the_anchors_data():
    """Counts and id sums pinned from the anchor scripts' draws (random.Random(0))."""
    prompts = rl_prompts()
    assert (len(prompts), sum(map(len, prompts)), sum(map(sum, prompts))) == (64, 2557, 5195379)
    assert all(16 <= len(p) <= 64 for p in prompts)
    texts = dpo_texts()
    flat = [x for t in texts for x in t]
    assert (len(texts), sum(map(len, flat)), sum(map(sum, flat))) == (256, 54224, 111224647)
    assert sum(len(ids) for ids, _ in sft_rows()) == 77731
    assert words([5, 17]) == "t5 t17"


def fake(side):
    return lambda: result(side, "fake", tokens_per_s=2.0 if side == "posttrain" else 1.0, wall_s=1.0)


@pytest.fixture
def fakes(monkeypatch):
    """Two fake workloads whose sides are module-level functions of this test module."""
    import sys

    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "ours", fake("posttrain"), raising=False)
    monkeypatch.setattr(mod, "theirs", fake("anchor"), raising=False)
    table = {
        name: cli.Workload(f"{__name__}:ours", f"{__name__}:theirs", "tokens_per_s") for name in ("a", "b")
    }
    monkeypatch.setattr(cli, "WORKLOADS", table)
    return table


def test_json_prints_one_object_last_and_all_runs_every_workload(fakes, capsys):
    assert cli.main(["a", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["side"] == "posttrain"
    assert cli.main(["all", "--json", "--anchor"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [g["side"] for g in got] == ["anchor", "anchor"]  # one per workload


def test_all_compares_every_workload(fakes, monkeypatch, capsys):
    seen = []

    def compare(name):
        seen.append(name)
        return {
            "workload": name,
            "metric": "tokens_per_s",
            "posttrain": fake("posttrain")(),
            "anchor": fake("anchor")(),
            "speedup": 2.0,
            "rss_ratio": 1.0,
        }

    monkeypatch.setattr(cli, "compare", compare)
    assert cli.main(["all"]) == 0
    assert seen == ["a", "b"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["speedup"] == 2.0


def test_rl_lora_runs_our_grpo_with_the_anchors_grpo_settings():
    """rl-lora compares one algorithm: our GRPO's settings are TRL GRPOConfig's defaults (read from TRL itself),
    with the anchor script's k, lengths, batch and beta; the PPO row is ours against our GRPO."""
    trl = pytest.importorskip("trl")
    from posttrain.bench.rl import GRPO_AS_TRL, RL_SETTINGS
    from posttrain.run.ppo import PPOArgs, objective_for

    c = trl.GRPOConfig(
        output_dir="/tmp/unused", use_cpu=True, per_device_train_batch_size=16, num_generations=4
    )
    assert (c.loss_type, c.scale_rewards, c.num_iterations, c.steps_per_generation) == ("dapo", "group", 1, 1)
    assert (c.temperature, c.top_p, c.top_k, c.epsilon_high, c.importance_sampling_level) == (
        1.0,
        1.0,
        0,
        None,
        "token",
    )
    a = PPOArgs(**RL_SETTINGS, **GRPO_AS_TRL)
    assert (a.estimator, a.scale_rewards, a.loss_aggregation, a.kl_in, a.kl_estimator) == (
        "grpo",
        True,  # scale_rewards="group"
        "token_mean",  # loss_type="dapo": every token of the step counts alike
        "loss",  # beta > 0: a KL term in the loss, TRL's k3
        "k3",
    )
    assert (a.cliprange, a.cliprange_high, a.temperature, a.top_k, a.top_p) == (c.epsilon, 0.0, 1.0, 0, 1.0)
    assert (a.samples_per_prompt, a.max_new_tokens, a.rollout_batch_size, a.kl_coef) == (4, 64, 16, 0.04)
    assert a.on_policy and objective_for(a).on_policy  # num_iterations=1: ratio 1, as TRL
    assert cli.WORKLOADS["rl-ppo"].anchor == cli.WORKLOADS["rl-lora"].ours
