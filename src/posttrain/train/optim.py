"""AdamW over the trainable parameters (torch's, or bitsandbytes' 8-bit / paged ones: `train.optimizer`) and the
warmup + decay learning-rate schedule.

opt = build_optimizer(model, cfg)              # no weight decay on biases and norm weights (ndim < 2);
                                                # train.lr_scale gives name globs their own lr
sched = build_scheduler(opt, cfg, total_steps)  # linear warmup, then cosine | linear | constant
"""

from __future__ import annotations

import fnmatch
import math

import torch

from posttrain.config import TrainConfig
from posttrain.errors import UserError

# Decay shape after warmup: progress in [0, 1) -> multiplier of the peak learning rate.
SCHEDULES = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, lr_scale: dict | None = None
) -> list[dict]:
    """AdamW groups: matrices decay, vectors (biases, norm weights) do not, and each `lr_scale` glob (matched on the
    parameter's name, first match wins) gets its own learning rate. Frozen parameters are left out."""
    scales = list((lr_scale or {}).items())
    groups: dict[tuple[bool, float], list] = {
        (True, 1.0): [],
        (False, 1.0): [],
    }  # kept even when empty: resume
    used = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hit = next((glob for glob, _ in scales if fnmatch.fnmatchcase(name, glob)), None)
        used.add(hit)
        factor = float(dict(scales)[hit]) if hit is not None else 1.0
        groups.setdefault((p.ndim >= 2, factor), []).append(p)
    if not any(groups.values()):
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    unused = [glob for glob, _ in scales if glob not in used]
    if unused:
        raise ValueError(f"train.lr_scale: {unused[0]!r} matches no trainable parameter")
    order = sorted(
        groups, key=lambda k: (k[1] != 1.0, not k[0], k[1])
    )  # decay, no decay, then the scaled ones
    return [
        {"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr": lr * k[1]} for k in order
    ]


BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw": "PagedAdamW32bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
}
"""`train.optimizer` values served by bitsandbytes, and its class for each (all AdamW with decoupled decay)."""


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_scale)
    params = [p for g in groups for p in g["params"]]
    if cfg.optimizer in BNB_OPTIMIZERS:
        from posttrain.quant import bitsandbytes

        if any(hasattr(p, "device_mesh") for p in params):
            raise UserError(
                f"train.optimizer={cfg.optimizer}: bitsandbytes optimisers do not take FSDP's sharded"
                " parameters; use adamw with train.strategy=fsdp"
            )
        cls = getattr(bitsandbytes().optim, BNB_OPTIMIZERS[cfg.optimizer])
        return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, weight_decay=cfg.weight_decay)
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
