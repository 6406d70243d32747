"""The decode loop's KV cache (`posttrain.rollout`): one prompt forward per distinct prompt, then storage allocated
once for every new position.

    out = prefill(model, ids, mask, positions, "cache", {"logits_to_keep": 1})   # duplicates share one forward
    preallocate(out.cache, max_new_tokens)                                       # in-place layers
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


def prefill(model, input_ids, attention_mask, positions, cache_kw: str, extra: dict, sharded: bool = False):
    """The prompt forward, once per distinct prompt: GRPO's k samples of a prompt are k equal rows, so the unique
    rows are run and their cache and last logits copied to the duplicates (plain DynamicLayer caches, unsharded
    models; otherwise every row is computed)."""
    kw = dict(use_cache=True, **extra)
    unique, rows = torch.unique(torch.cat([input_ids, attention_mask], 1), dim=0, return_inverse=True)
    B, n = input_ids.shape[0], unique.shape[0]
    if n == B or sharded:  # ranks of a sharded model must run the same forwards
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **kw)
    first = torch.full((n,), B, dtype=torch.long, device=input_ids.device)
    first.scatter_reduce_(0, rows, torch.arange(B, device=input_ids.device), "amin")  # a row of each prompt
    out = model(
        input_ids=input_ids[first], attention_mask=attention_mask[first], position_ids=positions[first], **kw
    )
    cache = out[cache_kw] if cache_kw in out else out.past_key_values
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or any(type(layer) is not DynamicLayer for layer in layers):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **kw)
    for layer in layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    out.logits = out.logits[rows]
    return out


class _InPlaceLayer(DynamicLayer):
    """A DynamicLayer whose storage is allocated once for `capacity` positions, so each decode step writes its
    key/value in place instead of re-concatenating the whole cache (torch.cat was ~15% of a CPU decode step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        B, H, n, D = keys.shape
        self._k = keys.new_empty(B, H, capacity, keys.shape[-1])
        self._v = values.new_empty(B, values.shape[1], capacity, values.shape[-1])
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self.length, self.device, self.is_initialized = n, keys.device, True
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


def preallocate(cache, extra: int) -> None:
    """Swap plain DynamicLayers of the model's own cache (prefix adapters may have pre-filled it) for in-place ones
    with room for `extra` more positions; other layer kinds (sliding window, quantised) are left as they are."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4:
            layers[i] = _InPlaceLayer(layer.keys, layer.values, layer.keys.shape[-2] + extra)
