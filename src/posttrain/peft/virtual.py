"""Virtual tokens through the transformers Cache API: what prefix tuning and prompt tuning share.

Both methods come down to n extra key/value pairs per layer that every real token may attend to. Prefix tuning
learns them directly; prompt tuning computes them by running the frozen trunk on n soft embeddings. Either way
they reach the model as a pre-filled cache, so callers keep passing input_ids / attention_mask / labels of the
real length and get outputs aligned with input_ids.

One forward pre-hook on the trunk (so it works whether the caller invokes the CausalLM or `model.base_model`,
as reward and value heads do) does the work when the call has no past yet:
  * builds the cache: a `VirtualTokenCache` filled with the prefix (expanded to the batch) when the caller wants
    a cache back (generation; it reports the real tokens only, so continuing from it works as for any model), the
    caller's own empty cache filled the same way (generate's), or a read-only `PrefixCache` otherwise (training:
    nothing is stored, so a gradient-checkpointing replay of a layer sees exactly the same keys and values);
  * extends a 2-D attention mask with n ones on the left;
  * sets positions: real tokens sit at n + (their index among the non-pad tokens), as PEFT places them (its
    prefix tuning offsets position_ids by n; its prompt tuning runs the soft tokens at positions 0..n-1).
On later generation steps the cache already holds the prefix; the hook only keeps mask and positions right.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from posttrain.peft.base import Tuner


class _PrefixLayer(DynamicLayer):
    """A cache layer that always answers prefix + new keys/values and stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.device = keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        b = key_states.shape[0]
        keys = torch.cat([self.keys.expand(b, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(b, -1, -1, -1), value_states], dim=-2)
        return keys, values


class _RecordLayer(DynamicLayer):
    """A cache layer that remembers (overwrites) the last keys/values it saw and reports an empty past."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0


class VirtualTokenCache(DynamicCache):
    """The cache a prefix/prompt-tuned model creates for generation: it holds the n virtual keys/values in front of
    the real ones but reports only the real tokens as its length, so a caller that continues from it (a second
    forward, `model.generate(..., past_key_values=cache)`) counts positions the way it fed them. Queries sit after
    the virtual keys in the attention's index space (`get_query_offset`)."""

    def __init__(self, virtual: int, config) -> None:
        super().__init__(config=config)
        self.virtual = virtual

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(super().get_seq_length(layer_idx) - self.virtual, 0)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(layer_idx)


class PrefixCache(Cache):
    """Read-only cache over per-layer prefixes [(k, v)], each (1 or B, kv_heads, n, head_dim)."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(layers=[_PrefixLayer(k, v) for k, v in kv])


class RecordingCache(Cache):
    """Collects each layer's keys/values of one forward (used to turn soft prompts into a prefix)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[_RecordLayer() for _ in range(num_layers)])

    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.layers]


def record_kv(trunk: nn.Module, cache_arg: str, **inputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) the trunk computes for one sequence at positions 0..n-1 (`input_ids` or
    `inputs_embeds`): what n virtual tokens look like to the real tokens after them."""
    ref = inputs.get("input_ids", inputs.get("inputs_embeds"))
    positions = torch.arange(ref.shape[1], device=ref.device).unsqueeze(0)
    cache = RecordingCache(num_layers(trunk.config))
    trunk(position_ids=positions, use_cache=True, **inputs, **{cache_arg: cache})
    return cache.kv()


def text_ids(tokenizer, text: str, n: int, key: str) -> list[int]:
    """`text`'s token ids repeated/cut to n (the `init_text` of prompt and prefix tuning)."""
    if tokenizer is None:
        raise ValueError(f"{key} needs the tokenizer: apply_peft(model, cfg, tokenizer=tok)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{key} {text!r} encodes to no tokens")
    return (ids * (n // len(ids) + 1))[:n]


def num_layers(config) -> int:
    return config.get_text_config().num_hidden_layers


def cache_arg(module: nn.Module) -> str:
    """transformers >= 5.2x calls the KV cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@torch.no_grad()
def kv_layout(trunk: nn.Module) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the keys and values the trunk caches, read off a one-token forward, so
    that multi-query (Falcon), grouped-query and per-model head sizes come out as the attention really uses them.
    Raises ValueError when a prefix of PEFT's layout (equal key and value sizes on every layer) cannot hold them.
    """
    param = next(trunk.parameters())
    cache = DynamicCache(config=trunk.config)
    was_training = trunk.training
    trunk.eval()
    try:
        ids = torch.full((1, 1), 4, dtype=torch.long, device=param.device)
        trunk(input_ids=ids, use_cache=True, **{cache_arg(trunk): cache})
    finally:
        trunk.train(was_training)
    shapes = {
        (tuple(layer.keys.shape[1:2] + layer.keys.shape[3:]), layer.values.shape[-1])
        for layer in cache.layers
    }
    layers = len(cache.layers)
    if layers != num_layers(trunk.config) or len(shapes) != 1:
        raise ValueError(
            "peft.method=prefix: this model caches keys and values of different shapes on different layers "
            f"({sorted(shapes)}), which a prefix of PEFT's layout (one size for every layer) cannot hold"
        )
    (kv_heads, key_dim), value_dim = shapes.pop()
    if key_dim != value_dim:
        raise ValueError(
            f"peft.method=prefix: this model caches keys of size {key_dim} and values of size {value_dim} per head "
            "(multi-head latent attention caches compressed latents), which a prefix of PEFT's layout (keys and "
            "values of one size) cannot hold; use prompt tuning, which runs the soft tokens through the model's "
            "own attention"
        )
    return layers, kv_heads, key_dim


class VirtualTokens(Tuner):
    """Holds the prefix/prompt encoders of a trunk (one per adapter name) and the forward pre-hook."""

    def __init__(self, trunk: nn.Module, method: str) -> None:
        super().__init__()
        self.method = method
        self.encoders = nn.ModuleDict()
        self.initial = False  # True: the virtual tokens as they were created (`reference_policy`)
        params = list(inspect.signature(trunk.forward).parameters)
        self._arg_names = [p for p in params if p not in ("args", "kwargs")]
        self._cache_arg = cache_arg(trunk)
        self._busy = False
        self._restore_checkpointing = False
        # the prefix cache is read-only, so a checkpointed layer may keep it (transformers drops writable
        # caches)
        for layer in trunk.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer._can_checkpoint_with_cache = True
        self._handles = [
            trunk.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            trunk.register_forward_hook(self._post_hook, always_call=True),
        ]

    def adapter_names(self) -> list[str]:
        return list(self.encoders)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        return self.encoders[name].parameters()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre_hook(self, trunk: nn.Module, args: tuple, kwargs: dict):
        if self.disabled or self._busy or self.active not in self.encoders:
            return None
        kw = dict(zip(self._arg_names, args)) | kwargs
        cache = kw.pop("past_key_values", None)
        cache = kw.pop("cache", None) if cache is None else cache
        ref = kw["input_ids"] if kw.get("input_ids") is not None else kw["inputs_embeds"]
        batch, q = ref.shape[0], ref.shape[1]
        encoder = self.encoders[self.active]
        n = encoder.num_virtual_tokens
        past = cache.get_seq_length() if cache is not None else 0
        if isinstance(cache, VirtualTokenCache):  # ours, filled when it was made: it counts real tokens only
            past_real = past
        elif past == 0:
            cache = self._fill(trunk, encoder, cache, kw.get("use_cache"), batch)
            past_real = 0
        else:  # a plain cache we filled (generate makes its own): it counts the virtual tokens too
            past_real = past - n
        kw["position_ids"] = self._positions(
            kw.get("position_ids"), kw.get("attention_mask"), past_real, q, n, ref
        )
        mask = kw.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(
                    "prefix/prompt tuning needs a 2-D attention mask (batch, seq), got a 4-D one"
                )
            if mask.shape[1] == past_real + q:
                kw["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        kw[self._cache_arg] = cache
        if isinstance(cache, PrefixCache) and getattr(trunk, "gradient_checkpointing", False):
            # some trunks (GPT-2) drop any cache under checkpointing; ours is read-only, so it may stay
            trunk.gradient_checkpointing, self._restore_checkpointing = False, True
        return (), kw

    def _post_hook(self, trunk: nn.Module, args, output):
        if self._restore_checkpointing and not self._busy:
            trunk.gradient_checkpointing, self._restore_checkpointing = True, False

    def _fill(self, trunk, encoder, cache, use_cache, batch) -> Cache:
        """The prefix as a cache: writable DynamicCache for generation, read-only PrefixCache for training."""
        self._busy, checkpointing = True, getattr(trunk, "gradient_checkpointing", False)
        if checkpointing:  # see _pre_hook; the recording cache only overwrites, so replays are safe
            trunk.gradient_checkpointing = False
        try:
            kv = encoder.kv(trunk, self._cache_arg, initial=self.initial)
        finally:
            self._busy = False
            if checkpointing:
                trunk.gradient_checkpointing = True
        self._restore_checkpointing = False
        dtype = trunk.get_input_embeddings().weight.dtype
        kv = [(k.to(dtype), v.to(dtype)) for k, v in kv]
        use_cache = trunk.config.use_cache if use_cache is None else use_cache
        if not use_cache or (trunk.training and torch.is_grad_enabled()):
            return PrefixCache(kv)
        cache = VirtualTokenCache(encoder.num_virtual_tokens, trunk.config) if cache is None else cache
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache

    @staticmethod
    def _positions(position_ids, mask, past_real: int, q: int, n: int, ref: torch.Tensor) -> torch.Tensor:
        """Positions of the q new real tokens, shifted by n (the virtual tokens come first)."""
        if position_ids is None:
            if mask is not None and mask.dim() == 2 and mask.shape[1] == past_real + q:
                position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q:]
            else:
                position_ids = torch.arange(past_real, past_real + q, device=ref.device).unsqueeze(0)
        elif mask is None and q > 1 and (position_ids.diff(dim=-1) != 1).any():
            raise ValueError(
                "packed sequences (position_ids that restart) are not supported with prefix/prompt tuning"
            )
        return position_ids + n
