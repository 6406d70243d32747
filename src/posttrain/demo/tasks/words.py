"""Tasks on a pseudo-word: spell it backwards or in capitals, count, double or pick its letters.

Each Task: argument space, answer, English phrasings (the last held out), prose for the raw text, Portuguese
phrasings and prose (see `core.Task`).
"""

from __future__ import annotations

from posttrain.demo.tasks.core import Task, pseudo_words

TASKS = {
    t.name: t
    for t in (
        Task(
            "reverse",
            pseudo_words,
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
            pseudo_words,
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
            pseudo_words,
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
            "double",
            pseudo_words,
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
            "last",
            pseudo_words,
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
            pseudo_words,
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
            "first",
            pseudo_words,
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
    )
}
