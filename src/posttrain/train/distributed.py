"""Scale out on torch.distributed: the same commands under `torchrun`, with DDP-style gradient sync or FSDP2.

    init_from_env()                      # process group from torchrun's env (NCCL on GPUs, gloo on CPU)
    model = prepare(model, "ddp")        # ddp: rank 0's weights everywhere; fsdp: fully_shard layers, trunk, head
    ddp = data_parallel(model)           # ddp: PyTorch's DistributedDataParallel around the objective (train/ddp.py)

Under `ddp` the training step runs each objective inside `DistributedDataParallel`'s forward
(`posttrain.train.ddp`), so gradient buckets are all-reduced while the backward is still running and the step's
other micro-batches run under `no_sync`. Every rank divides its summed loss by the *global* unit count, so the
all-reduce is a SUM, and 2 ranks x batch B give the gradient 1 rank x batch 2B gives.

Under `fsdp`, FSDP2 (`fully_shard`, `posttrain.train.fsdp`) shards every decoder layer, trunk and LM head of each
causal LM in the model (SFT's LM, the reward model's, PPO's policy, critic and reference); small heads, a tied
embedding and virtual tokens stay replicated and their gradients are all-reduced like DDP's. Gradients are
reduce-scattered with divide factor 1 (the loss is already normalised by the global count). Checkpoints of a
sharded model go through
`torch.distributed.checkpoint` (DCP): each rank writes its shards, and any world size can load them back (read
with `safe_dcp`, which unpickles nothing but DCP's own metadata classes).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from posttrain.atomic import fsync_dir, fsync_tree
from posttrain.train import checkpoint
from posttrain.train.ddp import data_parallel, sync_gradients  # noqa: F401  (the strategies' gradient sync)
from posttrain.train.fsdp import consolidated_copy, shard_model  # noqa: F401
from posttrain.train.state_io import StateFileError, load_tree, save_tree

STRATEGIES = ("auto", "ddp", "fsdp")
"""train.strategy values; auto = ddp (replicated weights, gradient all-reduce)."""

DCP_DIR = "sharded"
"""Sub-directory of a checkpoint holding the DCP shards of model + optimiser (FSDP runs)."""


# --------------------------------------------------------------------------------------------------------------
# process group and ranks


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def shard_args() -> dict[str, int]:
    """`rank=..., world_size=...` for a batch source (empty in a single process)."""
    return {"rank": rank(), "world_size": world_size()} if is_dist() else {}


def init_from_env(timeout_s: int = 1800) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); pick this rank's GPU. True when distributed."""
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return True


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned); a no-op in one process. A CPU tensor under NCCL (which reduces GPU
    memory only: PPO's rollout figures live on the host) makes the trip through this rank's GPU."""
    if not is_dist():
        return values
    if values.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu)
        values.copy_(on_gpu)
    else:
        dist.all_reduce(values)
    return values


# --------------------------------------------------------------------------------------------------------------
# strategies


def resolve_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {' | '.join(STRATEGIES)}, got {name!r}")
    return "ddp" if name == "auto" else name


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's trainable parameters and buffers to every rank (DDP does this when it wraps a model)."""
    with torch.no_grad():
        for p in [p for p in model.parameters() if p.requires_grad] + list(model.buffers()):
            dist.broadcast(p.data, src=0)


def prepare(
    model: nn.Module, strategy: str, mixed_precision: bool = False, cpu_offload: bool = False
) -> nn.Module:
    """Make `model` ready for multi-rank training (a no-op in one process). Call before building the optimiser.
    ddp: rank 0's trainable weights everywhere (DDP itself is built by the training step); fsdp: `shard_model`
    with bf16 compute (`mixed_precision`) and host-memory shards (`cpu_offload`)."""
    strategy = resolve_strategy(strategy)
    if not is_dist():
        return model
    if strategy == "fsdp":
        return shard_model(model, mixed_precision, cpu_offload)
    broadcast_parameters(model)
    return model


def prepare_frozen(model: nn.Module, train) -> nn.Module:
    """A frozen model used beside the trained one (a DPO or PPO reference), under `train.strategy=fsdp` with
    several ranks sharded as the trained model is (`train`: the TrainConfig); else unchanged."""
    if is_dist() and resolve_strategy(train.strategy) == "fsdp":
        return shard_model(model, train.fsdp_mixed_precision, train.fsdp_cpu_offload)
    return model


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. the grad norm clip_grad_norm_ returns under FSDP); plain tensors unchanged."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` that also takes a mix of sharded (DTensor) and replicated gradients, as FSDP with a tied
    embedding has; returns the total norm as a plain tensor. Call after `sync_gradients`."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    if not sharded or len(sharded) == len(grads):
        return full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    sq = full_tensor(torch.stack([g.norm() ** 2 for g in sharded]).sum())  # global over shards
    total = (sq + torch.stack([g.norm() ** 2 for g in plain]).sum().to(sq.device)).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # what clip_grad_norm_ does
    for g in grads:
        g.mul_(coef)
    return total


# --------------------------------------------------------------------------------------------------------------
# global statistics (PPO)


def global_moments(rows: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation of each per-row figure over the rows of *all* ranks (one all-reduce);
    in one process, those of the rows given."""
    keys = sorted(rows)
    sums = []
    for k in keys:
        v = rows[k].double().reshape(-1)
        sums.append(torch.stack([v.sum(), (v * v).sum(), v.new_tensor(float(v.numel()))]))
    stats = all_reduce_sum(torch.stack(sums))  # (keys, 3): sum, sum of squares, count
    out = {}
    for k, (total, sq, n) in zip(keys, stats.tolist()):
        mean = total / max(n, 1.0)
        var = (sq - n * mean * mean) / (n - 1) if n > 1 else 0.0
        out[k] = (mean, max(var, 0.0) ** 0.5)
    return out


def global_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`posttrain.objectives.ppo.whiten` over the masked entries of *all* ranks: (x - mean) / std with the global
    batch's mean and population variance (with shift_mean=False the mean is added back); 0 off the mask."""
    m = mask.to(x.dtype)
    stats = all_reduce_sum(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double())
    total, sq, n = stats.tolist()
    mean = total / max(n, 1.0)
    var = max(sq / max(n, 1.0) - mean * mean, 0.0)
    out = (x - mean) / (var + eps) ** 0.5
    return (out if shift_mean else out + mean) * m


# --------------------------------------------------------------------------------------------------------------
# checkpoints: every rank calls save/load; rank 0 owns the directory, the rename and state.json


def _rng_stem(r: int) -> str:
    return "rng" if r == 0 else f"rng-{r}"


def save_checkpoint(
    root: str | Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any], keep_last: int
) -> Path:
    """`step-N` written by every rank (shards + own RNG) into `.tmp-step-N`; rank 0 writes state.json last and
    renames once all ranks are done, so a crash at any point leaves no half-written `step-N`. Nothing is pickled:
    optimiser, scheduler and RNG go through `state_io`, shards through DCP (read back by `safe_dcp`)."""
    if not is_dist():
        return checkpoint.save(root, model, optimizer, scheduler, state, keep_last)
    root = Path(root)
    step = int(state["step"])
    checkpoint.check_finite(model, optimizer, step)  # every rank checks its own shards before anyone writes
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if is_sharded(model):
        _save_sharded(tmp / DCP_DIR, model, optimizer)
    elif is_main():
        from safetensors.torch import save_file

        save_file(checkpoint.trainable_state(model), str(tmp / "model.safetensors"))
        save_tree(tmp / "optimizer", {"optimizer": optimizer.state_dict()})
    save_tree(tmp / _rng_stem(rank()), checkpoint.rng_state())
    barrier()
    if is_main():
        save_tree(tmp / "scheduler", {"scheduler": scheduler.state_dict()})
        (tmp / checkpoint.STATE_FILE).write_text(json.dumps({**state, "world_size": world_size()}, indent=1))
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        checkpoint.prune(root, keep_last)
    barrier()
    return final


def _trained_only(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # a frozen base (adapter training) is not checkpointed; loading, it is "missing" by design (strict=False),
    # and the trained weights are checked by the strict DCP read in `_load_sharded` instead
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _save_sharded(path: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_trained_only())
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore a checkpoint written by `save_checkpoint` or `checkpoint.save`, with this run's world size."""
    path = Path(path)
    if not (path / DCP_DIR).exists() and not (path / "scheduler.json").exists():
        return checkpoint.load(path, model, optimizer, scheduler)  # written by one process
    state = checkpoint.read_state(path)
    sched = load_tree(path / "scheduler")["scheduler"]
    own = path / _rng_stem(rank())
    rng = load_tree(own) if own.with_suffix(".json").exists() else None  # a new rank keeps its seeded RNG
    if (path / DCP_DIR).exists():
        _load_sharded(path / DCP_DIR, model, optimizer)
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path / "model.safetensors"))
        optim = load_tree(path / "optimizer")["optimizer"]
        checkpoint.apply_tensors(path, model, tensors)
        optimizer.load_state_dict(optim)
    scheduler.load_state_dict(sched)
    if rng is not None:
        checkpoint.set_rng_state(rng)
    return state


def _load_sharded(path: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from posttrain.train.safe_dcp import SafePlanner, SafeReader

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_trained_only())
    path_id, reader = str(path), SafeReader(str(path))
    # every trained weight must be in the checkpoint (a missing one is an error, never a fresh value kept)
    try:
        dcp.load({"model": model_sd}, checkpoint_id=path_id, storage_reader=reader, planner=SafePlanner())
    except CheckpointException as e:
        missing = re.search(r"Missing key in checkpoint state_dict: model\.(\S+?)\.?$", str(e), re.M)
        if missing is None:
            raise
        raise StateFileError(
            f"{path}: holds no trained weight {missing.group(1)} (written for another model or PEFT config)"
        ) from None
    # partial: AdamW keeps no state for a weight that never had a gradient (a reward model's unused LM head), and
    # the state dict asked for here has an entry for every trainable weight; such entries keep their fresh zeros
    reader = SafeReader(str(path))
    planner = SafePlanner(allow_partial_load=True)
    dcp.load({"optimizer": optim_sd}, checkpoint_id=path_id, storage_reader=reader, planner=planner)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_sd,
        optim_state_dict=optim_sd,
        options=_trained_only(strict=False),
    )


def consolidate(checkpoint_dir: str | Path, out_file: str | Path) -> dict[str, torch.Tensor]:
    """Offline (one process, no process group): a sharded checkpoint's full model weights -> `out_file`
    (safetensors), keyed like `model.state_dict()`. Used by `posttrain merge` and for inspection."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # what dcp_to_torch_save uses

    from posttrain.train.safe_dcp import SafeReader, SafeWholePlanner

    src = Path(checkpoint_dir) / DCP_DIR
    if not src.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no sharded checkpoint ({DCP_DIR}/) here")
    blob: dict[str, Any] = {}
    _load_state_dict(blob, storage_reader=SafeReader(str(src)), planner=SafeWholePlanner(), no_dist=True)
    weights = {k: v.contiguous() for k, v in blob["model"].items() if torch.is_tensor(v)}
    save_file(weights, str(out_file))
    return weights
