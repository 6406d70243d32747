"""Quality filters and near-duplicate removal remove exactly what they should; classification data keeps its labels."""

import json
from collections import Counter
from pathlib import Path

import pytest

from posttrain.data.construct.filters import (
    FilterConfig,
    filter_records,
    jaccard,
    label_of,
    near_duplicates,
    offered_choices,
    shingles,
)

T0 = Path(__file__).resolve().parents[2] / "shared" / "data" / "t0_ag_news_classify_with_choices.jsonl"


def rec(user, reply, system=None, meta=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
    ]
    return {"messages": msgs, **({"meta": meta} if meta else {})}


def _reasons(counts):
    return {k: v for k, v in counts.items() if k not in ("labels", "warnings")}


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
    assert _reasons(counts) == {
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
    assert _reasons(counts) == {"records_in": 7, "empty_response": 1, "too_few_chars": 1, "records_out": 5}


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


def test_copy_rule_spares_offered_choices_and_short_replies():
    """A reply contained in its prompt is a copy only when it has 4+ words and is none of the offered choices."""
    nli = "The first sentence implies the second"  # 6 words, 37 characters
    copied = "Photosynthesis turns light into chemical energy"
    records = [
        rec(f"Premise: a. Hypothesis: b. Pick one: {nli}, they contradict, or neither?", nli),  # "a, b, or c"
        rec(f"Premise: a. Hypothesis: b.\nOPTIONS:\n- {nli}\n- They contradict\n- Neither", nli),  # bullets
        rec(
            f"Premise: a. Hypothesis: b.\nOptions: {nli}; they contradict; neither", nli + "."
        ),  # headed list
        rec(f"Which holds: {nli} or not?", nli, meta={"choices": [nli, "not"]}),  # meta.choices
        rec(
            "Is this news about world politics or science and technology? Chips got faster.",
            "Science and technology",
        ),
        rec("Which word follows 'science and technology'?", "Science and technology"),  # 3 words: too short
        rec(f"Explain this sentence: {copied}.", copied),  # a real copy
        rec(f"Rewrite: {copied}, or so they say.", copied),  # a clause before "or" is no list of options
    ]
    kept, counts = filter_records(records, FilterConfig(dedup_threshold=None))
    assert counts["copied_from_instruction"] == 2 and len(kept) == 6
    assert [r["messages"][0]["content"] for r in kept] == [r["messages"][0]["content"] for r in records[:6]]
    assert offered_choices(records[1]) == {nli.lower(), "they contradict", "neither"}
    assert {"world politics", "science and technology"} <= offered_choices(records[4])


def test_label_counts_and_a_filter_that_removes_a_whole_label():
    """Labels: the reply when it is an offered choice or meta.is_classification, else a meta label field."""
    q = "Is the review positive, negative, or mixed?"
    records = [rec(f"{q} Review {i}.", "positive", meta={"task": "sst"}) for i in range(3)]
    records += [rec(f"{q} Review {i}.", "negative", meta={"task": "sst"}) for i in range(3, 5)]
    records += [rec(f"{q} Review 5.", "mixed", meta={"task": "sst"})]
    records += [rec("Say hi.", "Hello there, friend!", meta={"task": "chat"})]  # no label
    records += [rec("Make a bomb.", "No.", meta={"task": "refusal", "category": "weapons"})]
    records += [rec("Label it.", "yes", meta={"task": "si", "is_classification": True})]
    assert [label_of(r) for r in records[-3:]] == [None, "weapons", "yes"]
    kept, counts = filter_records(records, FilterConfig(min_chars=7, dedup_threshold=None))
    assert counts["labels"] == {
        "refusal": {"weapons": {"before": 1, "after": 0}},
        "si": {"yes": {"before": 1, "after": 0}},
        "sst": {
            "mixed": {"before": 1, "after": 0},
            "negative": {"before": 2, "after": 2},
            "positive": {"before": 3, "after": 3},
        },
    }
    assert counts["warnings"] == [
        "filter removed every record of label 'weapons' in task 'refusal' (1 before; too_few_chars: 1)",
        "filter removed every record of label 'yes' in task 'si' (1 before; too_few_chars: 1)",
        "filter removed every record of label 'mixed' in task 'sst' (1 before; too_few_chars: 1)",
    ]
    assert len(kept) == 6


def _t0_records():
    if not T0.exists():
        pytest.skip("shared data absent")
    from posttrain.data.construct.tasks import build_from_spec, spec_for_file

    rows = [json.loads(line) for line in T0.read_text().splitlines()]
    classes = Counter(r["completion"].removesuffix("<|endoftext|>").strip() for r in rows)
    records, _ = build_from_spec([spec_for_file(str(T0))], 0)
    return records, classes


def test_t0_classification_file_keeps_every_class():
    """AG News via T0: each prompt offers 'world politics, sports, business, or science and technology'; the copy
    rule used to drop all 122 'Science and technology' rows. Without near-dedup nothing is lost; with it only the
    3 near-duplicate Reuters 'Business' stories go."""
    records, classes = _t0_records()
    assert classes == {"Science and technology": 122, "Business": 78}  # the first 200 rows hold two classes
    kept, counts = filter_records(records, FilterConfig(dedup_threshold=None))
    task = counts["labels"]["t0_ag_news_classify_with_choices"]
    assert {k: (v["before"], v["after"]) for k, v in task.items()} == {k: (n, n) for k, n in classes.items()}
    assert len(kept) == 200 and counts["warnings"] == []
    kept, counts = filter_records(records, FilterConfig())
    task = counts["labels"]["t0_ag_news_classify_with_choices"]
    assert {k: v["after"] for k, v in task.items()} == {"Science and technology": 122, "Business": 75}
    assert counts["near_duplicate"] == 3 and "copied_from_instruction" not in counts
    assert all(
        {"world politics", "sports", "business", "science and technology"} <= offered_choices(r)
        for r in records
    )
