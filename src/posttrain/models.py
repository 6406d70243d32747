"""Load any Hugging Face causal LM and its tokenizer; build tiny ones from configs for tests.

model = load_model("Qwen/Qwen2.5-0.5B", dtype="bf16", device="cuda")
tok = load_tokenizer("Qwen/Qwen2.5-0.5B")
model, tok = tiny_model("llama"), tiny_tokenizer()   # no download, for tests (see tiny.py)

A name that is neither a model directory nor a Hub model (a missing path, a directory without config.json,
offline without a cache, a corrupt config or weights file) raises one UserError, `NAME: not a model directory or Hub
name (why)`, instead of transformers' traceback. A bad --device / --dtype is a UsageError.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posttrain.errors import UsageError, UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""A directory with none of these holds no tokenizer."""

LOAD_ERRORS = (OSError, ValueError, SafetensorError)
"""What transformers raises for a name it cannot load (OSError: not found / offline / bad JSON; ValueError: no
model_type, no tokenizer backend; SafetensorError: a truncated weights file)."""


def _is_local_path(name: str) -> bool:
    """A name that can only mean a local directory (a Hub id is NAME or OWNER/NAME)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_model_name(name: str) -> None:
    """Refuse, before anything loads, a model name that is a file or a local path that does not exist."""
    path = Path(name).expanduser()
    if path.is_file() or (not path.exists() and _is_local_path(name)):
        raise not_a_model(name, FileNotFoundError(name))


def not_a_model(name: str, error: BaseException, what: str = "model") -> UserError:
    """The one-line error for a model or tokenizer `name` that transformers could not load."""
    path = Path(name).expanduser()
    if path.is_file():
        reason = "a file, not a directory"
    elif path.is_dir() and what == "model" and not (path / "config.json").is_file():
        reason = "the directory has no config.json"
    elif path.is_dir() and what == "tokenizer" and not any((path / f).is_file() for f in TOKENIZER_FILES):
        reason = "the directory has no tokenizer: no tokenizer.json or tokenizer_config.json"
    elif not path.exists() and _is_local_path(name):
        reason = "no such directory"
    elif not path.exists() and "connect" in str(error):  # offline (HF_HUB_OFFLINE=1) or no network
        reason = "no such local directory, and not in the Hub cache while offline"
    else:  # transformers' first sentence: "Unrecognized model in ...", "... is not a valid JSON file"
        text = " ".join(str(error).split())
        reason = (text.split(". ")[0] if ". " in text[:240] else text[:240]) or type(error).__name__
    return UserError(f"{name}: not a model directory or Hub name ({reason})")


DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class DeviceError(UsageError, ValueError):
    """An unknown --device or --dtype (exit 2)."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cuda", "mps", "cpu") and not device.startswith("cuda:"):
        raise DeviceError(f"device must be cuda | mps | cpu | auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: no CUDA device is available here (use cpu, or auto)")
    if device.startswith("cuda:") and not (
        device[5:].isdigit() and int(device[5:]) < torch.cuda.device_count()
    ):
        raise DeviceError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps': not available here (use cpu, or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """auto: bf16 on CUDA devices that support it, else fp32."""
    if dtype == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise DeviceError(f"dtype must be fp32 | bf16 | fp16 | auto, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name: str,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    quantization: str = "none",
    double_quant: bool = True,
    compute_dtype: str = "auto",
) -> PreTrainedModel:
    """AutoModelForCausalLM from a local directory or a Hub name, on `device` in `dtype`.

    `attn_implementation` None (or "auto") lets transformers pick (sdpa where the architecture supports it, else
    eager: Gemma 2, gpt-oss and Bloom have no sdpa kernel). `quantization` nf4 | fp4 | int8 loads the linears of the
    decoder quantised by bitsandbytes (`posttrain.quant`), frozen; `compute_dtype` (auto: `dtype` resolved) is what
    4-bit weights are dequantised to for each matmul. The rest of the model (embeddings, norms, LM head) is `dtype`.
    `model_options(cfg.model)` gives the last four from a config's `model` section."""
    from posttrain.quant import bnb_config

    dev = resolve_device(device)
    weights = resolve_dtype(dtype, dev)
    kwargs = dict(dtype=weights, trust_remote_code=trust_remote_code)
    if attn_implementation and attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    quant = bnb_config(
        quantization, double_quant, weights if compute_dtype == "auto" else resolve_dtype(compute_dtype, dev)
    )
    if (
        quant is not None
    ):  # bitsandbytes quantises while the weights are placed: load onto the device directly
        kwargs.update(quantization_config=quant, device_map={"": dev})
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except ImportError as e:  # an attention kernel or quantisation backend that is not installed
        what = (
            f"model.attn_implementation={attn_implementation}" if kwargs.get("attn_implementation") else name
        )
        raise UserError(f"{what}: cannot load {name} ({' '.join(str(e).split())[:300]})") from None
    except LOAD_ERRORS as e:
        if "attn_implementation" in str(e):
            raise UserError(
                f"model.attn_implementation={attn_implementation}: not supported for {name} ("
                + " ".join(str(e).split())[:200]
                + ")"
            ) from None
        raise not_a_model(name, e) from None
    if quant is None:
        model = model.to(dev)
    else:
        from posttrain.quant import one_kernel, quantized_linears

        if not quantized_linears(
            model
        ):  # transformers skips linears of other classes (Falcon's FalconLinear)
            kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)})
            raise UserError(
                f"model.quantization={quantization}: transformers quantised none of {name}'s linear layers"
                f" ({', '.join(kinds)}); load it unquantised"
            )
        one_kernel(model)
    emb = model.get_input_embeddings()
    if emb is not None:  # what `posttrain.peft.io` compares with to tell that tokens were added
        model.__dict__["_posttrain_loaded_vocab"] = emb.weight.shape[0]
    return model


def model_options(model_cfg) -> dict:
    """`load_model` keywords from a config's `model` section (`posttrain.config.ModelConfig`)."""
    return dict(
        attn_implementation=model_cfg.attn_implementation,
        quantization=model_cfg.quantization,
        double_quant=model_cfg.double_quant,
        compute_dtype=model_cfg.compute_dtype,
    )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with a pad token guaranteed (falls back to EOS; labels never rely on pad != eos)."""
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise not_a_model(name, e, "tokenizer") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


from posttrain.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer  # noqa: E402, F401  (re-exported)
