"""FSDP2 (`fully_shard`) for every trainer: the causal LMs inside a model are sharded, the small heads beside them
are replicated.

    model = shard_model(model)                              # sft / dpo: the LM; rm: RewardModel; ppo: PolicyWithValue
    model = shard_model(model, mixed_precision=True)        # bf16 compute, fp32 reduce and master weights
    copy = consolidated_copy(model)                         # collective: a plain full copy on rank 0, for saving

What is sharded: in every Hugging Face causal LM found in the model (the model itself, a reward model's `lm`, PPO's
policy and separate critic, a frozen reference), each decoder layer, the trunk (`get_decoder()`) and an untied LM
head. FSDP2 gathers a group's parameters in the pre-forward hook of the module it wraps, and our objectives call
the trunk and the head separately (`posttrain.modeling`), so those are the modules wrapped, each its own root;
nothing that holds them is wrapped (a parent wrapped after its child ran first is an error in FSDP2, and PPO calls
the policy both whole, to sample, and by parts, to train).

What stays replicated (plain tensors, gradients summed by `sync_gradients` like DDP's): parameters outside those
groups (a reward model's score head, PPO's value head, a tied embedding, which the head uses outside the trunk's
group) and virtual-token modules (prefix / prompt tuning), which a pre-forward hook on the trunk reads before FSDP
would gather them. Adapters inside a layer (LoRA, bottleneck adapters, token rows) are sharded with it; FSDP2
shards frozen and trainable parameters alike and reduce-scatters only gradients.

The final save needs the model as a plain module: `shard_model` keeps a skeleton, a deep copy of the model made
before sharding whose tensors are on the meta device (free), and `consolidated_copy` fills it with the gathered
full state dict on rank 0, so `save_fn` (adapters, value heads, `save_pretrained`) sees the model it was given.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

SKELETON = "_posttrain_skeleton"
"""Attribute (outside nn.Module's registry) holding the meta-device copy made before sharding."""


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: modules whose class is in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # fall back to the longest ModuleList (the layer stack of most architectures)
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        layers = list(max(lists, key=len)) if lists else []
    return layers


def causal_lms(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face causal LMs in `model` (itself, or those it holds)."""
    from transformers import PreTrainedModel

    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and hasattr(m, "get_output_embeddings"):
            if not any(any(m is x for x in lm.modules()) for lm in found):
                found.append(m)
    return found


def _policies(mixed_precision: bool, cpu_offload: bool) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kw = {}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:  # shards, gradients and the optimiser step in host memory; pinned for copies to a GPU
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    return kw


def _meta_skeleton(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers are empty meta tensors (no memory)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def refuse_unshardable(model: nn.Module) -> None:
    """One line for what FSDP here cannot shard: quantised weights, a model with no causal LM inside."""
    if any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters()):
        raise ValueError(
            "train.strategy=fsdp does not shard 4- or 8-bit weights (model.quantization); use train.strategy=ddp"
        )
    if not causal_lms(model):
        raise ValueError(
            f"train.strategy=fsdp shards Hugging Face causal LMs; {type(model).__name__} holds none"
        )


def shard_model(model: nn.Module, mixed_precision: bool = False, cpu_offload: bool = False) -> nn.Module:
    """fully_shard each decoder layer, trunk and untied LM head of every causal LM in `model` (module docstring);
    gradients summed (divide factor 1). Returns `model`, sharded in place."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from posttrain.modeling import logits_path, trunk

    refuse_unshardable(model)
    skeleton = _meta_skeleton(model)
    policies = _policies(mixed_precision, cpu_offload)
    for lm in causal_lms(model):
        logits_path(lm)  # resolved before sharding (its probe is a forward of the whole model)
        head, body = lm.get_output_embeddings(), trunk(lm)
        embed = lm.get_input_embeddings()
        tied = (
            {p for p in head.parameters() for q in embed.parameters() if p is q} if head and embed else set()
        )
        virtual = getattr(body, "virtual_tokens", None)  # read by a pre-forward hook on the trunk: replicated
        keep = tied | (set(virtual.parameters()) if isinstance(virtual, nn.Module) else set())
        for layer in decoder_layers(lm):
            fully_shard(layer, **policies)
        fully_shard(body, ignored_params=keep, **policies)
        if head is not None and not tied:
            fully_shard(head, **policies)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # the loss is already divided by the global unit count
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    model.__dict__[SKELETON] = skeleton
    return model


def consolidated_copy(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded, CPU) copy of a model sharded by `shard_model`, with the full trained weights, on rank 0
    (None elsewhere); every rank must call it (the gather is a collective). Used for the final save."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    copy_ = model.__dict__[SKELETON]
    copy_.load_state_dict(full, assign=True)
    buffers = dict(model.named_buffers())
    for name, buf in list(copy_.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary frequencies) are not in the state dict
            owner, _, leaf = name.rpartition(".")
            copy_.get_submodule(owner).register_buffer(leaf, buffers[name].detach().cpu(), persistent=False)
    for lm in causal_lms(copy_):
        lm.tie_weights()
    return copy_.train(model.training)
