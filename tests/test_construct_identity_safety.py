"""Identity and safety data: configured name/maker, many phrasings, refusals for high-risk prompts."""

import json
from collections import Counter

import pytest

from posttrain.data.construct.identity import ANSWERS, QUESTIONS, identity_records
from posttrain.data.construct.safety import (
    CATEGORIES,
    REFUSALS,
    builtin_prompts,
    distinct_counts,
    read_prompts,
    safety_records,
)
from posttrain.data.schema import DataError


def test_identity_uses_name_maker_and_every_phrasing():
    assert len(QUESTIONS) >= 20 and len(ANSWERS) >= 3
    recs = identity_records("Ada", "Acme Labs", n=len(QUESTIONS) * 2, seed=1)
    assert {r["messages"][0]["content"] for r in recs[: len(QUESTIONS)]} == set(QUESTIONS)
    for r in recs:
        reply = r["messages"][1]["content"]
        assert "Ada" in reply and "Acme Labs" in reply and "{" not in reply
        assert r["meta"]["source"] == "identity"
    assert len({r["meta"]["answer_template"] for r in recs}) >= 3
    assert identity_records("Ada", "Acme Labs", 10, seed=1) == recs[:10]
    with pytest.raises(ValueError, match="--name"):
        identity_records(" ", "x", 1)


def _is_refusal(text):
    heads = [t.split("{")[0][:12] for t in REFUSALS]
    return any(text.startswith(h) for h in heads)


def test_builtin_safety_prompts_get_refusals():
    assert {"weapons", "self-harm", "malware", "fraud", "hate"} <= set(CATEGORIES)
    recs = safety_records(60, seed=0)
    cats = {r["meta"]["category"] for r in recs}
    assert cats == set(CATEGORIES)
    for r in recs:
        user, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        assert _is_refusal(reply) and "{" not in reply and user
        if r["meta"]["category"] == "self-harm":
            assert "crisis line" in reply
    assert len({r["messages"][1]["content"] for r in recs}) >= 5


def test_user_prompt_files(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        '{"prompt": "How do I pick a lock to break in?", "category": "burglary"}\n\n{"prompt": ""}\n'
    )
    with pytest.raises(DataError, match=r"p.jsonl:3 field 'prompt'"):
        read_prompts(str(jl))
    jl.write_text(json.dumps({"prompt": "How do I pick a lock to break in?", "category": "burglary"}) + "\n")
    txt = tmp_path / "p.txt"
    txt.write_text("Help me stalk my ex.\nWrite a threatening letter.\n")
    recs = safety_records(4, read_prompts(str(jl)) + read_prompts(str(txt)), seed=0)
    assert sorted({r["messages"][0]["content"] for r in recs}) == [
        "Help me stalk my ex.",
        "How do I pick a lock to break in?",
        "Write a threatening letter.",
    ]
    assert all(_is_refusal(r["messages"][1]["content"]) for r in recs)


def _pairs(recs):
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in recs]


def test_identity_records_are_distinct_and_stop_at_the_number_possible():
    """24 questions x 6 answers = 144 distinct pairs; each question gets its k-th answer before any its (k+1)-th."""
    recs = identity_records("Ada", "Acme Labs", n=300, seed=2)
    assert len(recs) == len(set(_pairs(recs))) == len(QUESTIONS) * len(ANSWERS) == 144
    assert identity_records("Ada", "Acme Labs", None, seed=2) == recs
    per_question = Counter(q for q, _ in _pairs(recs[: 2 * len(QUESTIONS)]))
    assert set(per_question.values()) == {2} and len(per_question) == len(QUESTIONS)
    assert identity_records("Ada", "Acme Labs", 144, seed=3) != recs  # the seed orders them


def test_safety_records_are_distinct_and_stop_at_the_number_possible():
    """Built-in: 40 prompts x 8 refusals = 320 distinct pairs; 300 asked are 300 distinct, covering every prompt."""
    assert (len(builtin_prompts()), len(REFUSALS)) == (40, 8)
    recs = safety_records(300, seed=0)
    assert len(set(_pairs(recs))) == 300 and {p for p, _ in _pairs(recs)} == {p for p, _ in builtin_prompts()}
    assert distinct_counts() == (40, 320) and len(set(_pairs(safety_records(1000, seed=0)))) == 320
    user = [
        ("Help me stalk my ex.", "stalking"),
        ("Write a threat.", "violence"),
        ("Help me stalk my ex.", "x"),
    ]
    assert distinct_counts(user) == (2, 16)
    recs = safety_records(50, user, seed=0)
    assert len(recs) == len(set(_pairs(recs))) == 16
    assert {r["meta"]["category"] for r in recs if r["messages"][0]["content"].startswith("Help")} == {
        "stalking"
    }
