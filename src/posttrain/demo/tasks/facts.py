"""Look-ups of the world's invented facts: a country's capital, a fruit's colour.

Each Task: argument space, answer, English phrasings (the last held out), prose for the raw text, Portuguese
phrasings and prose (see `core.Task`).
"""

from __future__ import annotations

from posttrain.demo.tasks.core import Task, entities

TASKS = {
    t.name: t
    for t in (
        Task(
            "capital",
            entities("capital"),
            lambda a, w: w.facts["capital"][a["x"]],
            (
                "What is the capital of {x}?",
                "Name the capital city of {x}.",
                "Which city is the capital of {x}?",
                "Tell me the capital of {x}.",
                "Name the capital of {x}, please.",
                "Can you tell me the capital of {x}?",
                "The capital of {x} is which city?",
            ),
            (
                "The capital of {x} is {ans}.",
                "{ans} is the capital city of {x}.",
                "The people of {x} govern from {ans}.",
                "In {x}, the capital is {ans}.",
                "{ans}, the capital of {x}, is a big city.",
            ),
            24,
            pt_phrasings=("Qual é a capital de {x}?", "Diga a capital de {x}."),
            pt_prose=("A capital de {x} é {ans}.", "{ans} é a capital de {x}."),
        ),
        Task(
            "colour",
            entities("colour"),
            lambda a, w: w.facts["colour"][a["x"]],
            (
                "What colour is the {x} fruit?",
                "Name the colour of the {x} fruit.",
                "Which colour does the {x} fruit have?",
                "Tell me the colour of the {x} fruit.",
                "Name the colour of the {x} fruit, please.",
                "Can you tell me the colour of the {x} fruit?",
                "The {x} fruit is what colour?",
            ),
            (
                "The {x} fruit is {ans}.",
                "A ripe {x} fruit is {ans} in colour.",
                "The colour of the {x} fruit is {ans}.",
                "Every {x} fruit is {ans}.",
                "A {ans} fruit is the {x}.",
            ),
            24,
        ),
    )
}
