"""Instances from NLP task datasets: exact template/demonstration layout, CoT, specs, real T0 rows."""

import json
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
    specs, seed = load_spec(str(REPO / "src" / "posttrain" / "recipes" / "data_tasks.yaml"))
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


ALPACA = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "1. Eat well. 2. Sleep. 3. Move.",
    },
    {"instruction": "Translate the sentence to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Summarise.", "output": "Short.", "system": "Be brief."},  # input missing altogether
]


def _users_and_replies(records):
    return [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in records]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_alpaca_file_keeps_instruction_input_and_system(tmp_path, suffix):
    """Before: the instruction was dropped, and a record with an empty input had an empty user turn."""
    path = tmp_path / f"alpaca.{suffix}"
    path.write_text(
        json.dumps(ALPACA, indent=1) if suffix == "json" else "".join(json.dumps(r) + "\n" for r in ALPACA)
    )
    records, counts = build_from_spec([spec_for_file(str(path))], seed=0)
    assert _users_and_replies(records) == [
        ("Give three tips for staying healthy.", "1. Eat well. 2. Sleep. 3. Move."),
        ("Translate the sentence to French.\n\nGood morning", "Bonjour"),
        ("Summarise.", "Short."),
    ]
    assert records[2]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert counts["tasks"]["alpaca"]["instances"] == 3


SEEDS = [
    {
        "id": "seed_task_1",
        "name": "antonym_relation",
        "instruction": "What is the relation between the given pairs?",
        "instances": [
            {"input": "Night : Day", "output": "Opposites"},
            {"input": "Hot : Cold", "output": "Contraries"},
            {"input": "Up : Down", "output": "Inverses"},
        ],
        "is_classification": False,
    },
    {
        "id": "seed_task_2",
        "name": "one_liner",
        "instruction": "Tell a one-line joke.",
        "instances": [{"input": "", "output": "I would tell a UDP joke, but you might not get it."}],
        "is_classification": False,
    },
    {
        "id": "seed_task_3",
        "name": "empty",
        "instruction": "Nothing here.",
        "instances": [],
        "is_classification": False,
    },
]


def test_seed_tasks_one_instance_each_or_k_shot_from_the_same_task(tmp_path):
    """Before: "field 'output': expected a string, got None" (the outputs are nested under `instances`)."""
    path = tmp_path / "seeds.json"  # a JSON array, as some copies of seed_tasks are
    path.write_text(json.dumps(SEEDS))
    records, counts = build_from_spec([spec_for_file(str(path))], seed=0)
    instances = [(t["instruction"], i) for t in SEEDS for i in t["instances"]]
    assert _users_and_replies(records) == [
        (f"{ins}\n\n{i['input']}" if i["input"] else ins, i["output"]) for ins, i in instances
    ]
    assert counts["tasks"]["seeds"]["skipped_no_instances"] == 1
    shots, shot_counts = build_from_spec([spec_for_file(str(path), k_shot=2)], seed=0)
    for (user, reply), (ins, inst) in zip(_users_and_replies(shots), instances):
        assert user.startswith(ins) and user.endswith(inst["input"]) and reply == inst["output"]
        assert user.count(inst["output"]) == 0  # never its own answer as a demonstration
        others = [o for t in SEEDS for o in t["instances"] if t["instruction"] != ins]
        assert not any(o["output"] in user for o in others)  # never another task's instances
    antonyms = [u for u, _ in _users_and_replies(shots)[:3]]
    assert all(sum(o in u for o in ("Opposites", "Contraries", "Inverses")) == 2 for u in antonyms)
    assert shot_counts["tasks"]["seeds"]["k_shot_2"] == 3 and shot_counts["tasks"]["seeds"]["k_shot_0"] == 1


def test_p3_fields_and_other_tokenizers_end_markers(tmp_path):
    path = tmp_path / "p3.jsonl"
    rows = [
        {
            "inputs_pretokenized": "Is 2 + 2 four?",
            "targets_pretokenized": " yes</s>",
            "answer_choices": ["yes", "no"],
        },
        {"inputs_pretokenized": "Is 2 + 2 five?", "targets_pretokenized": " no <|im_end|>\n"},
        {"inputs_pretokenized": " ", "targets_pretokenized": "no"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, counts = build_from_spec([spec_for_file(str(path))], seed=0)
    assert _users_and_replies(records) == [("Is 2 + 2 four?", "yes"), ("Is 2 + 2 five?", "no")]
    assert counts["tasks"]["p3"]["skipped_empty_prompt"] == 1


@pytest.mark.parametrize("name", ["seeds.json", "seeds.jsonl"])
def test_seed_task_reader_takes_a_json_array_and_alpaca_records(tmp_path, name):
    """Before: a seed file holding one JSON array failed with "invalid JSON (Expecting value at column 2)"."""
    from posttrain.data.construct.self_instruct import read_seed_tasks

    path = tmp_path / name
    path.write_text(json.dumps([*SEEDS, ALPACA[1]], indent=2))
    seeds = read_seed_tasks(str(path))
    assert [s.instruction for s in seeds] == [t["instruction"] for t in SEEDS] + [ALPACA[1]["instruction"]]
    assert seeds[0].instances[1] == ("Hot : Cold", "Contraries") and seeds[-1].instances == [
        ("Good morning", "Bonjour")
    ]
