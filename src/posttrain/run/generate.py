"""`posttrain generate --model M [--adapter A] --prompts in.jsonl --out out.jsonl`: batch generation.

Each input row is read by `posttrain.data.prompts.prompt_messages` (what eval and PPO read): `messages` (a chat; its
trailing assistant turns are dropped), `prompt` (text or messages), `instruction` (+ `input`), or a preference
record's shared prompt. Each output row is the input row plus `response`, `finished` (stopped on an end token, not
cut by the limit) and `response_tokens`. Every row is checked before the model is loaded (a bad one is one line
naming file, line and field), and OUT is replaced atomically once every response is generated: a failed or killed
run leaves an existing OUT as it was.
"""

from __future__ import annotations

import json
import sys

from posttrain.atomic import atomic_open
from posttrain.commandline import DTYPE_CHOICES, ArgumentParser, output_file, positive
from posttrain.rollout_backend import add_backend_argument


def parse_args(argv: list[str]):
    p = ArgumentParser(prog="posttrain generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory or Hub name")
    p.add_argument("--adapter", help="adapter directory to load on top")
    p.add_argument(
        "--prompts", required=True, help="JSONL (or json/parquet/csv) rows with messages or prompt"
    )
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--template", default="auto", help="chat template (auto | chatml | llama3 | ...)")
    p.add_argument("--system", help="system prompt for rows without one")
    p.add_argument("--max-new-tokens", type=positive(int), default=256, help="longest response, in tokens")
    p.add_argument("--temperature", type=positive(float, allow_zero=True), default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=positive(float), default=1.0, help="nucleus sampling mass")
    p.add_argument(
        "--top-k",
        type=positive(int, allow_zero=True),
        default=0,
        help="sample from the k likeliest tokens (0: all)",
    )
    p.add_argument("--batch-size", type=positive(int), default=16, help="prompts decoded together")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    add_backend_argument(p)
    p.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: bf16 on CUDA, else fp32)"
    )
    p.add_argument("--device", default="auto", help="cuda | mps | cpu | auto")
    return p.parse_args(argv)


def run(args) -> int:
    from posttrain.data.chat import encode_prompt, get_template
    from posttrain.data.prompts import prompt_messages
    from posttrain.data.readers import read_nonempty
    from posttrain.rollout import generate
    from posttrain.run.common import load_for_inference

    out = output_file(args.out)
    if args.template != "auto":  # a bad --template is refused before the model loads
        get_template(args.template, None)
    rows = read_nonempty(args.prompts)
    chats = [prompt_messages(row, path, line, args.system)[0] for path, line, row in rows]
    if args.backend == "vllm":
        from posttrain.rollout_vllm import check_supported

        check_supported()  # before the model loads
    model, tok = load_for_inference(args.model, args.adapter, dtype=args.dtype, device=args.device)
    if args.backend == "vllm":
        check_supported(model)
    prompts = [encode_prompt(tok, msgs, args.template) for msgs in chats]
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
        progress=True,  # a bar on a terminal, plain lines in a log (posttrain.progress)
        backend=args.backend,
    )
    with atomic_open(out) as f:
        for (_, _, row), text, ids, done in zip(rows, ro.texts, ro.response_ids, ro.finished):
            record = {**row, "response": text, "finished": done, "response_tokens": len(ids)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} responses to {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """User errors are raised for `posttrain.cli.main`, which prints them as one line."""
    return run(parse_args(list(sys.argv[1:] if argv is None else argv)))
