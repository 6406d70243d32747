"""`posttrain data ...` end to end: outputs, OUT.stats.json, mixing with a pinned rate, stats, error exits."""

import json

import pytest

from posttrain.cli import main as posttrain
from posttrain.data.cli import main as data_main


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_identity_safety_mix_stats(tmp_path, capsys):
    ident, safe, chat, mix = (tmp_path / f"{n}.jsonl" for n in ("identity", "safety", "chat", "mix"))
    assert (
        posttrain(["data", "identity", "--name", "Ada", "--maker", "Acme", "--n", "40", "--out", str(ident)])
        == 0
    )
    assert data_main(["safety", "--n", "30", "--out", str(safe)]) == 0
    chat.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": f"a{i}"},
                    ]
                }
            )
            + "\n"
            for i in range(120)
        )
    )
    stats = json.loads((tmp_path / "identity.stats.json").read_text())
    assert stats["command"] == "identity" and stats["summary"]["records"] == 40 and stats["name"] == "Ada"
    assert len(_lines(ident)) == 40
    rc = data_main(
        [
            "mix",
            "--source",
            str(chat),
            "--source",
            str(ident),
            "--strategy",
            "proportional",
            "--rate",
            f"{safe}:0.1",
            "--total",
            "2000",
            "--seed",
            "3",
            "--out",
            str(mix),
        ]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "mix.stats.json").read_text())
    src = rep["sources"]
    assert src["chat"]["rate"] == 0.675 and src["identity"]["rate"] == 0.225 and src["safety"]["rate"] == 0.1
    assert abs(src["safety"]["proportion"] - 0.1) < 0.025 and sum(s["drawn"] for s in src.values()) == 2000
    assert rep["summary"]["mix_proportions"]["safety"] == src["safety"]["proportion"]
    capsys.readouterr()
    assert data_main(["stats", str(mix)]) == 0
    out = capsys.readouterr().out
    assert "mix proportions:" in out and "█" in out and "length (words):" in out and "records: 2000" in out


def test_from_tasks_filter_and_errors(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "tasks:\n  - name: copy\n    rows: [{input: 'hello there friend', output: 'hello there friend'},"
        " {input: 'a question', output: 'a real answer'}]\n"
    )
    out = tmp_path / "t.jsonl"
    assert data_main(["from-tasks", "--spec", str(spec), "--out", str(out)]) == 0
    assert len(_lines(out)) == 2
    clean = tmp_path / "t.clean.jsonl"
    assert data_main(["filter", "--in", str(out), "--out", str(clean)]) == 0
    assert [r["messages"][1]["content"] for r in _lines(clean)] == ["a real answer"]
    assert json.loads((tmp_path / "t.clean.stats.json").read_text())["copied_input"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n{oops\n'
    )
    capsys.readouterr()
    assert posttrain(["data", "from-chat", "--in", str(bad), "--out", str(tmp_path / "c.jsonl")]) == 1
    assert "bad.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_stats_with_tokenizer_counts_tokens(tmp_path, capsys):
    from posttrain.data.construct.stats import summarise
    from posttrain.models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    rec = {
        "messages": [
            {"role": "user", "content": "Hello world!"},
            {"role": "assistant", "content": "The answer is 5."},
        ],
        "meta": {"source": "s", "task": "t"},
    }
    data.write_text(json.dumps(rec) + "\n")
    n_tokens = len(tok("Hello world!\nThe answer is 5.", add_special_tokens=False)["input_ids"])
    summary = summarise([rec], tok)
    assert summary["length_unit"] == "tokens" and summary["mean_length"] == n_tokens
    assert summarise([rec])["mean_length"] == 6  # words
    capsys.readouterr()
    assert data_main(["stats", str(data), "--tokenizer", str(tmp_path / "tok"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_length"] == n_tokens
    assert posttrain(["data", "stats", str(data), "--tokenizer", str(tmp_path / "missing")]) == 1
    assert "missing: not a model directory or Hub name (no such directory)" in capsys.readouterr().err


def _mix_args(source, out):
    return ["data", "mix", "--source", str(source), "--total", "5", "--out", str(out)]


def _write_convs(path, n, word):
    rows = [
        {"messages": [{"role": "user", "content": f"{word}{i}"}, {"role": "assistant", "content": "ok"}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_mix_killed_while_writing_leaves_the_old_pair(tmp_path, monkeypatch):
    """A crash half-way through OUT (here: the 3rd record) leaves the previous OUT and OUT.stats.json byte for byte,
    and no temporary file."""
    import posttrain.data.construct.io as io

    src, out = tmp_path / "src.jsonl", tmp_path / "mix.jsonl"
    _write_convs(src, 4, "old")
    assert posttrain(_mix_args(src, out)) == 0
    old = {p.name: p.read_bytes() for p in (out, tmp_path / "mix.stats.json")}
    _write_convs(src, 4, "new")
    calls, real = [], json.dumps

    def dying_dumps(obj, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what SIGINT does mid-write
        return real(obj, **kw)

    monkeypatch.setattr(io.json, "dumps", dying_dumps)
    assert posttrain(_mix_args(src, out)) == 130
    assert {p.name: p.read_bytes() for p in (out, tmp_path / "mix.stats.json")} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.jsonl", "mix.stats.json", "src.jsonl"]


def test_a_mix_killed_between_output_and_stats_leaves_no_stale_stats(tmp_path, monkeypatch):
    """OUT is renamed into place first; the old stats file is gone by then, so a kill before the new one lands
    leaves the new OUT without stats, never beside the old run's stats."""
    import posttrain.data.construct.io as io

    src, out, stats = tmp_path / "src.jsonl", tmp_path / "mix.jsonl", tmp_path / "mix.stats.json"
    _write_convs(src, 4, "old")
    assert posttrain(_mix_args(src, out)) == 0
    _write_convs(src, 4, "new")

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "atomic_write_json", killed)
    assert posttrain(_mix_args(src, out)) == 130
    assert "new" in out.read_text() and "old" not in out.read_text()
    assert not stats.exists()
    monkeypatch.undo()
    assert posttrain(_mix_args(src, out)) == 0  # the next run writes the pair again
    assert json.loads(stats.read_text())["summary"]["records"] == 5


def test_mix_sources_with_the_same_file_name_keep_both_in_the_stats(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _write_convs(tmp_path / sub / "chat.jsonl", 3, sub)
    out = tmp_path / "mix.jsonl"
    args = [
        "data",
        "mix",
        "--source",
        str(tmp_path / "a" / "chat.jsonl"),
        "--source",
        str(tmp_path / "b" / "chat.jsonl"),
    ]
    assert posttrain([*args, "--out", str(out)]) == 0
    sources = json.loads((tmp_path / "mix.stats.json").read_text())["sources"]
    assert sorted(sources) == ["chat", "chat#2"] and sum(s["drawn"] for s in sources.values()) == 6


def test_safety_and_identity_say_when_fewer_distinct_records_exist(tmp_path, capsys):
    """Asked for more than exist, they write every distinct record, say so on stderr and count it in the stats."""
    out = tmp_path / "safety.jsonl"
    assert posttrain(["data", "safety", "--n", "400", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        "posttrain data safety: warning: asked for 400, 320 distinct possible (40 prompts x 8 refusals" in err
    )
    assert err.rstrip().endswith("wrote 320")
    stats = json.loads((tmp_path / "safety.stats.json").read_text())
    assert (stats["requested"], stats["distinct_possible"], stats["records"]) == (400, 320, 320)
    assert len(stats["warnings"]) == 1 and len(_lines(out)) == 320
    assert posttrain(["data", "safety", "--n", "300", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    pairs = {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in _lines(out)}
    assert len(pairs) == 300 and len({p for p, _ in pairs}) == 40
    ident = tmp_path / "identity.jsonl"
    assert (
        posttrain(["data", "identity", "--name", "Ada", "--maker", "Acme", "--n", "300", "--out", str(ident)])
        == 0
    )
    assert (
        "asked for 300, 144 distinct possible (24 questions x 6 answers); wrote 144"
        in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "identity.stats.json").read_text())["records"] == len(_lines(ident)) == 144
    assert posttrain(["data", "identity", "--name", "Ada", "--maker", "Acme", "--out", str(ident)]) == 0
    assert "warning" not in capsys.readouterr().err and len(_lines(ident)) == 144  # default: all of them


def test_filter_warns_when_a_label_is_removed_entirely(tmp_path, capsys):
    q = "Is the review positive, negative, or mixed?"
    rows = [
        (f"{q} Review {i}.", label) for i, label in enumerate(["positive", "positive", "negative", "mixed"])
    ]
    src = tmp_path / "sst.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                    "meta": {"task": "sst"},
                }
            )
            + "\n"
            for u, a in rows
        )
    )
    out = tmp_path / "clean.jsonl"
    assert posttrain(["data", "filter", "--in", str(src), "--min-chars", "6", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    line = "filter removed every record of label 'mixed' in task 'sst' (1 before; too_few_chars: 1)"
    assert f"posttrain data filter: warning: {line}" in err
    stats = json.loads((tmp_path / "clean.stats.json").read_text())
    assert stats["warnings"] == [line] and stats["labels"]["sst"]["positive"] == {"before": 2, "after": 2}


def test_filter_on_the_t0_file_keeps_both_classes(tmp_path, capsys):
    from pathlib import Path

    t0 = Path(__file__).resolve().parents[2] / "shared" / "data" / "t0_ag_news_classify_with_choices.jsonl"
    if not t0.exists():
        pytest.skip("shared data absent")
    tasks, clean = tmp_path / "t0.jsonl", tmp_path / "t0.clean.jsonl"
    assert posttrain(["data", "from-tasks", "--file", str(t0), "--out", str(tasks)]) == 0
    assert posttrain(["data", "filter", "--in", str(tasks), "--out", str(clean)]) == 0
    assert "warning" not in capsys.readouterr().err
    labels = json.loads((tmp_path / "t0.clean.stats.json").read_text())["labels"][
        "t0_ag_news_classify_with_choices"
    ]
    assert labels == {
        "Business": {"before": 78, "after": 75},  # 3 near-duplicate Reuters stories
        "Science and technology": {"before": 122, "after": 122},
    }
