"""What `posttrain bench` and the GPU suite share: the workload table and running one side, or both, each in its own
subprocess (so each has its own peak RSS).

Adding a workload: one row in WORKLOADS naming the two functions (each returns a dict) and the metric to compare.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    ours: str
    """module:function running posttrain's side; returns a dict with `metric`, peak_rss_mib, wall_s."""
    anchor: str
    """module:function running the anchor's side (TRL / PEFT / transformers)."""
    metric: str
    """The throughput key both dicts carry (higher is better)."""
    quality: str = "final_loss"
    """A key both sides report that should agree (compared, not timed)."""
    anchor_name: str = "anchor"
    """How the report names the anchor's side."""


WORKLOADS: dict[str, Workload] = {
    "sft-lora": Workload("posttrain.bench.sft:run_lora", "posttrain.bench.anchors:sft_lora", "tokens_per_s"),
    "sft-full": Workload("posttrain.bench.sft:run_full", "posttrain.bench.anchors:sft_full", "tokens_per_s"),
    "rollout": Workload(
        "posttrain.bench.rl:rollout_ours", "posttrain.bench.rl:rollout_anchor", "tokens_per_s"
    ),
    "rl-lora": Workload(
        "posttrain.bench.rl:rl_lora_ours", "posttrain.bench.rl:rl_lora_anchor", "completions_per_s"
    ),
    "rl-ppo": Workload(  # TRL ships no PPO: PPO's cost against our own GRPO on the same workload
        "posttrain.bench.rl:rl_ppo_ours",
        "posttrain.bench.rl:rl_lora_ours",
        "completions_per_s",
        anchor_name="our GRPO",
    ),
    "dpo-lora": Workload("posttrain.bench.dpo:run", "posttrain.bench.dpo:anchor", "pairs_per_s"),
}


def call(target: str) -> dict:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)()


def run_side(name: str, anchor: bool, env: dict | None = None, timeout: float | None = None) -> dict:
    """One side in a fresh subprocess (under `env`, default this process's); its last stdout line is the result."""
    cmd = [sys.executable, "-m", "posttrain", "bench", name, "--json"] + (["--anchor"] if anchor else [])
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare(name: str, env: dict | None = None, timeout: float | None = None) -> dict:
    w = WORKLOADS[name]
    anchor = run_side(name, True, env, timeout)  # back to back: anchor first, then ours
    ours = run_side(name, False, env, timeout)
    summary = {
        "workload": name,
        "metric": w.metric,
        "posttrain": ours,
        "anchor": anchor,
        "anchor_name": w.anchor_name,
        "speedup": ours[w.metric] / anchor[w.metric],
        "rss_ratio": ours["peak_rss_mib"] / anchor["peak_rss_mib"],
    }
    if w.quality in ours and w.quality in anchor:
        summary["quality_rel_diff"] = abs(ours[w.quality] - anchor[w.quality]) / abs(anchor[w.quality])
    if (
        "cpu_s" in ours and "cpu_s" in anchor
    ):  # CPU seconds for the same work: steadier than wall time under load
        summary["cpu_speedup"] = anchor["cpu_s"] / ours["cpu_s"]
    return summary
