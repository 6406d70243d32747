"""Reward-model artefacts in the formats outside loaders read.

    save_reward_model(rm, tok, cfg, "runs/rm/final")
    rm = load_reward_model("runs/rm/final")                  # posttrain: score_texts, likelihood term, ...

Layouts (`reward_config.json` records which, with the template and `likelihood_coef`):
  * `seq_cls`: full fine-tuning on an architecture transformers has a `...ForSequenceClassification` class for: a
    plain HF directory of that class (trunk + `score`, `num_labels=1`, `pad_token_id` set), which
    `AutoModelForSequenceClassification.from_pretrained(dir)` loads with posttrain's scores on right-padded rows
    (transformers reads the score at the last token that is not the pad id; it counts positions from 0 over the
    padded row). An untied LM head, needed for the likelihood term, is kept in `lm_head.safetensors`.
  * `peft_seq_cls`: a PEFT adapter of task type SEQ_CLS with `score` in `modules_to_save`, which `peft` loads onto
    `AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=...)`.
  * `causal_lm_head`: architectures without such a class (Granite, Cohere): the LM directory and
    `score_head.safetensors`; only posttrain reads it.
The likelihood term (`likelihood_coef` > 0) needs the LM head; outside loaders give the head's score without it.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.artifacts.model import CONFIG_FILE as RUN_CONFIG_FILE
from posttrain.artifacts.model import has_adapters, load_for_inference, loading, save_final, save_tokenizer
from posttrain.config import save_config
from posttrain.errors import UserError
from posttrain.objectives.reward import RewardModel

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "score_head.safetensors"
LM_HEAD_FILE = "lm_head.safetensors"
SCORE = "score"
"""The score head's module name in transformers' sequence-classification models (and in the PEFT adapter)."""


def _seq_cls_class(lm: nn.Module) -> type | None:
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(lm.config.model_type)
    if name is None:
        return None
    return AutoModelForSequenceClassification._model_mapping[type(lm.config)]


def _head_state(rm: RewardModel) -> dict[str, torch.Tensor]:
    return {"weight": rm.score_head.weight.detach().float().cpu().contiguous()}


def _save_seq_cls(rm: RewardModel, cls: type, tokenizer, directory: Path) -> None:
    """The trained trunk and head as `cls` (built on the meta device, so nothing is copied), saved by transformers."""
    lm = rm.lm
    config = copy.deepcopy(lm.config)
    config.num_labels, config.architectures = 1, [cls.__name__]
    config.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else lm.config.pad_token_id
    with torch.device("meta"):
        seq = cls(config)
    setattr(seq, seq.base_model_prefix, getattr(lm, lm.base_model_prefix))
    weight = rm.score_head.weight.detach().to(next(lm.parameters()))
    seq.score = nn.Linear(weight.shape[1], 1, bias=False, device=weight.device, dtype=weight.dtype)
    seq.score.weight.data.copy_(weight)
    seq.save_pretrained(directory, safe_serialization=True)
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    if rm.likelihood_coef and head.weight is not emb.weight:
        save_file({"weight": head.weight.detach().cpu().contiguous()}, str(directory / LM_HEAD_FILE))


def save_reward_model(rm: RewardModel, tokenizer, cfg, directory: str | Path) -> None:
    """Write `rm` in the layout its training allows (module docstring), with tokenizer, run config and
    reward_config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cls = _seq_cls_class(rm.lm)
    if has_adapters(rm.lm):
        save_final(rm.lm, tokenizer, cfg, directory, heads={SCORE: _head_state(rm)}, task_type="SEQ_CLS")
        layout = "peft_seq_cls"
    elif cls is not None:
        _save_seq_cls(rm, cls, tokenizer, directory)
        save_tokenizer(tokenizer, cfg.template, directory)
        save_config(cfg, directory / RUN_CONFIG_FILE)
        layout = "seq_cls"
    else:
        save_final(rm.lm, tokenizer, cfg, directory)
        save_file(_head_state(rm), str(directory / HEAD_FILE))
        layout = "causal_lm_head"
    meta = {
        "layout": layout,
        "base_model": cfg.model.name,
        "template": cfg.template,
        "hidden_size": rm.score_head.in_features,
        "likelihood_coef": rm.likelihood_coef,
        "pad_token_id": tokenizer.pad_token_id if tokenizer is not None else None,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _tensor(directory: Path, key: str) -> torch.Tensor:
    """One tensor from a (possibly sharded) HF safetensors directory."""
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    raise ValueError(f"{directory}: no tensor {key!r} in its safetensors files")


def _load_seq_cls(directory: Path, device: str, dtype: str):
    """The causal LM inside a `seq_cls` directory (transformers loads it by model type; `score` is ignored)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # "unexpected key score.weight" (and a missing untied head, restored below)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm, tok = load_for_inference(str(directory), dtype=dtype, device=device)
    finally:
        logging.set_verbosity(level)
    if (directory / LM_HEAD_FILE).exists():
        lm.get_output_embeddings().load_state_dict(load_file(str(directory / LM_HEAD_FILE)))
    return lm, tok, {"weight": _tensor(directory, f"{SCORE}.weight")}


def _load(directory: Path, meta: dict, base_model: Any, device: str, dtype: str):
    """(causal LM with the reward model's weights, tokenizer, score head state dict) for any layout."""
    from posttrain.artifacts.model import add_adapter_chain
    from posttrain.models import load_tokenizer
    from posttrain.peft import read_heads

    layout = meta.get("layout") or ("peft_seq_cls" if meta.get("is_adapter") else "causal_lm_head")
    if layout == "seq_cls":
        return _load_seq_cls(directory, device, dtype)
    if layout == "causal_lm_head" and not (directory / "adapter_config.json").exists():
        lm, tok = load_for_inference(str(directory), dtype=dtype, device=device)
        return lm, tok, load_file(str(directory / HEAD_FILE))
    heads = (SCORE,)
    if isinstance(base_model, nn.Module):
        lm, tok = add_adapter_chain(base_model, directory, heads), load_tokenizer(str(directory))
    else:
        base = base_model or meta["base_model"]
        lm, tok = load_for_inference(base, str(directory), dtype=dtype, device=device, heads=heads)
    head = read_heads(directory, heads).get(SCORE)
    return lm, tok, head if head is not None else load_file(str(directory / HEAD_FILE))


def load_reward_model(
    directory: str | Path, base_model: Any = None, device: str = "cpu", dtype: str = "auto"
) -> RewardModel:
    """Rebuild a saved RewardModel. `base_model`: path/Hub name (default: the one recorded at training time)
    or an already loaded causal LM, used when `directory` holds an adapter. The returned model is in eval mode
    and frozen; `rm.tokenizer` and `rm.template` are set for `score_texts`."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.exists():
        raise UserError(f"{directory}: not a reward model directory (no {CONFIG_FILE})")
    with loading(directory, "reward model"):
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        lm, tok, head = _load(directory, meta, base_model, device, dtype)
        rm = RewardModel(lm, likelihood_coef=meta.get("likelihood_coef", 0.0))
        head.pop(
            "bias", None
        )  # heads written before the score head lost its bias (always 0: BT is shift-invariant)
        rm.score_head.load_state_dict(head)
        rm.template = meta["template"]
    rm.score_head.to(next(lm.parameters()).device)
    rm.tokenizer = tok
    rm.requires_grad_(False)
    return rm.eval()
