"""Log-probabilities (and entropies) of given tokens through the LM head a few rows at a time, never holding the
(N, V) logits: what PPO's policy loss, its reference pass and GRPO read for every response token.

    logp, ent = head_token_logprobs(model, hidden, tokens, temperature=1.0, entropy=True)
    # hidden (B, R, H) at the positions that predict tokens (B, R) -> logp (B, R) fp32 with grad, ent (B, R)

Each chunk of rows goes through head + logit transforms + log_softmax + gather inside `torch.utils.checkpoint`,
so the backward recomputes that chunk's logits instead of keeping them: peak memory holds one (rows, V) chunk, not
(N, V) logits, their log-softmax and its gradient (a 16 x 64 x 4096 rollout: three 16 MiB tensors per pass; at
V = 128K and 8K response tokens, 4 GiB each). Small chunks also stay in cache: on the rl-lora workload the
vocabulary-sized elementwise ops took 70 ms each on whole (1024, 4096) tensors. The extra cost is one more LM-head
matmul per chunk in the backward. The numbers equal `token_logprobs(lm_forward(...).logits, tokens)` (tested
against it, with gradients, on the architecture matrix); models whose logits `logits_path` cannot rebuild from
trunk + head get that plain path.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.modeling import apply_transforms, head, head_weight, logits_path

CHUNK_ELEMENTS = 1 << 19
"""Logits per chunk (rows = CHUNK_ELEMENTS // V, at least 1): 2 MiB of fp32."""


def head_token_logprobs(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(token) under softmax(head(hidden) / T) for hidden (..., H) and tokens (...): (logp (...) fp32,
    entropy of each position's distribution (...) without grad, or None). `model` is the CausalLM whose head and
    logit transforms apply; its `logits_path` must be selective (see `posttrain.modeling`)."""
    lm_head, transforms = head(model), logits_path(model).transforms
    shape = tokens.shape
    h, t = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)
    rows = max(1, CHUNK_ELEMENTS // head_weight(model).shape[0])

    def piece(hc: torch.Tensor, tc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = apply_transforms(lm_head(hc).float(), transforms)
        logp_all = (z / temperature if temperature != 1.0 else z).log_softmax(-1)
        lp = logp_all.gather(-1, tc[:, None]).squeeze(-1)
        if not entropy:
            return lp, lp.new_empty(0)
        with torch.no_grad():
            return lp, -(logp_all.exp() * logp_all).sum(-1)

    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    lps, ents = [], []
    for s in range(0, h.shape[0], rows):
        hc, tc = h[s : s + rows], t[s : s + rows]
        lp, ent = checkpoint(piece, hc, tc, use_reentrant=False) if grad else piece(hc, tc)
        lps.append(lp)
        ents.append(ent)
    logp = torch.cat(lps).reshape(shape)
    return logp, (torch.cat(ents).reshape(shape).detach() if entropy else None)


def states_at(model: torch.nn.Module, batch: dict, cols: slice) -> torch.Tensor:
    """The trunk's hidden states (B, C, H) at columns `cols` of `batch`, or, when it holds `packed` rows
    (`posttrain.objectives.group_rows`), gathered from them at the same dense (row, column) places."""
    from posttrain.modeling import lm_forward

    packed = batch.get("packed")
    if packed is None:
        return lm_forward(model, batch).hidden[:, cols]
    return lm_forward(model, packed).hidden[packed["at_rows"], packed["at_cols"]]


def column_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    cols: slice,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs of `tokens` (B, C) predicted at columns `cols` of `batch`, their entropies (or None) and the
    trunk's hidden states there (B, C, H): chunked through the head where `logits_path` allows, else from the
    model's own logits. A batch with `packed` rows (one per group of responses to one prompt) runs those."""
    from posttrain.modeling import lm_forward

    if logits_path(model).selective:
        states = states_at(model, batch, cols)
        logp, ent = head_token_logprobs(model, states, tokens, temperature, entropy)
        return logp, ent, states
    packed = batch.get("packed")
    if packed is None:
        out = lm_forward(model, batch, select=cols)
        states = out.hidden[:, cols]
    else:
        at = (packed["at_rows"], packed["at_cols"])
        out = lm_forward(model, packed, select=at)
        states = out.hidden[at]
    z = out.logits.float() / temperature if temperature != 1.0 else out.logits.float()
    logp_all = z.log_softmax(-1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1).detach() if entropy else None
    return logp, ent, states
