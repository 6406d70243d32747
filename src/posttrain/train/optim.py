"""AdamW over the trainable parameters and the warmup + decay learning-rate schedule.

opt = build_optimizer(model, cfg)              # no weight decay on biases and norm weights (ndim < 2)
sched = build_scheduler(opt, cfg, total_steps)  # linear warmup, then cosine | linear | constant
"""

from __future__ import annotations

import math

import torch

from posttrain.config import TrainConfig

# Decay shape after warmup: progress in [0, 1) -> multiplier of the peak learning rate.
SCHEDULES = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay, vectors (biases, norm weights) do not. Frozen parameters are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # fused AdamW is one kernel per step on CUDA and on CPU (torch >= 2.4) instead of a Python loop over tensors;
    # FSDP's sharded (DTensor) parameters keep the default implementation.
    fused = params[0].device.type in ("cuda", "cpu") and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) and not hasattr(p, "device_mesh")
        for p in params
    )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))


def lr_multiplier(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for 0-based optimiser step `step`: (step+1)/warmup during warmup, then decay."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return SCHEDULES[schedule](min(progress, 1.0))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup, cfg.schedule)
    )
