"""Instances from existing NLP task datasets (survey Section 5.1.1, "formatting NLP task datasets").

A task spec (YAML) maps a dataset's fields to input/output and lists instruction templates:

    seed: 0
    tasks:
      - name: ag_news
        source: ag_news.jsonl          # a file (relative to the spec) ... or `rows:` inline
        input: text                    # field names; default prompt/completion when rows have them, else input/output
        output: label                  # (rows with an `instruction`, alpaca / Self-Instruct seeds: see below)
        choices: [World, Sports, Business, Sci/Tech]   # or the name of a field holding a list per row
        templates:                     # task descriptions; {field} placeholders or Jinja ({{ input }})
          - "Classify the news article into one of: {choices}."
          - "Which topic is this article about? {choices}\\n\\n{input}"
        k_shot: [0, 2]                 # demonstrations from the same task (never the instance itself)
        description: mixed             # true | false | mixed (50/50 per instance)

How one instance is laid out (parts joined by a blank line) -- the survey's Figure 5:
  * a template with no {input} is a pure task description: [description] + demonstrations + [input_format];
  * a template that contains {input} is the whole query: demonstrations + [template];
  * without the description (description: false): demonstrations + [input_format].
Each demonstration is `demo_format` ("{input}\\n{output}"). With a `cot` field, every output (the instance's and the
demonstrations') is `cot_format` ("{cot}\\nSo the answer is: {output}") where the rationale is non-empty.

Rows that carry their own instruction (alpaca `{instruction, input?, output, system?}`; Self-Instruct seed tasks
`{instruction, instances: [{input, output}, ...]}`, one row per instance) are tasks of their own: the default
template is "{instruction}", a missing input is empty, a `system` string becomes the system message, and
demonstrations come from the rows with the same instruction (a seed task's other instances) only.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from posttrain.data.markers import END_MARKERS, strip_trailing
from posttrain.data.readers import expand_instances, read_nonempty
from posttrain.data.schema import Conversation, DataError, Message, where

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_USES_INPUT = re.compile(r"\{input\}|\{\{\s*input\b")


@dataclass
class TaskSpec:
    name: str
    """Task name, written to meta.task."""
    source: str | None = None
    """A data file (jsonl/json/csv/parquet), relative to the spec file; or give `rows`."""
    rows: list[dict[str, Any]] | None = None
    """Inline rows instead of a file."""
    input: str | None = None
    """Field holding the input; default `prompt` when rows have it, else `input`."""
    output: str | None = None
    """Field holding the output; default `completion` when rows have it, else `output`."""
    choices: list[str] | str | None = None
    """Label set: a fixed list, or the name of a field holding each row's list. Available as {choices}."""
    cot: str | None = None
    """Field holding a chain-of-thought rationale; output becomes `cot_format` where it is non-empty."""
    templates: list[str] | None = None
    """Instruction templates (task descriptions); one is drawn per instance. Default: "{instruction}" when the rows
    have an instruction (alpaca, Self-Instruct seeds), else "{input}"."""
    input_format: str = "{input}"
    """How the instance's input is shown after a description that does not contain {input}."""
    demo_format: str = "{input}\n{output}"
    """How one demonstration is shown."""
    cot_format: str = "{cot}\nSo the answer is: {output}"
    """Output with its rationale."""
    k_shot: int | list[int] = 0
    """Demonstrations per instance, or a list to draw from per instance (e.g. [0, 2])."""
    description: bool | str = True
    """Show the task description: true | false | mixed."""
    strip_suffix: list[str] = field(default_factory=lambda: list(END_MARKERS))
    """Strings removed from the end of outputs (T0/P3 completions end in <|endoftext|>); default: the end-of-text
    markers of common tokenizers (`posttrain.data.markers.END_MARKERS`)."""
    max_rows: int | None = None
    """Use only the first N rows."""


FIELD_PAIRS = (("prompt", "completion"), ("inputs_pretokenized", "targets_pretokenized"), ("input", "output"))
"""Default (input, output) fields: the first pair whose input field a row has (T0/P3 renderings such as
Self-Instruct's, P3 as stored on the Hub, then alpaca / Self-Instruct / anything else)."""


@dataclass
class Row:
    input: str
    output: str
    choices: list[str]
    cot: str
    fields: dict[str, Any]
    system: str = ""

    @property
    def instruction(self) -> str | None:
        """The row's own instruction (alpaca, Self-Instruct), which makes it a task of its own."""
        value = self.fields.get("instruction")
        return value if isinstance(value, str) else None


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: _is_str(v) and bool(v.strip()), "a non-empty string"),
    "source": (_is_str, "a file path"),
    "rows": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of mappings"),
    "input": (_is_str, "a field name"),
    "output": (_is_str, "a field name"),
    "cot": (_is_str, "a field name"),
    "choices": (lambda v: _is_str(v) or isinstance(v, list), "a list of labels or a field name"),
    "input_format": (_is_str, "a string"),
    "demo_format": (_is_str, "a string"),
    "cot_format": (_is_str, "a string"),
    "k_shot": (
        lambda v: _is_count(v) or (isinstance(v, list) and bool(v) and all(_is_count(k) for k in v)),
        "a count >= 0 or a list of counts",
    ),
    "description": (lambda v: v in (True, False, "mixed"), "true, false or mixed"),
    "strip_suffix": (lambda v: isinstance(v, list) and all(_is_str(x) for x in v), "a list of strings"),
    "max_rows": (lambda v: _is_count(v) and v > 0, "a count > 0"),
}
"""TaskSpec field -> (check of a YAML value, what it should be); `templates` is checked on its own."""


def _yaml(path: str) -> Any:
    from posttrain.data.readers import read_text

    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(f"{where(path, line)}: invalid YAML ({getattr(e, 'problem', None) or e})") from None


def load_spec(path: str) -> tuple[list[TaskSpec], int]:
    """Parse a task spec file into TaskSpecs (unknown keys and wrongly typed values are errors) and its seed."""
    doc = _yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
        raise DataError(f"{where(path, None, 'tasks')}: expected a mapping with a list of tasks")
    unknown = set(doc) - {"seed", "tasks"}
    if unknown:
        raise DataError(f"{where(path, None, sorted(unknown)[0])}: unknown key (expected seed, tasks)")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{where(path, None, 'seed')}: expected an integer, got {seed!r}")
    known = {f.name for f in fields(TaskSpec)}
    specs = []
    for i, t in enumerate(doc["tasks"]):
        if not isinstance(t, dict) or "name" not in t:
            raise DataError(f"{where(path, None, f'tasks[{i}]')}: expected a mapping with a name")
        bad = sorted(set(t) - known)
        if bad:
            raise DataError(
                f"{where(path, None, f'tasks[{i}].{bad[0]}')}: unknown key (expected {sorted(known)})"
            )
        for key, value in t.items():
            ok, expected = _FIELD_CHECKS.get(key, (lambda v: True, ""))
            if value is not None and not ok(value):
                raise DataError(
                    f"{where(path, None, f'tasks[{i}].{key}')}: expected {expected}, got {value!r}"
                )
        spec = TaskSpec(**t)
        if spec.templates is not None and (
            not isinstance(spec.templates, list)
            or not spec.templates
            or not all(isinstance(x, str) for x in spec.templates)
        ):
            raise DataError(
                f"{where(path, None, f'tasks[{i}].templates')}: expected a non-empty list of strings"
            )
        if spec.source and not Path(spec.source).is_absolute():
            spec.source = str(Path(path).parent / spec.source)
        if (spec.source is None) == (spec.rows is None):
            raise DataError(f"{where(path, None, f'tasks[{i}]')}: give exactly one of source, rows")
        specs.append(spec)
    return specs, seed


def _text(obj: dict, key: str, path, line, fld_prefix: str) -> str:
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{where(path, line, fld_prefix + key)}: expected a string, got {value!r}")
    return value


def _records(
    spec: TaskSpec, spec_path: str | None, counts: Counter
) -> list[tuple[str, int | None, dict, str]]:
    """(path, line, record, field prefix for errors): inline rows or the source's records, a Self-Instruct seed task
    expanded to one record per instance (a task without instances is counted, `skipped_no_instances`)."""
    if spec.rows is not None:
        raw = [(spec_path or "<spec>", None, r, f"rows[{j}].") for j, r in enumerate(spec.rows)]
    else:
        raw = [(p, n, r, "") for p, n, r in read_nonempty(spec.source)]
    out = []
    for p, n, rec, prefix in raw:
        expanded = expand_instances(rec, p, n) if isinstance(rec, dict) else [rec]
        counts["skipped_no_instances"] += not expanded
        out += [(p, n, r, prefix) for r in expanded]
    return out


def _strip_output(text: str, suffixes: list[str]) -> str:
    suffixes = [x for x in suffixes if x]
    return strip_trailing(text, tuple(suffixes))[0].rstrip() if suffixes else text


def read_task_rows(spec: TaskSpec, spec_path: str | None = None, counts: Counter | None = None) -> list[Row]:
    """The task's rows as (input, output, choices, cot); missing or non-string fields raise file:line errors. Once
    the first row has an instruction, every row must have one and a missing input is empty."""
    counts = Counter() if counts is None else counts
    records = _records(spec, spec_path, counts)
    records = records[: spec.max_rows] if spec.max_rows else records
    own_instruction = bool(records) and isinstance(records[0][2], dict) and "instruction" in records[0][2]
    rows = []
    for path, line, rec, prefix in records:
        if not isinstance(rec, dict):
            raise DataError(f"{where(path, line, prefix.rstrip('.'))}: expected an object")
        pair = next(((i, o) for i, o in FIELD_PAIRS if i in rec), FIELD_PAIRS[-1])
        in_key, out_key = spec.input or pair[0], spec.output or pair[1]
        if own_instruction:
            _text(rec, "instruction", path, line, prefix)
            rec = {**rec, in_key: "" if rec.get(in_key) is None else rec[in_key]}
        output = _strip_output(_text(rec, out_key, path, line, prefix).strip(), spec.strip_suffix)
        choices = (
            spec.choices if isinstance(spec.choices, list) else rec.get(spec.choices) if spec.choices else []
        )
        if not isinstance(choices, list):
            raise DataError(f"{where(path, line, prefix + str(spec.choices))}: expected a list of choices")
        cot = _text(rec, spec.cot, path, line, prefix).strip() if spec.cot and rec.get(spec.cot) else ""
        system = _text(rec, "system", path, line, prefix).strip() if rec.get("system") is not None else ""
        rows.append(
            Row(
                _text(rec, in_key, path, line, prefix).strip(),
                output,
                [str(c) for c in choices],
                cot,
                rec,
                system,
            )
        )
    return rows


def templates_of(spec: TaskSpec, rows: list[Row]) -> list[str]:
    """The spec's templates, or the default for its rows: "{instruction}" for rows with their own, else "{input}"."""
    if spec.templates is not None:
        return spec.templates
    return ["{instruction}"] if rows and rows[0].instruction is not None else ["{input}"]


class TemplateFillError(DataError):
    """A template that cannot be filled (unknown placeholder, invalid Jinja); `build_from_spec` adds the task."""


def fill(template: str, values: dict[str, Any]) -> str:
    """Jinja when the template has {{ or {%, else {name} placeholders (other braces are left alone)."""
    if "{{" in template or "{%" in template:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return env.from_string(template).render(**values)
        except jinja2.TemplateError as e:  # undefined names, syntax errors
            raise TemplateFillError(f"template {template[:40]!r}: {e}") from None

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise TemplateFillError(
                f"template {template[:40]!r}: unknown placeholder {{{m.group(1)}}} "
                f"(known: {', '.join(sorted(values))})"
            )
        return str(values[m.group(1)])

    return _PLACEHOLDER.sub(sub, template)


def _values(row: Row, spec: TaskSpec) -> dict[str, Any]:
    output = fill(spec.cot_format, {"cot": row.cot, "output": row.output}) if row.cot else row.output
    base = {k: v for k, v in row.fields.items() if isinstance(v, (str, int, float))}
    return {
        **base,
        "input": row.input,
        "output": output,
        "answer": row.output,
        "cot": row.cot,
        "choices": ", ".join(row.choices),
        "choices_list": row.choices,
    }


def render_instance(
    spec: TaskSpec, rows: list[Row], i: int, template_idx: int, show_description: bool, demo_idx: list[int]
) -> tuple[str, str]:
    """(user prompt, assistant reply) of row i with the given template, description choice and demonstrations."""
    values = _values(rows[i], spec)
    template = templates_of(spec, rows)[template_idx]
    demos = [fill(spec.demo_format, _values(rows[j], spec)) for j in demo_idx]
    if not show_description:
        parts = demos + [fill(spec.input_format, values)]
    elif _USES_INPUT.search(template):
        parts = demos + [fill(template, values)]
    else:
        parts = [fill(template, values)] + demos + [fill(spec.input_format, values)]
    return "\n\n".join(p.strip() for p in parts if p.strip()), values["output"]


def _same_task(rows: list[Row]) -> tuple[list[list[int]], list[int]]:
    """(for each row, the indices of its task's rows; its position among them): rows with their own instruction
    are grouped by it, all other rows are one task."""
    groups: dict[str | None, list[int]] = {}
    position = []
    for i, row in enumerate(rows):
        group = groups.setdefault(row.instruction, [])
        position.append(len(group))
        group.append(i)
    return [groups[row.instruction] for row in rows], position


def build_task(spec: TaskSpec, rows: list[Row], seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One instance per row with a drawn template, description choice and k demonstrations from the same task (never
    the row itself); plus counts. Rows whose output or rendered prompt is empty are skipped and counted."""
    rng = random.Random(f"{seed}:{spec.name}")
    shots = spec.k_shot if isinstance(spec.k_shot, list) else [spec.k_shot]
    templates = templates_of(spec, rows)
    task_of, position = _same_task(rows)
    out, counts = [], Counter()
    for i in range(len(rows)):
        t = rng.randrange(len(templates))
        show = spec.description if spec.description != "mixed" else rng.random() < 0.5
        task, p = task_of[i], position[i]
        k = min(rng.choice(shots), len(task) - 1)
        demo_idx = [task[j + (j >= p)] for j in rng.sample(range(len(task) - 1), k)]  # skip row i itself
        if not rows[i].output:
            counts["skipped_empty_output"] += 1
            continue
        user, reply = render_instance(spec, rows, i, t, bool(show), demo_idx)
        if not user:
            counts["skipped_empty_prompt"] += 1
            continue
        meta = {
            "source": "tasks",
            "task": spec.name,
            "template": t,
            "k_shot": k,
            "description": bool(show),
            "cot": bool(rows[i].cot),
        }
        system = [Message("system", rows[i].system)] if rows[i].system else []
        out.append(
            Conversation([*system, Message("user", user), Message("assistant", reply)], meta).to_dict()
        )
        counts[f"template_{t}"] += 1
        counts[f"k_shot_{k}"] += 1
        counts["with_description" if show else "without_description"] += 1
        counts["with_cot"] += bool(rows[i].cot)
    return out, {"rows": len(rows), "instances": len(out), **dict(sorted(counts.items()))}


def build_from_spec(specs: list[TaskSpec], seed: int, spec_path: str | None = None):
    """All tasks' instances (in spec order) and per-task counts."""
    records, per_task = [], {}
    for k, spec in enumerate(specs):
        read_counts: Counter = Counter()
        rows = read_task_rows(spec, spec_path, read_counts)
        try:
            recs, counts = build_task(spec, rows, seed)
        except TemplateFillError as e:
            raise DataError(
                f"{where(spec_path or spec.source, None, f'tasks[{k}]')} ({spec.name}): {e}"
            ) from None
        records += recs
        per_task[spec.name] = {**counts, **{key: n for key, n in read_counts.items() if n}}
    return records, {"tasks": per_task}


def spec_for_file(path: str, k_shot: int = 0) -> TaskSpec:
    """A prompt/completion, input/output, alpaca or Self-Instruct seed file as a task of its own, named after the
    file, with `k_shot` demonstrations per instance (from the same instruction for rows that have one)."""
    return TaskSpec(name=Path(path).name.split(".")[0], source=path, k_shot=k_shot)
