"""Tiny randomly initialised causal LMs of many architecture families, and a tiny real tokenizer: no download.

    model = tiny_model("gemma2")          # any key of TINY_ARCHS; overrides go to the config
    tok = tiny_tokenizer()

Every family keeps what makes it different (GQA or multi-query attention, MLA, mixture of experts, sliding
windows, soft-capped or scaled logits, tied or untied heads, Conv1D linears, OPT's inline MLP), at 64 hidden
units and 2 layers, so that the architecture matrix in the tests runs in seconds.
"""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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


_IDS = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3)
_DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)

TINY_ARCHS: dict[str, dict] = {
    "llama": _DECODER,
    "mistral": {**_DECODER, "sliding_window": None},
    "qwen2": {**_DECODER, "tie_word_embeddings": False},
    "qwen3": {**_DECODER, "head_dim": 16},
    "qwen3_moe": {
        **_DECODER,
        "head_dim": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
    },
    "mixtral": {**_DECODER, **_MOE},
    "gemma2": {
        **_DECODER,
        "head_dim": 16,
        "sliding_window": 8,
        "final_logit_softcapping": 0.5,
        "attn_logit_softcapping": 20.0,
    },
    "gemma3_text": {**_DECODER, "head_dim": 16, "sliding_window": 8, "final_logit_softcapping": 0.5},
    "phi3": _DECODER,
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "gpt_neox": {**_DECODER, "num_key_value_heads": None},
    "opt": dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256
    ),
    "falcon": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        new_decoder_architecture=False,
    ),
    "deepseek_v3": {
        **_DECODER,
        "num_key_value_heads": 4,
        "head_dim": 8,
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 12,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    },
    "gpt_oss": {**_DECODER, **_MOE, "head_dim": 16, "sliding_window": 8},
    "granite": {**_DECODER, "logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5},
    "cohere": {**_DECODER, "logit_scale": 0.5},
    "phi": {**_DECODER, "num_key_value_heads": None},
    "olmo2": _DECODER,
    "starcoder2": _DECODER,
}
"""Family -> the tiny config's fields (on top of vocab size and the special token ids)."""


def tiny_model(arch: str = "llama", vocab_size: int = 512, seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised tiny causal LM of family `arch` (a key of TINY_ARCHS), seeded, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny_model arch must be one of {sorted(TINY_ARCHS)}, got {arch!r}")
    fields = {k: v for k, v in TINY_ARCHS[arch].items() if v is not None}
    config = AutoConfig.for_model(arch, vocab_size=vocab_size, **_IDS, **{**fields, **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()
