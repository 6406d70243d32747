"""Runs under faults: nothing we load executes code, a new run never mixes with an old one in its output_dir,
a state that cannot be trained on is never kept, torn files fall back to what is whole.

Each test drives the real command (`posttrain.cli.main`, in process) on a tiny llama and checks files on disk.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from helpers import training_files
from posttrain.cli import main as cli
from posttrain.train.log import read_metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = training_files(tmp_path_factory.mktemp("safety"), 16)
    (d / "held.jsonl").write_text((d / "sft.jsonl").read_text().split("\n", 4)[-1])
    return d


def sft(files: Path, out: Path, *extra: str) -> int:
    args = [
        f"model={files / 'model'}",
        f"data={files / 'sft.jsonl'}",
        f"output_dir={out}",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.save_every=1",
        "train.keep_last=4",
        "train.lr=1e-3",
        "train.progress=false",
    ]
    return cli(["sft", *args, *extra])


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def finished(files, tmp_path_factory):
    """A finished 4-step run with a checkpoint per step; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert sft(files, out) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---- no pickle -----------------------------------------------------------------------------------------------


class Planted:
    """Unpickling this writes a marker file: what an attacker's optimizer.pt would do."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def plant(path: Path, marker: Path) -> None:
    Planted.marker = str(marker)
    path.write_bytes(pickle.dumps(Planted()))


def test_checkpoints_hold_no_pickle_and_a_planted_one_runs_nothing(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    newest = run / "checkpoints" / "step-4"
    assert not list(run.rglob("*.pt")), "a checkpoint file is a pickle"
    marker = tmp_path / "marker"
    for name in ("optimizer.pt", "rng.pt", "scheduler.pt"):
        plant(newest / name, marker)
    (run / "final").rename(tmp_path / "final-aside")  # so the rerun resumes from step-4 and saves again
    assert sft(files, run) == 0
    assert not marker.exists()
    assert "resuming from" in capsys.readouterr().err

    # an old-format checkpoint (pickles only) is refused with a clear line, and nothing is unpickled
    for p in newest.glob("optimizer.*"):
        p.unlink()
    plant(newest / "optimizer.pt", marker)
    for old in ("step-1", "step-2", "step-3"):
        for p in (run / "checkpoints" / old).glob("optimizer.*"):
            p.unlink()
    (run / "final").rename(tmp_path / "final-aside-2")
    assert sft(files, run) == 1
    line = one_error_line(capsys)
    assert "no readable checkpoint" in line and "optimizer.json: missing" in line and "pickle" in line
    assert not marker.exists()


def test_a_planted_pickle_in_sharded_checkpoint_metadata_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    from posttrain.train.safe_dcp import SafeReader
    from posttrain.train.state_io import StateFileError

    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path / "dcp"))
    blob = {"w": torch.zeros(2)}
    dcp.load(blob, checkpoint_id=str(tmp_path / "dcp"), storage_reader=SafeReader(str(tmp_path / "dcp")))
    assert blob["w"].tolist() == [1.0, 1.0]  # the allow-list reads DCP's own metadata
    marker = tmp_path / "marker"
    plant(tmp_path / "dcp" / ".metadata", marker)
    with pytest.raises(StateFileError, match="is not allowed"):
        SafeReader(str(tmp_path / "dcp")).read_metadata()
    assert not marker.exists()


def test_state_tree_round_trips_the_types_a_checkpoint_holds(tmp_path):
    import random

    from posttrain.train.state_io import load_tree, save_tree

    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95))
    p.grad = torch.randn(3)
    opt.step()
    shared = torch.arange(6.0)
    tree = {
        "optimizer": opt.state_dict(),
        "python": random.getstate(),
        "views": [shared[:3], shared[3:]],
        "odd": {"x": float("nan"), "y": float("-inf"), 3: (1, "a")},
    }
    save_tree(tmp_path / "s", tree)
    back = load_tree(tmp_path / "s")
    assert back["python"] == tree["python"]
    assert back["optimizer"]["param_groups"] == tree["optimizer"]["param_groups"]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], tree["optimizer"]["state"][0]["exp_avg"])
    assert [v.tolist() for v in back["views"]] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert (
        back["odd"][3] == (1, "a")
        and back["odd"]["y"] == float("-inf")
        and back["odd"]["x"] != back["odd"]["x"]
    )
    with pytest.raises(TypeError, match="without pickle"):
        save_tree(tmp_path / "bad", {"f": lambda: 0})


# ---- one rule for output directories ------------------------------------------------------------------------


def test_resume_false_in_a_used_directory_is_refused_and_changes_nothing(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = tree_hashes(run)
    assert sft(files, run, "train.resume=false") == 2
    line = one_error_line(capsys)
    assert str(run) in line and "train.resume=false" in line and "train.overwrite=true" in line
    assert tree_hashes(run) == before


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lr=2e-3", "train.lr (0.001 -> 0.002)"),
        ("train.max_steps=6", "train.max_steps (4 -> 6)"),
        ("train.seed=1", "train.seed (0 -> 1)"),
        ("peft.method=lora", "peft.method ('none' -> 'lora')"),
        ("train.batch_size=2", "the global batch, batch_size x grad_accum x ranks (4 -> 2)"),
    ],
)
def test_resume_with_another_config_is_refused_naming_the_keys(
    files, finished, tmp_path, capsys, override, named
):
    run = copy_run(finished, tmp_path / "run")
    before = tree_hashes(run)
    assert sft(files, run, override) == 2
    line = one_error_line(capsys)
    assert named in line and "train.overwrite=true" in line
    assert tree_hashes(run) == before


def test_resume_with_other_data_contents_is_refused(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "final").rename(tmp_path / "final")
    data = tmp_path / "sft.jsonl"
    data.write_text((files / "sft.jsonl").read_text())
    manifest = json.loads((run / "run.json").read_text())
    manifest["config"]["data"] = str(data)
    manifest["data_sha256"] = {str(data): manifest["data_sha256"].pop(str(files / "sft.jsonl"))}
    (run / "run.json").write_text(json.dumps(manifest))  # the run as if it had been started on `data`
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "one more", "completion": "record"}) + "\n")
    assert cli(["sft", f"model={files / 'model'}", f"data={data}", f"output_dir={run}", "train.max_steps=4",
                "train.batch_size=4", "train.save_every=1", "train.keep_last=4", "train.lr=1e-3",
                "train.progress=false"]) == 2  # fmt: skip
    assert f"contents of {data} (sha256" in one_error_line(capsys)


def test_keys_that_do_not_define_the_run_may_change_on_resume(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "final").rename(tmp_path / "final")
    assert (
        sft(files, run, "train.log_every=2", "train.keep_last=2", "train.batch_size=2", "train.grad_accum=2")
        == 0
    )
    assert "resuming from" in capsys.readouterr().err  # the same global batch, split in two micro-batches
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_rl_runs_compare_their_global_rollout_and_step_batch(monkeypatch):
    """PPO's per-rank ppo.rollout_batch_size / ppo.mini_batch_size may change on resuming at another world size when
    their totals over the ranks stay the same; train.batch_size only splits a minibatch, so it is free too."""
    from posttrain.config_load import load_config
    from posttrain.run.ppo import PPOConfig
    from posttrain.run.rundir import differences, manifest
    from posttrain.train import distributed

    def at(world, *overrides):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        return manifest(load_config(PPOConfig, None, ["model=m", "data=d", *overrides]), "ppo")

    two = at(2, "ppo.rollout_batch_size=16", "ppo.mini_batch_size=8", "train.batch_size=4")
    assert two["global_batch"] == {"rollout": 32, "step": 16}
    assert differences(two, at(1, "ppo.rollout_batch_size=32", "ppo.mini_batch_size=16")) == []
    assert differences(two, at(1, "ppo.rollout_batch_size=16", "ppo.mini_batch_size=8")) == [
        "the global rollout / optimiser-step batch, ppo.rollout_batch_size / ppo.mini_batch_size x ranks "
        "(32 / 16 -> 16 / 8)"
    ]
    older = {**two, "global_batch": 64}  # a run.json from before: the per-rank keys must stay as they were
    assert differences(older, at(1, "ppo.rollout_batch_size=32", "ppo.mini_batch_size=16")) == [
        "ppo.mini_batch_size (8 -> 16)",
        "ppo.rollout_batch_size (16 -> 32)",
    ]


def test_overwrite_moves_the_old_run_aside_and_starts_afresh(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = tree_hashes(run)
    assert sft(files, run, "train.lr=2e-3", "train.max_steps=2", "train.overwrite=true") == 0
    assert "moved the run that was in" in capsys.readouterr().err
    aside = tmp_path / "run.old-1"
    assert tree_hashes(aside) == before  # nothing of the old run is lost
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert json.loads((run / "run.json").read_text())["config"]["train"]["lr"] == 2e-3


def test_a_bad_value_writes_nothing(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = tree_hashes(run)
    assert sft(files, run, "train.lr=-1") == 2
    assert "train.lr: must be > 0, got -1.0" in one_error_line(capsys)
    assert tree_hashes(run) == before
    fresh = tmp_path / "fresh"
    assert sft(files, fresh, "peft.method=lora", "peft.lora.r=0") == 2
    assert "peft.lora.r: must be >= 1" in one_error_line(capsys)
    assert not fresh.exists()


# ---- never keep what cannot be resumed ----------------------------------------------------------------------


def test_a_non_finite_state_is_never_checkpointed(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(files, run, "train.lr=1e38") == 1
    line = one_error_line(capsys)
    assert "step 1: parameter" in line and "not finite; no checkpoint written" in line
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())


def test_a_torn_newest_checkpoint_falls_back_to_the_one_before(files, finished, tmp_path, capsys):
    straight = read_metrics(finished / "metrics.jsonl")
    run = copy_run(finished, tmp_path / "run")
    (run / "final").rename(tmp_path / "final")
    state = run / "checkpoints" / "step-4" / "state.json"
    state.write_text(state.read_text()[:40])  # torn mid-write (a full disk, a cut copy)
    rng = run / "checkpoints" / "step-3" / "rng.safetensors"
    rng.write_bytes(rng.read_bytes()[:20])
    assert sft(files, run) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint step-4: {state}: torn" in err
    assert f"skipping checkpoint step-3: {rng}: torn" in err and "resuming from" in err and "step-2" in err
    resumed = read_metrics(run / "metrics.jsonl")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # exact, from step 2


def test_a_torn_metrics_line_is_dropped_with_a_message(files, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "final").rename(tmp_path / "final")
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-4")
    metrics = run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 30])  # the last row cut off mid-write
    assert sft(files, run) == 0
    assert f"{metrics}:4: torn last line dropped" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]
    assert [r["loss"] for r in read_metrics(metrics)] == [
        r["loss"] for r in read_metrics(finished / "metrics.jsonl")
    ]


def test_a_run_killed_after_its_last_checkpoint_logs_its_evaluation_once(files, tmp_path, capsys):
    run = tmp_path / "run"
    held = f"eval_data={files / 'held.jsonl'}"
    assert sft(files, run, held) == 0
    rows = read_metrics(run / "metrics.jsonl")
    import shutil

    shutil.rmtree(run / "final")  # killed while writing final/, after the step-4 checkpoint
    assert sft(files, run, held) == 0
    again = read_metrics(run / "metrics.jsonl")
    assert again == rows
    assert sum("eval_loss" in r for r in again) == 1
    assert (run / "final").is_dir()
