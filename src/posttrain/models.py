"""Load any Hugging Face causal LM and its tokenizer; build tiny ones from configs for tests.

model = load_model("Qwen/Qwen2.5-0.5B", dtype="bf16", device="cuda")
tok = load_tokenizer("Qwen/Qwen2.5-0.5B")
model, tok = tiny_model("llama"), tiny_tokenizer()   # no download, for tests
"""

from __future__ import annotations

import functools
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
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """AutoModelForCausalLM from a local directory or a Hub name, on `device` in `dtype`."""
    dev = resolve_device(device)
    kwargs = dict(dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (ValueError, ImportError) as e:
        if attn_implementation and "attn" in str(e).lower():
            kwargs.pop("attn_implementation")
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        else:
            raise
    return model.to(dev)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with a pad token guaranteed (falls back to EOS; labels never rely on pad != eos)."""
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --------------------------------------------------------------------------------------------------------------
# tiny models and tokenizers for tests and benchmarks (no download)

SPECIAL_TOKENS = [
    "<unk>",
    "<pad>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
]

_TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world! What is 2 + 3? The answer is 5. "
    "You are a helpful assistant. Reverse the word cat: tac. Sort these numbers: 3 1 2 -> 1 2 3. "
    "Who are you? I am posttrain's assistant. Below is an instruction that describes a task. "
    "### Instruction:\n### Input:\n### Response:\nsystem user assistant Human: Assistant: "
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;!?'\"()[]{}<>-_=+*/\\|@#$%^&~`\n\t"
)


@functools.lru_cache(maxsize=8)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(
    vocab_size: int = 512,
    chat_template: str | None = None,
    pad_is_eos: bool = False,
    add_bos: bool = True,
) -> PreTrainedTokenizerBase:
    """A real byte-level BPE tokenizer trained in-process on a fixed text (deterministic, ~50 ms).

    BOS `<s>`, EOS `</s>`, pad `<pad>` (or EOS when `pad_is_eos`). With `add_bos`, encoding prepends BOS the way
    Llama tokenizers do, so that tests can check that chat rendering never doubles it.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_tiny_tokenizer_json(vocab_size))
    if add_bos:
        bos_id = raw.token_to_id("<s>")
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>" if pad_is_eos else "<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_model(arch: str = "llama", vocab_size: int = 512, seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised tiny causal LM: llama (GQA), gpt2 (Conv1D, tied embeddings), qwen2, mistral."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **ids,
    )
    builders = {
        "llama": lambda o: LlamaForCausalLM(LlamaConfig(**{**common, **o})),
        "mistral": lambda o: MistralForCausalLM(MistralConfig(**{**common, "sliding_window": None, **o})),
        "qwen2": lambda o: Qwen2ForCausalLM(Qwen2Config(**{**common, "tie_word_embeddings": False, **o})),
        "gpt2": lambda o: GPT2LMHeadModel(
            GPT2Config(
                **{
                    "vocab_size": vocab_size,
                    "n_embd": 64,
                    "n_layer": 2,
                    "n_head": 4,
                    "n_positions": 256,
                    **ids,
                    **o,
                }
            )
        ),
    }
    if arch not in builders:
        raise ValueError(f"tiny_model arch must be one of {sorted(builders)}, got {arch!r}")
    torch.manual_seed(seed)
    model = builders[arch](overrides)
    model.config._attn_implementation = "sdpa"
    return model.eval()
