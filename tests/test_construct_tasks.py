"""Instances from NLP task datasets: exact template/demonstration layout, CoT, specs, real T0 rows."""

from pathlib import Path

import pytest

from posttrain.data.construct.tasks import (
    TaskSpec,
    build_from_spec,
    build_task,
    fill,
    load_spec,
    read_task_rows,
    render_instance,
    spec_for_file,
)
from posttrain.data.schema import DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

ROWS = [
    {"q": "2+2", "a": "4", "why": "2 plus 2 is 4."},
    {"q": "3+3", "a": "6", "why": ""},
    {"q": "1+1", "a": "2", "why": "One and one make two."},
]


def _spec(**kw):
    base = dict(
        name="add",
        rows=ROWS,
        input="q",
        output="a",
        cot="why",
        templates=["Add the numbers.", "What is {input}?"],
        input_format="Q: {input}\nA:",
        demo_format="Q: {input}\nA: {output}",
    )
    return TaskSpec(**{**base, **kw})


def test_description_demonstrations_and_cot_render_exactly():
    spec = _spec()
    rows = read_task_rows(spec)
    # pure description: description, demonstrations, then the input
    assert render_instance(spec, rows, 0, 0, True, [1]) == (
        "Add the numbers.\n\nQ: 3+3\nA: 6\n\nQ: 2+2\nA:",
        "2 plus 2 is 4.\nSo the answer is: 4",
    )
    # template with {input} is the whole query, after the demonstrations (which carry their rationale)
    assert render_instance(spec, rows, 1, 1, True, [0, 2]) == (
        "Q: 2+2\nA: 2 plus 2 is 4.\nSo the answer is: 4\n\nQ: 1+1\nA: One and one make two.\nSo the answer is: 2"
        "\n\nWhat is 3+3?",
        "6",
    )
    # without the description: only the demonstrations and the input
    assert render_instance(spec, rows, 1, 1, False, []) == ("Q: 3+3\nA:", "6")


def test_jinja_and_choices():
    spec = _spec(
        templates=["{{ input | upper }} -> pick {{ choices_list | join('/') }}", "Pick: {choices}."],
        choices=["x", "y"],
        cot=None,
    )
    rows = read_task_rows(spec)
    assert render_instance(spec, rows, 2, 0, True, []) == ("1+1 -> pick x/y", "2")
    assert render_instance(spec, rows, 2, 1, True, []) == ("Pick: x, y.\n\nQ: 1+1\nA:", "2")
    assert fill("keep {braces: 1} but fill {a}", {"a": "A"}) == "keep {braces: 1} but fill A"
    with pytest.raises(DataError, match="unknown placeholder {nope}"):
        fill("{nope}", {"a": 1})


def test_demonstrations_never_the_instance_and_mixed_description():
    rows_many = [{"q": f"{i}+{i}", "a": str(2 * i)} for i in range(12)]
    spec = _spec(rows=rows_many, cot=None, k_shot=3, description="mixed", templates=["Add the numbers."])
    recs, counts = build_task(spec, read_task_rows(spec), seed=1)
    assert counts["instances"] == 12 and counts["k_shot_3"] == 12
    assert counts["with_description"] > 0 and counts["without_description"] > 0
    for i, r in enumerate(recs):
        user = r["messages"][0]["content"]
        assert user.count(f"Q: {i}+{i}\n") == 1  # the query itself, never again as a demonstration
        assert user.count("\nA: ") == 3  # three answered demonstrations
    again, _ = build_task(spec, read_task_rows(spec), seed=1)
    assert again == recs  # deterministic for a seed


def test_example_spec_builds(tmp_path):
    specs, seed = load_spec(str(REPO / "configs" / "tasks_example.yaml"))
    records, counts = build_from_spec(specs, seed)
    assert (
        counts["tasks"]["sentiment"]["instances"] == 4 and counts["tasks"]["arithmetic_cot"]["instances"] == 3
    )
    cot = [r for r in records if r["meta"]["task"] == "arithmetic_cot"]
    assert all("So the answer is: " in r["messages"][1]["content"] for r in cot)


def test_spec_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "spec.yaml"
    bad.write_text("tasks:\n  - name: t\n    rows: [{input: a, output: b}]\n    colour: red\n")
    with pytest.raises(DataError, match=r"spec.yaml field 'tasks\[0\].colour'"):
        load_spec(str(bad))
    bad.write_text("tasks:\n  - name: t\n    rows: [{input: a, output: b}]\n    templates: 'just one'\n")
    with pytest.raises(DataError, match=r"field 'tasks\[0\].templates'"):
        load_spec(str(bad))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2 field 'completion'"):
        read_task_rows(spec_for_file(str(rows)))
    inline = _spec(rows=[{"q": "1"}], cot=None)
    with pytest.raises(DataError, match=r"field 'rows\[0\].a'"):
        read_task_rows(inline, "spec.yaml")


def test_t0_prompt_completion_file_gives_200_instances():
    path = SHARED / "t0_ag_news_classify_with_choices.jsonl"
    if not path.exists():
        pytest.skip("shared data absent")
    records, counts = build_from_spec([spec_for_file(str(path))], seed=0)
    assert len(records) == 200 and counts["tasks"]["t0_ag_news_classify_with_choices"]["rows"] == 200
    labels = {r["messages"][1]["content"] for r in records}
    assert (
        labels <= {"World politics", "Sports", "Business", "Science and technology"} and "Business" in labels
    )
    assert not any("<|endoftext|>" in r["messages"][1]["content"] for r in records)
    assert records[0]["messages"][0]["content"].startswith("Wall St. Bears Claw Back")
