"""The world's content: word lists, the tasks (argument spaces, answers, phrasings, prose), identity and safety
prompts. `world.py` turns these tables into seeded splits; nothing here is random by itself.

    core.py     Task, alphabets, argument spaces
    words.py    tasks on a pseudo-word (reverse, upper, count, double, last, second, first)
    numbers.py  tasks on digit lists and pairs (sort, max, first/second/last number, add, subtract)
    facts.py    look-ups of the world's facts (capital, colour)
"""

from __future__ import annotations

import re

from posttrain.demo.prompts import IDENTITY_QUESTIONS, REFUSAL, SAFETY, SAFETY_PHRASINGS, SAFETY_PROSE
from posttrain.demo.tasks import facts, numbers, words
from posttrain.demo.tasks.core import COLOURS, LETTERS, N_STRINGS, SYLLABLES, Task, World  # noqa: F401

_BY_NAME = {**words.TASKS, **numbers.TASKS, **facts.TASKS}
TASKS: tuple[Task, ...] = tuple(
    _BY_NAME[n]
    for n in (
        "reverse",
        "upper",
        "count",
        "sort",
        "last",
        "second",
        "double",
        "max",
        "first_number",
        "second_number",
        "add",
        "subtract",
        "capital",
        "colour",
        "first",
        "last_number",
    )
)
"""Every task, in the order the world's raw text and splits are generated from (changing it changes the base)."""
TRAIN_TASKS = (
    "reverse",
    "upper",
    "count",
    "sort",
    "max",
    "double",
    "last",
    "second",
    "first_number",
    "second_number",
    "add",
    "subtract",
    "capital",
    "colour",
)
"""In the order the task-scaling runs add them (the first k for k training tasks)."""
HELDOUT_TASKS = ("first", "last_number")
"""Never in instruction data: two cells of the grid {first, second, last} x {letter of a word, number in a list}
whose other four cells are training tasks. Each is a new task made of known words ("first" from the first number,
"letter" from the last and second letter), and the base knows it from its prose: systematic generalisation."""


def vocabulary_words() -> list[str]:
    """Whole-word tokens: the words of the world's templates (phrasings, prose, identity, safety, refusal), never a
    task argument. Every other word is spelled one character per token, so that reversing, upper-casing and
    counting the letters of a word are things a tiny model can learn (word-level BPE hides the letters)."""
    texts = [s for t in TASKS for s in t.phrasings + t.prose]
    texts += list(IDENTITY_QUESTIONS) + list(SAFETY_PHRASINGS) + [REFUSAL, "I am an assistant made by"]
    texts += [s for bad, good, replies in SAFETY.values() for s in bad + good + replies]
    texts += [s for prose in SAFETY_PROSE for s in prose]
    texts += list(SAFETY) + list(COLOURS)
    texts += [s for t in TASKS for s in t.pt_phrasings + t.pt_prose]
    words = {w for s in texts for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", s) if len(w) > 1}
    return sorted(words, key=lambda w: (-len(w), w))
