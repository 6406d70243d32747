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

import json
import sys

from posttrain.bench.ceiling import add_ceiling
from posttrain.bench.sides import WORKLOADS, Workload, call, compare, run_side  # noqa: F401  (re-exported)
from posttrain.commandline import ArgumentParser


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
