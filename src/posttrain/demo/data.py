"""Instruction data for the demo, built with the package's construction methods from the world's training split.

    records, stats = build_sft_data(world, out_dir / "data", base_dir=None)   # writes sft.jsonl + stats

Sources (survey Section 5.1.1): NLP-task-style instances of the training tasks (several phrasings, few-shot
demonstrations), chat-like multi-turn conversations, identity answers, safety refusals and benign look-alikes, and
(when a base model directory is given) a small Self-Instruct run with the base model as generator. Then the
strategies: quality filter + near-duplicate removal, and temperature mixing of the sources. A construction module
that is missing is reported as skipped in the stats, never replaced by something that pretends to be it.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

from posttrain.demo.tasks import TRAIN_TASKS
from posttrain.demo.world import World, padded


class Skip(Exception):
    """A construction module the demo needs is missing; the pipeline reports the stage as skipped."""


MIX_TEMPERATURE = 2.0
"""Mixing temperature over source sizes (1: proportional; larger flattens towards uniform)."""
FIXED_RATES = {"safety": 0.2, "identity": 0.03}
"""Share of the final mixture given to safety (refusals + benign look-alikes) and identity records."""
FILLER_RATE = 0.3
"""Share of task and chat answers that end with a pleasantry (`world.FILLERS`): demonstrations are imperfect, and
the labellers' preference against the habit is what the alignment stages learn."""


def _available(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def conv(user: str, reply: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        "meta": meta,
    }


def task_records(world: World, seed: int, tasks: tuple[str, ...] = TRAIN_TASKS) -> tuple[list[dict], dict]:
    """Training tasks as task specs (rows = phrased instances) through `construct.tasks` with demonstrations."""
    construct = _available("posttrain.data.construct.tasks")
    if construct is None:
        return [], {"skipped": "posttrain.data.construct.tasks not available"}
    rng = random.Random(f"{seed}:task-fillers")
    specs = []
    for t in tasks:
        rows = [
            {"input": it.prompt, "output": padded(it.answer, rng, FILLER_RATE), "task": t}
            for it in world.items(t, "train")
        ]
        specs.append(
            construct.TaskSpec(
                name=t, rows=rows, templates=["{input}"], k_shot=[0, 0, 0, 1, 2], description=True
            )
        )
    records, stats = construct.build_from_spec(specs, seed)
    for r in records:
        r["meta"]["source"] = "tasks"
    return records, stats


def chat_records(
    world: World, seed: int, n: int, tasks: tuple[str, ...] = TRAIN_TASKS
) -> tuple[list[dict], dict]:
    """Multi-turn chats (2-3 task turns, sometimes an identity question) as ShareGPT logs through `construct.chat`."""
    chat = _available("posttrain.data.construct.chat")
    if chat is None:
        return [], {"skipped": "posttrain.data.construct.chat not available"}
    rng = random.Random(f"{seed}:chat")
    pool = world.train_items(tasks)
    ident = world.identity_items("train")
    logs = []
    for i in range(n):
        turns = rng.sample(pool, rng.choice((2, 3)))
        if rng.random() < 0.2:
            turns.insert(rng.randrange(len(turns) + 1), rng.choice(ident))
        conv_ = [
            {"from": who, "value": text}
            for it in turns
            for who, text in (("human", it.prompt), ("gpt", padded(it.answer, rng, FILLER_RATE)))
        ]
        logs.append(("<demo-chat>", i + 1, {"conversations": conv_, "source": "chat"}))
    convs, stats = chat.convert_chat(logs)
    return [c.to_dict() for c in convs], stats


def identity_records(world: World, seed: int) -> tuple[list[dict], dict]:
    """Identity Q&A in many phrasings via `construct.identity` (the world's held-out questions removed)."""
    held = {it.prompt for it in world.identity_items("heldout")}
    ident = _available("posttrain.data.construct.identity")
    if ident is None:
        recs = [conv(it.prompt, it.answer, {"source": "identity"}) for it in world.identity_items("train")]
        return recs, {"via": "demo world (posttrain.data.construct.identity not available)"}
    recs = ident.identity_records(world.cfg.name, world.cfg.maker, n=2 * len(ident.QUESTIONS), seed=seed)
    recs = [r for r in recs if r["messages"][0]["content"] not in held]
    recs += [conv(it.prompt, it.answer, {"source": "identity"}) for it in world.identity_items("train")]
    return recs, {"via": "posttrain.data.construct.identity", "records": len(recs)}


def safety_records(world: World, seed: int) -> tuple[list[dict], dict]:
    """High-risk requests with refusals (`construct.safety`: the world's requests plus its built-in ones) and the
    world's benign look-alikes with short helpful replies, so that refusing is tied to harm, not to a verb."""
    items = world.safety_items("train")
    benign = [
        conv(it.prompt, it.answer, {"source": "safety", "kind": "benign"})
        for it in items
        if it.meta["kind"] == "benign"
    ]
    harmful = [it for it in items if it.meta["kind"] == "harmful"]
    safety = _available("posttrain.data.construct.safety")
    if safety is None:
        recs = [conv(it.prompt, it.answer, {"source": "safety", "kind": "harmful"}) for it in harmful]
        return recs + benign, {"via": "demo world (posttrain.data.construct.safety not available)"}
    # only the world's requests (the built-in ones have no benign twins and tilt the model towards refusing),
    # each answered with the world's reasoned refusal (the one its refusal detector and gold scorer read)
    refusals = safety.safety_records(len(harmful), [(it.prompt, "violence") for it in harmful], seed=seed)
    answers = {it.prompt: it.answer for it in harmful}
    for r in refusals:
        r["meta"]["kind"] = "harmful"
        r["messages"][-1]["content"] = answers[r["messages"][0]["content"]]
    return refusals + benign, {
        "via": "posttrain.data.construct.safety",
        "harmful": len(refusals),
        "benign": len(benign),
    }


def self_instruct_records(
    world: World, base_dir: str | None, seed: int, num_tasks: int
) -> tuple[list[dict], dict]:
    """A small Self-Instruct run seeded with the training tasks, the base model as generator."""
    si = _available("posttrain.data.construct.self_instruct")
    gen_mod = _available("posttrain.data.construct.generator")
    if si is None or gen_mod is None:
        return [], {"skipped": "posttrain.data.construct.self_instruct not available"}
    if not base_dir or num_tasks <= 0:
        return [], {"skipped": "not run in --quick mode (time budget)"}
    seeds = []
    for t in TRAIN_TASKS:
        its = world.items(t, "train")[:2]
        seeds.append(
            si.SeedTask(instruction=its[0].prompt, instances=[("", its[0].answer)], is_classification=False)
        )
    gen = gen_mod.LocalGenerator.from_dir(base_dir, batch_size=8)
    cfg = si.SelfInstructConfig(
        num_tasks=num_tasks,
        seed=seed,
        max_rounds=3,
        requests_per_round=4,
        propose_tokens=64,
        instance_tokens=24,
        max_instances=2,
    )
    try:
        machine, stats = si.run_self_instruct(seeds, gen, cfg)
    except Exception as e:  # noqa: BLE001 - an optional source: report it, keep the other sources
        return [], {"failed": f"{type(e).__name__}: {e}"}
    return si.task_records(machine), stats


def quality_filter(records: list[dict], seed: int) -> tuple[list[dict], dict]:
    filters = _available("posttrain.data.construct.filters")
    if filters is None:
        return records, {"skipped": "posttrain.data.construct.filters not available"}
    cfg = filters.FilterConfig(min_words=1, max_words=40, dedup_threshold=0.95, dedup_on="all", seed=seed)
    return filters.filter_records(records, cfg)


def mix(sources: dict[str, list[dict]], seed: int, max_records: int = 0) -> tuple[list[dict], dict]:
    """`construct.mixing`: temperature rates (p_i proportional to n_i^(1/T)) over the general sources, identity and
    safety pinned at fixed shares of the mixture; as many records as the general sources hold, plus the pinned
    (at most `max_records` when it is > 0: a short run tokenises only what it can use)."""
    mixing = _available("posttrain.data.construct.mixing")
    if mixing is None:
        raise Skip("posttrain.data.construct.mixing not available")
    free = [k for k, v in sources.items() if v and k not in FIXED_RATES]
    pinned = [k for k in FIXED_RATES if sources.get(k)]
    rates = mixing.pin_rates(
        mixing.mixing_rates([len(sources[k]) for k in free], "temperature", temperature=MIX_TEMPERATURE),
        [FIXED_RATES[k] for k in pinned],
    )
    names = free + pinned
    total = round(sum(len(sources[k]) for k in free) / (1 - sum(FIXED_RATES[k] for k in pinned)))
    total = min(total, max_records) if max_records > 0 else total
    out, counts = mixing.sample_mixture([sources[k] for k in names], rates, total, seed=seed, names=names)
    return out, {
        "temperature": MIX_TEMPERATURE,
        "fixed_rates": FIXED_RATES,
        "rates": dict(zip(names, rates)),
        "counts": dict(zip(names, counts)),
        "total": len(out),
    }


def pretrain_text(world: World, out_dir: Path, seed: int, n: int) -> Path:
    """`n` of the base model's pre-training documents as plain-text records (`{"text": ...}`, loss on every token),
    to mix into instruction tuning: the survey's "combining instruction tuning and pre-training" (OPT-IML mixes
    pre-training data into instruction tuning as a regulariser), so tuning keeps the facts the base learned."""
    from posttrain.data.construct.io import write_jsonl

    docs = world.raw_text()
    picked = random.Random(f"{seed}:pretrain-mix").sample(docs, min(n, len(docs)))
    path = out_dir / "pretrain_text.jsonl"
    write_jsonl([{"text": d} for d in picked], path)
    return path


def build_sft_data(
    world: World,
    out_dir: Path,
    seed: int = 0,
    base_dir: str | None = None,
    self_instruct_tasks: int = 0,
    chats: int = 300,
    tasks: tuple[str, ...] = TRAIN_TASKS,
    max_records: int = 0,
) -> tuple[Path, dict]:
    """Every source, filtered and mixed, written to `out_dir/sft.jsonl` (with `sft.stats.json`); `tasks` limits the
    task and chat sources to some of the training tasks (the task-scaling runs)."""
    from posttrain.data.construct.io import write_jsonl, write_stats

    stats: dict[str, Any] = {}
    sources: dict[str, list[dict]] = {}
    for name, (recs, st) in {
        "tasks": task_records(world, seed, tasks),
        "chat": chat_records(world, seed, chats, tasks),
        "identity": identity_records(world, seed),
        "safety": safety_records(world, seed),
        "self_instruct": self_instruct_records(world, base_dir, seed, self_instruct_tasks),
    }.items():
        sources[name], stats[name] = recs, st
        write_jsonl(recs, out_dir / f"source_{name}.jsonl")
    for name in ("tasks", "chat", "self_instruct"):
        sources[name], stats[f"filter_{name}"] = quality_filter(sources[name], seed)
    records, stats["mix"] = mix(sources, seed, max_records)
    path = out_dir / "sft.jsonl"
    write_jsonl(records, path)
    write_stats(stats, path)
    return path, stats
