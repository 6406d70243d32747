"""The demo's report: `report.json` (nested numbers), `report.md` (tables + targets with pass/fail), PNG plots.

write_report(report, out_dir)   # -> out_dir/report.json, report.md, loss_curves.png, ppo.png, peft.png
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.atomic import atomic_write_text
from posttrain.demo.settings import PEFT_METHODS


def _get(report: dict[str, Any], path: str) -> Any:
    node: Any = report
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _best_gain(r: dict[str, Any]) -> float | None:
    best, base = _get(r, f"sft.{_get(r, 'sft_best.method')}.seen_accuracy"), _get(r, "base.seen_accuracy")
    return None if best is None or base is None else best - base


def _ge(path: str, bound: float) -> Callable[[dict], tuple[Any, bool | None]]:
    return lambda r: (_get(r, path), None if _get(r, path) is None else _get(r, path) >= bound)


def _le(path: str, bound: float) -> Callable[[dict], tuple[Any, bool | None]]:
    return lambda r: (_get(r, path), None if _get(r, path) is None else _get(r, path) <= bound)


def _beats_sft(key: str) -> Callable[[dict], tuple[Any, bool | None]]:
    def check(r: dict) -> tuple[Any, bool | None]:
        v, sft = _get(r, f"{key}.gold_reward"), _get(r, "sft_best.gold_reward")
        return v, None if v is None or sft is None else v > sft

    return check


TARGETS: list[tuple[str, Callable[[dict], tuple[Any, bool | None]]]] = [
    (
        "best SFT beats base on held-out instances by >= 40 points",
        lambda r: (_best_gain(r), None if _best_gain(r) is None else _best_gain(r) >= 0.40),
    ),
    ("reward model held-out pairwise accuracy >= 85%", _ge("rm.heldout_accuracy", 0.85)),
    ("PPO raises mean gold reward over SFT", _beats_sft("ppo")),
    ("DPO raises mean gold reward over SFT", _beats_sft("dpo")),
    ("refusal rate on held-out high-risk prompts >= 90%", _ge("safety.refusal_rate", 0.90)),
    ("false-refusal rate on benign look-alikes <= 10%", _le("safety.false_refusal_rate", 0.10)),
]


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    budget = 180.0 if report.get("mode") == "quick" else 900.0
    rows = TARGETS + [
        (f"wall time <= {budget / 60:.0f} min ({report.get('mode')} mode)", _le("wall_s", budget))
    ]
    return [{"target": name, "value": v, "pass": ok} for name, (v, ok) in ((n, fn(report)) for n, fn in rows)]


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# posttrain demo report ({report.get('mode')} mode)",
        "",
        f"Wall time: {_fmt(report.get('wall_s'))} s with {report.get('threads', '?')} torch threads. The time "
        "budgets assume 2 CPU cores free of other load.",
        "",
        "## Targets",
        "",
        "| target | value | result |",
        "|---|---|---|",
    ]
    for t in report.get("targets", []):
        lines.append(
            f"| {t['target']} | {_fmt(t['value'])} | "
            f"{'pass' if t['pass'] else 'FAIL' if t['pass'] is False else 'not measured'} |"
        )
    lines += ["", "## Stages", "", "| stage | status | wall s | note |", "|---|---|---|---|"]
    for name, st in report.get("stages", {}).items():
        lines.append(f"| {name} | {st['status']} | {st['wall_s']} | {st['note']} |")
    cols = (
        "seen_accuracy",
        "heldout_phrasing_accuracy",
        "unseen_task_accuracy",
        "refusal_rate",
        "false_refusal_rate",
        "identity_accuracy",
        "trainable_pct",
        "peak_mem_mib",
        "wall_s",
    )
    lines += [
        "",
        "## Instruction tuning: base vs each PEFT method",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
        "| base | " + " | ".join(_fmt(report.get("base", {}).get(c)) for c in cols) + " |",
    ]
    for m in PEFT_METHODS:
        row = report.get("sft", {}).get(m)
        if row is not None:
            cells = [_fmt(row.get(c)) for c in cols] if "status" not in row else [row["status"]] + [""] * 8
            lines.append(f"| sft {m} | " + " | ".join(cells) + " |")
    tasks = sorted({t for r in report.get("sft", {}).values() for t in r.get("seen_by_task", {})})
    if tasks:
        lines += [
            "",
            "Held-out-instance accuracy per task (greedy, exact match):",
            "",
            "| model | " + " | ".join(tasks) + " |",
            "|---" * (len(tasks) + 1) + "|",
        ]
        for name, r in [("base", report.get("base", {}))] + [
            (f"sft {m}", report["sft"].get(m, {})) for m in PEFT_METHODS
        ]:
            if r.get("seen_by_task"):
                lines.append(
                    f"| {name} | " + " | ".join(_fmt(r["seen_by_task"].get(t)) for t in tasks) + " |"
                )
    lines += [
        "",
        "## Alignment: reward model, PPO, DPO",
        "",
        f"Best SFT method: {_fmt(_get(report, 'sft_best.method'))} "
        f"(RLHF starts from: {_fmt(_get(report, 'sft_best.rlhf_start'))}). "
        f"Reward model held-out pairwise accuracy: {_fmt(_get(report, 'rm.heldout_accuracy'))} on "
        f"{_fmt(_get(report, 'rm.heldout_pairs'))} pairs.",
        "",
        "| model | mean gold reward | KL to SFT (nats/response) | seen accuracy | refusal | false refusal |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("sft_best", "ppo", "dpo"):
        r = report.get(key, {})
        lines.append(
            f"| {key} | {_fmt(r.get('gold_reward'))} | {_fmt(r.get('kl'))} | {_fmt(r.get('seen_accuracy'))} | "
            f"{_fmt(r.get('refusal_rate'))} | {_fmt(r.get('false_refusal_rate'))} |"
        )
    lines += [
        "",
        f"Identity accuracy (best SFT): {_fmt(report.get('identity_accuracy'))}.",
        "",
        "Plots: `loss_curves.png`, `ppo.png`, `peft.png`.",
        "",
    ]
    return "\n".join(lines)


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plots(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(7, 4))
    runs = [(f"sft {m}", out / "sft" / m) for m in PEFT_METHODS] + [("rm", out / "rm"), ("dpo", out / "dpo")]
    for label, d in runs:
        xs, ys = _series(_metrics(d / "metrics.jsonl"), "loss")
        if xs:
            ax.plot(xs, ys, label=label)
    ax.set(xlabel="optimiser step", ylabel="training loss", title="Loss curves", yscale="log")
    if ax.get_lines():
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    made.append("loss_curves.png")
    plt.close(fig)

    rows = _metrics(out / "ppo" / "metrics.jsonl")
    keys = sorted({k for r in rows for k in r if ("reward" in k or "kl" in k) and not k.startswith("eval")})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in keys:
        xs, ys = _series(rows, k)
        axes[0 if "reward" in k else 1].plot(xs, ys, label=k)
    axes[0].set(xlabel="PPO step", title="reward")
    axes[1].set(xlabel="PPO step", title="KL")
    for a in axes:
        if a.get_lines():
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ppo.png", dpi=100)
    made.append("ppo.png")
    plt.close(fig)

    sft = {m: r for m, r in report.get("sft", {}).items() if "seen_accuracy" in r}
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    for a, (key, title) in zip(
        axes,
        (
            ("seen_accuracy", "held-out accuracy"),
            ("trainable_pct", "trainable %"),
            ("wall_s", "wall s"),
            ("peak_mem_mib", "peak MiB"),
        ),
    ):
        a.bar(list(sft), [sft[m][key] for m in sft])
        a.set_title(title)
        a.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(out / "peft.png", dpi=100)
    made.append("peft.png")
    plt.close(fig)
    return made


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Any]:
    out = Path(out)
    report["targets"] = targets(report)
    try:
        report["plots"] = plots(report, out)
    except ImportError as e:  # matplotlib is an optional extra
        report["plots"] = f"skipped: {e}"
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "report.md", markdown(report))
    return report
