"""Self-Instruct: bootstrap new tasks from seed tasks with a generator (Wang et al., 2023; survey Section 5.1.1).

Each round samples 8 in-context instructions (6 human seeds + 2 machine-made when there are 2), asks the generator
to continue the numbered list, and keeps a proposal only if it passes the length/keyword filters and its ROUGE-L
against EVERY instruction already in the pool is below `rouge_threshold`. Kept instructions are classified (the
generator answers Self-Instruct's "Is it classification?" prompt; a keyword heuristic decides when it answers
neither yes nor no) and get instances, input-first for generation tasks and output-first for classification.
A task counts once it has at least one valid instance; rounds repeat until `num_tasks` or `max_rounds`.
The stats say what was generated, kept and rejected by each rule, for instructions, tasks and instances.
Deterministic for a seed (given a deterministic generator): the generator answers a batch in prompt order, however
many requests it keeps in flight (`HTTPGenerator.concurrency`).
"""

from __future__ import annotations

import random
import re
import string
import sys
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
    """Self-Instruct's seed format {id, name, instruction, instances: [{input, output}], is_classification}, one
    object per line or one JSON array (`read_jsonl` reads both, whatever the file is called); an alpaca record
    {instruction, input?, output} is a seed task with that one instance."""
    tasks = []
    for p, line, obj in read_jsonl(path):
        inst = obj.get("instruction")
        if not isinstance(inst, str) or not inst.strip():
            raise DataError(f"{where(p, line, 'instruction')}: expected a non-empty string, got {inst!r}")
        if "instances" not in obj and isinstance(obj.get("output"), str):
            obj = {**obj, "instances": [{"input": obj.get("input") or "", "output": obj["output"]}]}
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


def clean_instances(
    pairs: list[tuple[str, str]], limit: int, rejected: Counter | None = None
) -> list[tuple[str, str]]:
    """Drop empty outputs, output == input, every instance of an input that got different outputs, and repeats; keep
    the first `limit`. Each dropped instance is counted by reason in `rejected`."""
    rejected = Counter() if rejected is None else rejected
    valid = []
    for i, o in pairs:
        reason = "empty_output" if not o else "copies_input" if o == i else None
        if reason:
            rejected[reason] += 1
        else:
            valid.append((i, o))
    outputs: dict[str, set[str]] = {}
    for i, o in valid:
        outputs.setdefault(i, set()).add(o)
    kept: list[tuple[str, str]] = []
    for i, o in valid:
        reason = "conflicting_outputs" if len(outputs[i]) > 1 else "duplicate" if (i, o) in kept else None
        if reason:
            rejected[reason] += 1
        else:
            kept.append((i, o))
    if len(kept) > limit:
        rejected["over_max_instances"] += len(kept) - limit
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


@dataclass
class _Tally:
    """What a run generated and what each rule rejected (the stats of `run_self_instruct`)."""

    requests: Counter = field(default_factory=Counter)
    generated: Counter = field(default_factory=Counter)
    instructions: Counter = field(default_factory=Counter)
    """Rejected instructions by reason."""
    instances: Counter = field(default_factory=Counter)
    """Rejected instances by reason."""
    tasks: Counter = field(default_factory=Counter)
    """Rejected tasks (accepted instructions that did not become tasks) by reason."""
    decided_by: Counter = field(default_factory=Counter)


def _accept(
    completions: list[Completion], pool: RougePool, cfg: SelfInstructConfig, tally: _Tally
) -> list[str]:
    kept = []
    for comp in completions:
        items, truncated = parse_instructions(comp)
        tally.generated["instructions"] += len(items) + truncated
        if truncated:
            tally.instructions["truncated"] += truncated
        for inst in items:
            reason = instruction_rejection(inst, cfg)
            if reason is None and pool.max_score(inst)[0] >= cfg.rouge_threshold:
                reason = "rouge"
            if reason:
                tally.instructions[reason] += 1
                continue
            pool.add(inst)
            kept.append(inst)
    return kept


def _make_tasks(
    insts: list[str], gen: Generator, cfg: SelfInstructConfig, seed: int, tally: _Tally
) -> list[MachineTask]:
    temp = cfg.instance_temperature
    answers = gen.complete([classify_prompt(i) for i in insts], 3, temp, 1.0, ["\n", "Task"], seed)
    tally.requests["classify"] += len(insts)
    labels = []
    for inst, ans in zip(insts, answers):
        verdict = parse_yes_no(ans.text)
        labels.append(
            (heuristic_is_classification(inst), "heuristic") if verdict is None else (verdict, "generator")
        )
        tally.decided_by[labels[-1][1]] += 1
    stop = [f"Example {cfg.max_instances + 1}", "Task:"]
    outs = gen.complete(
        [instance_prompt(i, clf) for i, (clf, _) in zip(insts, labels)],
        cfg.instance_tokens,
        temp,
        1.0,
        stop,
        seed + 1,
    )
    tally.requests["instances"] += len(insts)
    tasks = []
    for inst, (clf, by), out in zip(insts, labels, outs):
        parse = parse_classification_instances if clf else parse_generation_instances
        parsed = parse(out.text, True)
        complete = parse(out.text, out.finished)  # without a last instance the token limit may have cut
        tally.generated["instances"] += len(parsed)
        if len(parsed) > len(complete):
            tally.instances["truncated"] += len(parsed) - len(complete)
        pairs = clean_instances(complete, cfg.max_instances, tally.instances)
        if not pairs:
            tally.tasks["no_instances"] += 1
            continue
        tasks.append(MachineTask(inst, clf, pairs, by))
    return tasks


class Progress:
    """A run's progress on stderr: a tqdm bar over tasks when the stream is a terminal, else one line per round."""

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc="self-instruct", unit="task", file=self.stream, dynamic_ncols=True
            )

    def update(self, rounds: int, tasks: int, line: str) -> None:
        if self.bar is None:
            print(line, file=self.stream, flush=True)
            return
        self.bar.update(tasks - self.bar.n)
        self.bar.set_postfix_str(f"round {rounds}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_self_instruct(
    seeds: list[SeedTask], gen: Generator, cfg: SelfInstructConfig, progress: Progress | None = None
) -> tuple[list[MachineTask], dict[str, Any]]:
    """Bootstrap up to `cfg.num_tasks` new tasks; returns them and the stats: requests sent, and instructions,
    tasks and instances generated, kept and rejected by each rule."""
    rng = random.Random(cfg.seed)
    pool = RougePool([t.instruction for t in seeds])
    machine: list[str] = []
    tasks: list[MachineTask] = []
    tally = _Tally()
    rounds = 0
    while len(tasks) < cfg.num_tasks and rounds < cfg.max_rounds:
        seed = cfg.seed * 1_000_003 + rounds * 101
        rounds += 1
        prompts = [
            propose_prompt(sample_prompt_instructions(rng, seeds, machine, cfg))
            for _ in range(cfg.requests_per_round)
        ]
        comps = gen.complete(prompts, cfg.propose_tokens, cfg.temperature, cfg.top_p, PROPOSE_STOP, seed)
        tally.requests["propose"] += len(prompts)
        new = _accept(comps, pool, cfg, tally)
        machine += new
        if new:
            tasks += _make_tasks(new, gen, cfg, seed + 7, tally)
        if progress:
            done = min(len(tasks), cfg.num_tasks)
            progress.update(
                rounds,
                done,
                f"round {rounds}: {len(new)} new instructions, {done}/{cfg.num_tasks} tasks, "
                f"{sum(tally.requests.values())} requests",
            )
    if len(tasks) > cfg.num_tasks:  # the last round made more than needed
        tally.tasks["over_num_tasks"] += len(tasks) - cfg.num_tasks
        tally.instances["over_num_tasks"] += sum(len(t.instances) for t in tasks[cfg.num_tasks :])
    tasks = tasks[: cfg.num_tasks]
    stats = {
        "rounds": rounds,
        "requests": {**dict(sorted(tally.requests.items())), "total": sum(tally.requests.values())},
        "generated": {
            "instructions": tally.generated["instructions"],
            "instances": tally.generated["instances"],
        },
        "kept": {
            "instructions": len(machine),
            "tasks": len(tasks),
            "classification_tasks": sum(t.is_classification for t in tasks),
            "instances": sum(len(t.instances) for t in tasks),
        },
        "rejected": {
            "instructions": dict(sorted(tally.instructions.items())),
            "tasks": dict(sorted(tally.tasks.items())),
            "instances": dict(sorted(tally.instances.items())),
        },
        "classification_decided_by": {
            "generator": tally.decided_by["generator"],
            "heuristic": tally.decided_by["heuristic"],
        },
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
