"""Self-Instruct: bootstrap new tasks from seed tasks with a generator (Wang et al., 2023; survey Section 5.1.1).

Each round samples 8 in-context instructions (6 human seeds + 2 machine-made when there are 2), asks the generator
to continue the numbered list, and keeps a proposal only if it passes the length/keyword filters and its ROUGE-L
against EVERY instruction already in the pool is below `rouge_threshold`. Kept instructions are classified (the
generator answers Self-Instruct's "Is it classification?" prompt; a keyword heuristic decides when it answers
neither yes nor no) and get instances, input-first for generation tasks and output-first for classification.
A task counts once it has at least one valid instance; rounds repeat until `num_tasks` or `max_rounds`.
Every rejection is counted by reason. Deterministic for a seed (given a deterministic generator).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.construct.generator import Completion, Generator
from posttrain.data.construct.io import read_jsonl
from posttrain.data.construct.rouge import RougePool
from posttrain.data.construct.self_instruct_prompts import (
    PROPOSE_STOP,
    classify_prompt,
    instance_prompt,
    propose_prompt,
)
from posttrain.data.schema import Conversation, DataError, Message, where


@dataclass
class SelfInstructConfig:
    num_tasks: int = 100
    """Stop once this many new tasks (each with at least one instance) have been made."""
    seed: int = 0
    """Seeds the sampling of in-context instructions and the generator."""
    num_prompt_instructions: int = 8
    """In-context instructions per proposal prompt."""
    num_machine_instructions: int = 2
    """Of those, how many come from machine-made tasks (when there are that many)."""
    requests_per_round: int = 4
    """Proposal prompts sent to the generator per round."""
    max_rounds: int = 100
    """Give up after this many rounds even if `num_tasks` is not reached."""
    rouge_threshold: float = 0.7
    """Keep a proposal only if its ROUGE-L against every pooled instruction is below this."""
    min_words: int = 3
    """Shortest instruction kept, in whitespace-separated words (inclusive)."""
    max_words: int = 150
    """Longest instruction kept, in words (inclusive)."""
    max_instances: int = 5
    """Keep at most this many instances per task."""
    propose_tokens: int = 512
    """Token budget of a proposal completion."""
    instance_tokens: int = 300
    """Token budget of an instance completion."""
    temperature: float = 0.7
    """Sampling temperature for proposals (Self-Instruct: 0.7)."""
    top_p: float = 0.5
    """Nucleus sampling for proposals (Self-Instruct: 0.5)."""
    instance_temperature: float = 0.0
    """Temperature for classification answers and instances (0: greedy, as in Self-Instruct)."""


@dataclass
class SeedTask:
    instruction: str
    instances: list[tuple[str, str]]
    is_classification: bool
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def read_seed_tasks(path: str) -> list[SeedTask]:
    """Self-Instruct's seed format: {id, name, instruction, instances: [{input, output}], is_classification}."""
    tasks = []
    for p, line, obj in read_jsonl(path):
        inst = obj.get("instruction")
        if not isinstance(inst, str) or not inst.strip():
            raise DataError(f"{where(p, line, 'instruction')}: expected a non-empty string, got {inst!r}")
        instances = obj.get("instances", [])
        if not isinstance(instances, list):
            raise DataError(f"{where(p, line, 'instances')}: expected a list of {{input, output}}")
        pairs = []
        for i, x in enumerate(instances):
            if (
                not isinstance(x, dict)
                or not isinstance(x.get("output"), str)
                or not isinstance(x.get("input", ""), str)
            ):
                raise DataError(f"{where(p, line, f'instances[{i}]')}: expected {{input: str, output: str}}")
            pairs.append((x.get("input", ""), x["output"]))
        clf = obj.get("is_classification", False)
        if not isinstance(clf, bool):
            raise DataError(f"{where(p, line, 'is_classification')}: expected true or false, got {clf!r}")
        tasks.append(SeedTask(inst.strip(), pairs, clf, str(obj.get("name", obj.get("id", f"seed_{line}")))))
    if not tasks:
        raise DataError(f"{path}: no seed tasks")
    return tasks


# ---------------------------------------------------------------------------------------------- parsing + filters

_KEYWORDS = re.compile(r"\b(images?|graphs?|pictures?|files?|maps?|draw|plot|go to)\b", re.IGNORECASE)
_HEURISTIC_CLF = re.compile(
    r"\b(classify|classification|categori[sz]e|category|true or false|yes or no|sentiment|which (one|of)|"
    r"(tell me|detect|determine|decide|identify|check) (if|whether)|is (it|this|the)|are (these|they))\b",
    re.IGNORECASE,
)


def parse_instructions(completion: Completion) -> tuple[list[str], int]:
    """Instructions of a numbered-list continuation, and how many were dropped as truncated (0 or 1)."""
    items = [re.sub(r"\s+", " ", s).strip() for s in re.split(r"\n\d+\s?\. ", completion.text)]
    items = [s[0].upper() + s[1:] for s in items if s]
    if not completion.finished and items:  # the last item may be cut mid-sentence
        return items[:-1], 1
    return items, 0


def instruction_rejection(inst: str, cfg: SelfInstructConfig) -> str | None:
    """Why Self-Instruct's filters reject `inst` (None: keep). Reasons are the keys counted in the stats."""
    n = len(inst.split())
    checks = (
        ("too_short", n < cfg.min_words),
        ("too_long", n > cfg.max_words),
        ("keyword", _KEYWORDS.search(inst) is not None),
        ("program", inst.startswith("Write a program")),
        ("punctuation_start", inst[0] in string.punctuation),
        ("non_ascii_start", not inst[0].isascii()),
    )
    return next((reason for reason, bad in checks if bad), None)


def parse_yes_no(text: str) -> bool | None:
    word = text.strip().split(maxsplit=1)[0].strip(string.punctuation).lower() if text.strip() else ""
    return {"yes": True, "no": False}.get(word)


def heuristic_is_classification(instruction: str) -> bool:
    return _HEURISTIC_CLF.search(instruction) is not None


def _split_input_output(text: str) -> tuple[str, str]:
    parts = re.split(r"Output\s*\d*\s*:", text)
    inp, out = (parts[0], parts[1]) if len(parts) > 1 else ("", text)
    out = re.split(r"Input\s*\d*\s*:", out)[0]  # several pairs run together: keep the first
    return re.sub(r"^Input\s*\d*\s*:", "", inp.strip()).strip(), out.strip()


def parse_generation_instances(text: str, finished: bool) -> list[tuple[str, str]]:
    """Input-first answers: 'Example 1\\nInput: ..\\nOutput: ..' blocks, or a single 'Output: ..'."""
    text = text.strip()
    if re.search(r"Example\s?\d*\.?", text):
        blocks = [b.strip() for b in re.split(r"Example\s?\d*\.?", text) if b.strip()]
    elif re.search(r"Output\s*\d*\s*:", text):
        blocks = [text]
    else:
        return []
    pairs = [_split_input_output(b) for b in blocks]
    return pairs[:-1] if not finished else pairs


def parse_classification_instances(text: str, finished: bool) -> list[tuple[str, str]]:
    """Output-first answers: 'Class label: L\\n<input>' blocks -> (input, label)."""
    pairs = []
    for block in text.split("Class label:")[1:]:
        label, _, inp = block.strip().partition("\n")
        pairs.append((re.sub(r"^Input\s*:", "", inp.strip()).strip(), label.strip()))
    return pairs[:-1] if not finished else pairs


def clean_instances(pairs: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Drop empty outputs and output == input; drop every instance of an input that got different outputs."""
    pairs = [(i, o) for i, o in pairs if o and o != i]
    outputs: dict[str, set[str]] = {}
    for i, o in pairs:
        outputs.setdefault(i, set()).add(o)
    kept = list(dict.fromkeys((i, o) for i, o in pairs if len(outputs[i]) == 1))
    return kept[:limit]


# ---------------------------------------------------------------------------------------------- the bootstrap loop


@dataclass
class MachineTask:
    instruction: str
    is_classification: bool
    instances: list[tuple[str, str]]
    decided_by: str
    """'generator' when it answered yes/no to the classification prompt, else 'heuristic'."""


def sample_prompt_instructions(
    rng: random.Random, seeds: list[SeedTask], machine: list[str], cfg: SelfInstructConfig
) -> list[str]:
    """`num_machine_instructions` machine-made (when there are that many) + human seeds up to the total, shuffled."""
    chosen = rng.sample(machine, min(cfg.num_machine_instructions, len(machine)))
    chosen += [
        t.instruction for t in rng.sample(seeds, min(len(seeds), cfg.num_prompt_instructions - len(chosen)))
    ]
    rng.shuffle(chosen)
    return chosen


def _accept(
    completions: list[Completion],
    pool: RougePool,
    cfg: SelfInstructConfig,
    counts: Counter,
    rejections: Counter,
) -> list[str]:
    kept = []
    for comp in completions:
        items, truncated = parse_instructions(comp)
        if truncated:
            rejections["truncated"] += truncated
        for inst in items:
            counts["proposed"] += 1
            reason = instruction_rejection(inst, cfg)
            if reason is None and pool.max_score(inst)[0] >= cfg.rouge_threshold:
                reason = "rouge"
            if reason:
                rejections[reason] += 1
                continue
            pool.add(inst)
            kept.append(inst)
    return kept


def _make_tasks(
    insts: list[str], gen: Generator, cfg: SelfInstructConfig, seed: int, counts: Counter, rejections: Counter
) -> list[MachineTask]:
    temp = cfg.instance_temperature
    answers = gen.complete([classify_prompt(i) for i in insts], 3, temp, 1.0, ["\n", "Task"], seed)
    labels = []
    for inst, ans in zip(insts, answers):
        verdict = parse_yes_no(ans.text)
        labels.append(
            (heuristic_is_classification(inst), "heuristic") if verdict is None else (verdict, "generator")
        )
        counts[f"decided_by_{labels[-1][1]}"] += 1
    stop = [f"Example {cfg.max_instances + 1}", "Task:"]
    outs = gen.complete(
        [instance_prompt(i, clf) for i, (clf, _) in zip(insts, labels)],
        cfg.instance_tokens,
        temp,
        1.0,
        stop,
        seed + 1,
    )
    tasks = []
    for inst, (clf, by), out in zip(insts, labels, outs):
        parse = parse_classification_instances if clf else parse_generation_instances
        pairs = clean_instances(parse(out.text, out.finished), cfg.max_instances)
        if not pairs:
            rejections["no_instances"] += 1
            continue
        tasks.append(MachineTask(inst, clf, pairs, by))
    return tasks


def run_self_instruct(
    seeds: list[SeedTask], gen: Generator, cfg: SelfInstructConfig, log=None
) -> tuple[list[MachineTask], dict[str, Any]]:
    """Bootstrap up to `cfg.num_tasks` new tasks; returns them and the stats (counts + rejections by reason)."""
    rng = random.Random(cfg.seed)
    pool = RougePool([t.instruction for t in seeds])
    machine: list[str] = []
    tasks: list[MachineTask] = []
    counts: Counter = Counter()
    rejections: Counter = Counter()
    rounds = 0
    while len(tasks) < cfg.num_tasks and rounds < cfg.max_rounds:
        seed = cfg.seed * 1_000_003 + rounds * 101
        rounds += 1
        prompts = [
            propose_prompt(sample_prompt_instructions(rng, seeds, machine, cfg))
            for _ in range(cfg.requests_per_round)
        ]
        comps = gen.complete(prompts, cfg.propose_tokens, cfg.temperature, cfg.top_p, PROPOSE_STOP, seed)
        new = _accept(comps, pool, cfg, counts, rejections)
        machine += new
        if new:
            tasks += _make_tasks(new, gen, cfg, seed + 7, counts, rejections)
        if log:
            log(f"round {rounds}: {len(new)} new instructions, {len(tasks)}/{cfg.num_tasks} tasks")
    tasks = tasks[: cfg.num_tasks]
    stats = {
        "rounds": rounds,
        "requests": rounds * cfg.requests_per_round,
        "proposed": counts["proposed"],
        "accepted_instructions": len(machine),
        "tasks": len(tasks),
        "classification_tasks": sum(t.is_classification for t in tasks),
        "instances": sum(len(t.instances) for t in tasks),
        "classification_decided_by": {
            "generator": counts["decided_by_generator"],
            "heuristic": counts["decided_by_heuristic"],
        },
        "rejections": dict(sorted(rejections.items())),
        "seed": cfg.seed,
    }
    return tasks, stats


def task_records(tasks: list[MachineTask]) -> list[dict[str, Any]]:
    """One conversation per instance: user = instruction (+ blank line + input), assistant = output."""
    out = []
    for k, t in enumerate(tasks):
        for inp, output in t.instances:
            user = f"{t.instruction}\n\n{inp}" if inp else t.instruction
            meta = {
                "source": "self-instruct",
                "task": f"machine_task_{k}",
                "is_classification": t.is_classification,
            }
            out.append(Conversation([Message("user", user), Message("assistant", output)], meta).to_dict())
    return out
