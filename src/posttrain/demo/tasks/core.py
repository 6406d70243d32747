"""What every task is made of: the Task record, the world's alphabets and word lists, and the argument spaces
tasks draw from (pseudo-words, digit lists, one-digit pairs, the world's entities)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class World(Protocol):
    """What a task's argument and answer functions read of the world (`posttrain.demo.world.World`)."""

    facts: dict[str, Any]
    template_words: frozenset[str]
    """Lower-cased words of every template (`tasks.vocabulary_words`): never a pseudo-word argument."""


LETTERS = "abcdefghijklmnopqrstuvwxyz"
N_STRINGS = 480
"""Pseudo-words (3-5 random letters) per word task: enough that reversing, upper-casing and counting are learned
as operations on letters, not memorised per word."""
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")
SYLLABLES = ("ba", "do", "ke", "li", "mo", "nu", "ra", "si", "to", "vi", "ze", "pa", "lo", "gu", "fe", "xa")

# --------------------------------------------------------------------------------------------------------------
# tasks: argument space, answer, instruction phrasings (last one held out), prose for the raw text


@dataclass
class Task:
    name: str
    args: Callable[[random.Random, World], list[dict[str, Any]]]
    """The task's whole argument space (deterministic for a world)."""
    answer: Callable[[dict[str, Any], World], str]
    phrasings: tuple[str, ...]
    """Instruction templates; the last one is the held-out phrasing."""
    prose: tuple[str, ...]
    """Raw-text sentences that show the operation without the instruction format."""
    repeat: int = 2
    """Prose sentences per argument in the raw text: look-ups (facts, sums) need many paraphrased mentions before
    a tiny model can recall them in a new format; operations need only a few examples each."""
    pt_phrasings: tuple[str, ...] = ()
    """Portuguese instructions: never in instruction data, evaluated as the other language."""
    pt_prose: tuple[str, ...] = ()
    """Portuguese raw-text sentences (each argument's document pairs one with an English one)."""


def sum_pairs(sub: bool = False) -> Callable:
    """One-digit sums, and their inverses: (a + b) - b = a."""
    return lambda rng, w: [
        {"a": a + b, "b": b} if sub else {"a": a, "b": b} for a in range(10) for b in range(10)
    ]


def pseudo_words(rng: random.Random, w: World) -> list[dict[str, Any]]:
    banned = w.template_words
    seen: dict[str, None] = {}
    while len(seen) < N_STRINGS:
        x = "".join(rng.choice(LETTERS) for _ in range(rng.choice((3, 4, 5))))
        if x not in banned:
            seen[x] = None
    return [{"w": x} for x in seen]


def digit_lists(rng: random.Random, w: World) -> list[dict[str, Any]]:
    seen: dict[str, None] = {}  # distinct lists, in a seeded order
    while len(seen) < 300:
        seen[" ".join(map(str, rng.sample(range(10), rng.choice((3, 4)))))] = None
    return [{"xs": xs} for xs in seen]


def entities(kind: str) -> Callable:
    return lambda rng, w: [{"x": x} for x in w.facts[kind]]


def digits(xs: str) -> list[int]:
    return [int(x) for x in xs.split()]
