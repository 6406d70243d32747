"""Gradient sync of replicated weights under torchrun (`train.strategy=ddp`): PyTorch's DistributedDataParallel.

    ddp = data_parallel(model)                       # after rank 0's weights were broadcast; None in one process
    with ddp.no_sync():                              # every micro-batch of a step but the last: no communication
        loss, metrics = ddp(objective.loss, batch)   # runs objective.loss(model, batch) inside DDP's forward
        loss.backward()
    loss, metrics = ddp(objective.loss, last_batch)
    loss.backward()                                  # buckets all-reduced while the backward is still running

Our objectives call the trunk and the LM head separately (chunked log-probs, value heads), so DDP cannot wrap the
model's own `forward`. It wraps `Call`, whose forward is "run this function on the model": whatever the objective
does then happens inside DDP's forward, which arms the reducer, and DDP's autograd hooks all-reduce each 25 MiB
bucket as soon as its gradients are ready, overlapping communication with the rest of the backward pass.

The all-reduce is a plain SUM (`sum_hook`), not DDP's mean: every rank divides its summed loss by the *global*
count of loss units (`TrainStep.backward`), so the sum is already the one-process gradient of the same global batch.
`TrainStep` builds DDP after the first step (synced by `sync_gradients`), with `find_unused_parameters` only when
that step left a trainable weight without a gradient (GRPO's value head); a weight no rank used then keeps
`grad = None`, as in one process.

`sync_gradients` is the hand-rolled alternative (one bucketed all-reduce after the whole backward); it still syncs
FSDP's replicated tied embedding and is what `posttrain.bench.ddp_overlap` times DDP against.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

BUCKET_MB = 25
"""Gradient all-reduce bucket size in MiB (DDP's default)."""


class Call(nn.Module):
    """The module DDP wraps: `Call(model)(fn, *args)` is `fn(model, *args)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def sum_hook(state, bucket):  # no annotations: DDP checks them against the real classes, not strings
    """DDP comm hook (bucket: dist.GradBucket): all-reduce the bucket with SUM (DDP's default hook divides by the
    world size); returns the future of the summed buffer."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def data_parallel(
    model: nn.Module, find_unused_parameters: bool = False, bucket_mb: int = BUCKET_MB
) -> nn.parallel.DistributedDataParallel | None:
    """`model` (its weights already equal on every rank) under DDP, with summed gradients; None in one process
    or when nothing is trainable. `find_unused_parameters` when some trainable weight gets no gradient."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not any(p.requires_grad for p in model.parameters()):
        return None
    device = next(model.parameters()).device
    ddp = nn.parallel.DistributedDataParallel(
        Call(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        init_sync=False,  # `distributed.prepare` broadcast the trainable weights; frozen ones are loaded alike
        forward_sync_buffers=False,  # nothing trained lives in buffers
        bucket_cap_mb=bucket_mb,
        find_unused_parameters=find_unused_parameters,
    )
    ddp.register_comm_hook(None, sum_hook)
    return ddp


# --------------------------------------------------------------------------------------------------------------
# the hand-rolled alternative


def sync_gradients(params: list[nn.Parameter], bucket_bytes: int = BUCKET_MB * 2**20) -> None:
    """Sum the gradients of `params` over ranks in flattened buckets, after the backward. Sharded (DTensor)
    gradients are already reduce-scattered by FSDP and are skipped; a missing gradient counts as zeros so every
    rank sends the same."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    from torch.distributed.tensor import DTensor

    plain = [p for p in params if not isinstance(p, DTensor)]
    for p in plain:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in plain:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        bucket, size = [], 0
        for p in group:
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= bucket_bytes:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)


def _reduce_bucket(params: list[nn.Parameter]) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (sum of numels,)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
