"""Bad input to the training commands (sft, rm, dpo, ppo, grpo, rloo): each case is one clear line on stderr naming the file,
line and field where there is one, exit 2 (usage) or 1 (run), no traceback, and nothing written: a finished run
given as output_dir is byte-identical afterwards, a fresh output_dir is not created.

The data-command, eval, generate and label cases live in test_bad_inputs.py and test_feedback_cli_errors.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import training_files
from posttrain.cli import main as cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, good data for every command, bad files, and one finished SFT run."""
    d = training_files(tmp_path_factory.mktemp("badtrain"), 8)
    rows = [json.loads(line) for line in (d / "prefs.jsonl").read_text().splitlines()]
    good = (d / "sft.jsonl").read_text().splitlines()
    (d / "bad_json.jsonl").write_text(
        "\n".join([good[0], good[1], '{"prompt": "x", "completion": '] + good[2:]) + "\n"
    )
    (d / "latin1.jsonl").write_bytes(
        ("\n".join(good[:2]) + '\n{"prompt": "caf\xe9", "completion": "x"}\n').encode("latin-1")
    )
    (d / "no_rejected.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows[:2]) + "\n" + json.dumps({"prompt": "p", "chosen": "c"}) + "\n"
    )
    (d / "list.jsonl").write_text("[1, 2]\n")
    (d / "empty.jsonl").write_text("")
    (d / "cfg_list.yaml").write_text("- model\n- data\n")
    (d / "cfg_unknown.yaml").write_text("model: m\ntrain:\n  lr: 1e-3\n  bach_size: 2\n")
    (d / "cfg_broken.yaml").write_text("train:\n  lr: [1e-3\n")
    (d / "cfg_latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))
    (d / "cfg_type.yaml").write_text("train:\n  warmup_steps: many\n")
    (d / "a_file").write_text("not a directory\n")
    finished = d / "finished"
    assert cli(["sft", *base_args(d, finished)]) == 0
    return d


def base_args(d: Path, out: Path) -> list[str]:
    return [
        f"model={d / 'model'}",
        f"data={d / 'sft.jsonl'}",
        f"output_dir={out}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.progress=false",
    ]


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


PPO = [
    "ppo.reward=helpers:length_reward",
    "ppo.rollout_batch_size=4",
    "ppo.mini_batch_size=4",
    "ppo.max_new_tokens=4",
]

# (id, command, args (with {d}; "{out}" is replaced by the output dir), target ("finished" | "fresh"),
#  exit code, what the line must contain (with {d}))
CASES = [
    ("config-missing", "sft", ["--config", "{d}/nope.yaml"], "finished", 2, ["{d}/nope.yaml", "no such config file"]),
    ("config-not-mapping", "sft", ["--config", "{d}/cfg_list.yaml"], "finished", 2, ["{d}/cfg_list.yaml", "mapping"]),
    ("config-unknown-key", "sft", ["--config", "{d}/cfg_unknown.yaml"], "finished", 2,
     ["{d}/cfg_unknown.yaml:4", "train.bach_size", "train.batch_size"]),
    ("config-broken-yaml", "rm", ["--config", "{d}/cfg_broken.yaml"], "finished", 2, ["{d}/cfg_broken.yaml:3", "YAML"]),
    ("config-not-utf8", "dpo", ["--config", "{d}/cfg_latin1.yaml"], "finished", 2, ["{d}/cfg_latin1.yaml", "UTF-8"]),
    ("config-wrong-type", "sft", ["--config", "{d}/cfg_type.yaml"], "finished", 2,
     ["{d}/cfg_type.yaml:2", "train.warmup_steps", "integer"]),
    ("override-no-equals", "sft", ["train.lr"], "finished", 2, ["train.lr", "key=value"]),
    ("override-unknown-section", "sft", ["trian.lr=1"], "finished", 2, ["trian", "train"]),
    ("lr-negative", "sft", ["train.lr=-1"], "finished", 2, ["train.lr", "> 0"]),
    ("lr-nan", "dpo", ["train.lr=.nan"], "finished", 2, ["train.lr", "> 0"]),
    ("batch-zero", "rm", ["train.batch_size=0"], "finished", 2, ["train.batch_size", ">= 1"]),
    ("max-steps-zero", "sft", ["train.max_steps=0"], "finished", 2, ["train.max_steps"]),
    ("warmup-ratio", "sft", ["train.warmup_ratio=1.5"], "finished", 2, ["train.warmup_ratio", "[0, 1)"]),
    ("bad-choice", "sft", ["peft.method=lorra"], "finished", 2, ["peft.method", "lora"]),
    ("lora-rank-zero", "sft", ["peft.method=lora", "peft.lora.r=0"], "finished", 2, ["peft.lora.r", ">= 1"]),
    ("dpo-beta-zero", "dpo", ["dpo.beta=0"], "finished", 2, ["dpo.beta", "> 0"]),
    ("ppo-sizes", "ppo", [*PPO, "ppo.samples_per_prompt=3"], "finished", 2, ["ppo.rollout_batch_size", "samples_per_prompt"]),
    ("ppo-top-p", "ppo", [*PPO, "ppo.top_p=0"], "finished", 2, ["ppo.top_p"]),
    ("grpo-one-sample", "grpo", [*PPO, "ppo.samples_per_prompt=1"], "finished", 2, ["ppo.samples_per_prompt", "at least 2"]),
    ("grpo-bad-regex", "grpo", [*PPO[1:], "ppo.reward=regex:("], "fresh", 2, ["ppo.reward", "bad pattern"]),
    ("rloo-separate-critic", "rloo", [*PPO, "ppo.value_head=separate"], "finished", 2, ["ppo.value_head"]),
    ("model-empty", "sft", ["model="], "fresh", 2, ["model"]),
    ("model-missing", "sft", ["model={d}/no_model"], "fresh", 1, ["{d}/no_model"]),
    ("model-not-a-model", "rm", ["model={d}"], "fresh", 1, ["{d}"]),
    ("adapter-missing", "dpo", ["adapter={d}/no_adapter"], "fresh", 1, ["{d}/no_adapter"]),
    ("resume-false", "sft", ["train.resume=false"], "finished", 2, ["train.resume=false", "train.overwrite=true"]),
    ("another-run", "sft", ["train.lr=5e-4"], "finished", 2, ["train.lr", "train.overwrite=true"]),
    ("another-command", "dpo", ["data={d}/prefs.jsonl"], "finished", 2, ["command (sft -> dpo)"]),
    ("data-missing", "sft", ["data={d}/nope.jsonl"], "fresh", 1, ["{d}/nope.jsonl"]),
    ("data-bad-json", "sft", ["data={d}/bad_json.jsonl"], "fresh", 1, ["{d}/bad_json.jsonl:3", "JSON"]),
    ("data-not-utf8", "sft", ["data={d}/latin1.jsonl"], "fresh", 1, ["{d}/latin1.jsonl:3", "UTF-8"]),
    ("data-not-object", "rm", ["data={d}/list.jsonl"], "fresh", 1, ["{d}/list.jsonl:1"]),
    ("data-empty", "dpo", ["data={d}/empty.jsonl"], "fresh", 1, ["{d}/empty.jsonl"]),
    ("pairs-missing-field", "rm", ["data={d}/no_rejected.jsonl"], "fresh", 1, ["{d}/no_rejected.jsonl:3", "rejected"]),
    ("eval-data-missing", "sft", ["eval_data={d}/nope.jsonl"], "fresh", 1, ["{d}/nope.jsonl"]),
    ("template-missing", "sft", ["template={d}/nope.jinja"], "fresh", 2, ["{d}/nope.jinja", "chat template"]),
    ("output-dir-is-a-file", "sft", ["output_dir={d}/a_file"], "fresh", 2, ["{d}/a_file", "not a directory"]),
    ("ppo-reward-missing", "ppo", ["data={d}/prefs.jsonl", *PPO[1:], "ppo.reward=nomodule:fn"], "fresh", 2, ["ppo.reward", "nomodule"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_training_input_is_one_clear_line(world, tmp_path, capsys, case):
    name, command, extra, target, code, needles = case
    out = world / "finished" if target == "finished" else tmp_path / "fresh"
    before = hashes(world / "finished")
    args = base_args(world, out)
    if command != "sft" and name not in ("another-command",):
        args = [a for a in args if not a.startswith("data=")] + [f"data={world / 'prefs.jsonl'}"]
    args += [a.replace("{d}", str(world)) for a in extra]
    capsys.readouterr()
    assert cli([command, *args]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line or line.startswith("posttrain")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.replace("{d}", str(world)) in lines[0], lines[0]
    assert hashes(world / "finished") == before
    if target == "fresh" and name != "output-dir-is-a-file":
        assert not out.exists()


def test_the_matrix_is_wide_enough():
    assert len(CASES) >= 30 and {c[1] for c in CASES} == {"sft", "rm", "dpo", "ppo", "grpo", "rloo"}


def test_the_console_entry_prints_no_traceback(world, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "posttrain", "sft", f"model={world / 'model'}", f"data={world / 'latin1.jsonl'}",
         f"output_dir={tmp_path / 'o'}", "train.progress=false"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{world / 'latin1.jsonl'}:3" in done.stderr.strip().splitlines()[-1]
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
