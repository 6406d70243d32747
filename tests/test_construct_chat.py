"""Daily chat conversion: ShareGPT / OpenAI messages / hh-rlhf, cleaning counts, real hh-rlhf transcripts."""

import json
from pathlib import Path

import pytest

from posttrain.data.construct.chat import convert_chat_file, parse_hh
from posttrain.data.schema import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_parse_hh_one_turn_per_marker():
    msgs = parse_hh("\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant: see you")
    assert [(m.role, m.content) for m in msgs] == [
        ("user", "hi there"),
        ("assistant", "hello!"),
        ("user", "bye"),
        ("assistant", "see you"),
    ]
    with pytest.raises(DataError, match="x.jsonl:4 field 'chosen'"):
        parse_hh("no markers here", "x.jsonl", 4)


def test_cleaning_counts_every_action(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": " Hi  "}, {"from": "gpt", "value": "Hello"}]},
        {
            "conversations": [
                {"from": "gpt", "value": "I start"},
                {"from": "human", "value": "q"},
                {"from": "human", "value": "more q"},
                {"from": "gpt", "value": ""},
                {"from": "gpt", "value": "answer"},
            ]
        },
        {"messages": [{"role": "user", "content": "only a question"}]},
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HELLO"}]
        },  # dup of 1
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
    ]
    convs, counts = convert_chat_file(_write(tmp_path / "c.jsonl", rows))
    assert [[(m.role, m.content) for m in c.messages] for c in convs] == [
        [("user", "Hi"), ("assistant", "Hello")],
        [("user", "q\n\nmore q"), ("assistant", "answer")],
        [("user", "a"), ("assistant", "b")],
    ]
    assert [c.meta["source"] for c in convs] == ["sharegpt", "sharegpt", "hh"]
    assert counts == {
        "records_in": 5,
        "turns_in": 12,
        "empty_turns_dropped": 1,
        "same_role_turns_merged": 1,
        "leading_assistant_turns_dropped": 1,
        "no_assistant_dropped": 1,
        "duplicates_dropped": 1,
        "turns_out": 6,
        "conversations_out": 3,
    }
    _, no_dedup = convert_chat_file(str(tmp_path / "c.jsonl"), dedup=False)
    assert no_dedup["conversations_out"] == 4


def test_malformed_rows_name_file_line_field(tmp_path):
    bad_role = _write(
        tmp_path / "r.jsonl",
        [
            {"messages": [{"role": "user", "content": "a"}]},
            {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
        ],
    )
    with pytest.raises(DataError, match=r"r.jsonl:2 field 'conversations\[1\].role'"):
        convert_chat_file(bad_role)
    bad_json = _write(tmp_path / "j.jsonl", [{"messages": []}, "{not json"])
    with pytest.raises(DataError, match=r"j.jsonl:2: invalid JSON"):
        convert_chat_file(bad_json)
    unknown = _write(tmp_path / "u.jsonl", [{"question": "a"}])
    with pytest.raises(DataError, match=r"u.jsonl:1: cannot tell the chat format"):
        convert_chat_file(unknown)
    with pytest.raises(DataError, match=r"u.jsonl:1 field 'messages'"):
        convert_chat_file(unknown, "messages")


def test_real_hh_rlhf_sample_keeps_every_turn():
    path = SHARED / "hh_rlhf_harmless_sample.jsonl"
    if not path.exists():
        pytest.skip("shared data absent")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    convs, counts = convert_chat_file(str(path), "hh")
    assert len(convs) == 50 and counts["conversations_out"] == 50
    for row, conv in zip(rows, convs):
        markers = row["chosen"].count("\n\nHuman:") + row["chosen"].count("\n\nAssistant:")
        assert len(conv.messages) == markers
        assert conv.messages[0].role == "user" and conv.messages[-1].role == "assistant"
        assert conv.messages[-1].content == row["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
    assert counts["turns_in"] == counts["turns_out"]


def test_only_trainable_conversations_leave_from_chat(tmp_path):
    """hh-rlhf has transcripts whose last `Assistant:` is empty; ShareGPT dumps end with unanswered questions. Before,
    they came out ending in a user turn and `posttrain sft` stopped on them after `data mix`."""
    rows = [
        {"chosen": "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant:", "rejected": "\n\nHuman: q1"},
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello</s>"},
                {"from": "human", "value": "more?"},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<|endoftext|>"}]},
    ]
    convs, counts = convert_chat_file(_write(tmp_path / "c.jsonl", rows))
    assert [[(m.role, m.content) for m in c.messages] for c in convs] == [
        [("user", "q1"), ("assistant", "a1")],
        [("user", "hi"), ("assistant", "hello")],
    ]
    assert counts["empty_turns_dropped"] == 2 and counts["trailing_turns_dropped"] == 2
    assert counts["end_markers_stripped"] == 2 and counts["no_assistant_dropped"] == 1
    assert counts["conversations_out"] == 2
