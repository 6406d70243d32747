"""Quality filters and near-duplicate removal remove exactly what they should."""

import pytest

from posttrain.data.construct.filters import FilterConfig, filter_records, jaccard, near_duplicates, shingles


def rec(user, reply, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
    ]
    return {"messages": msgs}


def test_jaccard_hand_worked():
    """unigrams {a, b, c} vs {a, b, d}: 2 shared of 4 -> 0.5; trigrams of 'a b c d' are {a b c, b c d}."""
    assert jaccard(shingles("A b, c", 1), shingles("a b d", 1)) == 0.5
    assert shingles("a b c d", 3) == {"a b c", "b c d"}
    assert shingles("a b", 3) == {"a b"}


def test_quality_rules():
    long_answer = "Photosynthesis turns light into chemical energy"
    records = [
        rec("Say something.", "   "),  # empty
        rec("Repeat after me: hello there", "hello there"),  # short reply: kept
        rec("hello there", "Hello  there"),  # copied input (normalised)
        rec(f"Explain this sentence: {long_answer}.", long_answer),  # contained in the instruction
        rec("Is this about business or sports? Stocks fell.", "Business"),  # short label: kept
        rec("Write one word.", "word " * 30),  # too many words (max 20)
        rec("Good question", "A fine, ordinary answer."),
    ]
    cfg = FilterConfig(max_words=20, dedup_threshold=None)
    kept, counts = filter_records(records, cfg)
    assert [r["messages"][-1]["content"] for r in kept] == [
        "hello there",
        "Business",
        "A fine, ordinary answer.",
    ]
    assert counts == {
        "records_in": 7,
        "empty_response": 1,
        "copied_input": 1,
        "copied_from_instruction": 1,
        "too_many_words": 1,
        "records_out": 3,
    }
    kept, counts = filter_records(
        records, FilterConfig(min_chars=10, drop_copied=False, dedup_threshold=None)
    )
    assert counts == {"records_in": 7, "empty_response": 1, "too_few_chars": 1, "records_out": 5}


def test_near_duplicates_removed_deterministically():
    base = (
        "Write a short story about a dragon who learns to bake bread in a small village near the sea, "
        "and becomes friends with the baker's daughter"
    )
    records = [
        rec(base, "Once upon a time there was a dragon."),
        rec("Give three tips for staying healthy.", "Eat well, sleep, move."),
        rec(base.replace("small", "tiny"), "Once upon a time there was a dragon."),  # one word changed
        rec(base + " and her cat", "Once upon a time there was a dragon."),  # a few words added
        rec("Translate 'good morning' into French.", "Bonjour."),
    ]
    kept, counts = filter_records(records, FilterConfig(dedup_threshold=0.7))
    assert [r["messages"][0]["content"][:20] for r in kept] == [
        base[:20],
        "Give three tips for ",
        "Translate 'good morn",
    ]
    assert counts["near_duplicate"] == 2
    kept_strict, counts_strict = filter_records(records, FilterConfig(dedup_threshold=0.99))
    assert counts_strict["near_duplicate"] == 0 and len(kept_strict) == 5
    texts = [r["messages"][0]["content"] for r in records]
    assert near_duplicates(texts, FilterConfig(dedup_threshold=0.7)) == [2, 3]
    assert near_duplicates(texts, FilterConfig(dedup_threshold=0.7, seed=1)) == [2, 3]


def test_bad_config():
    with pytest.raises(ValueError, match="dedup_on"):
        filter_records([], FilterConfig(dedup_on="everything"))
