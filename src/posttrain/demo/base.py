"""The demo's tiny base model: a BPE tokenizer and a Llama pre-trained on the world's raw text, cached on disk.

    model_dir = ensure_base(BaseConfig(), World(), log=print)   # trains once, then loads from the cache
    model = AutoModelForCausalLM.from_pretrained(model_dir)

The cache directory is `$POSTTRAIN_CACHE` (default `~/.cache/posttrain`) / `demo-base-<hash>`, where the hash covers
the base config, the world config and the world's raw text, so a change to any of them retrains. The result is a
normal Hugging Face directory (safetensors weights, tokenizer with a chatml chat template) that every `posttrain`
command can load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.demo.tasks import vocabulary_words  # noqa: F401  (re-exported)
from posttrain.demo.world import World

SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class BaseConfig:
    vocab_size: int = 1536
    """BPE vocabulary: bytes, then template words (digits and task-argument letters stay single tokens)."""
    hidden_size: int = 128
    """Model width."""
    layers: int = 4
    """Decoder layers."""
    heads: int = 4
    """Attention heads (query)."""
    kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 384
    """MLP width."""
    seq_len: int = 96
    """Pre-training sequence length (documents packed back to back, separated by EOS)."""
    batch_size: int = 16
    """Sequences per pre-training step."""
    steps: int = 600
    """Pre-training optimiser steps."""
    lr: float = 3e-3
    """Peak learning rate (linear warmup, cosine decay)."""
    seed: int = 0
    """Seeds initialisation and data order."""


def cache_root() -> Path:
    return Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))


def cache_dir(cfg: BaseConfig, world: World) -> Path:
    text = hashlib.sha256("\n".join(world.raw_text()).encode()).hexdigest()  # world code changes retrain too
    blob = json.dumps(
        {
            "base": dataclasses.asdict(cfg),
            "world": dataclasses.asdict(world.cfg),
            "text": text,
            "words": vocabulary_words(),
            "v": 3,
        },
        sort_keys=True,
    )
    return cache_root() / f"demo-base-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE over pieces that are either a template word (`vocabulary_words`, with its leading space) or
    one character: letters of task arguments and digits stay single tokens; chatml template; pad/eos/bos set."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary_words()
    letter = "[A-Za-zÀ-ÿ']"
    pattern = rf" ?(?<!{letter})(?:" + "|".join(words) + rf")(?!{letter})|[\s\S]"
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    texts = list(texts) + [" ".join(words), "\n".join(words)] * 50  # template words frequent: one token each
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:],
    )
    fast.chat_template = CHATML
    return fast


def build_model(cfg: BaseConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(conf)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def token_stream(texts: list[str], tokenizer, seed: int) -> torch.Tensor:
    """All documents, shuffled with `seed`, tokenised and joined with EOS: one long (N,) tensor."""
    docs = list(texts)
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def pretrain(model, stream: torch.Tensor, cfg: BaseConfig, log: Callable[[str], None] = print) -> list[float]:
    """Next-token prediction on random windows of `stream`; returns the loss per step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    model.train()
    losses, t0 = [], time.time()
    for step in range(cfg.steps):
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([stream[s : s + cfg.seq_len] for s in starts.tolist()])  # (B, T)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            log(
                f"  pretrain step {step + 1}/{cfg.steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"({time.time() - t0:.0f}s)"
            )
    return losses


def ensure_base(cfg: BaseConfig, world: World, log: Callable[[str], None] = print) -> Path:
    """The cached base model directory for (cfg, world); trains and saves it first when missing."""
    out = cache_dir(cfg, world)
    if (out / "model.safetensors").exists() and (out / "pretrain.json").exists():
        log(f"  base model from cache {out}")
        return out
    t0 = time.time()
    texts = world.raw_text()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    stream = token_stream(texts, tokenizer, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  pre-training {n_params / 1e6:.2f}M params on {len(stream)} tokens for {cfg.steps} steps")
    losses = pretrain(model, stream, cfg, log)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {
        "losses": losses,
        "wall_s": time.time() - t0,
        "tokens": len(stream),
        "params": n_params,
        "config": dataclasses.asdict(cfg),
    }
    (tmp / "pretrain.json").write_text(json.dumps(info))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a half-written cache is never picked up
    return out
