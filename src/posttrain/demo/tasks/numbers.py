"""Tasks on a list of digits or a pair of one-digit numbers: sort, maximum, the number at a position, sums and differences.

Each Task: argument space, answer, English phrasings (the last held out), prose for the raw text, Portuguese
phrasings and prose (see `core.Task`).
"""

from __future__ import annotations

from posttrain.demo.tasks.core import Task, digit_lists, digits, sum_pairs

TASKS = {
    t.name: t
    for t in (
        Task(
            "sort",
            digit_lists,
            lambda a, w: " ".join(map(str, sorted(digits(a["xs"])))),
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
            "max",
            digit_lists,
            lambda a, w: str(max(digits(a["xs"]))),
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
            digit_lists,
            lambda a, w: str(digits(a["xs"])[0]),
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
            digit_lists,
            lambda a, w: str(digits(a["xs"])[1]),
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
            "last_number",
            digit_lists,
            lambda a, w: str(digits(a["xs"])[-1]),
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
        Task(
            "add",
            sum_pairs(),
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
            sum_pairs(sub=True),
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
    )
}
