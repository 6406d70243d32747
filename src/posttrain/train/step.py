"""One optimiser step of the training loop (`posttrain.train.loop.fit`): forward and backward over the step's
micro-batches, each micro-batch's summed loss divided by the units of the whole step (all micro-batches, all ranks),
gradients synchronised (DDP buckets during the backward, FSDP reduce-scatter, or the hand-rolled all-reduce), the
NaN check, clipping and the update.

    step = TrainStep(model, objective, cfg.train, optimizer, scheduler, device)
    metrics = step.run(source.next_step(), step_number)    # loss, grad_norm, tokens, units, objective metrics
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from posttrain.config import TrainConfig
from posttrain.errors import UserError
from posttrain.train import distributed
from posttrain.train.protocols import PADDING


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
