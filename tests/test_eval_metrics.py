"""Accuracy metrics: SQuAD normalisation, exact / normalised / contains, per-task means, predictions files."""

import json
from pathlib import Path

import pytest

from posttrain.data.schema import DataError, Message
from posttrain.eval.accuracy import (
    contains,
    exact_match,
    load_user_metric,
    normalize_answer,
    normalized_match,
    score_file,
    score_predictions,
)
from posttrain.eval.io import EvalRow, read_eval_rows


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("  an   apple,  a pear ", "apple pear"),
        ("Paris.", "paris"),
        ("Theory of the atom", "theory of atom"),  # 'the' only as a whole word
        ("“Hello” — world…", "hello world"),
        ("A", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_metric_unit_cases():
    assert exact_match(" 5 ", "5") == 1.0
    assert exact_match("5.", "5") == 0.0
    assert normalized_match("5.", "5") == 1.0
    assert normalized_match("The Answer", "answer") == 1.0
    assert normalized_match("15", "5") == 0.0
    assert contains("The answer is 5.", "5") == 1.0
    assert contains("The answer is 15.", "5") == 0.0  # whole words only
    assert contains("anything", "") == 0.0  # an empty reference never matches


def _rows():
    ask = [Message("user", "q")]
    return [
        EvalRow(ask, ["5"], "add"),
        EvalRow(ask, ["Paris"], "capital"),
        EvalRow(ask, ["tac"], "add"),
        EvalRow(ask, ["a", "b"], "capital"),
        EvalRow(ask, [], "add"),
    ]


def test_score_predictions_per_task_and_overall():
    """add: '5' exact, 'TAC' only normalised -> exact 1/2, normalized 2/2; capital: 'paris.' normalised only,
    'b' matches the second reference -> exact 1/2, normalized 2/2. Overall exact 2/4; the reference-less row is skipped."""
    out = score_predictions(_rows(), ["5", "paris.", "TAC", "b", "x"])
    assert out["skipped"] == 1
    assert out["overall"]["n"] == 4
    assert out["overall"]["exact"] == pytest.approx(0.5)
    assert out["overall"]["normalized"] == pytest.approx(1.0)
    assert out["per_task"]["add"] == {"exact": 0.5, "normalized": 1.0, "contains": 1.0, "n": 2}
    assert out["per_task"]["capital"]["exact"] == pytest.approx(0.5)
    assert [r["prediction"] for r in out["rows"]] == ["5", "paris.", "TAC", "b"]


def test_score_predictions_rejects_mismatch_and_unknown_metric():
    with pytest.raises(ValueError, match="5 rows but 4 predictions"):
        score_predictions(_rows(), ["5"] * 4)
    with pytest.raises(ValueError, match="unknown metric"):
        score_predictions(_rows(), ["5"] * 5, metrics=("exact", "bleu"))


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_predictions_file_scores_without_a_model(tmp_path):
    preds = _write(
        tmp_path / "preds.jsonl",
        [
            {"prompt": "2+3?", "reference": "5", "prediction": "5", "meta": {"task": "add"}},
            {"prompt": "2+2?", "reference": "4", "prediction": "The answer is 4", "meta": {"task": "add"}},
            {
                "messages": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris"},
                ],
                "prediction": "paris",
                "task": "geo",
            },
            {
                "instruction": "Label it",
                "input": "Stocks rose",
                "completion": "Business<|endoftext|>",
                "prediction": "Business",
            },
        ],
    )
    out = score_file(preds)
    assert out["overall"]["n"] == 4
    assert out["overall"]["exact"] == pytest.approx(2 / 4)  # '5' and 'Business' (end marker stripped)
    assert out["overall"]["normalized"] == pytest.approx(3 / 4)
    assert out["overall"]["contains"] == pytest.approx(4 / 4)
    assert set(out["per_task"]) == {"add", "geo", "all"}


def test_predictions_file_without_prediction_is_an_error(tmp_path):
    preds = _write(tmp_path / "p.jsonl", [{"prompt": "q", "reference": "a"}])
    with pytest.raises(ValueError, match="no 'prediction'"):
        score_file(preds)


def test_user_metric_from_module_and_file(tmp_path):
    metric_file = tmp_path / "my_metric.py"
    metric_file.write_text(
        "def length_ratio(prediction, reference, row):\n"
        "    return min(len(prediction), len(reference)) / max(len(prediction), len(reference))\n"
    )
    fn = load_user_metric(f"{metric_file}:length_ratio")
    assert fn("ab", "abcd", None) == 0.5
    rows = [EvalRow([Message("user", "q")], ["abcd"])]
    out = score_predictions(rows, ["ab"], metrics=("exact",), user_metric=f"{metric_file}:length_ratio")
    assert out["overall"] == {"exact": 0.0, "length_ratio": 0.5, "n": 1}
    assert load_user_metric("posttrain.eval.accuracy:contains") is contains
    with pytest.raises(ValueError, match="no function"):
        load_user_metric("posttrain.eval.accuracy:nope")
    with pytest.raises(ValueError, match="module:function"):
        load_user_metric("nocolon")


def test_read_eval_rows_formats_and_errors(tmp_path):
    src = _write(
        tmp_path / "rows.jsonl",
        [
            {
                "id": "t0",
                "name": "rev",
                "instruction": "Reverse",
                "instances": [{"input": "cat", "output": "tac"}, {"input": "dog", "output": "god"}],
            },
            {"prompt": [{"role": "user", "content": "hi"}], "answer": ["hello", "hey"]},
        ],
    )
    rows = read_eval_rows(src, system_prompt="Be brief.")
    assert [r.task for r in rows] == ["rev", "rev", "all"]
    assert rows[0].prompt[-1].content == "Reverse\n\ncat" and rows[1].references == ["god"]
    assert rows[2].references == ["hello", "hey"]
    assert all(r.prompt[0] == Message("system", "Be brief.") for r in rows)
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "reference": "a"}, {"question": "q"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_eval_rows(bad)
    bad_ref = _write(tmp_path / "bad_ref.jsonl", [{"prompt": "q", "reference": 5}])
    with pytest.raises(DataError, match=r"bad_ref.jsonl:1 field 'reference'"):
        read_eval_rows(bad_ref)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize(
    "name, first_task",
    [
        ("self_instruct_seed_tasks.jsonl", "breakfast_suggestion"),
        ("t0_ag_news_classify_with_choices.jsonl", "all"),
        ("hh_rlhf_harmless_sample.jsonl", "all"),
    ],
)
def test_reads_the_shared_samples(name, first_task):
    if not (SHARED / name).exists():
        pytest.skip(f"{SHARED / name} not present")
    rows = read_eval_rows(str(SHARED / name))
    assert rows[0].task == first_task
    assert all(r.prompt and r.prompt[-1].role == "user" and r.references for r in rows)
    assert not any(ref.endswith("<|endoftext|>") for r in rows for ref in r.references)


def test_preference_records_give_prompt_and_preferred_reply(tmp_path):
    src = _write(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "2+3?", "chosen": "5", "rejected": "6"},
            {"prompt": "best?", "responses": ["b", "a", "c"], "ranking": [1, 0, 2]},
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: hello",
                "rejected": "\n\nHuman: hi\n\nAssistant: go away",
            },
        ],
    )
    rows = read_eval_rows(src)
    assert [r.references for r in rows] == [["5"], ["a"], ["hello"]]
    assert [r.prompt[-1].content for r in rows] == ["2+3?", "best?", "hi"]
