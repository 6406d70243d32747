"""`posttrain demo --study peft`: the equal-budget PEFT protocol on the world's base sizes and on a user's models."""

import json

import pytest

from helpers import training_files
from posttrain.demo.settings import PEFT_METHODS, settings


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "m"],
        ["--data", "d.jsonl"],
        ["--study", "peft", "--models", "m"],
        ["--study", "peft", "--data", "d"],
    ],
)
def test_models_and_data_go_together_with_study(argv, capsys):
    from posttrain.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    assert e.value.code == 2 and "--" in capsys.readouterr().err


def test_study_on_a_users_model_and_data_runs_every_method_on_one_budget(tmp_path):
    from posttrain.demo.study import run_study

    d = training_files(tmp_path, 40)
    s = settings(quick=True, overrides=["sft_steps=3", "sft_batch=4", "study_eval_fraction=0.1"])
    study = run_study(
        tmp_path / "study", s, models=[str(d / "model")], data=str(d / "sft.jsonl"), log=lambda m: None
    )
    rows = study["rows"]
    assert [r["method"] for r in rows] == list(PEFT_METHODS)
    for r in rows:
        assert isinstance(r["eval_loss"], float) and r["trainable_params"] > 0 and r["wall_s"] > 0, r
        steps = [
            json.loads(x)["step"]
            for x in (tmp_path / "study" / "model" / r["method"] / "metrics.jsonl").open()
        ]
        assert max(steps) == 3  # the same budget for every method
    full = next(r for r in rows if r["method"] == "full")
    assert full["trainable_pct"] == 100.0 and all(r["trainable_pct"] < 100.0 for r in rows if r is not full)
    md = (tmp_path / "study" / "study.md").read_text()
    assert all(f"| {m} |" in md for m in PEFT_METHODS) and "3 optimiser steps" in md
    assert json.loads((tmp_path / "study" / "study.json").read_text())["kind"] == "models"
    assert (tmp_path / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_study_on_the_world_runs_the_pipelines_sft_at_each_base_size(tmp_path, monkeypatch):
    """Each size is the demo's base with the size's fields changed; only base, data and sft run; one row per
    (size, method). The stages themselves are what the quick demo test runs end to end."""
    from posttrain.demo import study

    seen = []

    class FakePipeline:
        def __init__(self, out, s, log):
            seen.append((out.name, s.base))

        def run(self, stages):
            assert stages == ("base", "data", "sft")
            width = seen[-1][1].hidden_size
            sft = {
                m: {"seen_accuracy": 0.1 * i, "trainable_params": width * (i + 1)}
                for i, m in enumerate(PEFT_METHODS)
            }
            return {"base": {"params": width * 100}, "sft": sft}

    monkeypatch.setattr(study, "Pipeline", FakePipeline)
    s = settings(overrides=["study_sizes={small: {hidden_size: 32, layers: 1}}"])
    result = study.run_study(tmp_path, s, log=lambda m: None)
    assert [name for name, _ in seen] == ["small", "default"]
    assert (seen[0][1].hidden_size, seen[0][1].layers, seen[0][1].steps) == (32, 1, s.base.steps)
    assert seen[1][1] == s.base
    assert [(r["model"], r["method"]) for r in result["rows"]] == [
        (m, x) for m in ("small", "default") for x in PEFT_METHODS
    ]
    assert result["rows"][0]["params"] == 3200 and result["kind"] == "world"
    md = (tmp_path / "study.md").read_text()
    assert "| small | 3,200 | full |" in md and (tmp_path / "study.png").exists()
