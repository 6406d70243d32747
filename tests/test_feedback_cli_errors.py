"""Every `posttrain label` mistake is one line on stderr naming the file (and line and field), exit 1 for a run
error and 2 for a usage error, no traceback, and the files it was pointed at left byte-for-byte as they were."""

import json
import socket
import sqlite3

import pytest

from posttrain.cli import main
from posttrain.feedback.store import Store

GOOD = {"prompt": "2+2?", "responses": ["4", "5"]}


def jsonl(path, *lines):
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    )
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A labelling db with one task, an earlier export, a text file and a foreign SQLite db."""
    db = tmp_path / "f.sqlite"
    Store(db).add_tasks([{"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"]}])
    (tmp_path / "old.jsonl").write_text('{"earlier": "export"}\n')
    (tmp_path / "text.sqlite").write_text("not a database\n")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE notes (x)")
    other.commit()
    other.close()
    return tmp_path


def responses_file(d, *lines):
    return jsonl(d / "r.jsonl", *lines)


# name -> (argv built from the fixture dir, exit code, words stderr must hold, files that must not change)
CASES = {
    "import file missing": (
        lambda d: ["add", "--db", f"{d}/f.sqlite", "--responses", f"{d}/none.jsonl"],
        1,
        ["none.jsonl"],
        ["f.sqlite"],
    ),
    "import not UTF-8": (
        lambda d: [
            "add",
            "--db",
            f"{d}/f.sqlite",
            "--responses",
            responses_file(d, GOOD, b'{"prompt": "\xff"}'),
        ],
        1,
        ["r.jsonl:2", "UTF-8"],
        ["f.sqlite"],
    ),
    "import bad JSON": (
        lambda d: ["add", "--db", f"{d}/f.sqlite", "--responses", responses_file(d, GOOD, b"{bad")],
        1,
        ["r.jsonl:2", "invalid JSON"],
        ["f.sqlite"],
    ),
    "import missing responses": (
        lambda d: ["add", "--db", f"{d}/f.sqlite", "--responses", responses_file(d, GOOD, {"prompt": "x"})],
        1,
        ["r.jsonl:2", "'responses'"],
        ["f.sqlite"],
    ),
    "import too many responses": (
        lambda d: [
            "add",
            "--db",
            f"{d}/f.sqlite",
            "--responses",
            responses_file(d, {"prompt": "x", "responses": ["a"] * 33}),
        ],
        1,
        ["r.jsonl:1", "'responses'", "2..32"],
        ["f.sqlite"],
    ),
    "import missing prompt": (
        lambda d: [
            "add",
            "--db",
            f"{d}/f.sqlite",
            "--responses",
            responses_file(d, {"responses": ["a", "b"]}),
        ],
        1,
        ["r.jsonl:1", "'prompt'"],
        ["f.sqlite"],
    ),
    "import meta not an object": (
        lambda d: ["add", "--db", f"{d}/f.sqlite", "--responses", responses_file(d, {**GOOD, "meta": [1]})],
        1,
        ["r.jsonl:1", "'meta'"],
        ["f.sqlite"],
    ),
    "import empty": (
        lambda d: ["add", "--db", f"{d}/f.sqlite", "--responses", responses_file(d)],
        1,
        ["r.jsonl", "no rows"],
        ["f.sqlite"],
    ),
    "add to a text file": (
        lambda d: ["add", "--db", f"{d}/text.sqlite", "--responses", responses_file(d, GOOD)],
        1,
        ["text.sqlite", "not a usable SQLite database"],
        ["text.sqlite"],
    ),
    "add to a foreign SQLite db": (
        lambda d: ["add", "--db", f"{d}/other.sqlite", "--responses", responses_file(d, GOOD)],
        1,
        ["other.sqlite", "not a labelling database"],
        ["other.sqlite"],
    ),
    "add into a missing folder": (
        lambda d: ["add", "--db", f"{d}/nodir/f.sqlite", "--responses", responses_file(d, GOOD)],
        1,
        ["nodir/f.sqlite"],
        [],
    ),
    "add max-labels 0": (
        lambda d: [
            "add",
            "--db",
            f"{d}/f.sqlite",
            "--responses",
            responses_file(d, GOOD),
            "--max-labels",
            "0",
        ],
        2,
        ["--max-labels", "at least 1"],
        ["f.sqlite"],
    ),
    "add with no source": (
        lambda d: ["add", "--db", f"{d}/f.sqlite"],
        2,
        ["--responses", "--model"],
        ["f.sqlite"],
    ),
    "stats on a missing db": (
        lambda d: ["stats", "--db", f"{d}/none.sqlite"],
        1,
        ["none.sqlite", "no such labelling database"],
        [],
    ),
    "stats on a text file": (
        lambda d: ["stats", "--db", f"{d}/text.sqlite"],
        1,
        ["text.sqlite"],
        ["text.sqlite"],
    ),
    "stats on a foreign SQLite db": (
        lambda d: ["stats", "--db", f"{d}/other.sqlite"],
        1,
        ["other.sqlite", "not a labelling database"],
        ["other.sqlite"],
    ),
    "token on a missing db": (
        lambda d: ["token", "--db", f"{d}/none.sqlite", "--name", "bob"],
        1,
        ["none.sqlite"],
        [],
    ),
    "token with an empty name": (
        lambda d: ["token", "--db", f"{d}/f.sqlite", "--name", " "],
        2,
        ["--name"],
        ["f.sqlite"],
    ),
    "export from a missing db": (
        lambda d: ["export", "--db", f"{d}/none.sqlite", "--out", f"{d}/old.jsonl"],
        1,
        ["none.sqlite"],
        ["old.jsonl"],
    ),
    "export into a folder": (
        lambda d: ["export", "--db", f"{d}/f.sqlite", "--out", str(d)],
        1,
        ["{d}: is a directory"],
        ["f.sqlite"],
    ),
    "export under a file": (
        lambda d: ["export", "--db", f"{d}/f.sqlite", "--out", f"{d}/old.jsonl/out.jsonl"],
        1,
        ["old.jsonl/out.jsonl"],
        ["old.jsonl", "f.sqlite"],
    ),
    "export over the db": (
        lambda d: ["export", "--db", f"{d}/f.sqlite", "--out", f"{d}/f.sqlite"],
        2,
        ["f.sqlite"],
        ["f.sqlite"],
    ),
    "serve a missing db": (
        lambda d: ["serve", "--db", f"{d}/none.sqlite", "--port", "0"],
        1,
        ["none.sqlite"],
        [],
    ),
    "serve on a bad port": (
        lambda d: ["serve", "--db", f"{d}/f.sqlite", "--port", "70000"],
        2,
        ["--port", "70000"],
        ["f.sqlite"],
    ),
    "unknown subcommand": (lambda d: ["serv", "--db", f"{d}/f.sqlite"], 2, ["'serv'"], ["f.sqlite"]),
    "missing --db": (lambda d: ["stats"], 2, ["--db"], []),
}


def one_line_error(capsys, argv, code):
    assert main(["label", *argv]) == code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("posttrain label: error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_and_changes_nothing(files, capsys, case):
    make_argv, code, words, kept = CASES[case]
    argv = make_argv(files)
    before = {name: (files / name).read_bytes() for name in kept}
    line = one_line_error(capsys, argv, code)
    for word in words:
        assert word.format(d=files) in line, line
    for name, data in before.items():
        assert (files / name).read_bytes() == data, f"{name} changed"
    assert not (files / "none.sqlite").exists()  # a mistyped --db is not created on the way
    assert not list(files.glob(".*.tmp-*"))  # no temporary export left behind


def test_serving_on_a_port_in_use_is_one_line(files, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, ["serve", "--db", f"{files}/f.sqlite", "--port", str(port)], 1)
    assert f"127.0.0.1:{port}" in line and "cannot listen" in line


def test_export_replaces_the_old_file_whole(files, capsys):
    db = str(files / "f.sqlite")
    store = Store(db)
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    store.submit(alice, store.next_task(alice).id, [1, 0])
    assert main(["label", "export", "--db", db, "--out", f"{files}/old.jsonl"]) == 0
    (row,) = [json.loads(line) for line in (files / "old.jsonl").read_text().splitlines()]
    assert row["ranking"] == [1, 0] and row["meta"]["labeller"] == "alice"
    assert not list(files.glob(".*.tmp-*"))
