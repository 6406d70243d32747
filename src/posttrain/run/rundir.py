"""One rule for output directories: a new run never mixes with an old one.

    run_dir = claim(cfg, "sft")     # before anything is loaded: refuse, resume, or move the old run aside
    ...                             # model, data: every check that can fail
    run_dir.write()                 # then run.json + config.yaml (atomic), and training starts

An output directory holds a run once it has checkpoints, metrics.jsonl or final/. A later command may continue
that run only when it is the same run: the same command, the same config on every key that defines it (model,
data, PEFT, objective, seed, schedule, lengths; everything but the keys in RESUMABLE), and data files with the same
sha256 as when it started (recorded in run.json). Otherwise it refuses, naming the differing keys; with
`train.overwrite=true` the old run is moved aside to OUTPUT.old-N (nothing is deleted) and the new one starts
afresh. `train.resume=false` in a directory that holds a run is refused the same way.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.artifacts.card import file_sha256
from posttrain.atomic import atomic_write_json, atomic_write_text, fsync_dir
from posttrain.config import to_dict
from posttrain.errors import UsageError

MANIFEST = "run.json"
CONFIG = "config.yaml"
RESUMABLE = {
    "output_dir",
    "device",
    "train.progress",
    "train.report_to",
    "train.tracker_project",
    "train.log_every",
    "train.save_every",
    "train.keep_last",
    "train.eval_every",
    "train.resume",
    "train.overwrite",
    "train.strategy",
    "train.batch_size",
    "train.grad_accum",
}
"""Keys that may change between a run and its resumption: where it is written, how often it reports, on what, and
how a step's samples are split into micro-batches (the global batch, compared on its own, must stay the same)."""
DATA_KEYS = ("data", "eval_data", "ppo.ptx_data")
"""Config keys naming data files whose contents define the run (hashed into run.json)."""
RUN_MARKERS = ("checkpoints", "metrics.jsonl", "final")


class RunDirError(UsageError):
    """The output directory holds another run; the message says how it differs and what to do."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def data_hashes(config: dict[str, Any]) -> dict[str, str]:
    """sha256 of every local data file the config names (Hub datasets and directories are named, not hashed)."""
    flat = flatten(config)
    out = {}
    for key in DATA_KEYS:
        for part in str(flat.get(key) or "").split(","):
            path = Path(part.strip())
            if part.strip() and path.is_file():
                out[part.strip()] = file_sha256(path)
    return out


PER_RANK_BATCH = {"ppo.rollout_batch_size", "ppo.mini_batch_size"}
"""RL's per-rank batch keys: they may change on resuming when their global values (x ranks) stay the same."""


def global_batch(cfg: Any) -> int | dict[str, int]:
    """Samples per optimiser step over all ranks (resuming on another number of ranks keeps it by changing
    train.grad_accum); for RL, the responses per rollout and per optimiser step over all ranks (by changing
    ppo.rollout_batch_size and ppo.mini_batch_size; train.batch_size only splits a minibatch there)."""
    from posttrain.train.distributed import world_size

    ppo = getattr(cfg, "ppo", None)
    if ppo is not None:
        return {"rollout": ppo.rollout_batch_size * world_size(), "step": ppo.mini_batch_size * world_size()}
    return cfg.train.batch_size * cfg.train.grad_accum * world_size()


def manifest(cfg: Any, command: str) -> dict[str, Any]:
    """What defines the run: the command, the config, the data files' sha256 and the global batch."""
    config = to_dict(cfg)
    return {
        "command": command,
        "config": config,
        "data_sha256": data_hashes(config),
        "global_batch": global_batch(cfg),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key (old -> new)' for everything that makes `new` another run than `old`."""
    diff = []
    if old.get("command") not in (None, new["command"]):
        diff.append(f"command ({old['command']} -> {new['command']})")
    was, now = old.get("global_batch", new["global_batch"]), new["global_batch"]
    resumable = set(RESUMABLE)
    if isinstance(now, dict) and isinstance(was, dict):  # RL: the globals compared, the per-rank keys free
        resumable |= PER_RANK_BATCH
        if was != now:
            diff.append(
                "the global rollout / optimiser-step batch, ppo.rollout_batch_size / ppo.mini_batch_size x ranks "
                f"({was['rollout']} / {was['step']} -> {now['rollout']} / {now['step']})"
            )
    elif isinstance(now, dict) or isinstance(
        was, dict
    ):  # a run.json from before RL's globals: keys as written
        pass
    elif was != now:
        diff.append(f"the global batch, batch_size x grad_accum x ranks ({was} -> {now})")
    before, after = flatten(old.get("config") or {}), flatten(new["config"])
    for key in sorted(set(before) | set(after)):
        if key in resumable or before.get(key) == after.get(key):
            continue
        if isinstance(before.get(key), (list, tuple)) and list(before[key]) == list(after.get(key) or []):
            continue
        diff.append(f"{key} ({_short(before.get(key, '<unset>'))} -> {_short(after.get(key, '<unset>'))})")
    old_data = old.get("data_sha256")
    if old_data is not None:
        for path in sorted(set(old_data) | set(new["data_sha256"])):
            a, b = old_data.get(path), new["data_sha256"].get(path)
            if a != b and a is not None and b is not None:
                diff.append(f"contents of {path} (sha256 {a[:12]} -> {b[:12]})")
    return diff


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_MARKERS)


def saved_manifest(out: Path) -> dict[str, Any] | None:
    """The run's run.json, or (a run from before run.json) its config.yaml as a manifest without hashes."""
    import json

    try:
        if (out / MANIFEST).is_file():
            return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if (out / CONFIG).is_file():
            return {"config": yaml.safe_load((out / CONFIG).read_text(encoding="utf-8")) or {}}
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{out}: its run description is unreadable ({e}); set train.overwrite=true to move the run aside"
        ) from None
    return None


def aside_name(out: Path) -> Path:
    n = 1
    while out.with_name(f"{out.name}.old-{n}").exists():
        n += 1
    return out.with_name(f"{out.name}.old-{n}")


@dataclass
class RunDir:
    path: Path
    manifest: dict[str, Any]
    main: bool = True
    """False on ranks other than 0 under torchrun: they read, never write."""

    def write(self) -> Path:
        """Create the directory and record the run (run.json, config.yaml), once every check has passed."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.main:
            return self.path
        atomic_write_json(self.path / MANIFEST, self.manifest)
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(self.manifest["config"], sort_keys=False))
        return self.path


def claim(cfg: Any, command: str, main: bool = True) -> RunDir:
    """Decide what this run does with `cfg.output_dir` (see the module docstring); writes nothing but a move,
    and only where `main` (rank 0)."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out}: not a directory")
    new = manifest(cfg, command)
    if not holds_run(out):
        return RunDir(out, new, main)
    if cfg.train.overwrite:
        if main:
            aside = aside_name(out)
            os.replace(out, aside)
            fsync_dir(out.resolve().parent)
            print(f"moved the run that was in {out} to {aside}", file=sys.stderr, flush=True)
        return RunDir(out, new, main)
    fix = f"set train.overwrite=true to move it aside to {aside_name(out).name} and start afresh, or pick another output_dir"
    if not cfg.train.resume:
        raise RunDirError(f"{out} holds a run already and train.resume=false; {fix}")
    old = saved_manifest(out)
    if old is None:
        raise RunDirError(f"{out} holds files of a run with no {MANIFEST} or {CONFIG}; {fix}")
    diff = differences(old, new)
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunDirError(
            f"{out} holds another run, which differs in {shown}; to resume it, run the same config; {fix}"
        )
    return RunDir(out, new, main)
