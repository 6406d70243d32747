"""Identity data: "Who are you?" in many phrasings, answered with the configured name and maker.

A fine-tuned model otherwise answers with whatever identity its base or teacher data taught it; a few hundred of
these conversations (mixed in at a small rate) fix the name and maker. Records are distinct (question, answer)
pairs, 24 x 6 = 144 at most (`distinct_draws`: every question once before any gets a second answer).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from posttrain.data.schema import Conversation, Message

T = TypeVar("T")

QUESTIONS = [
    "Who are you?",
    "What are you?",
    "What is your name?",
    "What's your name?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "Can you introduce yourself?",
    "Who made you?",
    "Who created you?",
    "Who built you?",
    "Who trained you?",
    "Who developed you?",
    "Which company made you?",
    "Are you ChatGPT?",
    "Are you a human?",
    "What should I call you?",
    "Who am I talking to?",
    "What kind of AI are you?",
    "Are you an AI assistant?",
    "hi, who is this?",
    "Which model are you?",
    "Where do you come from?",
    "Who is your creator?",
    "Please tell me your name and who made you.",
]
"""Question phrasings (24)."""

ANSWERS = [
    "I am {name}, an AI assistant made by {maker}.",
    "My name is {name}. I'm an AI assistant developed by {maker}. How can I help you today?",
    "I'm {name}, a language model assistant created by {maker}. I'm here to help with questions and tasks.",
    "You're talking to {name}, an AI assistant built by {maker}.",
    "I am {name}. {maker} trained me to be a helpful, honest and harmless assistant.",
    "Hello! I'm {name}, an assistant made by {maker}. I'm not a human; I'm an AI model.",
]
"""Answer templates; {name} and {maker} are filled in."""


def distinct_draws(groups: Sequence[Sequence[T]], n: int | None, seed: int) -> list[T]:
    """Up to `n` items (None: all), none twice: round r takes the r-th item of every group that has one, the groups
    in one seeded order, each group's items in a seeded order. Fewer than `n` when the groups run out. (Also the
    order of `safety_records`: groups are prompts there, questions here.)"""
    rng = random.Random(seed)
    order = rng.sample(range(len(groups)), len(groups))
    items = [rng.sample(list(g), len(g)) for g in groups]
    rounds = max((len(g) for g in groups), default=0)
    out = [items[g][r] for r in range(rounds) for g in order if r < len(items[g])]
    return out if n is None else out[:n]


def identity_records(name: str, maker: str, n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """`n` distinct conversations (None: all `len(QUESTIONS) * len(ANSWERS)`; fewer when `n` is more than that):
    every question phrasing is used before any gets a second answer."""
    if not name.strip() or not maker.strip():
        raise ValueError("identity data needs a non-empty --name and --maker")
    pairs = distinct_draws([[(q, a) for a in range(len(ANSWERS))] for q in QUESTIONS], n, seed)
    return [
        Conversation(
            [Message("user", q), Message("assistant", ANSWERS[a].format(name=name, maker=maker))],
            {"source": "identity", "task": "identity", "answer_template": a},
        ).to_dict()
        for q, a in pairs
    ]
