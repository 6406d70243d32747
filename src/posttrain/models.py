"""Load any Hugging Face causal LM and its tokenizer; build tiny ones from configs for tests.

model = load_model("Qwen/Qwen2.5-0.5B", dtype="bf16", device="cuda")
tok = load_tokenizer("Qwen/Qwen2.5-0.5B")
model, tok = tiny_model("llama"), tiny_tokenizer()   # no download, for tests (see tiny.py)
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cuda", "mps", "cpu") and not device.startswith("cuda:"):
        raise ValueError(f"device must be cuda | mps | cpu | auto, got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """auto: bf16 on CUDA devices that support it, else fp32."""
    if dtype == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be fp32 | bf16 | fp16 | auto, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name: str,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """AutoModelForCausalLM from a local directory or a Hub name, on `device` in `dtype`.

    `attn_implementation` None lets transformers pick (sdpa where the architecture supports it, else eager:
    Gemma 2, gpt-oss and Bloom have no sdpa kernel)."""
    dev = resolve_device(device)
    kwargs = dict(dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs).to(dev)
    emb = model.get_input_embeddings()
    if emb is not None:  # what `posttrain.peft.io` compares with to tell that tokens were added
        model.__dict__["_posttrain_loaded_vocab"] = emb.weight.shape[0]
    return model


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with a pad token guaranteed (falls back to EOS; labels never rely on pad != eos)."""
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


from posttrain.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer  # noqa: E402, F401  (re-exported)
