"""Atomic training checkpoints and exact resume; nothing in them is a pickle.

    OUTPUT/checkpoints/step-N/
        model.safetensors                  trainable parameters only (a LoRA run stores megabytes, not the base)
        optimizer.json + .safetensors      optimiser and scheduler state (`state_io`: JSON tree + tensors)
        rng.json + .safetensors            python, numpy, torch and CUDA generator states (dropout replays exactly)
        state.json                         step, epoch, the batch source's position, running totals, the config

A checkpoint is written into `.tmp-step-N`, fsync'd, and renamed into place with `os.replace`, so a run killed
mid-write leaves only complete `step-N` directories behind. `state.json` is written last and marks a directory
complete. Parameters and optimiser state are checked finite first: a state that cannot be trained on is never
kept. `read` checks every file of a checkpoint before `apply` changes anything, so a torn one can be skipped.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from posttrain.atomic import fsync_dir, fsync_tree
from posttrain.errors import UserError
from posttrain.train.state_io import StateFileError, load_tree, save_tree

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"


class NonFiniteState(UserError):
    """Parameters or optimiser state hold inf/NaN: such a state is never written as a checkpoint."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if "numpy" in sys.modules:  # only when something imported it; we never import numpy just for this
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found)]


def latest(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def check_finite(model: torch.nn.Module, optimizer, step: int) -> None:
    """Raise NonFiniteState naming the first trainable parameter or optimiser tensor that is inf or NaN."""
    for name, p in model.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p.detach()).all()):
            raise NonFiniteState(f"step {step}: parameter {name} is not finite; no checkpoint written")
    for i, slots in enumerate(optimizer.state.values()):
        for key, value in slots.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteState(f"step {step}: optimiser state {key} of parameter {i} is not finite")


def save(
    root: str | Path, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoint `step-{state['step']}` atomically, then prune to the newest `keep_last`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    check_finite(model, optimizer, step)
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "model.safetensors"))
    save_tree(tmp / "optimizer", {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    save_tree(tmp / "rng", rng_state())
    try:
        text = json.dumps(state, indent=1)
    except TypeError as e:
        raise TypeError(f"checkpoint state must be JSON-serialisable (batch source state?): {e}") from e
    (tmp / STATE_FILE).write_text(text)
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    prune(root, keep_last)
    return final


def prune(root: str | Path, keep_last: int) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in Path(root).glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state.json; StateFileError naming the file when it is torn."""
    file = Path(path) / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFileError(f"{file}: torn or unreadable ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise StateFileError(f"{file}: not a checkpoint state (no 'step')")
    return state


def read(path: str | Path) -> dict[str, Any]:
    """Every file of a single-process checkpoint, read and checked, before anything is changed."""
    path = Path(path)
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as e:  # a torn header is safetensors' own error type
        raise StateFileError(f"{path / 'model.safetensors'}: torn or unreadable ({e})") from None
    return {
        "tensors": tensors,
        "optimizer": load_tree(path / "optimizer"),
        "rng": load_tree(path / "rng"),
        "state": read_state(path),
    }


def apply_tensors(path: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise StateFileError(
            f"{path}: checkpoint does not match the model (missing {missing[:3]}, unknown "
            f"{unknown[:3]}); was it written with another model or peft config?"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def load(path: str | Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore parameters, optimiser, scheduler and RNG from `path`; return its state.json contents."""
    path = Path(path)
    blob = read(path)
    apply_tensors(path, model, blob["tensors"])
    optimizer.load_state_dict(blob["optimizer"]["optimizer"])
    scheduler.load_state_dict(blob["optimizer"]["scheduler"])
    set_rng_state(blob["rng"])
    return blob["state"]
