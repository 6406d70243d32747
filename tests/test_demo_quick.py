"""`posttrain demo --quick` end to end (the CI smoke run): every stage runs and the report has every key."""

import json

import pytest

REQUIRED = [
    "base.seen_accuracy",
    "safety.refusal_rate",
    "safety.false_refusal_rate",
    "identity_accuracy",
    "rm.heldout_accuracy",
    "ppo.gold_reward",
    "ppo.kl",
    "dpo.gold_reward",
    "grpo.gold_reward",
    "grpo.kl",
    "grpo.seen_accuracy",
    "sft_best.gold_reward",
    "wall_s",
]
PER_METHOD = [
    "seen_accuracy",
    "heldout_phrasing_accuracy",
    "unseen_task_accuracy",
    "other_language_accuracy",
    "seen_contained",
    "trainable_pct",
    "peak_mem_mib",
]


def _get(d, path):
    for part in path.split("."):
        assert isinstance(d, dict) and part in d, f"report.json lacks {path}"
        d = d[part]
    return d


@pytest.mark.slow
def test_demo_quick_writes_the_full_report(tmp_path, monkeypatch):
    from posttrain.cli import main

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert not [n for n, s in stages.items() if s["status"] == "failed"], stages
    assert code == 0
    assert set(stages) == {"base", "data", "sft", "scaling", "rank", "rm", "ppo", "dpo", "grpo"}
    points = report["scaling"][
        "points"
    ]  # quick: the base (0 tasks), 2 training tasks, then all of them (sft full)
    assert [p["tasks"] for p in points] == [0, 2, 14] and all(
        isinstance(p["unseen_task_accuracy"], float) for p in points
    )
    for key in REQUIRED:
        assert isinstance(_get(report, key), float), key
    for method in ("full", "lora", "qlora", "adapter", "prefix", "prompt"):
        for key in PER_METHOD:
            assert isinstance(_get(report, f"sft.{method}.{key}"), float), (method, key)
    assert report["sft"]["qlora"]["trainable_params"] == report["sft"]["lora"]["trainable_params"]
    assert 0 < report["sft"]["prompt"]["trainable_pct"] < report["sft"]["lora"]["trainable_pct"] < 100.0
    assert report["sft"]["full"]["trainable_pct"] == 100.0
    for name in (
        "report.md",
        "loss_curves.png",
        "ppo.png",
        "grpo.png",
        "peft.png",
        "tradeoff.png",
        "task_scaling.png",
        "data/sft.jsonl",
        "data/rankings.jsonl",
        "sft/full/metrics.jsonl",
        "rm/metrics.jsonl",
        "ppo/metrics.jsonl",
        "dpo/metrics.jsonl",
        "grpo/metrics.jsonl",
        "data/grpo_prompts.jsonl",
    ):
        assert (out / name).exists(), name
    assert len(report["targets"]) == 14
    # the reward model carries the demo's likelihood term, and PPO scored with it (labels reached the score)
    from posttrain.demo.settings import DemoSettings

    rm_meta = json.loads((out / "rm" / "final" / "reward_config.json").read_text())
    assert rm_meta["likelihood_coef"] == DemoSettings().rm_likelihood_coef > 0
