"""Direct preference optimisation and its relatives: pure losses over sequence log-probs, plus their step.

    logps, lengths = sequence_logps(model, batch)   # (2B,) summed over response tokens: chosen, then rejected
    losses, r_c, r_r = LOSSES["dpo"](PairLogps(...), beta=0.1)

Every loss takes the same `PairLogps` and returns per-pair (losses, chosen rewards, rejected rewards), so the
run picks one from the `LOSSES` table by name.

Speed: one forward serves chosen and rejected (one row [prompt, chosen, rejected] per pair, or 2B rows); only
the hidden states that predict a response token go through the LM head (B*T*V logits would dominate memory
and time otherwise), in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.checks import NON_NEGATIVE, POSITIVE, Check, at_least
from posttrain.data.schema import PAIR_MODES
from posttrain.modeling import lm_forward, sum_per_row, token_logprobs


@dataclass
class DPOArgs:
    """`dpo:` section of `posttrain dpo` configs."""

    loss: Literal["dpo", "ipo", "simpo"] = "dpo"
    """dpo (Rafailov et al. 2023) | ipo (Azar et al. 2023) | simpo (Meng et al. 2024, reference-free)."""
    beta: float = 0.1
    """Inverse temperature (dpo/simpo) or regularisation tau (ipo). SimPO's paper uses 2.0-2.5."""
    label_smoothing: float = 0.0
    """dpo/simpo: probability that a label is flipped (conservative DPO, cDPO)."""
    simpo_gamma: float = 0.5
    """simpo: target reward margin gamma (the loss is -log sigmoid(beta * avg-logp margin - gamma))."""
    rpo_alpha: float = 0.0
    """Weight of a negative log-likelihood term on the chosen response, per token (RPO, Pang et al. 2024,
    "Iterative Reasoning Preference Optimization"): keeps the chosen log-probs from falling with the rejected
    ones. 0: plain loss."""
    pairs: Literal["all", "best", "best_worst"] = "all"
    """How K-way rankings become pairs: all | best (the best against each other) | best_worst."""
    precompute_ref: bool = False
    """Compute reference log-probs once before training (saved in output_dir, reused on resume). Always used
    when peft.method is none (full fine-tuning, or a loaded `adapter:` trained further), where switching
    adapters off would not give the starting policy."""
    ref_model: str | None = None
    """A separate reference model (directory or Hub name); default: the starting policy itself."""
    prompt_floor: int = 64
    """When a pair is too long, the prompt is cut from the left down to this many tokens before the
    responses."""
    share_prompt: bool = True
    """One row [prompt, chosen, rejected] per pair with a 4D attention mask, so the prompt is computed once
    (sdpa attention; ignored for prefix/prompt tuning, other attention kernels and sliding-window models)."""

    checks: ClassVar[dict] = {
        "beta": POSITIVE,
        "label_smoothing": Check(lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
        "simpo_gamma": NON_NEGATIVE,
        "rpo_alpha": NON_NEGATIVE,
        "prompt_floor": at_least(0),
    }


@dataclass
class PairLogps:
    """Sequence log-probs (summed over response tokens) and response lengths, each (B,)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


LossOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _smoothed(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def dpo_loss(lp: PairLogps, beta: float, label_smoothing: float = 0.0, **_) -> LossOut:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]).

    With label_smoothing eps (cDPO, Mitchell 2023): (1 - eps) * that + eps * the same with the pair flipped.
    Rewards are the implicit beta * (log pi - log ref) of each response."""
    chosen = lp.policy_chosen - lp.ref_chosen
    rejected = lp.policy_rejected - lp.ref_rejected
    losses = _smoothed(beta * (chosen - rejected), label_smoothing)
    return losses, beta * chosen.detach(), beta * rejected.detach()


def ipo_loss(lp: PairLogps, beta: float, **_) -> LossOut:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    eq. 17): (h - 1 / (2 tau))^2 with h the difference of the chosen and rejected log-ratios, each averaged
    over its response tokens (the length-normalised form TRL uses, confirmed with the authors); tau = beta."""
    chosen = (lp.policy_chosen - lp.ref_chosen) / lp.chosen_len.clamp(min=1)
    rejected = (lp.policy_rejected - lp.ref_rejected) / lp.rejected_len.clamp(min=1)
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return (
        losses,
        beta * (lp.policy_chosen - lp.ref_chosen).detach(),
        beta * (lp.policy_rejected - lp.ref_rejected).detach(),
    )


def simpo_loss(
    lp: PairLogps, beta: float, simpo_gamma: float = 0.5, label_smoothing: float = 0.0, **_
) -> LossOut:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6):
    -log sigmoid(beta * (avg logp_c - avg logp_r) - gamma). No reference model; rewards are beta * avg
    logp."""
    chosen = beta * lp.policy_chosen / lp.chosen_len.clamp(min=1)
    rejected = beta * lp.policy_rejected / lp.rejected_len.clamp(min=1)
    losses = _smoothed(chosen - rejected - simpo_gamma, label_smoothing)
    return losses, chosen.detach(), rejected.detach()


LOSSES: dict[str, Callable[..., LossOut]] = {"dpo": dpo_loss, "ipo": ipo_loss, "simpo": simpo_loss}
NEEDS_REFERENCE = {"dpo": True, "ipo": True, "simpo": False}


# ------------------------------------------------------------------------------------------------------------
# sequence log-probs with a selective LM head


def sequence_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each sequence's response tokens, number of response tokens), each (num_seqs,) fp32.

    The batch's gather spec (`lp_row`, `lp_pos`, `lp_tok`, `lp_seq`, from `pair_collate` or
    `shared_prompt_collate`) names the hidden state that predicts each response token; only those go through
    the LM head (`posttrain.modeling.lm_forward`, the model's own logits)."""
    out = lm_forward(model, batch, select=(batch["lp_row"], batch["lp_pos"]))  # logits (N, V)
    tok_logps = token_logprobs(out.logits, batch["lp_tok"])  # (N,)
    seq, n = batch["lp_seq"], batch["num_seqs"]
    return sum_per_row(tok_logps, seq, n), sum_per_row(torch.ones_like(tok_logps), seq, n)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def reference_logps(model: nn.Module, batch: dict, ref: str | nn.Module) -> torch.Tensor:
    """Reference sequence log-probs (2B,): `ref` is "initial_policy" (the same model as it was when its adapters
    were created: `posttrain.peft.reference_policy`), "self" (the model as it is now, e.g. the starting policy
    before training) or a separate model."""
    if isinstance(ref, nn.Module):
        return sequence_logps(ref, _to(batch, next(ref.parameters()).device))[0].to(batch["input_ids"].device)
    if ref == "initial_policy":
        from posttrain.peft import reference_policy

        ctx = reference_policy(model)
    elif ref == "self":
        ctx = contextlib.nullcontext()
    else:
        raise ValueError(f"reference must be 'initial_policy', 'self' or a model, got {ref!r}")
    with ctx:
        return sequence_logps(model, batch)[0]


class DPOObjective:
    """What a DPO step needs: policy log-probs for 2B rows in one forward, reference log-probs (precomputed
    in the batch as `ref_logps`, or computed under no_grad), one loss from LOSSES. Units: pairs."""

    name = "dpo"

    def __init__(self, args: DPOArgs, ref: str | nn.Module | None = "initial_policy"):
        if args.loss not in LOSSES:
            raise ValueError(f"dpo.loss must be one of {', '.join(LOSSES)}, got {args.loss!r}")
        if args.pairs not in PAIR_MODES:
            raise ValueError(f"dpo.pairs must be one of {', '.join(PAIR_MODES)}, got {args.pairs!r}")
        self.args, self.ref, self.loss_fn = args, ref, LOSSES[args.loss]

    def units(self, batch: dict) -> int:
        return int(batch["num_pairs"])

    def pair_logps(self, model: nn.Module, batch: dict) -> PairLogps:
        ref = None
        if NEEDS_REFERENCE[self.args.loss]:
            if "ref_logps" in batch:
                ref = batch["ref_logps"].to(batch["input_ids"].device)
            elif self.ref is None:
                raise ValueError("this loss needs reference log-probs: precompute them or give a reference")
            else:
                ref = reference_logps(model, batch, self.ref)
        logps, lengths = sequence_logps(model, batch)
        pc, pr = logps.chunk(2)
        lc, lr = lengths.chunk(2)
        rc, rr = ref.chunk(2) if ref is not None else (None, None)
        return PairLogps(pc, pr, rc, rr, lc, lr)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lp = self.pair_logps(model, batch)
        a = self.args
        losses, r_c, r_r = self.loss_fn(
            lp, beta=a.beta, label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma
        )
        # detached tensors, not floats: the loop sums them and syncs with the device once per step
        metrics = {
            "rewards/chosen": r_c.sum(),
            "rewards/rejected": r_r.sum(),
            "rewards/margins": (r_c - r_r).sum(),
            "rewards/accuracy": (r_c > r_r).float().sum(),
            "logps/chosen": lp.policy_chosen.detach().sum(),
            "logps/rejected": lp.policy_rejected.detach().sum(),
        }
        if a.rpo_alpha:
            nll = -lp.policy_chosen / lp.chosen_len.clamp(min=1)
            losses = losses + a.rpo_alpha * nll
            metrics["nll/chosen"] = nll.detach().sum()
        return losses.sum(), metrics


@torch.no_grad()
def precompute_reference(
    model: nn.Module,
    samples: list,
    pad_id: int,
    batch_size: int = 8,
    ref: str | nn.Module = "self",
    collate: Callable | None = None,
) -> None:
    """Fill `ref_chosen` / `ref_rejected` of every PairSample with the reference's sequence log-probs, in
    place."""
    from posttrain.data.preference import pair_collate

    collate = collate or pair_collate
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = _to(collate(chunk, pad_id), device)
            c, r = reference_logps(model, batch, ref).float().cpu().chunk(2)
            for s, lc, lr in zip(chunk, c.tolist(), r.tolist()):
                s.ref_chosen, s.ref_rejected = lc, lr
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module,
    objective: DPOObjective,
    samples: list,
    pad_id: int,
    batch_size: int = 8,
    collate: Callable | None = None,
) -> dict[str, float]:
    """Mean loss and reward metrics over held-out pairs (no gradients, eval mode)."""
    from posttrain.data.preference import pair_collate

    collate = collate or pair_collate
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    try:
        for i in range(0, len(samples), batch_size):
            batch = _to(collate(samples[i : i + batch_size], pad_id), device)
            loss, metrics = objective.loss(model, batch)
            for k, v in {"loss": loss, **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    finally:
        model.train(was_training)
    return {k: v / len(samples) for k, v in totals.items()}
