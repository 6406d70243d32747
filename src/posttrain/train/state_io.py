"""Nested Python state (optimiser, scheduler, RNG, rollout buffers) as safetensors + JSON: nothing loaded runs code.

    save_tree(tmp / "optimizer", {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    blob = load_tree(path / "optimizer")      # reads optimizer.json + optimizer.safetensors

`torch.save` pickles, and unpickling a planted file runs whatever it names. Here every tensor goes into one
safetensors file (keyed by its position in the tree: "t0", "t1", ...) and the tree itself into JSON, with the few
types JSON lacks written as one-key objects:

    {"__tensor__": "t3"}            a tensor (its dtype and shape are safetensors')
    {"__tuple__": [...]}            a tuple (Python's random.getstate() is tuples)
    {"__dict__": [[key, value]]}    a dict whose keys are not all strings (optimizer state is keyed by int)
    {"__float__": "nan"}            a non-finite float (JSON has none)
    {"__ndarray__": {...}}          a numpy array (numpy's RNG state), as dtype + nested list

Anything else (a function, an arbitrary object) is refused when saving, so a state that cannot be read back without
pickle is never written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from posttrain.atomic import atomic_write_text
from posttrain.errors import UserError

TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__")


class StateFileError(UserError):
    """A state file is missing, torn or not in this format; the message names it."""


def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-able data; tensors are moved into `tensors` (the safetensors payload)."""
    if torch.is_tensor(obj):
        key = f"t{len(tensors)}"
        t = obj.detach().cpu().contiguous()
        if any(t.untyped_storage().data_ptr() == o.untyped_storage().data_ptr() for o in tensors.values()):
            t = t.clone()  # safetensors stores each tensor on its own; views of one storage are copied
        tensors[key] = t
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in TAGS for k in obj):
            return {k: encode(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if type(obj).__module__ == "numpy":
        if hasattr(obj, "tolist") and hasattr(obj, "dtype") and getattr(obj, "ndim", 0) > 0:
            return {"__ndarray__": {"dtype": str(obj.dtype), "data": obj.tolist()}}
        return encode(obj.item(), tensors)  # a numpy scalar
    raise TypeError(f"cannot store {type(obj).__name__} without pickle: {obj!r:.80}")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__tuple__":
            return tuple(decode(v, tensors) for v in value)
        if tag == "__dict__":
            return {decode(k, tensors): decode(v, tensors) for k, v in value}
        if tag == "__float__":
            return float(value)
        if tag == "__ndarray__":
            import numpy

            return numpy.array(value["data"], dtype=value["dtype"])
    return {k: decode(v, tensors) for k, v in obj.items()}


def save_tree(stem: str | Path, tree: Any) -> None:
    """Write `stem.safetensors` (tensors) and then `stem.json` (the tree), each atomically (temporary file, fsync,
    rename), so neither is ever torn. Callers give each state its own stem (a checkpoint directory, a step number)
    so that a pair is never replaced while something refers to it."""
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    data = encode(tree, tensors)
    blob = stem.with_suffix(".safetensors")
    tmp = blob.with_name(f".{blob.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, blob)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data))


def load_tree(stem: str | Path) -> Any:
    """Read what `save_tree(stem, ...)` wrote; a missing or torn file raises StateFileError naming it."""
    stem = Path(stem)
    meta, blob = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for path in (meta, blob):
        if not path.is_file():
            legacy = stem.with_suffix(".pt")
            hint = (
                f" ({legacy.name} is a pickle from an older posttrain and is never loaded: start the run again"
                " with train.overwrite=true)"
                if legacy.exists()
                else ""
            )
            raise StateFileError(f"{path}: missing{hint}")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateFileError(f"{meta}: torn or not JSON ({e})") from None
    try:
        tensors = load_file(str(blob))
    except Exception as e:  # safetensors raises its own SafetensorError for torn headers
        raise StateFileError(f"{blob}: torn or not safetensors ({e})") from None
    try:
        return decode(data, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise StateFileError(f"{meta}: does not match {blob.name} ({e})") from None
