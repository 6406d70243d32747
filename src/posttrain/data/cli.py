"""`posttrain data SUBCOMMAND`: build, convert, filter, mix and inspect instruction data.

    posttrain data from-tasks   --spec configs/tasks_example.yaml --out data/tasks.jsonl
    posttrain data from-chat    --in sharegpt.json --format auto --out data/chat.jsonl
    posttrain data self-instruct --seed-tasks seed_tasks.jsonl --generator URL|MODEL_DIR --num-tasks 100 --out x.jsonl
    posttrain data filter       --in x.jsonl --out x.clean.jsonl --dedup-threshold 0.8
    posttrain data mix          --source a.jsonl --source b.jsonl --strategy temperature --temperature 2 \\
                                --rate safety.jsonl:0.05 --total 10000 --out mix.jsonl
    posttrain data identity     --name Ada --maker "Acme Labs" --n 200 --out identity.jsonl
    posttrain data safety       --n 200 --out safety.jsonl
    posttrain data stats        mix.jsonl [--tokenizer DIR]

Every subcommand that writes OUT also writes OUT.stats.json (its own counts + the dataset summary) and prints both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.data.construct.io import read_jsonl, write_jsonl, write_stats
from posttrain.data.construct.stats import format_summary, summarise
from posttrain.data.schema import DataError


def _finish(name: str, records: list[dict], counts: dict, out: str) -> int:
    """Write OUT and OUT.stats.json; print the summary."""
    write_jsonl(records, out)
    stats = {"command": name, "output": str(out), **counts, "summary": summarise(records)}
    path = write_stats(stats, out)
    print(json.dumps({k: v for k, v in stats.items() if k != "summary"}, indent=2, ensure_ascii=False))
    print(format_summary(stats["summary"]))
    print(f"\nwrote {len(records)} records to {out} (stats: {path})")
    return 0


def _path_value(spec: str, what: str) -> tuple[str, float | None]:
    """'data/a.jsonl:0.3' -> ('data/a.jsonl', 0.3); 'data/a.jsonl' -> ('data/a.jsonl', None)."""
    path, sep, value = spec.rpartition(":")
    if sep:
        try:
            return path, float(value)
        except ValueError:
            pass
    if what == "rate":
        raise SystemExit(f"posttrain data mix: --rate needs PATH:RATE, got {spec!r}")
    return spec, None


# ---------------------------------------------------------------------------------------------- subcommands


def _from_tasks(a) -> int:
    from posttrain.data.construct.tasks import build_from_spec, load_spec, spec_for_file

    specs, seed = load_spec(a.spec) if a.spec else ([], 0)
    specs += [spec_for_file(f) for f in a.file]
    if not specs:
        raise SystemExit("posttrain data from-tasks: give --spec and/or --file")
    records, counts = build_from_spec(specs, a.seed if a.seed is not None else seed, a.spec)
    return _finish("from-tasks", records, counts, a.out)


def _from_chat(a) -> int:
    from posttrain.data.construct.chat import convert_chat
    from posttrain.data.construct.io import read_rows

    rows = (r for path in a.inputs for r in read_rows(path))
    convs, counts = convert_chat(rows, a.format, dedup=not a.no_dedup)
    return _finish("from-chat", [c.to_dict() for c in convs], counts, a.out)


def _self_instruct(a) -> int:
    from posttrain.data.construct.generator import make_generator
    from posttrain.data.construct.self_instruct import (
        SelfInstructConfig,
        read_seed_tasks,
        run_self_instruct,
        task_records,
    )

    cfg = SelfInstructConfig(
        num_tasks=a.num_tasks,
        seed=a.seed,
        max_rounds=a.max_rounds,
        requests_per_round=a.requests_per_round,
        rouge_threshold=a.rouge_threshold,
        temperature=a.temperature,
        top_p=a.top_p,
    )
    seeds = read_seed_tasks(a.seed_tasks)
    gen = make_generator(a.generator, model=a.model, dtype=a.dtype, device=a.device)
    tasks, counts = run_self_instruct(seeds, gen, cfg, log=lambda m: print(m, file=sys.stderr))
    return _finish("self-instruct", task_records(tasks), {"seed_tasks": len(seeds), **counts}, a.out)


def _filter(a) -> int:
    from posttrain.data.construct.filters import FilterConfig, filter_records

    cfg = FilterConfig(
        min_words=a.min_words,
        max_words=a.max_words,
        min_chars=a.min_chars,
        max_chars=a.max_chars,
        drop_copied=not a.keep_copied,
        dedup_threshold=None if a.dedup_threshold <= 0 else a.dedup_threshold,
        dedup_on=a.dedup_on,
        ngram=a.ngram,
        seed=a.seed,
    )
    records = [r for path in a.inputs for _, _, r in read_jsonl(path)]
    kept, counts = filter_records(records, cfg)
    return _finish("filter", kept, counts, a.out)


def _mix(a) -> int:
    from posttrain.data.construct.mixing import mixing_rates, pin_rates, sample_mixture

    free = [_path_value(s, "weight") for s in a.source]
    pinned = [_path_value(s, "rate") for s in a.rate]
    paths = [p for p, _ in free] + [p for p, _ in pinned]
    data = [[r for _, _, r in read_jsonl(p)] for p in paths]
    sizes = [len(d) for d in data[: len(free)]]
    weights = [w for _, w in free] if a.strategy == "weights" else None
    if weights is not None and None in weights:
        raise SystemExit("posttrain data mix: --strategy weights needs PATH:WEIGHT for every --source")
    rates = pin_rates(
        mixing_rates(sizes, a.strategy, weights, a.cap, a.temperature) if free else [], [r for _, r in pinned]
    )
    capped = sum(min(n, a.cap) if a.cap else n for n in sizes)
    total = a.total or round(capped / max(1e-9, 1 - sum(r for _, r in pinned)))
    names = [Path(p).name.removesuffix(".jsonl") for p in paths]
    records, counts = sample_mixture(data, rates, total, a.seed, names)
    report = {
        "strategy": a.strategy,
        "cap": a.cap,
        "temperature": a.temperature,
        "total": total,
        "sources": {
            n: {
                "path": p,
                "size": len(d),
                "rate": round(r, 4),
                "drawn": c,
                "proportion": round(c / max(1, total), 4),
            }
            for n, p, d, r, c in zip(names, paths, data, rates, counts)
        },
    }
    return _finish("mix", records, report, a.out)


def _identity(a) -> int:
    from posttrain.data.construct.identity import identity_records

    return _finish(
        "identity", identity_records(a.name, a.maker, a.n, a.seed), {"name": a.name, "maker": a.maker}, a.out
    )


def _safety(a) -> int:
    from posttrain.data.construct.safety import read_prompts, safety_records

    prompts = read_prompts(a.prompts) if a.prompts else None
    return _finish(
        "safety", safety_records(a.n, prompts, a.seed), {"prompts": a.prompts or "built-in"}, a.out
    )


def _stats(a) -> int:
    tok = None
    if a.tokenizer:
        from posttrain.models import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
    summary = summarise((r for _, _, r in read_jsonl(a.file)), tok)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if a.json else format_summary(summary))
    return 0


# ---------------------------------------------------------------------------------------------- arguments


def _args_from_tasks(p):
    p.add_argument("--spec", help="task spec YAML (see configs/tasks_example.yaml)")
    p.add_argument(
        "--file", action="append", default=[], help="a prompt/completion or input/output file as a task"
    )
    p.add_argument("--seed", type=int, default=None, help="overrides the spec's seed")


def _args_from_chat(p):
    p.add_argument("--in", dest="inputs", action="append", required=True, help="chat file (repeatable)")
    p.add_argument("--format", default="auto", choices=["auto", "sharegpt", "messages", "hh"])
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicate conversations")


def _args_self_instruct(p):
    from posttrain.data.construct.self_instruct import SelfInstructConfig

    d = SelfInstructConfig()
    p.add_argument("--seed-tasks", required=True, help="seed tasks in Self-Instruct's JSONL format")
    p.add_argument(
        "--generator", required=True, help="local model directory, or http(s):// OpenAI-compatible URL"
    )
    p.add_argument(
        "--model", default=None, help="model name sent to an HTTP endpoint (default: its first model)"
    )
    p.add_argument("--num-tasks", type=int, default=d.num_tasks)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-rounds", type=int, default=d.max_rounds)
    p.add_argument("--requests-per-round", type=int, default=d.requests_per_round)
    p.add_argument("--rouge-threshold", type=float, default=d.rouge_threshold)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")


def _args_filter(p):
    from posttrain.data.construct.filters import FilterConfig

    d = FilterConfig()
    p.add_argument("--in", dest="inputs", action="append", required=True, help="JSONL file (repeatable)")
    p.add_argument("--min-words", type=int, default=d.min_words)
    p.add_argument("--max-words", type=int, default=d.max_words)
    p.add_argument("--min-chars", type=int, default=d.min_chars)
    p.add_argument("--max-chars", type=int, default=d.max_chars)
    p.add_argument(
        "--keep-copied", action="store_true", help="keep responses that copy the input/instruction"
    )
    p.add_argument(
        "--dedup-threshold", type=float, default=d.dedup_threshold, help="n-gram Jaccard; 0 disables"
    )
    p.add_argument("--dedup-on", default=d.dedup_on, choices=["prompt", "response", "all"])
    p.add_argument("--ngram", type=int, default=d.ngram)
    p.add_argument("--seed", type=int, default=d.seed)


def _args_mix(p):
    from posttrain.data.construct.mixing import STRATEGIES

    p.add_argument("--source", action="append", default=[], help="PATH or PATH:WEIGHT (repeatable)")
    p.add_argument(
        "--rate", action="append", default=[], help="PATH:RATE: pin a source to this share (repeatable)"
    )
    p.add_argument("--strategy", default="proportional", choices=list(STRATEGIES))
    p.add_argument("--cap", type=int, default=None, help="examples-proportional limit K per source")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--total", type=int, default=None, help="records to draw (default: the capped source sizes)"
    )
    p.add_argument("--seed", type=int, default=0)


def _args_identity(p):
    p.add_argument("--name", required=True)
    p.add_argument("--maker", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)


def _args_safety(p):
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--prompts", default=None, help="JSONL {prompt, category} or text file; default: built-in")
    p.add_argument("--seed", type=int, default=0)


def _args_stats(p):
    p.add_argument("file")
    p.add_argument("--tokenizer", default=None, help="count tokens with this tokenizer (default: words)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


# name -> (add arguments, run, writes --out, help)
SUBCOMMANDS = {
    "from-tasks": (
        _args_from_tasks,
        _from_tasks,
        True,
        "NLP task datasets + instruction templates -> instances",
    ),
    "from-chat": (_args_from_chat, _from_chat, True, "ShareGPT / OpenAI messages / hh-rlhf -> conversations"),
    "self-instruct": (
        _args_self_instruct,
        _self_instruct,
        True,
        "bootstrap synthetic tasks with a generator",
    ),
    "filter": (_args_filter, _filter, True, "length, empty/copied outputs and near-duplicate filters"),
    "mix": (_args_mix, _mix, True, "mix sources by weights, proportional-with-cap or temperature"),
    "identity": (_args_identity, _identity, True, "'Who are you?' data with a name and maker"),
    "safety": (_args_safety, _safety, True, "high-risk instructions paired with refusals"),
    "stats": (_args_stats, _stats, False, "tasks, sources, turns, length histogram, mix proportions"),
}


def build_parser():

    parser = argparse.ArgumentParser(prog="posttrain data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    for name, (add_args, _, writes, doc) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=doc, description=doc)
        add_args(p)
        if writes:
            p.add_argument("--out", required=True, help="output JSONL (stats go to OUT.stats.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from posttrain.data.construct.generator import GeneratorError

    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.sub][1](args)
    except (DataError, GeneratorError, ValueError, OSError) as e:
        print(f"posttrain data {args.sub}: error: {e}", file=sys.stderr)
        return 2
