"""The evaluation report: `report.json` (everything), `report.md` (tables + sample generations), PNG comparison plots.

    write_report(results, "runs/eval")        # -> [report.json, report.md, plot_likelihood.png, ...]

`results` is what `posttrain.eval.cli.evaluate` returns:

    {"models": ["base", "sft"],
     "metrics": {"likelihood": {"base": {"loss": 2.3, "perplexity": 9.9}, "sft": {...}}, "accuracy": {...}, ...},
     "per_task": {"sft": {"add": {"exact": 1.0, "n": 4}, ...}},
     "win_rates": [{"a": "sft", "b": "base", "win_rate": .6, "ci_low": .5, "ci_high": .7, "n": 40}],
     "samples": {"accuracy": [{"prompt": "...", "reference": "...", "base": "...", "sft": "..."}]},
     "config": {...}}

Plots are drawn where a comparison is shown: one grouped bar chart per section when there are several models, and
win rates with their bootstrap intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from posttrain.atomic import atomic_open, atomic_write_text

SAMPLE_CHARS = 300
"""Longest text shown in a cell of the sample tables (the JSON keeps everything)."""

_MD_SPECIAL = "\\`*_[]<>|#"


def escape_md(text: Any, limit: int = SAMPLE_CHARS) -> str:
    """Text safe inside a markdown table cell: specials backslash-escaped, newlines as <br>, cut at `limit`."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape_md(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; header cells escaped, values formatted (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(escape_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_table(by_model: dict[str, dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for m in by_model.values() for k in m))
    return table(["model", *keys], [[name, *(m.get(k, "") for k in keys)] for name, m in by_model.items()])


def _per_task_section(per_task: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for name, tasks in per_task.items():
        keys = list(dict.fromkeys(k for t in tasks.values() for k in t))
        out += [
            f"### Accuracy per task: {escape_md(name)}",
            "",
            table(["task", *keys], [[task, *(v.get(k, "") for k in keys)] for task, v in tasks.items()]),
            "",
        ]
    return out


def _win_rate_table(win_rates: list[dict[str, Any]]) -> str:
    header = ["A", "B", "win rate of A", "95% CI", "n", "wins", "ties", "losses"]
    rows = [
        [
            w["a"],
            w["b"],
            w["win_rate"],
            f"[{w['ci_low']:.3f}, {w['ci_high']:.3f}]",
            w["n"],
            w["wins"],
            w["ties"],
            w["losses"],
        ]
        for w in win_rates
    ]
    return table(header, rows)


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    out = [
        "# Evaluation report",
        "",
        "Models: " + ", ".join(f"`{escape_md(m)}`" for m in results["models"]),
        "",
    ]
    for section, by_model in results["metrics"].items():
        out += [f"## {section.capitalize()}", "", _metric_table(by_model), ""]
        if section == "accuracy" and results.get("per_task"):
            out += _per_task_section(results["per_task"])
    if results.get("win_rates"):
        out += [
            "## Win rates (reward model judge, ties count 0.5)",
            "",
            _win_rate_table(results["win_rates"]),
            "",
        ]
    for section, samples in results.get("samples", {}).items():
        if samples:
            cols = list(dict.fromkeys(k for s in samples for k in s))
            out += [
                f"## Sample generations: {section}",
                "",
                table(cols, [[s.get(c, "") for c in cols] for s in samples]),
                "",
            ]
    return "\n".join(out)


def _save(fig, path: Path) -> None:
    """A figure as PNG, atomically (temporary file + rename)."""
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


RATE_WORDS = ("accuracy", "exact", "contained", "rate", "refusal", "win", "f1", "match")
"""A metric whose name holds one of these is a share in [0, 1]: drawn on a fixed 0-1 axis."""
LOSS_WORDS = ("loss", "perplexity", "ppl", "nll")
"""Losses and perplexities: an axis around the values (not from 0), so that differences show."""


def metric_kind(key: str, values: list[float]) -> str:
    """rate | loss | kl | count: how a metric's axis is drawn."""
    k = key.lower()
    if k.startswith("kl"):
        return "kl"
    if any(w in k for w in LOSS_WORDS):
        return "loss"
    if any(w in k for w in RATE_WORDS) and all(0.0 <= v <= 1.0 for v in values):
        return "rate"
    return "count"


def _panel(ax, key: str, names: list[str], values: list[float]) -> None:
    """One metric across models: bars with their values written on them, on an axis that shows the differences."""
    kind = metric_kind(key, values)
    bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    title = key
    if kind == "rate":
        ax.set_ylim(0, 1.12)  # an all-zero rate is a row of zeros on 0-1, not an empty -0.04..0.04 axis
    elif kind == "loss":
        low, high = min(values), max(values)
        pad = max(0.15 * (high - low), 0.02 * max(abs(high), 1e-9))
        ax.set_ylim(low - pad, high + 2 * pad)  # not from 0: a 2.41 against 2.38 loss must show
        title += " (axis not from 0)"
    elif kind == "kl":
        ax.axhline(0.0, color="grey", linewidth=0.8)
        low, high = min(values + [0.0]), max(values + [0.0])
        pad = 0.15 * max(high - low, 1e-3)
        ax.set_ylim(low - pad, high + 2 * pad)
        title += "\n(sampled estimate: unbiased,\n0 +- noise when equal)"
    else:  # counts, rewards: from 0 (or below it), with room for the labels
        low, high = min(values + [0.0]), max(values + [0.0])
        pad = 0.15 * max(high - low, 1e-9)
        ax.set_ylim(low - (pad if low < 0 else 0.0), high + pad)
        if low < 0:
            ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_title(title, fontsize=9)


def _bar_plot(section: str, by_model: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _plot_keys(by_model)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        names = list(by_model)
        _panel(ax, key, names, [by_model[n][key] for n in names])
    fig.suptitle(section)
    fig.tight_layout()
    _save(fig, path)


def _plot_keys(by_model: dict[str, dict[str, Any]]) -> list[str]:
    """The float metrics every model has, without counts that only size the run."""
    skip = ("tokens", "responses", "n", "count", "samples")
    return [
        k
        for k in dict.fromkeys(k for m in by_model.values() for k in m)
        if all(isinstance(m.get(k), float) for m in by_model.values()) and k not in skip
    ]


def _summary_plot(bars: dict[str, dict[str, dict[str, Any]]], wins: list[dict[str, Any]], path: Path) -> None:
    """Every compared metric of the report in one figure (a row per section) and the win rates: the page to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(section, _plot_keys(by_model)) for section, by_model in bars.items()]
    rows = [(s, k) for s, k in rows if k]
    cols = max([len(k) for _, k in rows] + [1])
    n_rows = len(rows) + (1 if wins else 0)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.3 * n_rows), squeeze=False)
    for r, (section, keys) in enumerate(rows):
        names = list(bars[section])
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(keys):
                ax.axis("off")
                continue
            _panel(ax, keys[c], names, [bars[section][n][keys[c]] for n in names])
            if c == 0:
                ax.set_ylabel(section)
    if wins:
        ax = axes[-1][0]
        labels = [f"{w['a']} vs {w['b']}" for w in wins]
        rates = [w["win_rate"] for w in wins]
        err = [
            [x - w["ci_low"] for x, w in zip(rates, wins)],
            [w["ci_high"] - x for x, w in zip(rates, wins)],
        ]
        ax.barh(range(len(labels)), rates, xerr=err, capsize=3, color="C0")
        for i, w in enumerate(wins):
            ax.text(min(w["ci_high"] + 0.02, 0.9), i, f"{w['win_rate']:.2f}", va="center", fontsize=8)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title("win rate (95% CI)", fontsize=9)
        for c in range(1, cols):
            axes[-1][c].axis("off")
    fig.suptitle("posttrain eval: summary")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    _save(fig, path)


def _win_rate_plot(win_rates: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{w['a']} vs {w['b']}" for w in win_rates]
    rates = [w["win_rate"] for w in win_rates]
    err = [
        [r - w["ci_low"] for r, w in zip(rates, win_rates)],
        [w["ci_high"] - r for r, w in zip(rates, win_rates)],
    ]
    fig, ax = plt.subplots(figsize=(5, 0.6 * len(labels) + 1.5))
    ax.barh(range(len(labels)), rates, xerr=err, capsize=4, color="C0")
    for i, w in enumerate(win_rates):
        ax.text(min(w["ci_high"] + 0.02, 0.9), i, f"{w['win_rate']:.2f}", va="center", fontsize=8)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (95% bootstrap CI)")
    fig.tight_layout()
    _save(fig, path)


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """The comparison PNGs; none, with a note, when matplotlib is not installed (the report does not need them)."""
    import importlib.util
    import sys

    bars = {s: by_model for s, by_model in results["metrics"].items() if len(by_model) > 1}
    wins = results.get("win_rates")
    if not bars and not wins:
        return []
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "posttrain eval: plots skipped: matplotlib is not installed (pip install 'posttrain[plot]')",
            file=sys.stderr,
        )
        return []
    written = []
    for section, by_model in bars.items():
        written.append(out_dir / f"plot_{section}.png")
        _bar_plot(section, by_model, written[-1])
    if wins:
        written.append(out_dir / "plot_win_rates.png")
        _win_rate_plot(wins, written[-1])
    written.append(out_dir / "summary.png")
    _summary_plot(bars, wins or [], written[-1])
    return written


def write_report(results: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write the comparison PNGs (with `plots`), report.md, then report.json; returns the paths written.

    Each file is replaced atomically, and report.json, the record of the run, goes last: a writer killed part way
    leaves every file whole, and an old report.json means the run did not finish."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(results) + "\n"
    text = json.dumps(results, indent=2, ensure_ascii=False, default=str)
    pictures = write_plots(results, out) if plots else []
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.json", text)
    return [out / "report.json", out / "report.md", *pictures]
