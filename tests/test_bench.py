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
