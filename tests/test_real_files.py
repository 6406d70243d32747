"""The real public files of ../shared/data as a new user brings them: converted, filtered, mixed, inspected and
trained on (tiny model, 2 steps), with every field that carries text checked to reach the conversation.

Skipped when the files are absent (they are never copied into this repository). Run with `-s` to see the
records-in / records-out counts of every step.
"""

import json
from pathlib import Path

import pytest

from posttrain.cli import main as posttrain
from posttrain.data.construct.chat import parse_hh

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    return path


def rows_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return (
        json.loads(text)
        if path.suffix == ".json"
        else [json.loads(x) for x in text.splitlines() if x.strip()]
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def turns(rec: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in rec["messages"]]


# ---------------------------------------------------------------------------------------- what each file must give


def expect_seed_tasks(raw: list[dict]) -> list[list[tuple[str, str]]]:
    """One conversation per instance: the instruction, a blank line and the input (when there is one); the output."""
    out = []
    for task in raw:
        for inst in task["instances"]:
            user = task["instruction"].strip() + (
                f"\n\n{inst['input'].strip()}" if inst["input"].strip() else ""
            )
            out.append([("user", user), ("assistant", inst["output"].strip())])
    return out


def expect_t0(raw: list[dict]) -> list[list[tuple[str, str]]]:
    """The prompt; the completion without its trailing `<|endoftext|>`."""
    assert all(r["completion"].endswith("<|endoftext|>") for r in raw)  # what the file holds
    return [
        [("user", r["prompt"].strip()), ("assistant", r["completion"][: -len("<|endoftext|>")])] for r in raw
    ]


def expect_hh(raw: list[dict]) -> list[list[tuple[str, str]]]:
    """Every turn of the chosen transcript, ending with its last (compared) assistant reply."""
    return [[(m.role, m.content.strip()) for m in parse_hh(r["chosen"])] for r in raw]


def expect_sharegpt(raw: list[dict]) -> list[list[tuple[str, str]]]:
    """Every turn, roles human -> user and gpt -> assistant; exact repeats (lowercased, spaces collapsed) once."""
    role = {"human": "user", "gpt": "assistant"}
    out, seen = [], set()
    for r in raw:
        conv = [(role[t["from"]], t["value"].strip()) for t in r["conversations"]]
        key = tuple((ro, " ".join(c.lower().split())) for ro, c in conv)
        if key not in seen:
            seen.add(key)
            out.append(conv)
    return out


CASES = {
    "self_instruct_seed_tasks.jsonl": ("from-tasks", "--file", expect_seed_tasks),
    "t0_ag_news_classify_with_choices.jsonl": ("from-tasks", "--file", expect_t0),
    "hh_rlhf_harmless_sample.jsonl": ("from-chat", "--in", expect_hh),
    "fastchat_sharegpt_sample.json": ("from-chat", "--in", expect_sharegpt),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from helpers import base_dir

    return base_dir(tmp_path_factory.mktemp("real"))


@pytest.mark.parametrize("name", list(CASES))
def test_real_file_from_conversion_to_training(name, model_dir, tmp_path, capsys):
    command, flag, expect = CASES[name]
    path = shared(name)
    raw = rows_of(path)
    conv, clean, mix = tmp_path / "conv.jsonl", tmp_path / "clean.jsonl", tmp_path / "mix.jsonl"

    assert posttrain(["data", command, flag, str(path), "--out", str(conv)]) == 0
    assert [turns(r) for r in lines(conv)] == expect(raw)
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in lines(conv))

    assert posttrain(["data", "filter", "--in", str(conv), "--out", str(clean)]) == 0
    kept = lines(clean)
    assert kept and all(r in lines(conv) for r in kept)
    assert posttrain(["data", "mix", "--source", str(clean), "--out", str(mix)]) == 0
    assert sorted(map(json.dumps, (turns(r) for r in lines(mix)))) == sorted(
        map(json.dumps, map(turns, kept))
    )
    assert posttrain(["data", "stats", str(mix)]) == 0
    assert f"records: {len(kept)}" in capsys.readouterr().out

    run = tmp_path / "run"
    args = [
        f"model={model_dir}",
        f"data={mix}",
        f"output_dir={run}",
        "train.max_steps=2",
        "train.batch_size=4",
    ]
    # (the tiny model has 256 positions; keeping the end of a long sample keeps the reply it trains)
    assert (
        posttrain(["sft", *args, "train.max_length=256", "train.truncation=left", "train.progress=false"])
        == 0
    )
    err = capsys.readouterr().err
    report = json.loads(err.split("train data: ", 1)[1].splitlines()[0])
    assert report["samples"] == len(kept) and report["loss_tokens"] > 0
    assert report["end_markers_stripped"] == report["end_markers_mapped"] == 0  # the converters left none
    assert (run / "final").is_dir()

    steps = [(command, conv), ("filter", clean), ("mix", mix)]
    counts = [f"{n} {len(lines(p))} ({why(p)})" for n, p in steps]
    print(f"\n{name}: in {len(raw)} -> {' -> '.join(counts)} -> sft {report['samples']} samples")


NOT_DROPS = {
    "records_in",
    "records_out",
    "conversations_out",
    "turns_in",
    "turns_out",
    "rows",
    "instances",
    "total",
}


def why(out: Path) -> str:
    """The nonzero counts of a step's stats file that say what it dropped or changed."""
    stats = json.loads(out.with_name(out.stem + ".stats.json").read_text())
    flat = {k: v for t in stats.get("tasks", {}).values() for k, v in t.items()} | stats
    drops = {k: v for k, v in flat.items() if isinstance(v, int) and v and k not in NOT_DROPS}
    drops = {k: v for k, v in drops.items() if not k.startswith(("template_", "k_shot_", "with"))}
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "nothing dropped"


def test_the_t0_file_trained_as_it_is_has_no_literal_end_marker():
    """`posttrain sft data=t0.jsonl` reads the completions with their `<|endoftext|>`: the tokenisation strips it
    (and counts it) so the labels are the answer and one real end of turn."""
    from posttrain.data.collate import IGNORE, tokenize_sft
    from posttrain.data.readers import read_conversations
    from posttrain.models import tiny_tokenizer

    tok = tiny_tokenizer()
    convs = read_conversations(str(shared("t0_ag_news_classify_with_choices.jsonl")))
    samples, report = tokenize_sft(convs, tok, "auto", 4096)
    assert report["samples"] == 200 and report["end_markers_stripped"] == 200
    answers = {tok.decode([t for t in s.labels if t != IGNORE]) for s in samples}
    assert answers == {"Business<|im_end|>", "Science and technology<|im_end|>"}


def test_the_seed_tasks_read_for_sft_and_self_instruct_alike():
    from posttrain.data.construct.self_instruct import read_seed_tasks
    from posttrain.data.readers import load_conversations

    path = shared("self_instruct_seed_tasks.jsonl")
    convs, counts, _ = load_conversations(str(path))
    assert [[(m.role, m.content.strip()) for m in c.messages] for c in convs] == expect_seed_tasks(
        rows_of(path)
    )
    assert counts == {"records_in": 175, "conversations_out": 175}
    assert [s.instruction for s in read_seed_tasks(str(path))] == [r["instruction"] for r in rows_of(path)]


def test_mt_bench_questions_are_not_training_data(tmp_path, capsys):
    """80 two-turn questions and no replies: an evaluation set. `from-chat` refuses it in one line naming the keys."""
    path = shared("mt_bench_questions.jsonl")
    assert posttrain(["data", "from-chat", "--in", str(path), "--out", str(tmp_path / "c.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{path}:1: cannot tell the chat format" in err and "'turns'" in err and len(err.splitlines()) == 1


def test_hh_transcripts_with_an_empty_last_reply_train_after_mix(model_dir, tmp_path, capsys):
    """The full hh-rlhf sets hold transcripts that end in an empty `Assistant:`; before, `from-chat` kept them
    ending in a user turn and `sft` stopped on "the conversation must end with an assistant turn" after `mix`."""
    rows = [
        {
            "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
            "rejected": "\n\nHuman: Hi there",
        },
        {
            "chosen": "\n\nHuman: What is 2 + 3?\n\nAssistant: 5.\n\nHuman: And 3 + 4?\n\nAssistant:",
            "rejected": "",
        },
        {"chosen": "\n\nHuman: Anyone there?\n\nAssistant:", "rejected": "\n\nHuman: Anyone there?"},
    ]
    hh, conv, mix = tmp_path / "hh.jsonl", tmp_path / "conv.jsonl", tmp_path / "mix.jsonl"
    hh.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert posttrain(["data", "from-chat", "--in", str(hh), "--out", str(conv)]) == 0
    assert [turns(r) for r in lines(conv)] == [
        [("user", "Hi there"), ("assistant", "Hello! How can I help?")],
        [("user", "What is 2 + 3?"), ("assistant", "5.")],
    ]
    stats = json.loads((tmp_path / "conv.stats.json").read_text())
    assert (stats["empty_turns_dropped"], stats["trailing_turns_dropped"], stats["no_assistant_dropped"]) == (
        2,
        1,
        1,
    )
    assert posttrain(["data", "mix", "--source", str(conv), "--out", str(mix)]) == 0
    args = [f"model={model_dir}", f"data={mix}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2"]
    assert posttrain(["sft", *args, "train.batch_size=2", "train.progress=false"]) == 0
    assert '"samples": 2' in capsys.readouterr().err
