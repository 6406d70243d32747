"""`posttrain label serve|add|token|export|stats`: collect human rankings of model responses."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from posttrain.atomic import atomic_write_jsonl
from posttrain.commandline import ArgumentParser
from posttrain.data.construct.io import read_jsonl
from posttrain.data.prompts import prompt_messages
from posttrain.data.schema import DataError, where
from posttrain.errors import UsageError, UserError
from posttrain.feedback.agreement import agreement
from posttrain.feedback.store import Store, StoreError
from posttrain.feedback.validate import MAX_RESPONSES
from posttrain.rollout_backend import add_backend_argument


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    """Rows of a JSONL file; the shared reader names file and line for bad bytes, bad JSON and non-objects."""
    rows = [(n, row) for _, n, row in read_jsonl(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _prompt_of(row: dict, path: str, line: int) -> list[dict]:
    """The prompt of a row, read as PPO and eval read it (`posttrain.data.prompts`)."""
    return [m.to_dict() for m in prompt_messages(row, path, line)[0]]


def import_responses(path: str) -> list[dict]:
    """Rows {prompt|messages, responses: [str, ...], meta?} -> store tasks."""
    items = []
    for n, row in _read_jsonl(path):
        responses = row.get("responses")
        if (
            not isinstance(responses, list)
            or not 2 <= len(responses) <= MAX_RESPONSES
            or not all(isinstance(r, str) for r in responses)
        ):
            raise DataError(f"{where(path, n, 'responses')}: expected a list of 2..{MAX_RESPONSES} strings")
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"{where(path, n, 'meta')}: expected an object, got {type(meta).__name__}")
        items.append({"prompt": _prompt_of(row, path, n), "responses": responses, "meta": meta})
    return items


def sample_responses(
    prompts_path: str,
    model: str,
    adapter: str | None,
    k: int,
    max_new_tokens: int,
    temperature: float,
    template: str,
    seed: int,
    backend: str = "hf",
) -> list[dict]:
    """Sample K responses per prompt with the rollout engine."""
    from posttrain.artifacts import load_for_inference
    from posttrain.data.chat import encode_prompt
    from posttrain.data.schema import Message
    from posttrain.rollout import generate

    if backend == "vllm":
        from posttrain.rollout_vllm import check_supported

        check_supported()  # before the model loads
    policy, tok = load_for_inference(model, adapter=adapter)
    if backend == "vllm":
        check_supported(policy)
    rows = [
        (n, _prompt_of(row, prompts_path, n), row.get("meta", {})) for n, row in _read_jsonl(prompts_path)
    ]
    ids = [encode_prompt(tok, [Message(**m) for m in p], template) for _, p, _ in rows]
    repeated = [x for x in ids for _ in range(k)]
    out = generate(
        policy,
        tok,
        repeated,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        progress=True,
        backend=backend,
    )
    return [
        {"prompt": p, "responses": out.texts[i * k : (i + 1) * k], "meta": {**meta, "model": model}}
        for i, (_, p, meta) in enumerate(rows)
    ]


def export(db: str, out: str, include_flagged: bool = True) -> int:
    """One K-way ranking per (task, labeller), newest judgement; `posttrain rm data_format=ranking` reads it.
    The file is replaced atomically: a failed export leaves the previous one as it was."""
    if Path(out).resolve() == Path(db).resolve():
        raise UsageError(f"--out {out} is the database itself; choose another file")
    if Path(out).is_dir():
        raise UserError(f"{out}: is a directory; --out needs a file name")
    judgements = Store(db, create=False).judgements(latest_only=True)
    rows = (
        {
            "prompt": j["prompt"],
            "responses": j["responses"],
            "ranking": j["ranking"],
            "meta": {
                **j["meta"],
                "task_id": j["task_id"],
                "labeller": j["labeller"],
                "flags": j["flags"],
                "criteria": j["criteria"],
            },
        }
        for j in judgements
        if include_flagged or not j["flags"]
    )
    try:
        return atomic_write_jsonl(out, rows)
    except OSError as e:  # FileExistsError here: mkdir met a file where the folder should be
        reason = "a parent folder is a file" if isinstance(e, FileExistsError) else e.strerror or e
        raise UserError(f"{out}: cannot write the export ({reason})") from None


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _port(text: str) -> int:
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _name(text: str) -> str:
    if not 1 <= len(text.strip()) <= 64 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"a labeller name is 1..64 printable characters, got {text!r:.80}")
    return text.strip()


def _host_name(text: str) -> str:
    if not text or any(c in text for c in "/ @\t"):
        raise argparse.ArgumentTypeError(f"expected a host name (optionally :port), got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="posttrain label", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the ranking page")
    s.add_argument(
        "--db", required=True, help="the SQLite database of tasks and rankings (created if missing)"
    )
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    s.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free port, printed)")
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        type=_host_name,
        help="another Host name clients use (e.g. this machine's name when --host 0.0.0.0); repeatable",
    )
    a = sub.add_parser("add", help="add tasks: sample K responses with a model, or import them")
    a.add_argument("--db", required=True, help="the SQLite database to add tasks to")
    a.add_argument("--prompts", help="JSONL of prompts (prompt | messages | instruction) for --model")
    a.add_argument("--model", help="model directory or Hub name that samples the responses")
    a.add_argument("--adapter", help="adapter directory on top of --model")
    a.add_argument("--k", type=_at_least(2), default=4, help="responses sampled per prompt")
    a.add_argument("--max-new-tokens", type=_at_least(1), default=128, help="longest sampled response")
    a.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    a.add_argument(
        "--template", default="auto", help="chat template (auto: the tokenizer's own, else chatml)"
    )
    a.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    add_backend_argument(a)
    a.add_argument("--responses", help="JSONL of {prompt|messages, responses: [...]} to import")
    a.add_argument("--max-labels", type=_at_least(1), default=1, help="show each task to up to M labellers")
    t = sub.add_parser("token", help="create a labeller and print their token")
    t.add_argument("--db", required=True, help="the SQLite database")
    t.add_argument("--name", required=True, type=_name, help="the labeller's name")
    e = sub.add_parser("export", help="write K-way rankings JSONL for `posttrain rm`")
    e.add_argument("--db", required=True, help="the SQLite database")
    e.add_argument("--out", required=True, help="rankings JSONL to write")
    e.add_argument("--skip-flagged", action="store_true", help="leave out rankings a labeller flagged")
    st = sub.add_parser("stats", help="counts and inter-labeller agreement")
    st.add_argument("--db", required=True, help="the SQLite database")
    return p


def serve(args) -> int:
    from posttrain.feedback.server import is_loopback, make_server, url_host

    try:
        server = make_server(args.db, args.host, args.port, allowed_hosts=tuple(args.allowed_host))
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if not is_loopback(args.host):
        print(
            f"posttrain label: warning: bound to {args.host}, beyond loopback: anyone who can reach it can try "
            "tokens over plain HTTP",
            file=sys.stderr,
        )
    print(
        f"posttrain label: serving {args.db} on http://{url_host(args.host)}:{server.server_address[1]}/?token=TOKEN "
        "(Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add(args) -> int:
    if bool(args.responses) == bool(args.model):
        raise UsageError("add needs exactly one of --responses FILE or --model DIR (with --prompts)")
    if args.model and not args.prompts:
        raise UsageError("add --model needs --prompts FILE.jsonl")
    items = (
        import_responses(args.responses)
        if args.responses
        else sample_responses(
            args.prompts,
            args.model,
            args.adapter,
            args.k,
            args.max_new_tokens,
            args.temperature,
            args.template,
            args.seed,
            args.backend,
        )
    )
    n = Store(args.db).add_tasks(items, max_labels=args.max_labels)
    print(f"added {n} tasks to {args.db}")
    return 0


def token(args) -> int:
    print(Store(args.db, create=False).add_labeller(args.name))
    return 0


def export_command(args) -> int:
    n = export(args.db, args.out, include_flagged=not args.skip_flagged)
    print(f"wrote {n} rankings to {args.out}")
    return 0


def stats(args) -> int:
    store = Store(args.db, create=False)
    report = {**store.counts(), **agreement(store.judgements(latest_only=True))}
    for k, v in report.items():
        print(f"{k:>16}: {v:.3f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


COMMANDS = {"serve": serve, "add": add, "token": token, "export": export_command, "stats": stats}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (
        sqlite3.DatabaseError
    ) as e:  # e.g. locked past the busy timeout, or a foreign db with a `tasks` table
        raise StoreError(f"{args.db}: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
