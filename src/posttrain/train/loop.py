"""The one training loop. Every objective (SFT, reward model, DPO, PPO) plugs in through an Objective (summed loss
+ units) and a BatchSource (the micro-batches of each optimiser step); nothing here knows which one it runs.

    result = fit(model, SFTObjective(), SFTBatches(...), cfg.train, "runs/sft", save_fn=save)

One optimiser step = the source's micro-batches; each micro-batch's summed loss is divided by the units of the
whole step (all micro-batches, all ranks), so batch 8 x accum 1 and batch 2 x accum 4 give the same gradient.
The loop syncs with the device once per step (loss + grad norm, needed for the NaN check before the update).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posttrain.atomic import atomic_dir
from posttrain.config import TrainConfig, to_dict
from posttrain.progress import Progress
from posttrain.train import checkpoint, distributed
from posttrain.train.host_memory import keep_freed_host_memory
from posttrain.train.log import MetricsLog
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.state_io import StateFileError
from posttrain.train.step import (  # noqa: F401  (part of the loop's API)
    TrainingError,
    TrainStep,
    autocast_dtype,
    count_tokens,
    enable_gradient_checkpointing,
    to_device,
)
from posttrain.train.trackers import Trackers


def total_steps(cfg: TrainConfig, source) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * source.steps_per_epoch()))


def _resume(out: Path, cfg: TrainConfig, model, optimizer, scheduler, source) -> dict[str, Any]:
    """Running totals of the run so far: restored from the newest readable checkpoint when resuming, else zeros.

    A checkpoint whose files are torn (a disk filled up, a copy cut short) is skipped with a message naming the
    file, and the one before it is used; nothing is changed until a checkpoint has been read whole."""
    state = {"step": 0, "epoch": 0.0, "loss_sum": 0.0, "tokens": 0, "elapsed_s": 0.0}
    if not cfg.resume:
        return state
    problems = []
    for ckpt in reversed(checkpoint.list_checkpoints(out / "checkpoints")):
        try:
            saved = distributed.load_checkpoint(ckpt, model, optimizer, scheduler)
            source.load_state_dict(saved["source"])
        except StateFileError as e:
            problems.append(str(e))
            if distributed.is_main():
                print(f"skipping checkpoint {ckpt.name}: {e}", file=sys.stderr, flush=True)
            continue
        if distributed.is_main():
            print(f"resuming from {ckpt} (step {saved['step']})", file=sys.stderr, flush=True)
        return {k: saved[k] for k in state}
    if problems:  # starting over would cut the run's metrics: the user decides
        raise StateFileError(
            f"no readable checkpoint in {out / 'checkpoints'} ({problems[0]}); set train.overwrite=true to move "
            "the run aside and start afresh"
        )
    return state


def _save_final(model, out: Path, save_fn: Callable) -> None:
    """save_fn(model, dir) into a temporary directory (not yet created), fsync'd, then renamed to OUTPUT/final in
    one step."""
    with atomic_dir(out / "final", create=False) as tmp:
        save_fn(model, tmp)


def _run_config(out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """What the trackers record as the run's config: the command's resolved config.yaml when it wrote one."""
    import yaml

    path = out / "config.yaml"
    if path.is_file():
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            pass
    return {"train": to_dict(cfg)}


class _Run:
    """The bookkeeping of one fit() call: running totals, metrics rows, evaluation and checkpoint timing."""

    def __init__(self, out: Path, cfg: TrainConfig, model, source, optimizer, scheduler, eval_fn, log_extra):
        self.out, self.cfg, self.model, self.source = out, cfg, model, source
        self.optimizer, self.scheduler = optimizer, scheduler
        self.eval_fn, self.log_extra = eval_fn, log_extra
        self.main_rank = distributed.is_main()
        self.n_steps = total_steps(cfg, source)
        self.per_epoch = max(1, source.steps_per_epoch())
        self.state = _resume(out, cfg, model, optimizer, scheduler, source)
        self.trackers = Trackers(
            out,
            cfg.report_to if self.main_rank else [],
            _run_config(out, cfg),
            self.state["step"],
            cfg.tracker_project,
        )
        self.log = MetricsLog(out / "metrics.jsonl", keep_up_to=self.state["step"], enabled=self.main_rank)
        self.bar = Progress(
            self.n_steps, f"train {out.name}", "step", self.state["step"], cfg.progress and self.main_rank
        )
        self.saved_at, self.evaluated_at, self.last, self.evals = self.state["step"], -1, {}, {}
        self._restore_evaluation()
        self.start, self.tokens_here = time.perf_counter(), 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _restore_evaluation(self) -> None:
        """A run killed after its last checkpoint already logged the evaluation of that step: keep it, so the
        resumed run neither evaluates again nor writes the row twice."""
        step = self.state["step"]
        rows = [r for r in self.log.kept if r.get("step") == step and any(k.startswith("eval_") for k in r)]
        if step > 0 and rows:
            self.evaluated_at = step
            self.evals = {k: v for k, v in rows[-1].items() if k.startswith("eval_")}

    def after_step(self, metrics: dict[str, Any]) -> None:
        """Totals, metrics row (+ evaluation when due), progress bar, checkpoint when due."""
        cfg, state = self.cfg, self.state
        self.last, self.tokens_here = metrics, self.tokens_here + metrics["tokens"]
        step = state["step"] = state["step"] + 1
        state.update(
            epoch=step / self.per_epoch,
            loss_sum=state["loss_sum"] + metrics["loss"],
            tokens=state["tokens"] + metrics["tokens"],
        )
        now, final = self.elapsed(), step == self.n_steps
        row = {"step": step, "epoch": round(state["epoch"], 4)}
        if step % cfg.log_every == 0 or final:
            row.update(
                metrics, tokens_per_s=self.tokens_here / max(now, 1e-9), elapsed_s=state["elapsed_s"] + now
            )
            row.update(self.log_extra() if self.log_extra else {})
        if self.eval_fn is not None and (final or cfg.eval_every > 0 and step % cfg.eval_every == 0):
            row.update(self.evaluate())
        if len(row) > 2:
            self.write(row)
        lr = metrics.get("lr")
        self.bar.update(
            1, loss=float(metrics["loss"]), **({"lr": float(lr)} if lr is not None else {}),
            tok_s=round(self.tokens_here / max(now, 1e-9)),
        )  # fmt: skip
        if cfg.save_every > 0 and step % cfg.save_every == 0:
            self.checkpoint()

    def evaluate(self) -> dict[str, Any]:
        self.model.eval()
        with torch.no_grad():
            result = self.eval_fn(self.model)
        self.model.train()
        self.evaluated_at = self.state["step"]
        self.evals = {(k if k.startswith("eval_") else f"eval_{k}"): v for k, v in result.items()}
        return self.evals

    def checkpoint(self) -> None:
        """Every rank takes part (FSDP shards, per-rank RNG); rank 0 renames the directory into place."""
        state = {
            **self.state,
            "elapsed_s": self.state["elapsed_s"] + self.elapsed(),
            "source": self.source.state_dict(),
            "config": to_dict(self.cfg),
        }
        try:
            distributed.save_checkpoint(
                self.out / "checkpoints",
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.keep_last,
            )
        except checkpoint.NonFiniteState as e:
            kept = (
                f"the last good checkpoint, step {self.saved_at}, is kept"
                if self.saved_at
                else "none was kept"
            )
            raise TrainingError(f"{e} ({kept})") from None
        self.saved_at = self.state["step"]

    def finish(self, save_fn) -> dict[str, Any]:
        """End-of-run evaluation (if not just done), last checkpoint, final artefact; the run's summary."""
        elapsed, step = self.elapsed(), self.state["step"]
        if self.eval_fn is not None and self.evaluated_at != step:  # the source ran dry, or nothing was left
            self.write({"step": step, "epoch": round(self.state["epoch"], 4), **self.evaluate()})
        if self.saved_at != step:
            self.checkpoint()
        if save_fn is not None:
            model = self.model
            if distributed.is_dist() and distributed.is_sharded(model):
                model = distributed.consolidated_copy(model)  # a collective: full weights on rank 0
            if self.main_rank:
                _save_final(model, self.out, save_fn)
            distributed.barrier()
        return {
            "steps": step,
            "final_loss": self.state["loss_sum"] / max(step, 1),
            "last_loss": self.last.get("loss"),
            "tokens": self.state["tokens"],
            "tokens_per_s": self.tokens_here / max(elapsed, 1e-9),
            "elapsed_s": self.state["elapsed_s"] + elapsed,
            **self.evals,
        }

    def write(self, row: dict[str, Any]) -> None:
        """One metrics row: metrics.jsonl, and every tracker of `train.report_to` at the same step."""
        self.log.write(row)
        self.trackers.log(row, row["step"])

    def close(self) -> None:
        self.log.close()
        self.trackers.close()
        self.bar.close()


def fit(
    model: torch.nn.Module,
    objective,
    source,
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    save_fn: Callable[[torch.nn.Module, Path], None] | None = None,
    log_extra: Callable[[], dict] | None = None,
) -> dict[str, Any]:
    """Train until `cfg.max_steps` (or `cfg.epochs`) or the source runs dry; return the run's final metrics
    (steps, final_loss = mean step loss over the run, tokens_per_s, elapsed_s, eval_*).

    eval_fn(model) -> dict is called every `eval_every` steps and at the end (eval mode, no grad); save_fn(model,
    dir) writes the final artefact to OUTPUT/final; log_extra() -> dict adds fields to every metrics row.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).device.type == "cpu":
        keep_freed_host_memory()
    random.seed(
        cfg.seed
    )  # dropout and anything else drawn while training starts from the seed (a resumed run
    torch.manual_seed(cfg.seed)  # then restores the checkpoint's generator states instead)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # under torchrun: ddp / fsdp per train.strategy (callers may have done it already)
    if distributed.is_dist() and not distributed.is_sharded(model):
        model = distributed.prepare(model, cfg.strategy, cfg.fsdp_mixed_precision, cfg.fsdp_cpu_offload)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps(cfg, source))
    run = _Run(out, cfg, model, source, optimizer, scheduler, eval_fn, log_extra)
    stepper = TrainStep(model, objective, cfg, optimizer, scheduler, next(model.parameters()).device)
    model.train()
    try:
        while run.state["step"] < run.n_steps:
            micro = source.next_step()
            if micro is None:
                break
            run.after_step(stepper.run(micro, run.state["step"] + 1))
        return run.finish(save_fn)
    finally:
        run.close()
