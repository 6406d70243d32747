"""`posttrain data SUBCOMMAND`: build, convert, filter, mix and inspect instruction data.

    posttrain data from-tasks   --spec tasks.yaml --out data/tasks.jsonl   # posttrain recipes cp data_tasks tasks.yaml
    posttrain data from-chat    --in sharegpt.json --format auto --out data/chat.jsonl
    posttrain data self-instruct --seed-tasks seed_tasks.jsonl --generator URL|MODEL_DIR --num-tasks 100 --out x.jsonl
    posttrain data filter       --in x.jsonl --out x.clean.jsonl --dedup-threshold 0.8
    posttrain data mix          --source a.jsonl --source b.jsonl --strategy temperature --temperature 2 \\
                                --rate safety.jsonl:0.05 --total 10000 --out mix.jsonl
    posttrain data identity     --name Ada --maker "Acme Labs" --out identity.jsonl
    posttrain data safety       --n 200 --out safety.jsonl
    posttrain data stats        mix.jsonl [--tokenizer DIR]

Every subcommand that writes OUT also writes OUT.stats.json (its own counts + the dataset summary) and prints both.
Both are written atomically, OUT first (see `posttrain.data.construct.io`): a killed command leaves the old pair, or
the new OUT alone, or the new pair. Bad input is one line naming file, line and field (exit 1); bad flags exit 2.
"""

from __future__ import annotations

import json
import math
import sys
from argparse import ArgumentTypeError
from pathlib import Path

from posttrain.commandline import DTYPE_CHOICES, ArgumentParser, output_file, positive
from posttrain.data.construct.io import read_checked, read_conversation_records, write_with_stats
from posttrain.data.construct.stats import format_summary, summarise
from posttrain.errors import UsageError


def _finish(name: str, records: list[dict], counts: dict, out: str) -> int:
    """Write OUT, then OUT.stats.json (both atomic, in that order); print the summary."""
    stats = {"command": name, "output": str(out), **counts, "summary": summarise(records)}
    path = write_with_stats(records, stats, out)
    print(json.dumps({k: v for k, v in stats.items() if k != "summary"}, indent=2, ensure_ascii=False))
    print(format_summary(stats["summary"]))
    print(f"\nwrote {len(records)} records to {out} (stats: {path})")
    return 0


def _path_value(spec: str, flag: str) -> tuple[str, float | None]:
    """'data/a.jsonl:0.3' -> ('data/a.jsonl', 0.3); 'data/a.jsonl' -> ('data/a.jsonl', None). The value must be a
    finite number >= 0 (a rate at most 1); --rate must have one."""
    path, sep, text = spec.rpartition(":")
    value = None
    if sep and path:
        try:
            value = float(text)
        except ValueError:
            value = None
    if value is None:
        if flag == "--rate":
            raise UsageError(f"--rate needs PATH:RATE with RATE in [0, 1], got {spec!r}")
        return spec, None
    if not math.isfinite(value) or value < 0 or (flag == "--rate" and value > 1):
        what = "rate must be in [0, 1]" if flag == "--rate" else "weight must be a finite number >= 0"
        raise UsageError(f"{flag} {spec!r}: the {what}")
    return path, value


def _names(paths: list[str]) -> list[str]:
    """Source names for meta.mix_source and the stats: the file name without .jsonl, made unique."""
    names: list[str] = []
    for p in paths:
        name = base = Path(p).name.removesuffix(".jsonl")
        k = 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- subcommands


def _from_tasks(a) -> int:
    from posttrain.data.construct.tasks import build_from_spec, load_spec, spec_for_file

    if not a.spec and not a.file:
        raise UsageError("give --spec and/or --file")
    specs, seed = load_spec(a.spec) if a.spec else ([], 0)
    specs += [spec_for_file(f, a.k_shot) for f in a.file]
    records, counts = build_from_spec(specs, a.seed if a.seed is not None else seed, a.spec)
    return _finish("from-tasks", records, counts, a.out)


def _from_chat(a) -> int:
    from posttrain.data.construct.chat import convert_chat
    from posttrain.data.readers import read_nonempty

    rows = [r for path in a.inputs for r in read_nonempty(path)]
    convs, counts = convert_chat(rows, a.format, dedup=not a.no_dedup)
    return _finish("from-chat", [c.to_dict() for c in convs], counts, a.out)


def _self_instruct(a) -> int:
    from posttrain.data.construct.generator import make_generator
    from posttrain.data.construct.self_instruct import (
        Progress,
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
    gen = make_generator(
        a.generator,
        model=a.model,
        dtype=a.dtype,
        device=a.device,
        concurrency=a.concurrency,
        retries=a.retries,
    )
    progress = Progress(cfg.num_tasks)
    try:
        tasks, counts = run_self_instruct(seeds, gen, cfg, progress)
    finally:
        progress.close()
    return _finish("self-instruct", task_records(tasks), {"seed_tasks": len(seeds), **counts}, a.out)


def _filter(a) -> int:
    from posttrain.data.construct.filters import FilterConfig, filter_records

    for low, high, what in ((a.min_words, a.max_words, "words"), (a.min_chars, a.max_chars, "chars")):
        if high is not None and low > high:
            raise UsageError(f"--min-{what} {low} is more than --max-{what} {high}: nothing would be kept")
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
    records = [r for path in a.inputs for r in read_conversation_records(path)]
    kept, counts = filter_records(records, cfg)
    _warn("filter", counts["warnings"])
    return _finish("filter", kept, counts, a.out)


def _mix(a) -> int:
    from posttrain.data.construct.mixing import mixing_rates, pin_rates, sample_mixture

    free = [_path_value(s, "--source") for s in a.source]
    pinned = [_path_value(s, "--rate") for s in a.rate]
    if not free and not pinned:
        raise UsageError("give at least one --source (or --rate)")
    if not free and a.total is None:
        raise UsageError("--rate without any --source needs --total")
    weights = [w for _, w in free] if a.strategy == "weights" else None
    if weights is not None and None in weights:
        raise UsageError("--strategy weights needs PATH:WEIGHT for every --source")
    paths = [p for p, _ in free] + [p for p, _ in pinned]
    data = [read_checked(p) for p in paths]
    sizes = [len(d) for d in data[: len(free)]]
    rates = pin_rates(
        mixing_rates(sizes, a.strategy, weights, a.cap, a.temperature) if free else [], [r for _, r in pinned]
    )
    capped = sum(min(n, a.cap) if a.cap else n for n in sizes)
    total = a.total or round(capped / max(1e-9, 1 - sum(r for _, r in pinned)))
    names = _names(paths)
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


def _warn(name: str, warnings: list[str]) -> None:
    for w in warnings:
        print(f"posttrain data {name}: warning: {w}", file=sys.stderr)


def _distinct(name: str, records: list[dict], asked: int | None, possible: int, how: str) -> dict:
    """Stats of a generator of distinct records; a warning (stderr and stats) when fewer than asked exist."""
    short = asked is not None and len(records) < asked
    warnings = (
        [f"asked for {asked}, {possible} distinct possible ({how}); wrote {len(records)}"] if short else []
    )
    _warn(name, warnings)
    return {"requested": asked, "distinct_possible": possible, "records": len(records), "warnings": warnings}


def _identity(a) -> int:
    from posttrain.data.construct.identity import ANSWERS, QUESTIONS, identity_records

    records = identity_records(a.name, a.maker, a.n, a.seed)
    possible = len(QUESTIONS) * len(ANSWERS)
    how = f"{len(QUESTIONS)} questions x {len(ANSWERS)} answers"
    counts = {"name": a.name, "maker": a.maker, **_distinct("identity", records, a.n, possible, how)}
    return _finish("identity", records, counts, a.out)


def _safety(a) -> int:
    from posttrain.data.construct.safety import REFUSALS, distinct_counts, read_prompts, safety_records

    prompts = read_prompts(a.prompts) if a.prompts else None
    records = safety_records(a.n, prompts, a.seed)
    n_prompts, possible = distinct_counts(prompts)
    how = f"{n_prompts} prompts x {len(REFUSALS)} refusals; give more prompts with --prompts"
    counts = {"prompts": a.prompts or "built-in", **_distinct("safety", records, a.n, possible, how)}
    return _finish("safety", records, counts, a.out)


def _stats(a) -> int:
    tok = None
    if a.tokenizer:
        from posttrain.models import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
    summary = summarise(read_checked(a.file), tok)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if a.json else format_summary(summary))
    return 0


# ---------------------------------------------------------------------------------------------- arguments


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ArgumentTypeError("expected a non-empty string")
    return text


def _fraction(allow_zero: bool = False):
    """An argparse `type` for a number in (0, 1] ([0, 1] with allow_zero): a ROUGE or Jaccard threshold, top-p."""
    at_least = positive(float, allow_zero)

    def parse(text: str) -> float:
        value = at_least(text)
        if value > 1:
            raise ArgumentTypeError(f"expected a number in {'[' if allow_zero else '('}0, 1], got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


def doc(config, field: str) -> str:
    """A config dataclass field's one-line doc, as an option's help."""
    from posttrain.config_docs import field_docs

    return field_docs(type(config)).get(field, "")


def _args_from_tasks(p):
    p.add_argument(
        "--spec", help="task spec YAML (`posttrain recipes cp data_tasks tasks.yaml` writes an example)"
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        help="a prompt/completion, input/output, alpaca or Self-Instruct seed file as a task (repeatable)",
    )
    p.add_argument(
        "--k-shot",
        type=positive(int, allow_zero=True),
        default=0,
        help="demonstrations per --file instance, from the same task (a seed task's other instances)",
    )
    p.add_argument("--seed", type=int, default=None, help="overrides the spec's seed")


def _args_from_chat(p):
    p.add_argument("--in", dest="inputs", action="append", required=True, help="chat file (repeatable)")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "sharegpt", "messages", "hh"],
        help="input format (auto: detected)",
    )
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
    p.add_argument("--num-tasks", type=positive(int), default=d.num_tasks, help=doc(d, "num_tasks"))
    p.add_argument("--seed", type=int, default=d.seed, help=doc(d, "seed"))
    p.add_argument("--max-rounds", type=positive(int), default=d.max_rounds, help=doc(d, "max_rounds"))
    p.add_argument(
        "--requests-per-round",
        type=positive(int),
        default=d.requests_per_round,
        help=doc(d, "requests_per_round"),
    )
    p.add_argument(
        "--rouge-threshold", type=_fraction(), default=d.rouge_threshold, help=doc(d, "rouge_threshold")
    )
    p.add_argument(
        "--temperature",
        type=positive(float, allow_zero=True),
        default=d.temperature,
        help=doc(d, "temperature"),
    )
    p.add_argument("--top-p", type=_fraction(), default=d.top_p, help=doc(d, "top_p"))
    p.add_argument(
        "--concurrency",
        type=positive(int),
        default=4,
        help="requests in flight to an HTTP endpoint (a local model batches instead)",
    )
    p.add_argument(
        "--retries",
        type=positive(int, allow_zero=True),
        default=2,
        help="retries of a failed HTTP request, with backoff",
    )
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="a local model's dtype")
    p.add_argument("--device", default="auto", help="a local model's device")


def _args_filter(p):
    from posttrain.data.construct.filters import FilterConfig

    d = FilterConfig()
    p.add_argument("--in", dest="inputs", action="append", required=True, help="JSONL file (repeatable)")
    p.add_argument(
        "--min-words", type=positive(int, allow_zero=True), default=d.min_words, help=doc(d, "min_words")
    )
    p.add_argument("--max-words", type=positive(int), default=d.max_words, help=doc(d, "max_words"))
    p.add_argument(
        "--min-chars", type=positive(int, allow_zero=True), default=d.min_chars, help=doc(d, "min_chars")
    )
    p.add_argument("--max-chars", type=positive(int), default=d.max_chars, help=doc(d, "max_chars"))
    p.add_argument(
        "--keep-copied", action="store_true", help="keep responses that copy the input/instruction"
    )
    p.add_argument(
        "--dedup-threshold",
        type=_fraction(allow_zero=True),
        default=d.dedup_threshold,
        help="n-gram Jaccard; 0 disables",
    )
    p.add_argument(
        "--dedup-on", default=d.dedup_on, choices=["prompt", "response", "all"], help=doc(d, "dedup_on")
    )
    p.add_argument("--ngram", type=positive(int), default=d.ngram, help=doc(d, "ngram"))
    p.add_argument("--seed", type=int, default=d.seed, help=doc(d, "seed"))


def _args_mix(p):
    from posttrain.data.construct.mixing import STRATEGIES

    p.add_argument("--source", action="append", default=[], help="PATH or PATH:WEIGHT (repeatable)")
    p.add_argument(
        "--rate", action="append", default=[], help="PATH:RATE: pin a source to this share (repeatable)"
    )
    p.add_argument(
        "--strategy", default="proportional", choices=list(STRATEGIES), help="how sources are weighted"
    )
    p.add_argument("--cap", type=positive(int), default=None, help="examples-proportional limit K per source")
    p.add_argument(
        "--temperature",
        type=positive(float),
        default=1.0,
        help="T of temperature mixing (rates ~ size^(1/T))",
    )
    p.add_argument(
        "--total", type=positive(int), default=None, help="records to draw (default: the capped source sizes)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling")


def _args_identity(p):
    p.add_argument("--name", required=True, type=_nonempty, help="the assistant's name")
    p.add_argument("--maker", required=True, type=_nonempty, help="who made it")
    p.add_argument(
        "--n",
        type=positive(int),
        default=None,
        help="records (default: every distinct question x answer, 144)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling")


def _args_safety(p):
    p.add_argument(
        "--n", type=positive(int), default=200, help="distinct records (fewer, said, if not possible)"
    )
    p.add_argument("--prompts", default=None, help="JSONL {prompt, category} or text file; default: built-in")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling")


def _args_stats(p):
    p.add_argument("file", help="JSONL file to describe")
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="posttrain data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    for name, (add_args, _, writes, doc) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=doc, description=doc)
        add_args(p)
        if writes:
            p.add_argument("--out", required=True, help="output JSONL (stats go to OUT.stats.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors are raised (UserError, file errors) for `posttrain.cli.main` to print."""
    args = build_parser().parse_args(argv)
    if SUBCOMMANDS[args.sub][2]:
        output_file(args.out)  # before any work: a directory as --out is refused now, not after the run
    return SUBCOMMANDS[args.sub][1](args)
