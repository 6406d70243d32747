"""Program-checked rewards: answer matchers, the number checker, format and length rules, weighted sums, and a
reward that raises or returns NaN stopping with the prompt named."""

import math

import pytest

from posttrain.data.schema import PromptRow
from posttrain.objectives.verifiable import batch, builtin, checked, combine, last_number


def row(answer, text="What is 2 + 2?"):
    return PromptRow([1, 2, 3], [{"role": "user", "content": text}], {"answer": answer})


def score(term, answer, text, n=3):
    return term(row(answer), text, list(range(n)))


def test_matchers():
    assert score(builtin("exact"), "4", " 4\n") == 1.0 and score(builtin("exact"), "4", "4.") == 0.0
    assert score(builtin("normalized"), "the Answer", "answer!") == 1.0
    assert score(builtin("exact"), ["four", "4"], "4") == 1.0  # any accepted answer
    gold = PromptRow([1], None, {"gold": "x"})
    assert builtin("exact", field="gold")(gold, "x", [1]) == 1.0


def test_number_checker():
    n = builtin("number")
    assert last_number("The answer is 1,234.5, I think.") == 1234.5 and last_number("none") is None
    assert score(n, "1234", "So 12 + 1222 = 1,234") == 1.0
    assert score(n, "3", "it is 3.0") == 1.0 and score(n, "3", "it is 4") == 0.0
    assert score(n, "3", "no digits here") == 0.0 and score(n, "-2", "x = -2") == 1.0


def test_format_and_length():
    fmt = builtin("regex", pattern=r"^\d+$")
    assert score(fmt, None, "42") == 1.0 and score(fmt, None, "42!") == 0.0
    length = builtin("length", max_tokens=10)
    assert score(length, None, "", n=5) == 0.0 and score(length, None, "", n=15) == -0.5
    with pytest.raises(ValueError, match="pattern"):
        builtin("regex")
    with pytest.raises(ValueError, match="bad pattern"):
        builtin("regex", pattern="(")
    with pytest.raises(ValueError, match="not one of"):
        builtin("bleu")


def test_weighted_sum():
    total = combine([(1.0, builtin("number")), (0.2, builtin("regex", pattern=r"^\d+$"))])
    assert score(total, "4", "4") == pytest.approx(1.2) and score(total, "4", "it is 4") == pytest.approx(1.0)


def test_a_reward_that_raises_or_gives_nan_names_the_prompt():
    rows = [row("4"), PromptRow([1], [{"role": "user", "content": "Spell cat."}], {})]
    with pytest.raises(ValueError, match=r"reward exact failed on prompt 'Spell cat.'.*no 'answer' field"):
        checked(batch(builtin("exact")), "exact", rows, ["4", "cat"], [[1], [2]])
    with pytest.raises(ValueError, match=r"reward mine is nan on prompt 'What is 2 \+ 2\?'"):
        checked(lambda r, t, i: [math.nan], "mine", rows[:1], ["4"], [[1]])
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        checked(lambda r, t, i: [1.0], "mine", rows, ["4", "cat"], [[1], [2]])
    assert checked(batch(builtin("exact")), "exact", rows[:1], ["4"], [[1]]) == [1.0]
