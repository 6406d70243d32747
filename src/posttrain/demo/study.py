"""`posttrain demo --study peft`: full tuning and every PEFT method under one protocol, across model sizes.

    posttrain demo --study peft --out study_out                          # the world, at each `study_sizes` base
    posttrain demo --study peft --models DIR_A,DIR_B --data my.jsonl      # your models on your data

The survey leaves open how the methods compare at scale ("few studies"); this is the protocol to find out on what
you have. Every method gets the same optimiser steps, batch size and data (`DemoSettings.sft_steps`, `sft_batch`),
its learning rate from `sft_lr` and its size from `settings.PEFT`. On the world, each base size is pre-trained once
(cached) and every tuned model is scored like the demo's (held-out instances, phrasings, tasks, Portuguese, refusal,
identity). On your models and data the score is the loss on a held-out share of the data (`study_eval_fraction`),
beside trainable parameters, peak memory and wall time. Writes `study.json`, `study.md` and `study.png`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.atomic import atomic_write_text
from posttrain.demo.measure import Measure
from posttrain.demo.pipeline import Pipeline, stage_overrides
from posttrain.demo.settings import PEFT_METHODS, DemoSettings

WORLD_COLUMNS = (
    ("held-out instances", "seen_accuracy"),
    ("held-out phrasing", "heldout_phrasing_accuracy"),
    ("held-out tasks", "unseen_task_accuracy"),
    ("Portuguese", "other_language_accuracy"),
    ("identity", "identity_accuracy"),
)
USER_COLUMNS = (("eval loss", "eval_loss"), ("train loss", "train_loss"))


def run_study(
    out: str | Path,
    s: DemoSettings,
    models: list[str] | None = None,
    data: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if models:
        rows = [_user_run(out, s, m, data or "", method, log) for m in models for method in PEFT_METHODS]
        study = {"kind": "models", "columns": USER_COLUMNS, "rows": rows}
    else:
        rows = [r for name, size in s.study_sizes.items() for r in _world_size(out, s, name, size, log)]
        study = {"kind": "world", "columns": WORLD_COLUMNS, "rows": rows}
    study.update(steps=s.sft_steps, batch_size=s.sft_batch, lr=dict(s.sft_lr))
    atomic_write_text(out / "study.json", json.dumps(study, indent=2, default=str) + "\n")
    try:
        study["plot"] = _plot(study, out)
    except ImportError as e:  # matplotlib is an optional extra
        study["plot"] = f"skipped: {e}"
    atomic_write_text(out / "study.md", markdown(study))
    log(f"study: {out / 'study.md'}")
    return study


def _world_size(out: Path, s: DemoSettings, name: str, size: dict[str, int], log) -> list[dict[str, Any]]:
    """One base size: pre-train (cached), build the demo's data, tune with every method, score on the world."""
    base = dataclasses.replace(s.base, **size)
    pipe = Pipeline(out / name, dataclasses.replace(s, base=base), log=log)
    report = pipe.run(stages=("base", "data", "sft"))
    params = report["base"].get("params")
    rows = []
    for method in PEFT_METHODS:
        r = report["sft"].get(method, {})
        rows.append({"model": name, "params": params, "method": method, **r})
    return rows


def _user_run(out: Path, s: DemoSettings, model: str, data: str, method: str, log) -> dict[str, Any]:
    """One (model, method) on the user's data: same steps, batch and PEFT sizes as the world's protocol."""
    from posttrain.config import load_config
    from posttrain.run import sft

    run_dir = out / Path(model).name / method
    ov = stage_overrides(s.seed, model, data, str(run_dir), s.sft_train(method))
    ov += [f"eval_fraction={s.study_eval_fraction}"] + s.peft_overrides(method)
    cfg = load_config(sft.SFTConfig, None, ov)
    log(f"[study] {model} {method} ...")
    with Measure() as m:
        sft.run(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    trainable, total = _trainable(model, cfg)
    row = {
        "model": model,
        "params": total,
        "method": method,
        "eval_loss": evals[-1] if evals else None,
        "train_loss": losses[-1] if losses else None,
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / total,
        "peak_mem_mib": round(m.peak_mib, 1),
        "wall_s": round(m.wall_s, 1),
    }
    log(f"[study] {model} {method}: eval loss {row['eval_loss']} trainable {row['trainable_pct']:.2f}%")
    return row


def _trainable(model: str, cfg) -> tuple[int, int]:
    from posttrain.artifacts import load_for_inference
    from posttrain.peft import apply_peft, count_parameters

    fresh, tok = load_for_inference(model, dtype="fp32")
    return count_parameters(apply_peft(fresh, cfg.peft, tokenizer=tok, template=cfg.template))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(study: dict[str, Any]) -> str:
    cols = [("trainable params", "trainable_params"), ("trainable %", "trainable_pct")]
    cols += list(study["columns"]) + [("peak MiB", "peak_mem_mib"), ("wall s", "wall_s")]
    lines = [
        "# PEFT study: every method under one budget",
        "",
        f"Each method trains {study['steps']} optimiser steps at batch size {study['batch_size']} on the same data; "
        f"learning rates {study['lr']}.",
        "",
        "| model | model params | method | " + " | ".join(h for h, _ in cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in study["rows"]:
        cells = [r.get("status", "")[:60] if "status" in r else _fmt(r.get(k)) for _, k in cols]
        lines.append(
            f"| {r['model']} | {_fmt(r.get('params'))} | {r['method']} | " + " | ".join(cells) + " |"
        )
    if isinstance(study.get("plot"), str):
        lines += ["", f"Plot: `{study['plot']}`."]
    return "\n".join(lines) + "\n"


def _plot(study: dict[str, Any], out: Path) -> str:
    """The score against trainable parameters (log axis): one line per model size, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = study["columns"][0][1], study["columns"][0][0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in dict.fromkeys(r["model"] for r in study["rows"]):
        pts = sorted(
            (r["trainable_params"], r[key], r["method"])
            for r in study["rows"]
            if r["model"] == model and isinstance(r.get(key), (int, float)) and r.get("trainable_params")
        )
        if not pts:
            continue
        params = next(r.get("params") for r in study["rows"] if r["model"] == model)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            label=f"{Path(model).name} ({params:,} params)",
        )
        for x, y, m in pts:
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel=label, title="PEFT study")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=100)
    plt.close(fig)
    return "study.png"
