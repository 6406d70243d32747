"""Reward model (RLHF step 2): a causal-LM trunk with a scalar head, trained on human comparisons.

    rm = RewardModel(model)                       # model: any HF causal LM, PEFT applied or not
    r = rm(input_ids, attention_mask)             # (B,) one score per row, read at the last real token
    loss = bradley_terry_loss(r_chosen, r_rejected, margin).sum()

Bradley-Terry (Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", eq. 1; Llama 2 adds the margin): -log sigmoid(r_c - r_r - m). Rankings of K responses can also
be trained listwise with the Plackett-Luce likelihood (the K-way generalisation of Bradley-Terry; Zhu et al.
2023, "Principled RLHF from Pairwise or K-wise Comparisons").

`likelihood_coef` c > 0 adds c * log p(response | prompt) under the model's own LM head to the score:
    r(x, y) = head(h_last) + c * sum_t log p(y_t | x, y_<t)
The head alone must learn to check an answer from the comparisons it is given, and with a few thousand of them
it learns style; the LM head already knows which answers the SFT model expects (the implicit-reward view of
Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"). The
score then needs the response tokens: `labels` (response token ids, -100 elsewhere, as `pad_rows` makes them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.modeling import head, label_positions, lm_forward, sum_per_row, token_logprobs

HEAD_FILE = "score_head.safetensors"
CONFIG_FILE = "reward_config.json"


@dataclass
class RMArgs:
    """`rm:` section of `posttrain rm` configs."""

    loss: Literal["pairwise", "listwise"] = "pairwise"
    """pairwise (Bradley-Terry over all pairs; rankings expanded) | listwise (Plackett-Luce over whole
    rankings)."""
    margin: bool = True
    """Subtract a record's `margin` (when it has one) inside the pairwise loss: -log sigmoid(r_c - r_r -
    margin)."""
    head_init_std: float = 0.0
    """Std of the score head's normal init; 0 means 1/sqrt(hidden_size + 1) (the InstructGPT / TRL choice)."""
    likelihood_coef: float = 0.0
    """c in score = head(h_last) + c * log p(response | prompt) under the reward model's own LM head (summed
    over response tokens); 0 is the plain scalar head. The LM head trains with the trunk."""
    prompt_floor: int = 64
    """When a sample is too long, the prompt is cut from the left down to this many tokens before
    responses."""


# ------------------------------------------------------------------------------------------------------------
# pure losses


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair loss -log sigmoid(r_c - r_r - margin). (B,), (B,), (B,) or None -> (B,)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def plackett_luce_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-ranking negative log-likelihood of the order best-first under Plackett-Luce.

    scores: (G, K) with each row's responses best first; mask: (G, K) True on real entries (rankings shorter
    than K are padded at the end). loss_g = -sum_i [s_i - logsumexp_{j >= i} s_j]. With K = 2 this is
    Bradley-Terry.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    s = scores.masked_fill(~mask, float("-inf"))
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # (G, K) logsumexp over positions i..K-1
    terms = torch.where(mask, scores - tail, torch.zeros_like(scores))
    return -terms.sum(-1)


# ------------------------------------------------------------------------------------------------------------
# the model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, from the mask alone (works for left, right or no padding). (B, T)
    -> (B,)"""
    T = attention_mask.shape[-1]
    pos = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(-1).values.clamp(min=0)


def _drop_denormals(grad: torch.Tensor) -> torch.Tensor:
    """Zero score gradients below 1e-30. A pair the model already separates by a wide margin gets
    d(-log sigmoid(diff))/d(diff) = sigmoid(-diff), a denormal float (below 1.2e-38) once diff > 87, and x86 CPUs
    compute many times slower on denormals through every matmul of that row's backward pass: with
    `likelihood_coef` (margins of tens of nats on rambling samples) a batch took 2.1 s instead of 0.09 s. Such
    entries change nothing."""
    return grad.masked_fill(grad.abs() < 1e-30, 0.0)


class RewardModel(nn.Module):
    """A causal LM's trunk + `nn.Linear(hidden, 1)`; the score is read at the last real token of each row,
    plus `likelihood_coef` * log p(response | prompt) when that is set."""

    def __init__(self, lm: nn.Module, head_init_std: float = 0.0, likelihood_coef: float = 0.0):
        super().__init__()
        self.lm = lm  # kept whole so adapters save and load the usual way
        self.likelihood_coef = likelihood_coef
        hidden = head(lm).weight.shape[-1]  # what the trunk outputs (OPT may project it)
        self.score_head = nn.Linear(hidden, 1)
        std = head_init_std or 1.0 / (hidden + 1) ** 0.5
        nn.init.normal_(self.score_head.weight, std=std)
        nn.init.zeros_(self.score_head.bias)
        param = next(lm.parameters())
        self.score_head.to(device=param.device)  # stays fp32 whatever the trunk's dtype

    @property
    def config(self) -> Any:
        return self.lm.config

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        self.lm.enable_input_require_grads()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) -> (B,) scores. `labels` (response token ids, -100 elsewhere) are needed, and only used, when
        `likelihood_coef` is set."""
        if self.likelihood_coef and labels is None:
            raise ValueError(
                "this reward model adds likelihood_coef * log p(response | prompt) to its score: pass labels "
                "(response token ids, -100 on prompt and padding)"
            )
        if position_ids is None:  # count real tokens only, so left padding gets the right positions
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if self.likelihood_coef:  # one forward: the score head's hidden state and the response's log-probs
            rows, cols, targets = label_positions(labels)
            out = lm_forward(self.lm, batch, select=(rows, cols))
            loglik = sum_per_row(token_logprobs(out.logits, targets), rows, input_ids.shape[0])
        else:
            out = lm_forward(self.lm, batch)
        hidden = out.hidden  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        score = self.score_head(h.float()).squeeze(-1)  # (B,)
        if self.likelihood_coef:
            score = score + self.likelihood_coef * loglik
        if score.requires_grad:  # see _drop_denormals
            score.register_hook(_drop_denormals)
        return score

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids and mask (any padding side) -> (B,) fp32 scores, without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self(input_ids, attention_mask, labels=labels)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score_texts(
        self, tokenizer, prompts: list, responses: list[str], template: str = "auto", batch_size: int = 16
    ) -> list[float]:
        """Score `responses[i]` as the reply to `prompts[i]` (a string or a message list)."""
        from posttrain.data.chat import encode_prompt
        from posttrain.data.preference import pad_rows, response_ids
        from posttrain.data.schema import Message, messages_from

        device = self.score_head.weight.device
        scores: list[float] = []
        for i in range(0, len(prompts), batch_size):
            ps, rs = [], []
            for prompt, resp in zip(prompts[i : i + batch_size], responses[i : i + batch_size]):
                is_msgs = isinstance(prompt, list) and all(isinstance(m, Message) for m in prompt)
                msgs = prompt if is_msgs else messages_from(prompt, fld="prompt")
                p_ids = encode_prompt(tokenizer, msgs, template)
                ps.append(p_ids)
                rs.append(response_ids(tokenizer, msgs, [Message("assistant", resp)], p_ids, template))
            batch = pad_rows(ps, rs, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
            ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
            scores += self.score(ids, mask, labels).tolist()
        return scores


# ------------------------------------------------------------------------------------------------------------
# the objective the training loop calls


def _summary(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metric sums as detached tensors (the loop syncs with the device once per step, not per metric)."""
    d = (chosen - rejected).detach().float()
    return {
        "accuracy": (d > 0).float().sum(),
        "margin": d.sum(),
        "reward/chosen": chosen.detach().float().sum(),
        "reward/rejected": rejected.detach().float().sum(),
    }


class PairwiseRewardObjective:
    """Bradley-Terry over a batch of 2B rows (chosen rows, then rejected rows). Units: pairs."""

    name = "rm"

    def __init__(self, use_margin: bool = True):
        self.use_margin = use_margin

    def units(self, batch: dict) -> int:
        return int(batch["num_pairs"])

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = model(
            batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch.get("labels")
        )
        chosen, rejected = scores.chunk(2)
        margin = batch["margin"].to(scores.device) if self.use_margin else None
        return bradley_terry_loss(chosen, rejected, margin).sum(), _summary(chosen, rejected)


class ListwiseRewardObjective:
    """Plackett-Luce over whole rankings (rows best first per ranking). Units: rankings.

    Metrics compare each ranking's best response with its worst."""

    name = "rm"

    def units(self, batch: dict) -> int:
        return int(batch["num_rankings"])

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = model(
            batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch.get("labels")
        )
        groups = list(scores.split(batch["group_sizes"]))
        padded = nn.utils.rnn.pad_sequence(groups, batch_first=True)  # (G, Kmax)
        sizes = torch.tensor(batch["group_sizes"], device=scores.device)
        mask = torch.arange(padded.shape[1], device=scores.device)[None] < sizes[:, None]
        best = torch.stack([g[0] for g in groups])
        worst = torch.stack([g[-1] for g in groups])
        return plackett_luce_loss(padded, mask).sum(), _summary(best, worst)


OBJECTIVES = {
    "pairwise": lambda args: PairwiseRewardObjective(args.margin),
    "listwise": lambda args: ListwiseRewardObjective(),
}


# ------------------------------------------------------------------------------------------------------------
# save / load


def save_reward_model(rm: RewardModel, tokenizer, cfg, directory: str | Path) -> None:
    """The LM part through `artifacts.save_final` (adapter dir for PEFT, with the chain of adapters merged under it;
    HF dir otherwise) + head + config."""
    from safetensors.torch import save_file

    from posttrain.artifacts import save_final

    directory = Path(directory)
    save_final(rm.lm, tokenizer, cfg, directory)
    state = {k: v.detach().float().cpu().contiguous() for k, v in rm.score_head.state_dict().items()}
    save_file(state, str(directory / HEAD_FILE))
    meta = {
        "base_model": cfg.model,
        "template": cfg.template,
        "hidden_size": rm.score_head.in_features,
        "likelihood_coef": rm.likelihood_coef,
        "is_adapter": (directory / "adapter_config.json").exists(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def _load_lm(directory: Path, meta: dict, base_model: Any, device: str, dtype: str):
    """(causal LM with the reward model's weights, tokenizer) for adapter or full-model directories. An adapter
    goes on top of the adapters recorded as merged under it (`artifacts.add_adapter_chain`), as for every
    other artefact."""
    from posttrain.artifacts import add_adapter_chain, load_for_inference
    from posttrain.models import load_tokenizer

    if not meta["is_adapter"]:
        return load_for_inference(str(directory), dtype=dtype, device=device)
    if isinstance(base_model, nn.Module):
        return add_adapter_chain(base_model, directory), load_tokenizer(str(directory))
    return load_for_inference(base_model or meta["base_model"], str(directory), dtype=dtype, device=device)


def load_reward_model(
    directory: str | Path, base_model: Any = None, device: str = "cpu", dtype: str = "auto"
) -> RewardModel:
    """Rebuild a saved RewardModel. `base_model`: path/Hub name (default: the one recorded at training time)
    or an already loaded causal LM, used when `directory` holds an adapter. The returned model is in eval mode
    and frozen; `rm.tokenizer` and `rm.template` are set for `score_texts`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{directory}: not a reward model directory (no {CONFIG_FILE})")
    meta = json.loads(cfg_path.read_text())
    lm, tok = _load_lm(directory, meta, base_model, device, dtype)
    rm = RewardModel(lm, likelihood_coef=meta.get("likelihood_coef", 0.0))
    rm.score_head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    rm.score_head.to(next(lm.parameters()).device)
    rm.tokenizer, rm.template = tok, meta["template"]
    rm.requires_grad_(False)
    return rm.eval()
