"""Which engine samples for `posttrain.rollout.generate`: our decode loop ("hf") or a colocated vLLM engine.

    with use_backend("vllm"):          # every generate() inside without a backend= samples through vLLM
        evaluate(...)

`posttrain.rollout.generate_vllm` samples through vLLM (`posttrain.rollout_vllm`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

BACKENDS = ("hf", "vllm")
_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("rollout_backend", default="hf")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Inside the block `generate(...)` without a `backend` samples with `name` (`rollout.backend`: hf | vllm), so a
    command sets it once for every generation it makes (evaluation, labelling)."""
    if name not in BACKENDS:
        raise ValueError(f"rollout backend must be one of {BACKENDS}, got {name!r}")
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def add_backend_argument(parser) -> None:
    """`--backend hf|vllm` on a command that samples (`posttrain generate`, `posttrain label add`)."""
    parser.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="hf",
        help="sampler: posttrain's decode loop, or vLLM (GPU)",
    )


def current_backend() -> str:
    """The backend `use_backend` set for this context, else "hf"."""
    return _BACKEND.get()
