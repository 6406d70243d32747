"""One PEFT LoRA adapter from an adapter chain, for loaders that know nothing of chains (`peft`, vLLM).

    export_adapter("runs/dpo/final", "runs/dpo/peft")   # SFT LoRA + DPO LoRA -> one LoRA on the raw base

A DPO LoRA trained on a base with an SFT LoRA merged in computes W x + s1 B1 A1 x + s2 B2 A2 x: the sum of the two
low-rank updates, which is itself one LoRA of rank r1 + r2 with A = [A1; A2] and B = [s1 B1, s2 B2] (scaling 1,
zeros where an adapter does not wrap a module). So the exported adapter gives the trained policy's logits on the
plain base, up to float rounding. DoRA and non-LoRA stages are not sums of low-rank updates and are refused.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from posttrain.artifacts.model import ADAPTER_FILES, TOKENIZER_FILES, base_adapters
from posttrain.atomic import atomic_dir

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def _stage(
    directory: Path,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], float]:
    """(config json, {module key: {"A": .., "B": ..}}, other tensors, scaling) of one LoRA adapter directory."""
    raw = json.loads((directory / ADAPTER_FILES[0]).read_text())
    if raw.get("peft_type") != "LORA" or raw.get("use_dora"):
        kind = "DoRA" if raw.get("use_dora") else raw.get("peft_type")
        raise ValueError(
            f"{directory}: a {kind} adapter is not a low-rank sum; only LoRA chains export as one LoRA"
        )
    modules: dict[str, dict[str, torch.Tensor]] = {}
    other = {}
    for key, value in load_file(str(directory / ADAPTER_FILES[1])).items():
        m = _LORA_KEY.match(key)
        if m:
            modules.setdefault(m["module"], {})[m["part"]] = value.float()
        else:
            other[key] = value
    r = raw["r"]
    scaling = raw["lora_alpha"] / (math.sqrt(r) if raw.get("use_rslora") else r)
    return raw, modules, other, scaling


def export_adapter(adapter: str | Path, out: str | Path) -> Path:
    """Write `adapter` and every adapter merged under it as one LoRA adapter (PEFT format) to `out` (built in a
    temporary sibling and swapped in whole: `posttrain.atomic.atomic_dir`)."""
    adapter, out = Path(adapter), Path(out)
    stages = [_stage(d) for d in (*base_adapters(adapter), adapter)]
    for d, (raw, *_) in zip(base_adapters(adapter), stages[:-1]):
        if raw.get(
            "trainable_token_indices"
        ):  # rows replaced, not a low-rank sum: only the newest stage's carry over
            raise ValueError(
                f"{d}: an earlier stage trained token rows (trainable_token_indices); export it merged"
            )
    ranks = [raw["r"] for raw, *_ in stages]
    names = sorted({m for _, modules, _, _ in stages for m in modules})
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        a_like = next(mods[name]["A"] for _, mods, _, _ in stages if name in mods)
        b_like = next(mods[name]["B"] for _, mods, _, _ in stages if name in mods)
        a_parts, b_parts = [], []
        for (_, mods, _, scaling), r in zip(stages, ranks):
            if name in mods:
                a_parts.append(mods[name]["A"])
                b_parts.append(scaling * mods[name]["B"])
            else:
                a_parts.append(a_like.new_zeros(r, a_like.shape[1]))
                b_parts.append(b_like.new_zeros(b_like.shape[0], r))
        tensors[f"{name}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        tensors[f"{name}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    for _, _, other, _ in stages:  # resized embeddings and modules_to_save: the newest stage's
        tensors.update(other)
    raw = dict(stages[-1][0])
    targets = set()
    for stage_raw, *_ in stages:
        listed = stage_raw["target_modules"]
        targets.update([listed] if isinstance(listed, str) else listed)
    total = sum(ranks)
    raw.update(r=total, lora_alpha=float(total), use_rslora=False, target_modules=sorted(targets))
    with atomic_dir(out) as tmp:  # `out` whole or as it was
        save_file(tensors, str(tmp / ADAPTER_FILES[1]))
        (tmp / ADAPTER_FILES[0]).write_text(json.dumps(raw, indent=2) + "\n")
        for name in TOKENIZER_FILES + ("special_tokens_map.json", "chat_template.jinja"):
            if (adapter / name).exists():
                shutil.copyfile(adapter / name, tmp / name)
    return out
