"""Misuse of `posttrain data filter | safety | identity | self-instruct | mix | stats` is one line on stderr with
exit 2 (bad command line) or 1 (bad input, unreachable endpoint), no traceback, and no output file."""

import json
import shlex

import pytest

from posttrain.cli import main as posttrain

SEEDS = {"instruction": "Add the numbers.", "instances": [{"input": "1 2", "output": "3"}]}
CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
SI = "data self-instruct --seed-tasks {d}/seeds.jsonl --generator http://127.0.0.1:9/v1 --model m --out {d}/o.jsonl"

CASES = {
    # argv, exit code, what the line must name
    "mix-no-source": ("data mix --out {d}/o.jsonl", 2, "give at least one --source"),
    "mix-rate-only-no-total": ("data mix --rate {d}/ok.jsonl:0.5 --out {d}/o.jsonl", 2, "needs --total"),
    "mix-bad-total": ("data mix --source {d}/ok.jsonl --total 0 --out {d}/o.jsonl", 2, "--total"),
    "si-concurrency-zero": (SI + " --concurrency 0", 2, "argument --concurrency: expected a number > 0"),
    "si-concurrency-negative": (SI + " --concurrency -2", 2, "argument --concurrency"),
    "si-concurrency-word": (SI + " --concurrency many", 2, "argument --concurrency"),
    "si-retries-negative": (SI + " --retries -1", 2, "argument --retries: expected a number >= 0"),
    "si-top-p-above-1": (SI + " --top-p 1.5", 2, "argument --top-p: expected a number in (0, 1]"),
    "si-rouge-above-1": (SI + " --rouge-threshold 2", 2, "argument --rouge-threshold"),
    "si-bad-dtype": (SI + " --dtype fp64", 2, "argument --dtype: invalid choice"),
    "si-num-tasks-zero": (SI + " --num-tasks 0", 2, "argument --num-tasks"),
    "si-no-generator": (
        "data self-instruct --seed-tasks {d}/seeds.jsonl --out {d}/o.jsonl",
        2,
        "--generator",
    ),
    "si-missing-seeds": (SI.replace("seeds.jsonl", "none.jsonl"), 1, "none.jsonl: no such file"),
    "si-unreachable": (SI + " --retries 0", 1, "http://127.0.0.1:9/v1/completions"),
    "si-unreachable-listing-models": (
        SI.replace(" --model m", "") + " --retries 0",
        1,
        "v1/models: <urlopen error",
    ),
    "safety-n-zero": ("data safety --n 0 --out {d}/o.jsonl", 2, "argument --n: expected a number > 0"),
    "safety-n-negative": ("data safety --n -5 --out {d}/o.jsonl", 2, "argument --n"),
    "safety-n-fraction": ("data safety --n 2.5 --out {d}/o.jsonl", 2, "argument --n"),
    "safety-missing-prompts": ("data safety --prompts {d}/none.txt --out {d}/o.jsonl", 1, "none.txt"),
    "identity-n-zero": ("data identity --name A --maker B --n 0 --out {d}/o.jsonl", 2, "argument --n"),
    "identity-blank-name": ("data identity --name ' ' --maker B --out {d}/o.jsonl", 2, "argument --name"),
    "identity-no-maker": ("data identity --name A --out {d}/o.jsonl", 2, "--maker"),
    "filter-min-over-max": (
        "data filter --in {d}/ok.jsonl --min-words 5 --max-words 2 --out {d}/o.jsonl",
        2,
        "--min-words 5 is more than --max-words 2",
    ),
    "filter-dedup-above-1": (
        "data filter --in {d}/ok.jsonl --dedup-threshold 1.5 --out {d}/o.jsonl",
        2,
        "argument --dedup-threshold: expected a number in [0, 1]",
    ),
    "filter-no-input": ("data filter --out {d}/o.jsonl", 2, "--in"),
    "stats-no-file": ("data stats", 2, "file"),
}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    (d / "seeds.jsonl").write_text(json.dumps(SEEDS) + "\n")
    (d / "ok.jsonl").write_text(json.dumps(CONV) + "\n")
    return d


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_error(name, d, capsys):
    argv, code, expected = CASES[name]
    assert posttrain(shlex.split(argv.format(d=d))) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain data: error: "), captured.err
    assert expected in lines[0] and "Traceback" not in captured.err
    assert not (d / "o.jsonl").exists()
