"""Summaries of a JSONL dataset: tasks, sources, turn counts, length histogram, mix proportions.

posttrain data stats data/sft.jsonl --tokenizer out/model
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

BAR_WIDTH = 40
"""Characters of the longest bar."""


def _messages(rec: dict[str, Any], n: int) -> list:
    """Any record posttrain reads as messages (preference records: prompt + chosen); see `posttrain.data.messages.record_messages`."""
    from posttrain.data.messages import record_messages

    return record_messages(rec, "<record>", n)


def _bin(n: int) -> str:
    """Power-of-two bins: 0, 1, 2-3, 4-7, 8-15, ..."""
    if n < 2:
        return str(n)
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


def _sorted_bins(c: Counter) -> dict[str, int]:
    return {k: c[k] for k in sorted(c, key=lambda k: int(k.split("-")[0]))}


def summarise(records: Iterable[dict[str, Any]], tokenizer=None) -> dict[str, Any]:
    """Counts by meta.task / meta.source / meta.mix_source, turns per record and a length histogram."""
    tasks, sources, mix, turns, lengths = Counter(), Counter(), Counter(), Counter(), Counter()
    n, total_len = 0, 0
    for rec in records:
        n += 1
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        tasks[str(meta.get("task", "-"))] += 1
        sources[str(meta.get("source", "-"))] += 1
        if "mix_source" in meta:
            mix[str(meta["mix_source"])] += 1
        msgs = _messages(rec, n)
        turns[str(len(msgs))] += 1
        text = "\n".join(m.content for m in msgs)
        size = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())
        lengths[_bin(size)] += 1
        total_len += size
    mix_from = mix or sources
    return {
        "records": n,
        "length_unit": "tokens" if tokenizer else "words",
        "mean_length": round(total_len / n, 2) if n else 0.0,
        "tasks": dict(tasks.most_common()),
        "sources": dict(sources.most_common()),
        "mix_proportions": {k: round(v / n, 4) for k, v in mix_from.most_common()} if n else {},
        "turns": _sorted_bins(turns),
        "length_histogram": _sorted_bins(lengths),
    }


def bar_plot(counts: dict[str, int | float], width: int = BAR_WIDTH) -> str:
    """One line per key: label, a bar scaled to the largest value, the value."""
    if not counts:
        return "  (none)"
    top = max(counts.values()) or 1
    label_w = max(len(str(k)) for k in counts)
    return "\n".join(
        f"  {str(k):>{label_w}} | {'█' * max(1 if v else 0, round(width * v / top)):<{width}} {v}"
        for k, v in counts.items()
    )


def format_summary(s: dict[str, Any], max_tasks: int = 20) -> str:
    tasks = dict(list(s["tasks"].items())[:max_tasks])
    more = len(s["tasks"]) - len(tasks)
    lines = [
        f"records: {s['records']}   mean length: {s['mean_length']} {s['length_unit']}",
        f"\ntasks ({len(s['tasks'])}):",
        bar_plot(tasks),
    ]
    if more > 0:
        lines.append(f"  ... and {more} more")
    lines += [
        "\nsources:",
        bar_plot(s["sources"]),
        "\nmix proportions:",
        bar_plot(s["mix_proportions"]),
        "\nturns per record:",
        bar_plot(s["turns"]),
        f"\nlength ({s['length_unit']}):",
        bar_plot(s["length_histogram"]),
    ]
    return "\n".join(lines)
