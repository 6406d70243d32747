"""The prompts of Self-Instruct (Wang et al., 2023), shortened to a few in-context examples each.

Instruction proposal follows `encode_prompt` of yizhongw/self-instruct: a numbered list of 8 instructions and the
next number for the model to continue. Classification and instance prompts follow its `clf_task_template` and
`instance_gen_template` (input-first for generation tasks, output-first for classification tasks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPACES = re.compile(r"\s+")

PROPOSE_STOP = ["\n\n", "\n16", "16.", "16 ."]
"""Self-Instruct's stop strings for instruction proposal (up to 15 numbered items)."""

CLASSIFY_PROMPT = """Can the following task be regarded as a classification task with finite output labels?

Task: Given my personality and the job, tell me if I would be suitable.
Is it classification? Yes

Task: Give me an example of a time when you had to use your sense of humor.
Is it classification? No

Task: Replace the placeholders in the given text with appropriate named entities.
Is it classification? No

Task: Fact checking - tell me if the statement is true, false, or unknown, based on your knowledge and common sense.
Is it classification? Yes

Task: Return the SSN number for the person.
Is it classification? No

Task: Detect if the Reddit thread contains hate speech.
Is it classification? Yes

Task: Analyze the sentences below to identify biases.
Is it classification? No

Task: Select the longest sentence in terms of the number of words in the paragraph, output the sentence index.
Is it classification? Yes

Task: {instruction}
Is it classification?"""

INPUT_FIRST_PROMPT = """Come up with examples for the following tasks. Try to generate multiple examples when possible. \
If the task doesn't require additional input, you can generate the output directly.

Task: Which exercises are best for reducing belly fat at home?
Output:
- Lying Leg Raises
- Leg In And Out
- Plank
- Side Plank
- Sit-ups

Task: Converting 85 F to Celsius.
Output: 85°F = 29.44°C

Task: Extract all the country names in the paragraph, list them separated by commas.
Example 1
Input: Dr. No is the sixth novel by the English author Ian Fleming. It was first published in the United Kingdom \
in 1958 and is set in Jamaica.
Output: United Kingdom, Jamaica
Example 2
Input: The Tour de France passes through France, Belgium and Spain this year.
Output: France, Belgium, Spain

Task: {instruction}
"""

OUTPUT_FIRST_PROMPT = """Given the classification task definition and the class labels, generate an input that \
corresponds to each of the class labels. If the task doesn't require input, just generate the correct class label.

Task: Classify the sentiment of the sentence into positive, negative, or mixed.
Class label: Mixed
Sentence: I enjoy the flavor of the restaurant but their service is too slow.
Class label: Positive
Sentence: I had a great day today. The weather was beautiful and I spent time with friends and family.
Class label: Negative
Sentence: I was really disappointed by the latest superhero movie. I would not recommend it to anyone.

Task: Tell me if the following email is a promotion email or not.
Class label: Promotion
Email: Check out our amazing new sale! We've got discounts on all of your favorite products.
Class label: Not Promotion
Email: We hope you are doing well. Let us know if you need any help.

Task: {instruction}
"""


def propose_prompt(instructions: Sequence[str]) -> str:
    """'Come up with a series of tasks:\\n1. ...\\n8. ...\\n9.' (whitespace collapsed, trailing ':' dropped)."""
    prompt = "Come up with a series of tasks:\n"
    for i, inst in enumerate(instructions, start=1):
        inst = _SPACES.sub(" ", inst).strip().rstrip(":")
        prompt += f"{i}. {inst}\n"
    return prompt + f"{len(instructions) + 1}."


def classify_prompt(instruction: str) -> str:
    return CLASSIFY_PROMPT.format(instruction=instruction.strip())


def instance_prompt(instruction: str, is_classification: bool) -> str:
    return (OUTPUT_FIRST_PROMPT if is_classification else INPUT_FIRST_PROMPT).format(
        instruction=instruction.strip()
    )
