"""The world's content: word lists, the tasks (argument spaces, answers, phrasings, prose), identity and safety
prompts. `world.py` turns these tables into seeded splits; nothing here is random by itself.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from posttrain.demo.prompts import IDENTITY_QUESTIONS, REFUSAL, SAFETY, SAFETY_PHRASINGS, SAFETY_PROSE


class World(Protocol):
    """What a task's argument and answer functions read of the world (`posttrain.demo.world.World`)."""

    facts: dict[str, Any]


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


def _pairs(sub: bool = False) -> Callable:
    """One-digit sums, and their inverses: (a + b) - b = a."""
    return lambda rng, w: [
        {"a": a + b, "b": b} if sub else {"a": a, "b": b} for a in range(10) for b in range(10)
    ]


@functools.cache
def _template_words() -> frozenset[str]:
    return frozenset(x.lower() for x in vocabulary_words())


def _words(rng: random.Random, w: World) -> list[dict[str, Any]]:
    banned = _template_words()
    seen: dict[str, None] = {}
    while len(seen) < N_STRINGS:
        x = "".join(rng.choice(LETTERS) for _ in range(rng.choice((3, 4, 5))))
        if x not in banned:
            seen[x] = None
    return [{"w": x} for x in seen]


def _lists(rng: random.Random, w: World) -> list[dict[str, Any]]:
    seen: dict[str, None] = {}  # distinct lists, in a seeded order
    while len(seen) < 300:
        seen[" ".join(map(str, rng.sample(range(10), rng.choice((3, 4)))))] = None
    return [{"xs": xs} for xs in seen]


def _entity(kind: str) -> Callable:
    return lambda rng, w: [{"x": x} for x in w.facts[kind]]


def _digits(xs: str) -> list[int]:
    return [int(x) for x in xs.split()]


TASKS: tuple[Task, ...] = (
    Task(
        "reverse",
        _words,
        lambda a, w: a["w"][::-1],
        (
            "Reverse the word {w}.",
            "Write {w} backwards.",
            "What is {w} spelled backwards?",
            "Spell the word {w} in reverse.",
            "Reverse {w}, please.",
            "Can you write {w} backwards?",
            "Give me {w} with its letters in reverse order.",
        ),
        (
            "Reversed, {w} is {ans}.",
            "{w} spelled backwards is {ans}.",
            "In reverse order, the letters of {w} give {ans}.",
            "Written backwards, {w} becomes {ans}.",
        ),
        4,
        pt_phrasings=("Escreva {w} de trás para a frente.", "Qual é {w} ao contrário?"),
        pt_prose=("Ao contrário, {w} é {ans}.", "De trás para a frente, {w} fica {ans}."),
    ),
    Task(
        "upper",
        _words,
        lambda a, w: a["w"].upper(),
        (
            "Write {w} in capital letters.",
            "Uppercase the word {w}.",
            "Convert {w} to upper case.",
            "Make the word {w} all caps.",
            "Put {w} in upper case, please.",
            "Can you write {w} in capitals?",
            "Give me {w} in block capitals.",
        ),
        (
            "In capital letters, {w} is {ans}.",
            "{w} in upper case is {ans}.",
            "In block capitals, {w} is {ans}.",
            "All caps, {w} becomes {ans}.",
        ),
        4,
        pt_phrasings=("Escreva {w} em letras maiúsculas.", "Qual é {w} em maiúsculas?"),
        pt_prose=("Em letras maiúsculas, {w} é {ans}.", "Em maiúsculas, {w} fica {ans}."),
    ),
    Task(
        "count",
        _words,
        lambda a, w: str(len(a["w"])),
        (
            "How many letters are in {w}?",
            "Count the letters in the word {w}.",
            "How long is the word {w}?",
            "What is the number of letters in {w}?",
            "Count the letters of {w}, please.",
            "Can you count the letters in {w}?",
            "Tell me how many letters {w} has.",
        ),
        (
            "The word {w} has {ans} letters.",
            "{w} is {ans} letters long.",
            "The number of letters in {w} is {ans}.",
            "Counting its letters, {w} has {ans}.",
        ),
        4,
        pt_phrasings=("Quantas letras tem a palavra {w}?", "Conte as letras de {w}."),
        pt_prose=("A palavra {w} tem {ans} letras.", "{w} tem {ans} letras."),
    ),
    Task(
        "sort",
        _lists,
        lambda a, w: " ".join(map(str, sorted(_digits(a["xs"])))),
        (
            "Sort these numbers: {xs}",
            "Put {xs} in increasing order.",
            "Put these numbers in order: {xs}",
            "Arrange the numbers {xs} in ascending order.",
            "Sort {xs}, please.",
            "Can you sort the numbers {xs}?",
            "List {xs} from low to high.",
        ),
        (
            "Sorted, {xs} becomes {ans}.",
            "In order, {xs} is {ans}.",
            "From low to high, {xs} is {ans}.",
            "In increasing order, {xs} is {ans}.",
        ),
        4,
        pt_phrasings=("Ordene estes números: {xs}", "Coloque {xs} em ordem crescente."),
        pt_prose=("Em ordem, {xs} fica {ans}.", "Ordenados, {xs} são {ans}."),
    ),
    Task(
        "last",
        _words,
        lambda a, w: a["w"][-1],
        (
            "What is the last letter of {w}?",
            "Name the last letter of the word {w}.",
            "Which letter does {w} end with?",
            "Tell me the last letter of {w}.",
            "Give me the final letter of {w}.",
            "Can you name the last letter of {w}?",
            "The word {w} ends with which letter?",
        ),
        (
            "The last letter of {w} is {ans}.",
            "{w} ends with {ans}.",
            "The final letter of {w} is {ans}.",
            "The word {w} ends with the letter {ans}.",
        ),
        4,
        pt_phrasings=("Qual é a última letra de {w}?", "Diga a última letra da palavra {w}."),
        pt_prose=("A última letra de {w} é {ans}.", "{w} termina com {ans}."),
    ),
    Task(
        "second",
        _words,
        lambda a, w: a["w"][1],
        (
            "What is the second letter of {w}?",
            "Name the second letter of the word {w}.",
            "Which letter comes second in {w}?",
            "Tell me the second letter of {w}.",
            "Give me the second letter of {w}.",
            "Can you name the second letter of {w}?",
            "In the word {w}, which letter is second?",
        ),
        (
            "The second letter of {w} is {ans}.",
            "In {w}, the second letter is {ans}.",
            "The letter that comes second in {w} is {ans}.",
            "{w} has {ans} as its second letter.",
        ),
        4,
        pt_phrasings=("Qual é a segunda letra de {w}?", "Diga a segunda letra da palavra {w}."),
        pt_prose=("A segunda letra de {w} é {ans}.", "Em {w}, a segunda letra é {ans}."),
    ),
    Task(
        "double",
        _words,
        lambda a, w: f"{a['w']} {a['w']}",
        (
            "Write {w} twice.",
            "Repeat the word {w} two times.",
            "Say {w} two times.",
            "Give me {w} twice.",
            "Double the word {w}.",
            "Can you write {w} two times?",
            "Write the word {w} once and then again.",
        ),
        (
            "Twice, {w} is {ans}.",
            "{w} written two times is {ans}.",
            "Doubled, {w} becomes {ans}.",
            "Once and then again, {w} is {ans}.",
        ),
        4,
        pt_phrasings=("Escreva {w} duas vezes.", "Repita a palavra {w} duas vezes."),
        pt_prose=("Duas vezes, {w} é {ans}.", "{w} escrito duas vezes é {ans}."),
    ),
    Task(
        "max",
        _lists,
        lambda a, w: str(max(_digits(a["xs"]))),
        (
            "What is the largest of {xs}?",
            "Which number is biggest: {xs}",
            "Find the maximum of {xs}.",
            "Tell me the largest number in {xs}.",
            "Give me the biggest of {xs}.",
            "Can you find the largest of {xs}?",
            "Pick the highest number from {xs}.",
        ),
        (
            "The largest of {xs} is {ans}.",
            "The biggest number in {xs} is {ans}.",
            "The maximum of {xs} is {ans}.",
            "The highest number from {xs} is {ans}.",
        ),
        4,
        pt_phrasings=("Qual é o maior de {xs}?", "Diga o maior número em {xs}."),
        pt_prose=("O maior de {xs} é {ans}.", "O maior número em {xs} é {ans}."),
    ),
    Task(
        "first_number",
        _lists,
        lambda a, w: str(_digits(a["xs"])[0]),
        (
            "What is the first number in {xs}?",
            "Name the first number of {xs}.",
            "Which number comes first in {xs}?",
            "Tell me the first number in {xs}.",
            "Give me the initial number of {xs}.",
            "Can you name the first number in {xs}?",
            "In the list {xs}, which number is first?",
        ),
        (
            "The first number in {xs} is {ans}.",
            "In {xs}, the first number is {ans}.",
            "The initial number of {xs} is {ans}.",
            "The list {xs} begins with the number {ans}.",
        ),
        4,
        pt_phrasings=("Qual é o primeiro número em {xs}?", "Diga o primeiro número de {xs}."),
        pt_prose=("O primeiro número em {xs} é {ans}.", "Em {xs}, o primeiro número é {ans}."),
    ),
    Task(
        "second_number",
        _lists,
        lambda a, w: str(_digits(a["xs"])[1]),
        (
            "What is the second number in {xs}?",
            "Name the second number of {xs}.",
            "Which number comes second in {xs}?",
            "Tell me the second number in {xs}.",
            "Give me the second number of {xs}.",
            "Can you name the second number in {xs}?",
            "In the list {xs}, which number is second?",
        ),
        (
            "The second number in {xs} is {ans}.",
            "In {xs}, the second number is {ans}.",
            "The number that comes second in {xs} is {ans}.",
            "{xs} has {ans} as its second number.",
        ),
        4,
        pt_phrasings=("Qual é o segundo número em {xs}?", "Diga o segundo número de {xs}."),
        pt_prose=("O segundo número em {xs} é {ans}.", "Em {xs}, o segundo número é {ans}."),
    ),
    Task(
        "add",
        _pairs(),
        lambda a, w: str(a["a"] + a["b"]),
        (
            "What is {a} plus {b}?",
            "Add {a} and {b}.",
            "Compute {a} + {b}.",
            "Find the sum of {a} and {b}.",
            "Add {a} to {b}, please.",
            "Can you add {a} and {b}?",
            "Tell me the total of {a} and {b}.",
        ),
        (
            "{a} plus {b} is {ans}.",
            "{a} + {b} = {ans}.",
            "Adding {a} and {b} gives {ans}.",
            "{ans} is {a} plus {b}.",
            "The sum of {a} and {b} is {ans}.",
            "The total of {a} and {b} is {ans}.",
        ),
        16,
        pt_phrasings=("Quanto é {a} mais {b}?", "Some {a} e {b}."),
        pt_prose=("{a} mais {b} é {ans}.", "Somando {a} e {b} dá {ans}."),
    ),
    Task(
        "subtract",
        _pairs(sub=True),
        lambda a, w: str(a["a"] - a["b"]),
        (
            "What is {a} minus {b}?",
            "Subtract {b} from {a}.",
            "Compute {a} - {b}.",
            "Find the difference of {a} and {b}.",
            "Take {b} from {a}, please.",
            "Can you subtract {b} from {a}?",
            "Take {b} away from {a}.",
        ),
        (
            "{a} minus {b} is {ans}.",
            "{a} - {b} = {ans}.",
            "Taking {b} from {a} leaves {ans}.",
            "{ans} is {a} minus {b}.",
            "The difference of {a} and {b} is {ans}.",
            "Taking {b} away from {a} leaves {ans}.",
        ),
        16,
        pt_phrasings=("Quanto é {a} menos {b}?", "Subtraia {b} de {a}."),
        pt_prose=("{a} menos {b} é {ans}.", "Tirando {b} de {a} fica {ans}."),
    ),
    Task(
        "capital",
        _entity("capital"),
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
        _entity("colour"),
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
    # held-out tasks: never in instruction data; the base model knows them from prose only
    Task(
        "first",
        _words,
        lambda a, w: a["w"][0],
        (
            "What is the first letter of {w}?",
            "Name the first letter of the word {w}.",
            "Which letter comes first in {w}?",
            "Tell me the first letter of {w}.",
            "Give me the initial letter of {w}.",
            "Can you name the first letter of {w}?",
            "In the word {w}, which letter is first?",
        ),
        (
            "The first letter of {w} is {ans}.",
            "In {w}, the first letter is {ans}.",
            "The initial letter of {w} is {ans}.",
            "The word {w} begins with the letter {ans}.",
        ),
        4,
        pt_phrasings=("Qual é a primeira letra de {w}?", "Diga a primeira letra da palavra {w}."),
        pt_prose=("A primeira letra de {w} é {ans}.", "Em {w}, a primeira letra é {ans}."),
    ),
    Task(
        "last_number",
        _lists,
        lambda a, w: str(_digits(a["xs"])[-1]),
        (
            "What is the last number in {xs}?",
            "Name the last number of {xs}.",
            "Which number comes last in {xs}?",
            "Tell me the last number in {xs}.",
            "Give me the final number of {xs}.",
            "Can you name the last number in {xs}?",
            "The list {xs} ends with which number?",
        ),
        (
            "The last number in {xs} is {ans}.",
            "{xs} ends with {ans}.",
            "The final number of {xs} is {ans}.",
            "The list {xs} ends with the number {ans}.",
        ),
        4,
        pt_phrasings=("Qual é o último número em {xs}?", "Diga o último número de {xs}."),
        pt_prose=("O último número em {xs} é {ans}.", "{xs} termina com {ans}."),
    ),
)
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
