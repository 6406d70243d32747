"""`posttrain bench WORKLOAD [--json] [--anchor]`: posttrain against its anchor on the workloads of BENCHMARKS.md.

    posttrain bench sft-lora            # both sides, each in its own subprocess (own peak RSS), and the ratio
    posttrain bench sft-lora --json     # posttrain's side alone, in this process; last line is one JSON object
                                        # (with flops_per_s and ceiling_share: posttrain.bench.ceiling)
    posttrain bench sft-lora --json --anchor   # the anchor's side alone
    posttrain bench all                 # every workload
    posttrain bench gpu --out DIR       # the GPU suite: 0.5B / 1B shapes in bf16 (posttrain.bench.gpu)

Adding a workload: one row in WORKLOADS naming the two functions (each returns a dict) and the metric to compare.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from posttrain.bench.ceiling import add_ceiling
from posttrain.commandline import ArgumentParser


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


def format_summary(s: dict) -> str:
    m, o, a = s["metric"], s["posttrain"], s["anchor"]
    lines = [
        f"{s['workload']}: {m}",
        f"  posttrain {o[m]:>10.1f}   peak RSS {o['peak_rss_mib']:>7.0f} MiB   wall {o['wall_s']:.1f} s   "
        f"final_loss {o.get('final_loss', float('nan')):.4f}",
        f"  {s.get('anchor_name', 'anchor'):<9} {a[m]:>10.1f}   peak RSS {a['peak_rss_mib']:>7.0f} MiB   wall {a['wall_s']:.1f} s   "
        f"final_loss {a.get('final_loss', float('nan')):.4f}",
        f"  speedup {s['speedup']:.2f}x   RSS ratio {s['rss_ratio']:.2f}"
        + (f"   final_loss rel diff {100 * s['quality_rel_diff']:.2f}%" if "quality_rel_diff" in s else "")
        + (f"   CPU-time speedup {s['cpu_speedup']:.2f}x" if "cpu_speedup" in s else ""),
    ]
    if "ceiling_share" in o and "ceiling_share" in a:
        lines.append(
            f"  model GFLOP/s posttrain {o['flops_per_s'] / 1e9:.2f} ({100 * o['ceiling_share']:.0f}% of its "
            f"matmul ceiling {o['ceiling_flops_per_s'] / 1e9:.1f}), {s.get('anchor_name', 'anchor')} "
            f"{a['flops_per_s'] / 1e9:.2f} ({100 * a['ceiling_share']:.0f}% of {a['ceiling_flops_per_s'] / 1e9:.1f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="posttrain bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "workload",
        choices=[*WORKLOADS, "all", "gpu"],
        help="which benchmark (all: every one, side by side; gpu: the GPU suite, `posttrain bench gpu --help`)",
    )
    p.add_argument("--json", action="store_true", help="run one side in this process; print its JSON last")
    p.add_argument("--anchor", action="store_true", help="with --json: run the anchor's side instead of ours")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gpu"]:
        from posttrain.bench.gpu import main as gpu_main

        return gpu_main(argv[1:])
    args = p.parse_args(argv)
    if args.anchor and not args.json:
        p.error("--anchor needs --json (without it both sides run)")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    if args.json:
        for name in names:
            w = WORKLOADS[name]
            side = call(w.anchor if args.anchor else w.ours)
            print(json.dumps(add_ceiling(name, side)), flush=True)
        return 0
    for name in names:
        summary = compare(name)
        print(format_summary(summary), flush=True)
        print(json.dumps(summary), flush=True)
    return 0
