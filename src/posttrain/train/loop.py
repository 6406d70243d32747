"""The one training loop. Every objective (SFT, reward model, DPO, PPO) plugs in through an Objective (summed loss
+ units) and a BatchSource (the micro-batches of each optimiser step); nothing here knows which one it runs.

    result = fit(model, SFTObjective(), SFTBatches(...), cfg.train, "runs/sft", save_fn=save)

One optimiser step = the source's micro-batches; each micro-batch's summed loss is divided by the units of the
whole step (all micro-batches, all ranks), so batch 8 x accum 1 and batch 2 x accum 4 give the same gradient.
The loop syncs with the device once per step (loss + grad norm, needed for the NaN check before the update).
"""

from __future__ import annotations

import contextlib
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
from posttrain.errors import UserError
from posttrain.progress import Progress
from posttrain.train import checkpoint, distributed
from posttrain.train.host_memory import keep_freed_host_memory
from posttrain.train.log import MetricsLog
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.protocols import PADDING
from posttrain.train.state_io import StateFileError
from posttrain.train.trackers import Trackers


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (non-finite loss or gradient); the message names the step and micro-batch."""


# train.mixed_precision -> autocast dtype (None: no autocast). "auto" is resolved per device in autocast_dtype.
AUTOCAST = {"no": None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if mode not in AUTOCAST:
        raise ValueError(f"train.mixed_precision must be auto | bf16 | fp16 | no, got {mode!r}")
    return AUTOCAST[mode]


def count_tokens(batch: dict[str, Any]) -> int:
    """Non-pad tokens of a micro-batch: attention-mask sums, or every input id when there is no mask (packed)."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and torch.is_tensor(v)]
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    return sum(v.numel() for k, v in batch.items() if k.endswith("input_ids") and torch.is_tensor(v))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if any(not p.requires_grad for p in model.parameters()) and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph at the input
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


class TrainStep:
    """One optimiser step in two halves: `backward` (every micro-batch) and `update` (check, clip, step)."""

    def __init__(self, model, objective, cfg: TrainConfig, optimizer, scheduler, device, grad_sync="ddp"):
        self.model, self.objective, self.cfg = model, objective, cfg
        self.optimizer, self.scheduler, self.device = optimizer, scheduler, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        # under torchrun with replicated weights: DDP overlaps the all-reduce with the backward ("ddp"), or one
        # bucketed all-reduce after it ("manual", what posttrain.bench.ddp_overlap compares with). DDP is built
        # after the first step, which shows whether some trainable weight sits out (GRPO's value head): only
        # then does DDP need find_unused_parameters (a graph walk every step, and a warning when not needed).
        self.ddp = None
        self.want_ddp = grad_sync == "ddp" and distributed.is_dist() and not distributed.is_sharded(model)
        self.amp_dtype = autocast_dtype(cfg.mixed_precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def backward(self, micro: list[dict[str, Any]]) -> dict[str, Any]:
        """Accumulate gradients of sum(micro-batch loss sums) / (units of the whole step, all ranks)."""
        units = sum(self.objective.units(mb) for mb in micro if not mb.get(PADDING))
        if distributed.is_dist():
            units = int(
                distributed.all_reduce_sum(torch.tensor([units], dtype=torch.long, device=self.device))
            )
        denom = max(units, 1)
        losses, sums, tokens = [], {}, 0
        for i, mb in enumerate(micro):
            padding = bool(mb.get(PADDING))  # a rank's stand-in: forward and backward, weight 0
            tokens += 0 if padding else count_tokens(mb)
            last = i == len(micro) - 1
            with self._sync(last):  # under DDP, only the last micro-batch's backward communicates
                with self.autocast():
                    loss_sum, metrics = self._loss(to_device(mb, self.device))
                loss = loss_sum.float() / denom * (0.0 if padding else 1.0)
                self.scaler.scale(loss).backward()
            losses.append(loss.detach())
            for k, v in metrics.items():
                v = v.detach() if torch.is_tensor(v) else v
                sums[k] = sums.get(k, 0.0) + v * (0.0 if padding else 1.0)
        per_mb = torch.stack(losses)  # (n_micro,) each micro-batch's share of the step loss
        if distributed.is_dist():  # summed over ranks: every rank divided by the global units
            if self.ddp is None:  # DDP has reduced during the backward; FSDP's tied embedding is synced here
                unused = torch.tensor([any(p.grad is None for p in self.params)], device=self.device)
                distributed.sync_gradients(self.params)
                if self.want_ddp:
                    unused = bool(distributed.all_reduce_sum(unused.long()))
                    self.ddp = distributed.data_parallel(self.model, find_unused_parameters=unused)
            distributed.all_reduce_sum(per_mb)
            tokens = int(distributed.all_reduce_sum(torch.tensor([tokens], device=self.device)))
            sums = self._global_sums(sums)
        return {"per_mb": per_mb, "tokens": tokens, "units": units, "sums": sums}

    def _loss(self, batch: dict[str, Any]):
        if self.ddp is not None:
            return self.ddp(self.objective.loss, batch)  # objective.loss(model, batch) inside DDP's forward
        return self.objective.loss(self.model, batch)

    def _sync(self, last: bool):
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def _global_sums(self, sums: dict[str, Any]) -> dict[str, Any]:
        """The objective's metric sums added over ranks (every rank reports the same keys)."""
        if not sums:
            return sums
        keys = sorted(sums)
        t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=self.device) for k in keys])
        return dict(zip(keys, distributed.all_reduce_sum(t).tolist()))

    def update(self, acc: dict[str, Any], step: int) -> dict[str, Any]:
        """NaN check (one device sync), clip, optimiser and scheduler step. Returns the step's metrics."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = distributed.clip_grad_norm(self.params, max_norm)  # also takes FSDP-sharded gradients
        per_mb = acc["per_mb"].float()
        values = torch.cat([per_mb, grad_norm.float().reshape(1).to(per_mb.device)]).tolist()
        self._check_finite(values[:-1], values[-1], step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {
            "loss": sum(values[:-1]),
            "lr": lr,
            "grad_norm": values[-1],
            "tokens": acc["tokens"],
            "units": acc["units"],
        }
        out.update({k: float(v) / max(acc["units"], 1) for k, v in acc["sums"].items()})
        return out

    def run(self, micro: list[dict[str, Any]], step: int) -> dict[str, Any]:
        return self.update(self.backward(micro), step)

    def _check_finite(self, per_mb: list[float], grad_norm: float, step: int) -> None:
        for i, v in enumerate(per_mb):
            if not math.isfinite(v):
                raise TrainingError(
                    f"step {step}: loss is {v} in micro-batch {i + 1} of {len(per_mb)}; "
                    "stopping without an update (the last good checkpoint is kept)"
                )
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise TrainingError(
                f"step {step}: gradient norm is {grad_norm}; stopping without an update "
                "(the last good checkpoint is kept)"
            )


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
