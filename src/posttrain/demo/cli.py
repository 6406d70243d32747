"""`posttrain demo [--quick] [--out DIR]`: the whole adaptation pipeline on the embedded task world.

posttrain demo --quick --out demo_out     # smoke run (~3 min on 2 CPU cores)
posttrain demo --out demo_out             # full run (~15 min); the base model is cached between runs
posttrain demo --quick sft_steps=200      # any DemoSettings field as key=value (posttrain.demo.settings)
posttrain demo --study peft --out study   # every PEFT method, equal budgets, at two base sizes (not the 15 min)
posttrain demo --study peft --models A,B --data my.jsonl   # the same protocol on your models and data
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from posttrain.config_docs import help_text
    from posttrain.demo.settings import DemoSettings

    p = argparse.ArgumentParser(
        prog="posttrain demo",
        description=__doc__.splitlines()[0],
        epilog=help_text(
            DemoSettings, intro="settings (key=value overrides; `posttrain config demo` prints them all):"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (what CI runs)")
    p.add_argument(
        "--out", default="demo_out", help="directory for data, runs and the report (default demo_out)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the world, the base model and every run")
    p.add_argument(
        "--study",
        choices=["peft"],
        help="instead of the pipeline: full tuning and every PEFT method, equal budgets, at several sizes",
    )
    p.add_argument("--models", help="with --study: comma-separated model directories or hub names to study")
    p.add_argument("--data", help="with --study --models: your SFT data (comma-separated files)")
    p.add_argument(
        "overrides", nargs="*", help="settings overrides, e.g. sft_steps=100 base.steps=200 dpo_beta=0.2"
    )
    ns = p.parse_args(argv)
    if (ns.models or ns.data) and not ns.study:
        p.error("--models and --data go with --study peft")
    if bool(ns.models) != bool(ns.data):
        p.error("--study peft --models needs --data (and --data needs --models)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from transformers.utils import logging as hf_logging

    from posttrain.config import ConfigError
    from posttrain.demo.pipeline import Pipeline
    from posttrain.demo.report import QUICK_NOTE, target_value, write_report
    from posttrain.demo.settings import settings

    t0 = time.time()

    def log(msg: str) -> None:
        print(f"{time.time() - t0:7.1f}s {msg}", flush=True)

    hf_logging.disable_progress_bar()
    try:
        cfg = settings(ns.quick, ns.seed, ns.overrides)
    except ConfigError as e:
        p.exit(2, f"posttrain demo: {e}\n")
    if ns.study:
        from posttrain.demo.study import run_study

        models = [m for m in (ns.models or "").split(",") if m] or None
        study = run_study(ns.out, cfg, models=models, data=ns.data, log=log)
        failed = [r for r in study["rows"] if "status" in r]
        return 1 if failed else 0
    pipe = Pipeline(ns.out, cfg, log=log)
    report = write_report(pipe.run(), ns.out)
    if report.get("mode") == "quick":
        log(QUICK_NOTE.replace("**", ""))
    for t in report["targets"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[t["pass"]]
        log(f"[{mark}] {t['target']}: {target_value(t)}")
    plots = report.get("plots")
    log(
        f"report: {os.path.join(ns.out, 'report.md')} (plots: {', '.join(plots) if isinstance(plots, list) else plots})"
    )
    failed = [n for n, st in report["stages"].items() if st["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
