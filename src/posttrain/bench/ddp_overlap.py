"""Step time of the two gradient syncs of `train.strategy=ddp` at 2 processes (gloo on CPU, NCCL on GPUs):
PyTorch's DistributedDataParallel (buckets all-reduced while the backward runs, `no_sync` on the first
micro-batch) against the hand-rolled sync it replaced (one bucketed all-reduce after the whole backward).

    python -m posttrain.bench.ddp_overlap                          # launches torchrun --nproc_per_node 2 itself
    python -m posttrain.bench.ddp_overlap --steps 20 --method lora

Full fine-tuning of the BENCHMARKS.md model (5.0M parameters: 20 MiB of fp32 gradients per step, so there is
something to communicate) on `sft-lora`'s sequences, 2 micro-batches of 4 per rank per step, through the loop's own
`TrainStep`. The two syncs alternate in rounds (manual, ddp, manual, ddp, ...) in the same processes so that drift on
a shared machine hits both; the figure is the median step time of each. Rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROUNDS = 3
"""Alternating rounds per sync."""


def _source(rank: int, world: int, micro: int, accum: int):
    from posttrain.bench.workload import sft_rows
    from posttrain.data.collate import Sample, SFTBatches

    samples = [Sample(ids, [-100] * p + ids[p:]) for ids, p in sft_rows()]
    return SFTBatches(samples, micro, accum, seed=0, pad_id=1, rank=rank, world_size=world)


def _steps(stepper, source, n: int, step0: int) -> list[float]:
    times = []
    for i in range(n):
        micro = source.next_step()
        t = time.perf_counter()
        stepper.run(micro, step0 + i + 1)
        times.append(time.perf_counter() - t)
    return times


def rank_main(args) -> None:
    from posttrain.bench.workload import bench_model, lora_peft
    from posttrain.config import TrainConfig
    from posttrain.objectives.sft import SFTObjective
    from posttrain.peft import apply_peft
    from posttrain.train import distributed as D
    from posttrain.train.loop import TrainStep
    from posttrain.train.optim import build_optimizer, build_scheduler

    torch.set_num_threads(1)
    D.init_from_env()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    per_sync: dict[str, list[float]] = {"manual": [], "ddp": []}
    steppers = {}
    cfg = TrainConfig(lr=1e-4, mixed_precision="no", max_steps=10**6)
    for sync in per_sync:  # one model per sync, built alike; the first step of each warms up (and builds DDP)
        torch.manual_seed(0)
        model = bench_model().to(device)
        if args.method == "lora":
            model = apply_peft(model, lora_peft())
        model = D.prepare(model, "ddp").train()
        opt = build_optimizer(model, cfg)
        stepper = TrainStep(model, SFTObjective(), cfg, opt, build_scheduler(opt, cfg, 10**6), device, sync)
        source = _source(D.rank(), D.world_size(), args.micro_batch, args.accum)
        _steps(stepper, source, 2, 0)
        steppers[sync] = (stepper, source)
    for r in range(ROUNDS):
        for sync, (stepper, source) in steppers.items():
            D.barrier()
            per_sync[sync] += _steps(stepper, source, args.steps, 2 + r * args.steps)
    if D.is_main():
        grads = sum(p.numel() for p in steppers["ddp"][0].params) * 4 / 2**20
        med = {k: statistics.median(v) for k, v in per_sync.items()}
        print(
            json.dumps(
                {
                    "bench": "ddp-overlap",
                    "method": args.method,
                    "world_size": D.world_size(),
                    "device": device.type,
                    "gradient_mib": round(grads, 1),
                    "micro_batches": args.accum,
                    "steps_each": len(per_sync["ddp"]),
                    "manual_step_s": round(med["manual"], 4),
                    "ddp_step_s": round(med["ddp"], 4),
                    "speedup": round(med["manual"] / med["ddp"], 3),
                }
            ),
            flush=True,
        )
    D.barrier()
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m posttrain.bench.ddp_overlap", description=__doc__.split("\n")[0]
    )
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--steps", type=int, default=10, help="steps per sync per round (3 rounds)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2, help="micro-batches per rank per step")
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        rank_main(args)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    cmd += ["--nproc_per_node", str(args.nproc), "-m", "posttrain.bench.ddp_overlap", *(argv or sys.argv[1:])]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
