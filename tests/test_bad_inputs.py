"""Every user error of the file-reading commands (data, eval, generate, chat, merge, bench) is one line on stderr
naming the file, line and field, with exit 1 (bad input) or 2 (bad command line), and no traceback; a finished run's
outputs that a failing command targets are left byte for byte as they were, with no temporary file beside them.

Each case runs `posttrain.cli.main(argv)` in this process, as the console entry does (two cases run the real entry
in a subprocess). Paths in a case are relative to one directory built once for the module; `{d}` is that directory.
Training commands have their own matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from posttrain.cli import main as posttrain

CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "hi", "chosen": "good", "rejected": "bad"}
SEED_TASK = {"instruction": "Add the numbers.", "instances": [{"input": "1 2", "output": "3"}]}


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


FILES: dict[str, str | bytes] = {
    "ok.jsonl": _jsonl(CONV, CONV),
    "prompts.jsonl": _jsonl({"prompt": "hello"}, {"prompt": "world"}),
    "latin1.jsonl": _jsonl(CONV).encode() + '{"prompt": "café"}\n'.encode("latin-1"),
    "latin1.json": b'[\n  {"text": "ok"},\n  {"text": "caf\xe9"}\n]\n',
    "latin1.csv": b"prompt,completion\nhi,there\ncaf\xe9,x\n",
    "latin1.txt": b"I can't\nI won\xe9t\n",
    "badjson.jsonl": _jsonl(CONV, "{oops"),
    "list.jsonl": _jsonl(CONV, "[1, 2]"),
    "notlist.json": '{"rows": 3}\n',
    "msgstr.jsonl": _jsonl(CONV, {"messages": "hi"}),
    "badrole.jsonl": _jsonl(
        CONV, {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}
    ),
    "content_int.jsonl": _jsonl(CONV, {"messages": [{"role": "user", "content": 3}]}),
    "alpaca.jsonl": _jsonl({"instruction": "Say hi", "output": "hi"}),
    "meta_str.jsonl": _jsonl(CONV, {**CONV, "meta": "x"}),
    "empty.jsonl": "",
    "blank.jsonl": "\n\n",
    "unknown.txt": "hello\n",
    "garbage.parquet": b"not a parquet file",
    "prefs_nan.jsonl": _jsonl(PAIR, '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}'),
    "prefs_inf.jsonl": _jsonl(
        PAIR, PAIR, '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": Infinity}'
    ),
    "prefs_strmargin.jsonl": _jsonl({**PAIR, "margin": "high"}),
    "prefs_emptyprompt.jsonl": _jsonl(PAIR, {**PAIR, "prompt": "  "}),
    "prefs_emptychosen.jsonl": _jsonl(PAIR, {**PAIR, "chosen": []}),
    "ranking_bad.jsonl": _jsonl({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}),
    "hh_bad.jsonl": _jsonl({"chosen": "just text, no turns"}),
    "gen_emptyprompt.jsonl": _jsonl({"prompt": "ok"}, {"prompt": ""}),
    "gen_noprompt.jsonl": _jsonl({"prompt": "ok"}, {"question": "?"}),
    "preds_missing.jsonl": _jsonl(
        {"prompt": "q", "reference": "a", "prediction": "a"}, {"prompt": "q", "reference": "a"}
    ),
    "preds_ok.jsonl": _jsonl({"prompt": "q", "reference": "a", "prediction": "a"}),
    "noref.jsonl": _jsonl({"prompt": "q"}, {"prompt": "r"}),
    "seed_bad.jsonl": _jsonl(SEED_TASK, {"instruction": "", "instances": []}),
    "seed_ok.jsonl": _jsonl(SEED_TASK),
    "safety_emptyprompt.jsonl": _jsonl({"prompt": "How?"}, {"prompt": ""}),
    "spec_yaml.yaml": "tasks: [\n  {name: a\n",
    "spec_kshot.yaml": "tasks:\n  - name: a\n    rows: [{input: x, output: y}]\n    k_shot: many\n",
    "spec_placeholder.yaml": "tasks:\n  - name: a\n    rows: [{input: x, output: y}]\n    templates: ['{nope}']\n",
    "spec_missing_source.yaml": "tasks:\n  - name: a\n    source: nowhere.jsonl\n",
    "spec_latin1.yaml": b"tasks:\n  - name: caf\xe9\n",
    "metric_syntax.py": "def f(:\n",
    "adir.jsonl/.keep": "",
    "notadapter/README": "",
    "badadapter/adapter_config.json": "{bad",
    "badadapter/adapter_model.safetensors": b"",
    "nojson_model/config.json": "{bad",
    # a finished run's outputs that failing commands must leave alone
    "runs/mix.jsonl": _jsonl(CONV),
    "runs/mix.stats.json": '{"command": "mix", "old": true}\n',
    "runs/out.jsonl": _jsonl({"prompt": "old", "response": "old"}),
    "runs/report/report.json": '{"old": true}\n',
    "runs/report/report.md": "# old report\n",
    "runs/merged/config.json": '{"old": true}\n',
}


@pytest.fixture(scope="module", autouse=True)
def no_progress_bars():
    """transformers' "Loading weights" bar is progress, not an error line: keep it out of stderr here."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if was:
        logging.enable_progress_bar()


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    from posttrain.models import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("bad")
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "notok_model").mkdir()
    (root / "notok_model" / "config.json").write_text((root / "model" / "config.json").read_text())
    tiny_tokenizer().save_pretrained(root / "nojson_model")  # a tokenizer, and a config.json that is not JSON
    return root


@dataclass
class Case:
    argv: str
    """The command line (split on spaces; `{d}` is the fixture directory)."""
    code: int
    expect: tuple[str, ...]
    """Substrings of the error line: the file, `file:line`, `field 'name'`, the reason."""
    protect: tuple[str, ...] = ()
    """Existing outputs the command targets: byte-identical afterwards."""
    hide: tuple[str, ...] = ()
    """Modules made unimportable for the case (a missing optional dependency)."""


MIX_OUT = ("runs/mix.jsonl", "runs/mix.stats.json")
REPORT = ("runs/report/report.json", "runs/report/report.md")
MODEL_GONE = "/nonexistent: not a model directory or Hub name (no such directory)"

CASES: dict[str, Case] = {
    # ---- data: the shared reader
    "stats-non-utf8-jsonl": Case("data stats {d}/latin1.jsonl", 1, ("latin1.jsonl:2:", "not UTF-8", "0xe9")),
    "stats-non-utf8-json": Case("data stats {d}/latin1.json", 1, ("latin1.json:3:", "not UTF-8")),
    "stats-non-utf8-csv": Case("data stats {d}/latin1.csv", 1, ("latin1.csv:3:", "not UTF-8")),
    "stats-invalid-json": Case("data stats {d}/badjson.jsonl", 1, ("badjson.jsonl:2:", "invalid JSON")),
    "stats-top-level-list": Case(
        "data stats {d}/list.jsonl", 1, ("list.jsonl:2:", "expected a JSON object, got list")
    ),
    "stats-json-not-a-list": Case(
        "data stats {d}/notlist.json", 1, ("notlist.json:", "expected a JSON list")
    ),
    "stats-messages-not-list": Case(
        "data stats {d}/msgstr.jsonl", 1, ("msgstr.jsonl:2 field 'messages'", "list")
    ),
    "stats-bad-role": Case(
        "data stats {d}/badrole.jsonl", 1, ("badrole.jsonl:2 field 'messages[0].role'", "wizard")
    ),
    "stats-content-not-string": Case(
        "data stats {d}/content_int.jsonl", 1, ("content_int.jsonl:2 field 'messages[0].content'",)
    ),
    "stats-empty-file": Case("data stats {d}/empty.jsonl", 1, ("empty.jsonl", "no records")),
    "stats-blank-lines-only": Case("data stats {d}/blank.jsonl", 1, ("blank.jsonl", "no records")),
    "stats-directory": Case("data stats {d}/adir.jsonl", 1, ("adir.jsonl", "is a directory")),
    "stats-missing-file": Case("data stats {d}/missing.jsonl", 1, ("missing.jsonl", "file not found")),
    "stats-unknown-suffix": Case(
        "data stats {d}/unknown.txt", 1, ("unknown.txt", "unknown file type '.txt'")
    ),
    "stats-corrupt-parquet": Case(
        "data stats {d}/garbage.parquet", 1, ("garbage.parquet", "not a readable parquet")
    ),
    "stats-parquet-without-pyarrow": Case(
        "data stats {d}/garbage.parquet",
        1,
        ("pyarrow", "pip install 'posttrain[data]'"),
        hide=("pyarrow", "pyarrow.parquet"),
    ),
    "stats-hub-name-without-datasets": Case(
        "data stats someorg/someset",
        1,
        ("someorg/someset", "datasets", "posttrain[data]"),
        hide=("datasets",),
    ),
    "stats-margin-nan": Case(
        "data stats {d}/prefs_nan.jsonl", 1, ("prefs_nan.jsonl:2 field 'margin'", "nan")
    ),
    "stats-margin-inf": Case(
        "data stats {d}/prefs_inf.jsonl", 1, ("prefs_inf.jsonl:3 field 'margin'", "inf")
    ),
    "stats-margin-string": Case(
        "data stats {d}/prefs_strmargin.jsonl", 1, ("prefs_strmargin.jsonl:1 field 'margin'", "'high'")
    ),
    "stats-empty-prompt": Case(
        "data stats {d}/prefs_emptyprompt.jsonl",
        1,
        ("prefs_emptyprompt.jsonl:2 field 'prompt'", "empty prompt"),
    ),
    "stats-empty-chosen": Case(
        "data stats {d}/prefs_emptychosen.jsonl",
        1,
        ("prefs_emptychosen.jsonl:2 field 'chosen'", "no messages"),
    ),
    "stats-ranking-not-permutation": Case(
        "data stats {d}/ranking_bad.jsonl", 1, ("ranking_bad.jsonl:1 field 'ranking'", "permutation")
    ),
    "stats-tokenizer-missing": Case("data stats {d}/ok.jsonl --tokenizer /nonexistent", 1, (MODEL_GONE,)),
    # ---- data: the construction commands, over a finished mix
    "mix-invalid-json-keeps-old-output": Case(
        "data mix --source {d}/ok.jsonl --source {d}/badjson.jsonl --out {d}/runs/mix.jsonl",
        1,
        ("badjson.jsonl:2:", "invalid JSON"),
        MIX_OUT,
    ),
    "mix-empty-source": Case(
        "data mix --source {d}/empty.jsonl --out {d}/runs/mix.jsonl",
        1,
        ("empty.jsonl", "no records"),
        MIX_OUT,
    ),
    "mix-meta-not-object": Case(
        "data mix --source {d}/meta_str.jsonl --out {d}/runs/mix.jsonl",
        1,
        ("meta_str.jsonl:2 field 'meta'",),
        MIX_OUT,
    ),
    "mix-rate-not-a-number": Case(
        "data mix --source {d}/ok.jsonl --rate {d}/ok.jsonl:lots --out {d}/runs/mix.jsonl",
        2,
        ("--rate",),
        MIX_OUT,
    ),
    "mix-rate-above-one": Case(
        "data mix --source {d}/ok.jsonl --rate {d}/ok.jsonl:1.5 --out {d}/runs/mix.jsonl",
        2,
        ("--rate", "[0, 1]"),
        MIX_OUT,
    ),
    "mix-negative-weight": Case(
        "data mix --source {d}/ok.jsonl:-1 --strategy weights --out {d}/runs/mix.jsonl",
        2,
        ("--source", "weight", ">= 0"),
        MIX_OUT,
    ),
    "mix-weights-missing": Case(
        "data mix --source {d}/ok.jsonl --strategy weights --out {d}/runs/mix.jsonl",
        2,
        ("PATH:WEIGHT",),
        MIX_OUT,
    ),
    "mix-zero-temperature": Case(
        "data mix --source {d}/ok.jsonl --strategy temperature --temperature 0 --out {d}/runs/mix.jsonl",
        2,
        ("--temperature", "> 0"),
        MIX_OUT,
    ),
    "mix-no-sources": Case("data mix --out {d}/runs/mix.jsonl", 2, ("--source",), MIX_OUT),
    "mix-out-is-directory": Case(
        "data mix --source {d}/ok.jsonl --out {d}/runs", 2, ("runs", "is a directory")
    ),
    "mix-unknown-flag": Case("data mix --source {d}/ok.jsonl --bogus --out {d}/x.jsonl", 2, ("--bogus",)),
    "filter-not-conversations": Case(
        "data filter --in {d}/alpaca.jsonl --out {d}/runs/mix.jsonl",
        1,
        ("alpaca.jsonl:1 field 'messages'", "missing"),
        MIX_OUT,
    ),
    "filter-bad-role": Case("data filter --in {d}/badrole.jsonl --out {d}/f.jsonl", 1, ("badrole.jsonl:2",)),
    "from-chat-invalid-json": Case(
        "data from-chat --in {d}/badjson.jsonl --out {d}/runs/mix.jsonl", 1, ("badjson.jsonl:2:",), MIX_OUT
    ),
    "from-chat-not-a-transcript": Case(
        "data from-chat --in {d}/hh_bad.jsonl --format hh --out {d}/c.jsonl",
        1,
        ("hh_bad.jsonl:1 field 'chosen'",),
    ),
    "from-tasks-nothing-given": Case("data from-tasks --out {d}/t.jsonl", 2, ("--spec",)),
    "from-tasks-invalid-yaml": Case(
        "data from-tasks --spec {d}/spec_yaml.yaml --out {d}/t.jsonl", 1, ("spec_yaml.yaml:", "invalid YAML")
    ),
    "from-tasks-non-utf8-spec": Case(
        "data from-tasks --spec {d}/spec_latin1.yaml --out {d}/t.jsonl",
        1,
        ("spec_latin1.yaml:2:", "not UTF-8"),
    ),
    "from-tasks-wrong-type": Case(
        "data from-tasks --spec {d}/spec_kshot.yaml --out {d}/t.jsonl",
        1,
        ("spec_kshot.yaml field 'tasks[0].k_shot'",),
    ),
    "from-tasks-unknown-placeholder": Case(
        "data from-tasks --spec {d}/spec_placeholder.yaml --out {d}/t.jsonl",
        1,
        ("spec_placeholder.yaml field 'tasks[0]'", "{nope}"),
    ),
    "from-tasks-missing-source": Case(
        "data from-tasks --spec {d}/spec_missing_source.yaml --out {d}/t.jsonl",
        1,
        ("nowhere.jsonl", "not found"),
    ),
    "safety-non-utf8-prompts": Case(
        "data safety --prompts {d}/latin1.txt --out {d}/s.jsonl", 1, ("latin1.txt:2:", "not UTF-8")
    ),
    "safety-empty-prompt": Case(
        "data safety --prompts {d}/safety_emptyprompt.jsonl --out {d}/s.jsonl",
        1,
        ("safety_emptyprompt.jsonl:2 field 'prompt'",),
    ),
    "safety-zero-n": Case("data safety --n 0 --out {d}/s.jsonl", 2, ("--n",)),
    "identity-empty-name": Case("data identity --name= --maker M --out {d}/i.jsonl", 2, ("--name",)),
    "self-instruct-bad-seed": Case(
        "data self-instruct --seed-tasks {d}/seed_bad.jsonl --generator {d}/model --out {d}/si.jsonl",
        1,
        ("seed_bad.jsonl:2 field 'instruction'",),
    ),
    "self-instruct-bad-generator": Case(
        "data self-instruct --seed-tasks {d}/seed_ok.jsonl --generator /nonexistent --out {d}/si.jsonl",
        1,
        (MODEL_GONE,),
    ),
    # ---- eval
    "eval-config-typo": Case("eval accuracy.dta=x.jsonl", 2, ("accuracy.dta", "accuracy.data")),
    "eval-nothing-to-do": Case("eval output_dir={d}/runs/report", 2, ("nothing to evaluate",), REPORT),
    "eval-model-missing": Case(
        "eval model=/nonexistent likelihood.data={d}/ok.jsonl output_dir={d}/runs/report",
        1,
        (MODEL_GONE,),
        REPORT,
    ),
    "eval-non-utf8-keeps-report": Case(
        "eval model={d}/model likelihood.data={d}/latin1.jsonl output_dir={d}/runs/report",
        1,
        ("latin1.jsonl:2:", "not UTF-8"),
        REPORT,
    ),
    "eval-prediction-missing": Case(
        "eval accuracy.predictions={d}/preds_missing.jsonl output_dir={d}/runs/report",
        1,
        ("preds_missing.jsonl:2 field 'prediction'",),
        REPORT,
    ),
    "eval-no-references": Case(
        "eval model={d}/model accuracy.data={d}/noref.jsonl output_dir={d}/runs/report",
        1,
        ("noref.jsonl", "no row has a reference"),
        REPORT,
    ),
    "eval-margin-nan": Case(
        "eval model={d}/model accuracy.data={d}/prefs_nan.jsonl output_dir={d}/r2",
        1,
        ("prefs_nan.jsonl:2 field 'margin'",),
    ),
    "eval-phrases-non-utf8": Case(
        "eval model={d}/model safety.harmful={d}/prompts.jsonl safety.phrases={d}/latin1.txt output_dir={d}/r2",
        1,
        ("latin1.txt:2:", "not UTF-8"),
    ),
    "eval-adapter-missing": Case(
        "eval model={d}/model adapter={d}/nowhere likelihood.data={d}/ok.jsonl output_dir={d}/r2",
        1,
        ("nowhere: not an adapter directory", "no such directory"),
    ),
    "eval-adapter-not-adapter": Case(
        "eval model={d}/model adapter={d}/notadapter likelihood.data={d}/ok.jsonl output_dir={d}/r2",
        1,
        ("notadapter: not an adapter directory", "adapter_config.json"),
    ),
    "eval-compared-model-missing": Case(
        "eval model={d}/model likelihood.data={d}/ok.jsonl --compare other=/nonexistent output_dir={d}/runs/report",
        1,
        (MODEL_GONE,),
        REPORT,
    ),
    "eval-reward-model-missing": Case(
        "eval model={d}/model preference.data={d}/prompts.jsonl preference.reward_model={d}/nowhere output_dir={d}/r2",
        1,
        ("nowhere: not a reward model directory", "reward_config.json"),
    ),
    "eval-output-dir-is-file": Case(
        "eval accuracy.predictions={d}/ok.jsonl output_dir={d}/ok.jsonl",
        2,
        ("output_dir", "ok.jsonl", "is a file"),
    ),
    "eval-user-metric-syntax-error": Case(
        "eval accuracy.predictions={d}/preds_ok.jsonl accuracy.user_metric={d}/metric_syntax.py:f output_dir={d}/r2",
        2,
        ("metric_syntax.py:1", "invalid Python"),
    ),
    "eval-compare-bad-spec": Case("eval --compare name= likelihood.data={d}/ok.jsonl", 2, ("--compare",)),
    # ---- generate
    "generate-model-missing-keeps-output": Case(
        "generate --model /nonexistent --prompts {d}/prompts.jsonl --out {d}/runs/out.jsonl",
        1,
        (MODEL_GONE,),
        ("runs/out.jsonl",),
    ),
    "generate-bad-row-keeps-output": Case(
        "generate --model {d}/model --prompts {d}/gen_noprompt.jsonl --out {d}/runs/out.jsonl",
        1,
        ("gen_noprompt.jsonl:2 field 'prompt'", "missing"),
        ("runs/out.jsonl",),
    ),
    "generate-empty-prompt": Case(
        "generate --model {d}/model --prompts {d}/gen_emptyprompt.jsonl --out {d}/runs/out.jsonl",
        1,
        ("gen_emptyprompt.jsonl:2 field 'prompt'", "empty prompt"),
        ("runs/out.jsonl",),
    ),
    "generate-prompts-missing": Case(
        "generate --model {d}/model --prompts {d}/missing.jsonl --out {d}/g.jsonl",
        1,
        ("missing.jsonl", "not found"),
    ),
    "generate-prompts-directory": Case(
        "generate --model {d}/model --prompts {d}/adir.jsonl --out {d}/g.jsonl",
        1,
        ("adir.jsonl", "directory"),
    ),
    "generate-out-is-directory": Case(
        "generate --model {d}/model --prompts {d}/prompts.jsonl --out {d}/runs",
        2,
        ("--out", "is a directory"),
    ),
    "generate-unknown-template": Case(
        "generate --model {d}/model --prompts {d}/prompts.jsonl --out {d}/g.jsonl --template nope",
        2,
        ("unknown chat template 'nope'",),
    ),
    "generate-zero-batch-size": Case(
        "generate --model {d}/model --prompts {d}/prompts.jsonl --out {d}/g.jsonl --batch-size 0",
        2,
        ("--batch-size",),
    ),
    "generate-model-without-tokenizer": Case(
        "generate --model {d}/notok_model --prompts {d}/prompts.jsonl --out {d}/g.jsonl",
        1,
        ("notok_model: not a model directory or Hub name", "no tokenizer"),
    ),
    "generate-corrupt-config": Case(
        "generate --model {d}/nojson_model --prompts {d}/prompts.jsonl --out {d}/g.jsonl",
        1,
        ("nojson_model: not a model directory or Hub name", "not a valid JSON file"),
    ),
    "generate-adapter-bad-config": Case(
        "generate --model {d}/model --adapter {d}/badadapter --prompts {d}/prompts.jsonl --out {d}/runs/out.jsonl",
        1,
        ("badadapter: not a usable adapter directory", "invalid"),
        ("runs/out.jsonl",),
    ),
    # ---- chat
    "chat-model-missing": Case("chat /nonexistent", 1, (MODEL_GONE,)),
    "chat-adapter-not-adapter": Case(
        "chat {d}/model --adapter {d}/ok.jsonl", 1, ("ok.jsonl: not an adapter directory",)
    ),
    "chat-bad-device": Case("chat {d}/model --device gpu", 2, ("device", "'gpu'")),
    "generate-no-such-device": Case(
        "generate --model {d}/model --prompts {d}/prompts.jsonl --out {d}/runs/out.jsonl --device cuda:7",
        2,
        ("device 'cuda:7'",),
        ("runs/out.jsonl",),
    ),
    "chat-unknown-template": Case("chat {d}/model --template nope", 2, ("unknown chat template 'nope'",)),
    # ---- merge
    "merge-model-missing-keeps-output": Case(
        "merge --model /nonexistent --adapter {d}/badadapter --out {d}/runs/merged",
        1,
        (MODEL_GONE,),
        ("runs/merged/config.json",),
    ),
    "merge-adapter-bad-config-keeps-output": Case(
        "merge --model {d}/model --adapter {d}/badadapter --out {d}/runs/merged",
        1,
        ("badadapter: not a usable adapter directory", "invalid"),
        ("runs/merged/config.json",),
    ),
    "merge-adapter-not-adapter": Case(
        "merge --model {d}/model --adapter {d}/notadapter --out {d}/m",
        1,
        ("notadapter: not an adapter directory",),
    ),
    "merge-out-is-input": Case(
        "merge --model {d}/model --adapter {d}/badadapter --out {d}/badadapter", 2, ("--out", "input")
    ),
    "merge-bad-dtype": Case(
        "merge --model {d}/model --adapter {d}/badadapter --out {d}/m --dtype fp8", 2, ("--dtype", "'fp8'")
    ),
    "merge-needs-model": Case("merge --adapter {d}/badadapter --out {d}/m", 2, ("--model",)),
    # ---- bench (arguments only)
    "bench-unknown-workload": Case("bench nope", 2, ("invalid choice: 'nope'",)),
    "bench-anchor-without-json": Case("bench sft-lora --anchor", 2, ("--anchor needs --json",)),
    "bench-no-workload": Case("bench", 2, ("workload",)),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, d, capsys, monkeypatch):
    case = CASES[name]
    for module in case.hide:  # `import module` raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    protected = {p: _digest(d / p) for p in case.protect}
    before = set(d.rglob("*"))
    code = posttrain(case.argv.format(d=d).split(" "))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert (code, len(lines)) == (case.code, 1), err
    assert lines[0].startswith(f"posttrain {case.argv.split()[0]}: error: "), err
    assert "Traceback" not in err
    for want in case.expect:
        assert want in lines[0], f"{want!r} not in {lines[0]!r}"
    assert {p: _digest(d / p) for p in case.protect} == protected
    left = [p for p in set(d.rglob("*")) - before if ".tmp-" in p.name]
    assert not left, f"temporary files left behind: {left}"


def test_the_matrix_covers_every_command():
    from posttrain.data.cli import SUBCOMMANDS

    def command(argv: str) -> str:
        words = argv.split()
        return " ".join(words[:2]) if words[0] == "data" else words[0]

    covered = {command(case.argv) for case in CASES.values()}
    assert {f"data {s}" for s in SUBCOMMANDS} | {"eval", "generate", "chat", "merge", "bench"} <= covered
    assert len(CASES) >= 45


@pytest.mark.parametrize(
    "argv, code, want",
    [
        (["data", "stats", "latin1.jsonl"], 1, "latin1.jsonl:2: not UTF-8"),
        (
            ["generate", "--model", "/nonexistent", "--prompts", "prompts.jsonl", "--out", "o.jsonl"],
            1,
            MODEL_GONE,
        ),
    ],
)
def test_the_console_entry_prints_no_traceback(argv, code, want, d):
    """The real entry point (`python -m posttrain`, what the `posttrain` script runs) in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "posttrain", *argv],
        cwd=d,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().count("\n") == 0 and want in done.stderr and "Traceback" not in done.stderr
