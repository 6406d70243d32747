"""Atomic training checkpoints and exact resume.

    OUTPUT/checkpoints/step-N/
        model.safetensors   trainable parameters only (a LoRA run stores megabytes, not the base model)
        optimizer.pt        optimiser and scheduler state
        rng.pt              python, numpy, torch and CUDA generator states (dropout replays exactly)
        state.json          step, epoch, the batch source's position, running totals, the train config

A checkpoint is written into `.tmp-step-N` and renamed into place with `os.replace`, so a run killed mid-write
leaves only complete `step-N` directories behind. `state.json` is written last and marks a directory complete.
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

STEP_DIR = re.compile(r"^step-(\d+)$")


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
        if (m := STEP_DIR.match(p.name)) and (p / "state.json").exists()
    ]
    return [p for _, p in sorted(found)]


def latest(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save(
    root: str | Path, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoint `step-{state['step']}` atomically, then prune to the newest `keep_last`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "model.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt"
    )
    torch.save(rng_state(), tmp / "rng.pt")
    try:
        text = json.dumps(state, indent=1)
    except TypeError as e:
        raise TypeError(f"checkpoint state must be JSON-serialisable (batch source state?): {e}") from e
    (tmp / "state.json").write_text(text)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(root, keep_last)
    return final


def prune(root: str | Path, keep_last: int) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in Path(root).glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: str | Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore parameters, optimiser, scheduler and RNG from `path`; return its state.json contents."""
    path = Path(path)
    tensors = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise ValueError(
            f"{path}: checkpoint does not match the model (missing {missing[:3]}, unknown "
            f"{unknown[:3]}); was it written with another model or peft config?"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
