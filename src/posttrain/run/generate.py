"""`posttrain generate --model M [--adapter A] --prompts in.jsonl --out out.jsonl`: batch generation.

Each input row has `messages` (a chat; a trailing assistant turn is dropped) or `prompt` (one user turn). Each
output row is the input row plus `response`, `finished` (stopped on an end token, not cut by the limit) and
`response_tokens`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.data.schema import DataError, Message, messages_from, where


def prompt_messages(row: dict, path: str, line: int, system: str | None) -> list[Message]:
    if "messages" in row:
        msgs = messages_from(row["messages"], path, line, "messages")
        while msgs and msgs[-1].role == "assistant":
            msgs = msgs[:-1]
    elif "prompt" in row:
        msgs = messages_from(row["prompt"], path, line, "prompt")
    else:
        raise DataError(f"{where(path, line, 'messages')}: a prompt row needs 'messages' or 'prompt'")
    if not msgs:
        raise DataError(f"{where(path, line, 'messages')}: no prompt left (only assistant turns?)")
    if system and msgs[0].role != "system":
        msgs = [Message("system", system), *msgs]
    return msgs


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="posttrain generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory or Hub name")
    p.add_argument("--adapter", help="adapter directory to load on top")
    p.add_argument(
        "--prompts", required=True, help="JSONL (or json/parquet/csv) rows with messages or prompt"
    )
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--template", default="auto", help="chat template (auto | chatml | llama3 | ...)")
    p.add_argument("--system", help="system prompt for rows without one")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from posttrain.data.chat import encode_prompt
    from posttrain.data.readers import read_records
    from posttrain.rollout import generate
    from posttrain.run.common import load_for_inference

    rows, prompts = [], []
    model, tok = load_for_inference(args.model, args.adapter, dtype=args.dtype, device=args.device)
    for path, line, row in read_records(args.prompts):
        rows.append(row)
        prompts.append(encode_prompt(tok, prompt_messages(row, path, line, args.system), args.template))
    greedy = args.temperature <= 0
    ro = generate(
        model,
        tok,
        prompts,
        args.max_new_tokens,
        temperature=1.0 if greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        do_sample=not greedy,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row, text, ids, done in zip(rows, ro.texts, ro.response_ids, ro.finished):
            f.write(
                json.dumps({**row, "response": text, "finished": done, "response_tokens": len(ids)}) + "\n"
            )
    print(f"wrote {len(rows)} responses to {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (DataError, ValueError, FileNotFoundError, OSError) as e:
        print(f"posttrain generate: error: {e}", file=sys.stderr)
        return 1
