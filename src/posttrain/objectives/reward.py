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

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.checks import NON_NEGATIVE, at_least
from posttrain.modeling import head_weight, label_positions, lm_forward, sum_per_row, token_logprobs


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

    checks: ClassVar[dict] = {
        "head_init_std": NON_NEGATIVE,
        "likelihood_coef": NON_NEGATIVE,
        "prompt_floor": at_least(0),
    }


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
        hidden = head_weight(lm).shape[-1]  # what the trunk outputs (OPT may project it)
        # no bias: Bradley-Terry and Plackett-Luce are shift-invariant (a bias gets no gradient), and transformers'
        # sequence-classification heads have none, so the head saves as their `score`
        self.score_head = nn.Linear(hidden, 1, bias=False)
        std = head_init_std or 1.0 / (hidden + 1) ** 0.5
        nn.init.normal_(self.score_head.weight, std=std)
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
