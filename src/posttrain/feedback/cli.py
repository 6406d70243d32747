"""`posttrain label serve|add|token|export|stats`: collect human rankings of model responses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.data.construct.io import read_jsonl
from posttrain.data.prompts import prompt_messages
from posttrain.data.schema import DataError, where
from posttrain.feedback.agreement import agreement
from posttrain.feedback.store import Store


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
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
            or len(responses) < 2
            or not all(isinstance(r, str) for r in responses)
        ):
            raise DataError(f"{where(path, n, 'responses')}: expected a list of at least two strings")
        items.append(
            {"prompt": _prompt_of(row, path, n), "responses": responses, "meta": row.get("meta", {})}
        )
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
) -> list[dict]:
    """Sample K responses per prompt with the rollout engine."""
    from posttrain.artifacts import load_for_inference
    from posttrain.data.chat import encode_prompt
    from posttrain.data.schema import Message
    from posttrain.rollout import generate

    policy, tok = load_for_inference(model, adapter=adapter)
    rows = [
        (n, _prompt_of(row, prompts_path, n), row.get("meta", {})) for n, row in _read_jsonl(prompts_path)
    ]
    ids = [encode_prompt(tok, [Message(**m) for m in p], template) for _, p, _ in rows]
    repeated = [x for x in ids for _ in range(k)]
    out = generate(policy, tok, repeated, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return [
        {"prompt": p, "responses": out.texts[i * k : (i + 1) * k], "meta": {**meta, "model": model}}
        for i, (_, p, meta) in enumerate(rows)
    ]


def export(db: str, out: str, include_flagged: bool = True) -> int:
    """One K-way ranking per (task, labeller), newest judgement; `posttrain rm data_format=ranking` reads it."""
    rows = 0
    tmp = Path(out).with_suffix(Path(out).suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for j in Store(db).judgements(latest_only=True):
            if j["flags"] and not include_flagged:
                continue
            meta = {
                **j["meta"],
                "task_id": j["task_id"],
                "labeller": j["labeller"],
                "flags": j["flags"],
                "criteria": j["criteria"],
            }
            f.write(
                json.dumps(
                    {
                        "prompt": j["prompt"],
                        "responses": j["responses"],
                        "ranking": j["ranking"],
                        "meta": meta,
                    }
                )
                + "\n"
            )
            rows += 1
    tmp.replace(out)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="posttrain label", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the ranking page")
    s.add_argument("--db", required=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    s.add_argument("--port", type=int, default=8000)
    a = sub.add_parser("add", help="add tasks: sample K responses with a model, or import them")
    a.add_argument("--db", required=True)
    a.add_argument("--prompts", help="JSONL of prompts (prompt | messages | instruction) for --model")
    a.add_argument("--model")
    a.add_argument("--adapter")
    a.add_argument("--k", type=int, default=4)
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--temperature", type=float, default=1.0)
    a.add_argument("--template", default="auto")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--responses", help="JSONL of {prompt|messages, responses: [...]} to import")
    a.add_argument("--max-labels", type=int, default=1, help="show each task to up to M labellers")
    t = sub.add_parser("token", help="create a labeller and print their token")
    t.add_argument("--db", required=True)
    t.add_argument("--name", required=True)
    e = sub.add_parser("export", help="write K-way rankings JSONL for `posttrain rm`")
    e.add_argument("--db", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--skip-flagged", action="store_true")
    st = sub.add_parser("stats", help="counts and inter-labeller agreement")
    st.add_argument("--db", required=True)
    args = p.parse_args(argv)

    if args.cmd == "serve":
        from posttrain.feedback.server import make_server

        server = make_server(args.db, args.host, args.port)
        print(
            f"posttrain label: serving {args.db} on http://{args.host}:{server.server_address[1]}/?token=TOKEN "
            "(Ctrl-C to stop)",
            flush=True,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    if args.cmd == "add":
        if bool(args.responses) == bool(args.model):
            p.error("add needs exactly one of --responses FILE or --model DIR (with --prompts)")
        if args.model and not args.prompts:
            p.error("--model needs --prompts FILE.jsonl")
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
            )
        )
        n = Store(args.db).add_tasks(items, max_labels=args.max_labels)
        print(f"added {n} tasks to {args.db}")
        return 0
    if args.cmd == "token":
        print(Store(args.db).add_labeller(args.name))
        return 0
    if args.cmd == "export":
        n = export(args.db, args.out, include_flagged=not args.skip_flagged)
        print(f"wrote {n} rankings to {args.out}")
        return 0
    store = Store(args.db)
    report = {**store.counts(), **agreement(store.judgements(latest_only=True))}
    for k, v in report.items():
        print(f"{k:>16}: {v:.3f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
