"""Readers: every file type, every format, and errors that name file, line and field."""

import csv
import json
from pathlib import Path

import pytest

from posttrain.data.readers import load_conversations, read_conversations, read_records
from posttrain.data.schema import DataError, Message

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

OPENAI = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
    ]
}
ALPACA = {"instruction": "Reverse the word.", "input": "cat", "output": "tac"}
PROMPT_COMPLETION = {"prompt": "2 + 3 =", "completion": " 5"}
TEXT = {"text": "The quick brown fox."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def roles(c):
    return [m.role for m in c.messages]


def test_jsonl_openai_and_sharegpt(tmp_path):
    (a,) = read_conversations(write_jsonl(tmp_path / "a.jsonl", [OPENAI]))
    assert a.messages == [Message("user", "Hi"), Message("assistant", "Hello!")]
    (b,) = read_conversations(write_jsonl(tmp_path / "b.jsonl", [SHAREGPT]))
    assert b.messages == [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
    ]


def test_alpaca_prompt_completion_and_text(tmp_path):
    (a,) = read_conversations(write_jsonl(tmp_path / "a.jsonl", [ALPACA]))
    assert a.messages == [Message("user", "Reverse the word.\n\ncat"), Message("assistant", "tac")]
    (s,) = read_conversations(write_jsonl(tmp_path / "s.jsonl", [{**ALPACA, "input": "", "system": "Sys"}]))
    assert s.messages == [
        Message("system", "Sys"),
        Message("user", "Reverse the word."),
        Message("assistant", "tac"),
    ]
    (p,) = read_conversations(write_jsonl(tmp_path / "p.jsonl", [PROMPT_COMPLETION]))
    assert p.messages == [Message("user", "2 + 3 ="), Message("assistant", " 5")]
    (t,) = read_conversations(write_jsonl(tmp_path / "t.jsonl", [TEXT]))
    assert t.meta["format"] == "text" and t.messages == [Message("assistant", "The quick brown fox.")]


def test_prompt_completion_as_message_lists(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "completion": [{"role": "assistant", "content": "A"}],
    }
    (c,) = read_conversations(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert roles(c) == ["system", "user", "assistant"]


def test_explicit_format_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [OPENAI, SHAREGPT])
    a, b = read_conversations(path, format="messages", system_prompt="You are helpful.")
    assert a.messages[0] == Message("system", "You are helpful.")
    assert b.messages[0] == Message("system", "Be brief.")  # an existing system message is kept
    with pytest.raises(DataError, match="a.jsonl:1 field 'instruction': missing"):
        read_conversations(path, format="alpaca")
    with pytest.raises(DataError, match="unknown data format"):
        read_conversations(path, format="xml")


def test_json_list_and_data_key(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([OPENAI, SHAREGPT]))
    (tmp_path / "d.json").write_text(json.dumps({"data": [ALPACA]}))
    convs = read_conversations(f"{tmp_path / 'd.json'}, {tmp_path / 'l.json'}", format="auto")
    assert len(convs) == 3  # comma-separated sources concatenated, format detected per file
    assert [c.messages[-1].content for c in convs] == ["tac", "Hello!", "Hello!"]
    with pytest.raises(DataError, match=r"mixed\.jsonl:2 field 'messages': missing"):  # format is per file
        read_conversations(write_jsonl(tmp_path / "mixed.jsonl", [OPENAI, ALPACA]))


def test_auto_detects_per_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [ALPACA])
    t = write_jsonl(tmp_path / "t.jsonl", [TEXT])
    convs = read_conversations(f"{a},{t}")
    assert convs[0].meta == {} and convs[1].meta == {"format": "text"}


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([OPENAI, OPENAI]), tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist([ALPACA]), tmp_path / "a.parquet")
    convs = read_conversations(f"{tmp_path / 'm.parquet'},{tmp_path / 'a.parquet'}")
    assert [roles(c) for c in convs] == [["user", "assistant"]] * 3
    assert convs[2].messages[1].content == "tac"
    assert [line for _, line, _ in read_records(str(tmp_path / "m.parquet"))] == [1, 2]


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerow(ALPACA)
        w.writerow({"instruction": "Multi\nline", "input": "", "output": "ok"})
    a, b = read_conversations(str(path))
    assert a.messages[-1].content == "tac" and b.messages[0].content == "Multi\nline"
    mpath = tmp_path / "m.csv"
    with mpath.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["messages"])
        w.writeheader()
        w.writerow({"messages": json.dumps(OPENAI["messages"])})
    (m,) = read_conversations(str(mpath))
    assert m.messages == [Message("user", "Hi"), Message("assistant", "Hello!")]


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([PROMPT_COMPLETION, PROMPT_COMPLETION]).save_to_disk(str(tmp_path / "ds"))
    convs = read_conversations(str(tmp_path / "ds"))
    assert len(convs) == 2 and convs[0].messages[-1].content == " 5"


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(OPENAI) + "\n" + json.dumps(OPENAI) + "\n{broken\n")
    with pytest.raises(DataError, match=r"train\.jsonl:3: invalid JSON"):
        read_conversations(str(path))
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        list(read_records(str(bad)))


def test_malformed_row_names_file_line_and_field(tmp_path):
    robot = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}]}
    path = write_jsonl(tmp_path / "train.jsonl", [OPENAI] * 6 + [robot])
    with pytest.raises(DataError, match=r"train\.jsonl:7 field 'messages\[1\]\.role': unknown role 'robot'"):
        read_conversations(path)
    no_content = {"messages": [{"role": "user", "content": 3}]}
    with pytest.raises(DataError, match=r"x\.jsonl:1 field 'messages\[0\]\.content'"):
        read_conversations(write_jsonl(tmp_path / "x.jsonl", [no_content]))
    with pytest.raises(DataError, match=r"o\.jsonl:2 field 'output': missing"):
        read_conversations(write_jsonl(tmp_path / "o.jsonl", [ALPACA, {"instruction": "x"}]))


def _msgs(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_what_cannot_be_trained_is_cut_or_dropped_and_counted(tmp_path, capsys):
    rows = [
        OPENAI,
        _msgs(("user", "Hi"), ("assistant", "Hello!"), ("user", "And then?")),  # unanswered follow-up: cut
        _msgs(
            ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", " ")
        ),  # hh-rlhf's empty reply
        _msgs(("user", "Hi")),  # no reply at all
        _msgs(("user", ""), ("assistant", "x")),  # a blank message before the reply
        _msgs(("user", "Label?"), ("assistant", "<|endoftext|>")),  # a reply that is only an end marker
        _msgs(("system", ""), ("user", "Hi"), ("assistant", "Hello!")),
    ]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    convs, counts, first = load_conversations(path)
    assert [[(m.role, m.content) for m in c.messages] for c in convs] == [
        [("user", "Hi"), ("assistant", "Hello!")],
        [("user", "Hi"), ("assistant", "Hello!")],
        [("user", "q1"), ("assistant", "a1")],
        [("user", "Hi"), ("assistant", "Hello!")],
    ]
    assert counts == {
        "records_in": 7,
        "conversations_out": 4,
        "trailing_turns_dropped": 4,  # rows 2, 3, 4 and 6
        "empty_replies_dropped": 2,  # rows 3 and 6
        "dropped_no_reply": 2,  # rows 4 and 6
        "dropped_empty_message": 1,
        "empty_system_dropped": 1,
    }
    assert first["trailing_turns_dropped"] == f"{path}:2" and first["dropped_empty_message"] == f"{path}:5"
    read_conversations(path)
    err = capsys.readouterr().err
    assert f"7 records -> 4 conversations; dropped_empty_message 1 (first at {path}:5)" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(DataError, match=r"n\.jsonl: nothing to train on \(2 records -> 0 conversations"):
        read_conversations(write_jsonl(tmp_path / "n.jsonl", [rows[3], rows[4]]))


@pytest.mark.parametrize(
    "rec, fix, reason",
    [
        ({"instruction": " ", "output": "x"}, {"instruction": "Say"}, "dropped_empty_message"),
        ({"instruction": "Say hi", "output": ""}, {"output": "hi"}, "dropped_no_reply"),
        ({"prompt": "", "completion": "x"}, {"prompt": "q"}, "dropped_empty_message"),
        ({"prompt": "q", "completion": "</s>"}, {"completion": "a</s>"}, "dropped_no_reply"),
        ({"text": ""}, {"text": "ok"}, "dropped_no_reply"),
    ],
)
def test_empty_fields_drop_the_record_in_every_format(tmp_path, rec, fix, reason):
    good = {**rec, **fix}
    convs, counts, first = load_conversations(write_jsonl(tmp_path / "d.jsonl", [good, rec]))
    assert len(convs) == 1 and counts[reason] == 1 and first[reason].endswith("d.jsonl:2")


def test_alpaca_input_and_seed_task_instances_reach_the_conversation(tmp_path):
    seed = {
        "id": "seed_task_1",
        "instruction": "What is the relation between the given pairs?",
        "instances": [{"input": "Night : Day", "output": "Antonym"}, {"input": "", "output": "It depends."}],
        "is_classification": False,
    }
    (tmp_path / "s.json").write_text(json.dumps([seed, {**seed, "instances": []}]))
    convs, counts, _ = load_conversations(str(tmp_path / "s.json"))
    assert [[m.content for m in c.messages] for c in convs] == [
        ["What is the relation between the given pairs?\n\nNight : Day", "Antonym"],
        ["What is the relation between the given pairs?", "It depends."],
    ]
    assert counts["records_in"] == 2 and counts["dropped_no_reply"] == 1  # a task without instances
    (a,) = read_conversations(write_jsonl(tmp_path / "a.jsonl", [{**ALPACA, "input": "  "}]))
    assert a.messages[0].content == "Reverse the word."
    bad = {**seed, "instances": [{"input": "x", "output": "y"}, {"input": "x"}]}
    with pytest.raises(DataError, match=r"b\.jsonl:1 field 'instances\[1\]'"):
        read_conversations(write_jsonl(tmp_path / "b.jsonl", [bad]))


def test_a_json_array_under_a_jsonl_name(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps([ALPACA, ALPACA], indent=1))
    assert [line for _, line, _ in read_records(str(tmp_path / "a.jsonl"))] == [1, 2]
    (tmp_path / "n.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"n\.jsonl:1: expected a JSON object, got int"):
        list(read_records(str(tmp_path / "n.jsonl")))


def test_empty_unknown_and_missing_sources(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_conversations(str(tmp_path / "e.jsonl"))
    with pytest.raises(DataError, match="cannot tell the format"):
        read_conversations(write_jsonl(tmp_path / "k.jsonl", [{"question": "?"}]))
    with pytest.raises(DataError, match="file not found"):
        read_conversations(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        read_conversations(str(tmp_path / "a.txt"))


def test_shared_t0_sample_reads_as_prompt_completion():
    path = SHARED / "t0_ag_news_classify_with_choices.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    convs = read_conversations(str(path))
    assert len(convs) > 10 and all(roles(c) == ["user", "assistant"] for c in convs)
    assert convs[0].messages[1].content.startswith("Business")


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(OPENAI) + "\n").encode())
    assert [r for _, _, r in read_records(str(path))] == [OPENAI]


def test_non_utf8_names_the_line_in_every_text_format(tmp_path):
    """Decoded line by line (JSONL) or located from the bad byte's offset (JSON, CSV): never a bare codec error."""
    bad = "é".encode("latin-1")
    cases = {
        "a.jsonl": (json.dumps(OPENAI) + "\n").encode() + b'{"text": "caf' + bad + b'"}\n',
        "a.json": b'[\n{"text": "ok"},\n{"text": "caf' + bad + b'"}]',
        "a.csv": b"prompt,completion\nhi,there\nx,caf" + bad + b"\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        line = 2 if name == "a.jsonl" else 3
        with pytest.raises(DataError, match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9"):
            list(read_records(str(tmp_path / name)))


@pytest.mark.parametrize(
    "rec, fld",
    [
        ({"messages": "Hi"}, "messages"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}]},
            r"messages\[1\].content",
        ),
        ({"instruction": 3, "output": "x"}, "instruction"),
        ({"instruction": "Say hi", "output": None}, "output"),
        ({"instruction": "Say hi", "input": ["a"], "output": "x"}, "input"),
        ({"prompt": 1, "completion": "x"}, "prompt"),
        ({"text": ["a"]}, "text"),
    ],
)
def test_wrongly_typed_or_missing_fields_are_refused(tmp_path, rec, fld):
    path = write_jsonl(tmp_path / "d.jsonl", [rec, rec])  # (the format is told from the first record)
    with pytest.raises(DataError, match=rf"d.jsonl:1 field '{fld}'"):
        read_conversations(path)


def test_a_directory_or_a_missing_path_is_not_taken_for_a_hub_name(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="is a directory, not a data file"):
        list(read_records(str(tmp_path / "data")))
    with pytest.raises(DataError, match="file not found"):
        list(read_records(str(tmp_path / "nothing" / "here")))
