"""`posttrain bench gpu`: the GPU benchmark suite in one go (issue 24 point 4).

    posttrain bench gpu --out gpu_bench                       # 0.5B- and 1B-shaped Llama, bf16, on cuda
    posttrain bench gpu --shapes tiny --device cpu --dtype fp32 --scale 0.05 --out /tmp/g   # the same on a CPU
    bash bench/gpu.sh                                        # set-up + this + the CUDA checks, for a lent GPU

For each shape (`posttrain.bench.workload.SHAPES`: Qwen2.5-0.5B's and Llama-3.2-1B's shapes as Llama configs,
random init) it runs, side by side with the anchor and each side in its own process: LoRA and full SFT (tokens/s,
TRL SFTTrainer + PEFT), DPO + LoRA (pairs/s, TRL DPOTrainer), rollout (new tokens/s: our decode loop against
`generate()`, and against vLLM when it is installed) and GRPO + LoRA (completions/s, TRL GRPOTrainer), the same
workloads as the CPU benchmarks (BENCHMARKS.md data, `--scale` of it). Training runs in bf16 autocast over fp32
weights on both sides (`--dtype bf16`), sampling in bf16 weights. Each side reports its model FLOP/s, MFU against
the card's dense bf16 peak (`posttrain.bench.ceiling`) and its peak CUDA memory (`torch.cuda.max_memory_allocated`;
not for vLLM, which reserves a share of the card up front). It writes `gpu.jsonl` (one summary per workload and
shape, as `posttrain bench W` prints) and `gpu.md` (the table for bench/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from posttrain.commandline import ArgumentParser

WORKLOADS = ("sft-lora", "sft-full", "dpo-lora", "rollout", "rl-lora")


def rollout_vllm() -> dict:
    """The rollout workload through vLLM (needs a GPU and the `vllm` package): the same model saved and loaded,
    token-id prompts, 128 new tokens each at T = 1 with EOS ignored; timed: `generate()` only (not engine start)."""
    import tempfile

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from posttrain.bench.workload import bench_model, result, rl_prompts, setup

    s = setup()
    with tempfile.TemporaryDirectory() as d:
        bench_model(sampling=True).cpu().save_pretrained(d)
        llm = LLM(
            model=d,
            skip_tokenizer_init=True,
            dtype="bfloat16" if s.dtype == "bf16" else "float32",
            seed=0,
            gpu_memory_utilization=0.5,
        )
        params = SamplingParams(
            temperature=1.0,
            top_p=1.0,
            max_tokens=128,
            min_tokens=128,
            ignore_eos=True,
            detokenize=False,
            seed=0,
        )
        prompts = [TokensPrompt(prompt_token_ids=p) for p in rl_prompts()]
        llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    got = result("vllm", "rollout", new_tokens=n, tokens_per_s=n / wall, wall_s=wall)
    got.pop("cuda_max_allocated_mib", None)
    return got


def has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def run_call(target: str, workload: str, env: dict[str, str], timeout: float) -> dict:
    """`module:function` in a fresh process under `env`, with `workload`'s ceiling figures added; its last stdout
    line is the dict."""
    module, func = target.split(":")
    code = (
        "import json; from importlib import import_module; from posttrain.bench.ceiling import add_ceiling; "
        f"print(json.dumps(add_ceiling({workload!r}, getattr(import_module({module!r}), {func!r})())))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    if proc.returncode or not lines:
        raise RuntimeError(f"{target} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """The suite's markdown table: one line per shape x workload x anchor."""

    def cell(side: dict, key: str, fmt: str) -> str:
        return format(side[key], fmt) if key in side else ""

    out = [
        "| shape | workload | unit | posttrain | anchor | anchor value | ratio | MFU posttrain / anchor | "
        "CUDA max MiB posttrain / anchor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        o, a, m = r["posttrain"], r["anchor"], r["metric"]
        mfu = f"{cell(o, 'mfu', '.1%')} / {cell(a, 'mfu', '.1%')}" if "mfu" in o else ""
        mem = (
            f"{cell(o, 'cuda_max_allocated_mib', ',.0f')} / {cell(a, 'cuda_max_allocated_mib', ',.0f')}"
            if "cuda_max_allocated_mib" in o
            else ""
        )
        out.append(
            f"| {r['shape']} | {r['workload']} | {m} | {o[m]:,.1f} | {r['anchor_name']} | {a[m]:,.1f} | "
            f"{o[m] / a[m]:.2f}x | {mfu} | {mem} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    from posttrain.bench.sides import WORKLOADS as ALL
    from posttrain.bench.sides import compare

    p = ArgumentParser(prog="posttrain bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["0.5b", "1b"], help="model shapes (workload.SHAPES)")
    p.add_argument("--device", default="cuda", help="cuda (or cpu, to test the suite)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument(
        "--scale", type=float, default=1.0, help="share of each workload's data (1 = BENCHMARKS.md)"
    )
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per side before it counts as failed")
    p.add_argument("--out", default="gpu_bench", help="directory for gpu.jsonl and gpu.md")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.jsonl").write_text("")  # this run's rows only
    rows: list[dict] = []
    failed = 0
    for shape in args.shapes:
        env = {
            **os.environ,
            "POSTTRAIN_BENCH_SHAPE": shape,
            "POSTTRAIN_BENCH_DEVICE": args.device,
            "POSTTRAIN_BENCH_DTYPE": args.dtype,
            "POSTTRAIN_BENCH_SCALE": str(args.scale),
        }
        for name in args.workloads:
            t = time.perf_counter()
            try:
                summaries = [{**compare(name, env=env, timeout=args.timeout), "shape": shape}]
                if name == "rollout" and has_vllm() and args.device.startswith("cuda"):
                    ours = summaries[0]["posttrain"]
                    vllm = run_call("posttrain.bench.gpu:rollout_vllm", "rollout", env, args.timeout)
                    summaries.append({**summaries[0], "anchor": vllm, "anchor_name": "vllm"})
                    summaries[-1]["speedup"] = ours[summaries[0]["metric"]] / vllm["tokens_per_s"]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failed += 1
                print(
                    f"[bench gpu] {shape} {name}: failed: {str(e).splitlines()[0]}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            for s in summaries:
                rows.append(s)
                with open(out / "gpu.jsonl", "a") as f:
                    f.write(json.dumps(s) + "\n")
            m = ALL[name].metric
            print(
                f"[bench gpu] {shape} {name}: posttrain {summaries[0]['posttrain'][m]:,.1f} {m}, "
                + ", ".join(f"{s['anchor_name']} {s['anchor'][m]:,.1f}" for s in summaries)
                + f" ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    (out / "gpu.md").write_text(table(rows) + "\n")
    print(table(rows))
    print(f"wrote {out / 'gpu.jsonl'} and {out / 'gpu.md'}")
    return 1 if failed else 0
