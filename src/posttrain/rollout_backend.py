"""Which engine samples for `posttrain.rollout.generate`: our decode loop ("hf") or a colocated vLLM engine.

    with use_backend("vllm"):          # every generate() inside without a backend= samples through vLLM
        evaluate(...)

`generate_vllm` is `generate` through vLLM: the engine samples and the model's own forward gives the log-probs, so
an importance ratio against them is exact whatever the engine's kernels round (`posttrain.rollout_vllm`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posttrain.rollout import Rollout

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


def generate_vllm(
    model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, do_sample, min_new_tokens, stop_ids,
    seed, generator,
) -> Rollout:  # fmt: skip
    """`generate` through vLLM: the engine samples, the model's own forward gives the log-probs (at the sampling
    temperature), so an importance ratio against them is exact whatever the engine's kernels round."""
    import torch

    from posttrain.rollout import Rollout, response_logprobs, stop_token_ids
    from posttrain.rollout_vllm import sample_vllm

    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    responses = sample_vllm(
        model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, do_sample, min_new_tokens, stops,
        generator,
    )  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy = getattr(model, "policy", model)
    logps = response_logprobs(
        policy, prompts, responses, pad_id, temperature=temperature if do_sample else 1.0
    )
    finished = [bool(r) and r[-1] in set(stops) for r in responses]
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Rollout([list(p) for p in prompts], responses, logps, texts, finished)
