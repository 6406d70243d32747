"""The demo's PNG plots: loss curves per family, PPO per rollout, the PEFT trade-off (accuracy against trainable
parameters) and task scaling (held-out-task accuracy against the number of training tasks).

    plots(report, out_dir)   # -> ["loss_curves.png", "ppo.png", "grpo.png", "peft.png", "tradeoff.png", ...]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.demo.settings import PEFT_METHODS


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


def _smooth(ys: list[float], share: float = 0.04) -> list[float]:
    """Trailing running mean over `share` of the points (at least 1)."""
    k = max(1, round(len(ys) * share))
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def _keys(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in r if not k.startswith("eval")})


def _per_rollout(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The first step of each run of equal values: where a new rollout's figure appears."""
    keep = [i for i in range(len(ys)) if i == 0 or ys[i] != ys[i - 1]]
    return [xs[i] for i in keep], [ys[i] for i in keep]


def plots(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # one panel per curve family, each on the scale its losses need: SFT losses fall over two decades (log); the
    # reward model's and DPO's fall towards 0 (linear, so a 1e-40 loss does not stretch the axis over 40 decades)
    families = [
        ("SFT (log scale)", [(m, out / "sft" / m) for m in PEFT_METHODS], "log"),
        ("reward model", [("rm", out / "rm")], "linear"),
        ("DPO", [("dpo", out / "dpo")], "linear"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (title, runs, scale) in zip(axes, families):
        for label, d in runs:
            xs, ys = _series(_metrics(d / "metrics.jsonl"), "loss")
            if xs:  # a running mean: grouped batches make the per-step loss jump with the batch's task
                ax.plot(xs, _smooth(ys), label=label, linewidth=1.2)
        ax.set(xlabel="optimiser step", ylabel="training loss (running mean)", title=title, yscale=scale)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    made.append("loss_curves.png")
    plt.close(fig)

    # PPO logs a rollout's reward and KL on every optimiser step that trains on it: one point per rollout, not a
    # staircase. approx_kl (policy vs the rollout's policy, per update) and the KL coefficient (a setting) are not
    # KLs to SFT, so they get their own panel.
    rows = _metrics(out / "ppo" / "metrics.jsonl")
    keys = _keys(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, title in (
        (axes[0], "reward", "mean reward per rollout"),
        (axes[1], "kl", "KL to SFT per rollout (nats; a sampled\nlog-ratio estimate, can dip below 0)"),
    ):
        if key in keys:
            ax.plot(*_per_rollout(*_series(rows, key)), marker="o", markersize=3, linewidth=1)
        ax.set(xlabel="PPO step", title=title)
    axes[1].axhline(0.0, color="grey", linewidth=0.5)
    coef = sorted({r["kl_coef"] for r in rows if isinstance(r.get("kl_coef"), (int, float))})
    if "approx_kl" in keys:
        axes[2].plot(*_series(rows, "approx_kl"), linewidth=1)
    fixed = f" (kl_coef {coef[0]:g})" if len(coef) == 1 else ""
    axes[2].set(xlabel="PPO step", title=f"PPO update: approx KL to the\nrollout policy{fixed}")
    if len(coef) > 1:  # adaptive KL: the coefficient on its own axis
        twin = axes[2].twinx()
        twin.plot(*_series(rows, "kl_coef"), color="tab:red", linewidth=1)
        twin.set_ylabel("kl_coef", color="tab:red")
    fig.tight_layout()
    fig.savefig(out / "ppo.png", dpi=100)
    made.append("ppo.png")
    plt.close(fig)

    rows = _metrics(out / "grpo" / "metrics.jsonl")  # one rollout per step: every step is a new point
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, key, title in (
            (axes[0], "reward", "GRPO: share of sampled answers right\n(the verifiable reward) per rollout"),
            (axes[1], "kl", "KL to SFT per rollout (nats; a sampled\nlog-ratio estimate, can dip below 0)"),
        ):
            if key in _keys(rows):
                ax.plot(*_series(rows, key), marker="o", markersize=3, linewidth=1)
            ax.set(xlabel="GRPO step", title=title)
        axes[1].axhline(0.0, color="grey", linewidth=0.5)
        fig.tight_layout()
        fig.savefig(out / "grpo.png", dpi=100)
        made.append("grpo.png")
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
        values = [sft[m][key] for m in sft]
        bars = a.bar(list(sft), values, color=[f"C{i}" for i in range(len(values))])
        fmt = "{:.2f}" if key == "seen_accuracy" else "{:.3g}"
        a.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2, fontsize=8)
        if key == "seen_accuracy":
            a.set_ylim(0, 1.1)  # a share: one 0-1 axis, so small ones are not blown up
        elif key == "trainable_pct":
            a.set_yscale("log")  # 0.4% and 100% on one axis
            a.set_ylim(min(values) / 3, max(values) * 4)
            title += " (log)"
        else:
            a.set_ylim(0, max(values) * 1.2)
        a.set_title(title)
        a.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(out / "peft.png", dpi=100)
    made.append("peft.png")
    plt.close(fig)
    counted = {m: r for m, r in sft.items() if (r.get("trainable_params") or 0) > 0}
    if counted:
        made.append(_tradeoff(plt, report, counted, out))
    points = (report.get("scaling") or {}).get("points") or []
    if points:
        made.append(_scaling(plt, report, points, out))
    return made


def _tradeoff(plt, report: dict[str, Any], sft: dict[str, dict[str, Any]], out: Path) -> str:
    """Held-out-instance accuracy against trainable parameters (log axis), one point per method: exact match
    filled, the right answer anywhere in the response hollow; the base model as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, r in sft.items():
        x = r["trainable_params"]
        ax.scatter([x], [r["seen_accuracy"]], s=40, zorder=3)
        colour = ax.collections[-1].get_facecolor()[0]
        if "seen_contained" in r:
            ax.scatter([x], [r["seen_contained"]], s=60, facecolors="none", edgecolors=[colour], zorder=3)
        ax.annotate(m, (x, r["seen_accuracy"]), textcoords="offset points", xytext=(6, -10), fontsize=8)
    base = (report.get("base") or {}).get("seen_accuracy")
    if base is not None:
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="base")
    ax.scatter([], [], color="black", s=40, label="exact match")
    ax.scatter([], [], facecolors="none", edgecolors="black", s=60, label="answer contained")
    ax.set(
        xscale="log",
        xlabel="trainable parameters (log scale)",
        ylabel="held-out-instance accuracy",
        title="PEFT trade-off: accuracy against trainable parameters",
        ylim=(-0.03, 1.03),
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png", dpi=100)
    plt.close(fig)
    return "tradeoff.png"


def _scaling(plt, report: dict[str, Any], points: list[dict[str, Any]], out: Path) -> str:
    """Held-out-task accuracy (overall and per held-out task) against the number of training tasks."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [p["tasks"] for p in points]
    ax.plot(xs, [p["unseen_task_accuracy"] for p in points], marker="o", linewidth=2, label="held-out tasks")
    for task in sorted({t for p in points for t in p.get("unseen_task_by_task", {})}):
        ys = [p.get("unseen_task_by_task", {}).get(task, float("nan")) for p in points]
        ax.plot(xs, ys, marker=".", linestyle=":", linewidth=1, label=f"  {task}")
    base = (report.get("base") or {}).get("unseen_task_accuracy")
    if base is not None:
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="base")
    steps = (report.get("scaling") or {}).get("steps")
    ax.set(
        xlabel="training tasks in the instruction data",
        ylabel="accuracy on held-out tasks",
        title=f"Task scaling (full fine-tuning{f', {steps} steps each' if steps else ''})",
        xticks=xs,
        ylim=(-0.03, 1.03),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "task_scaling.png", dpi=100)
    plt.close(fig)
    return "task_scaling.png"
