"""Identity data: "Who are you?" in many phrasings, answered with the configured name and maker.

A fine-tuned model otherwise answers with whatever identity its base or teacher data taught it; a few hundred of
these conversations (mixed in at a small rate) fix the name and maker.
"""

from __future__ import annotations

import random
from typing import Any

from posttrain.data.schema import Conversation, Message

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


def identity_records(name: str, maker: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` conversations; every question phrasing is used before any repeats (round-robin over a shuffle)."""
    if not name.strip() or not maker.strip():
        raise ValueError("identity data needs a non-empty --name and --maker")
    rng = random.Random(seed)
    order = rng.sample(range(len(QUESTIONS)), len(QUESTIONS))
    out = []
    for i in range(n):
        q = QUESTIONS[order[i % len(QUESTIONS)]]
        a = rng.randrange(len(ANSWERS))
        msgs = [Message("user", q), Message("assistant", ANSWERS[a].format(name=name, maker=maker))]
        out.append(
            Conversation(msgs, {"source": "identity", "task": "identity", "answer_template": a}).to_dict()
        )
    return out
