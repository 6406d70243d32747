"""Responses to chat prompts for evaluation: batched, greedy by default, seeded.

ro = respond(model, tok, [[Message("user", "2+3?")]], max_new_tokens=32)   # a posttrain.rollout.Rollout
ro.texts[0]
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.data.schema import Message


def encode_prompts(
    tokenizer, prompts: Sequence[Sequence[Message | dict]], template: str = "auto"
) -> list[list[int]]:
    """Prompt ids with the generation prompt (exactly one BOS), as training rendered them."""
    from posttrain.data.chat import encode_prompt

    return [encode_prompt(tokenizer, list(p), template) for p in prompts]


def respond(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message | dict]],
    template: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
):
    """One response per prompt; `temperature` 0 is greedy decoding, > 0 samples (seeded)."""
    from posttrain.rollout import generate

    ids = encode_prompts(tokenizer, prompts, template)
    return generate(
        model,
        tokenizer,
        ids,
        max_new_tokens,
        temperature=temperature or 1.0,
        do_sample=temperature > 0,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
