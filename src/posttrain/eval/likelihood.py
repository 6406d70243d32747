"""Per-token loss and perplexity on held-out conversations, counted on assistant tokens only.

    out = perplexity(model, tok, convs, template="chatml")   # {"loss": 2.31, "perplexity": 10.1, "tokens": 812, ...}

The loss is the mean negative log-likelihood (nats) over every assistant-reply token (each reply's end-of-turn token
included, as in SFT), summed over the whole file before dividing, so long replies weigh by their length. Perplexity
is exp(loss). The same mask as training (`encode_conversation`), so the number is comparable with the SFT loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from posttrain.data.schema import Conversation, Message
from posttrain.modeling import IGNORE, label_logprobs


def _messages(conv: Conversation | Sequence[Message | dict]) -> list:
    return list(conv.messages) if isinstance(conv, Conversation) else list(conv)


def encode_for_loss(
    tokenizer, convs: Sequence, template: str = "auto", max_length: int = 1024
) -> list[tuple[list[int], list[bool]]]:
    """(ids, mask) per conversation, cut on the right at `max_length`; conversations without assistant tokens left
    in (they add no tokens)."""
    from posttrain.data.chat import encode_conversation

    out = []
    for conv in convs:
        ids, mask = encode_conversation(tokenizer, _messages(conv), template)
        out.append((ids[:max_length], mask[:max_length]))
    return out


@torch.no_grad()
def token_nll(
    model, encoded: Sequence[tuple[list[int], list[bool]]], pad_id: int, batch_size: int = 8
) -> tuple[float, int]:
    """(summed NLL in nats, number of scored tokens) over the masked tokens of every (ids, mask) row."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths, less padding
    total, count = 0.0, 0
    for s in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[s : s + batch_size]]
        T = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        scored = torch.zeros((len(rows), T), dtype=torch.bool)
        for r, (row_ids, row_mask) in enumerate(rows):
            ids[r, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            att[r, : len(row_ids)] = 1
            scored[r, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
        labels = ids.masked_fill(~scored, IGNORE)  # score exactly the masked tokens
        batch = {"input_ids": ids.to(device), "attention_mask": att.to(device), "labels": labels.to(device)}
        lp, _, _ = label_logprobs(model, batch)  # (N,) the model's own log-probs of the scored tokens
        total -= lp.sum().item()
        count += lp.numel()
    return total, count


def perplexity(
    model, tokenizer, convs: Sequence, template: str = "auto", batch_size: int = 8, max_length: int = 1024
) -> dict[str, float]:
    """{"loss", "perplexity", "tokens", "conversations"} of `model` on the assistant tokens of `convs`."""
    if not convs:
        raise ValueError("perplexity needs at least one conversation")
    was_training = model.training
    model.eval()
    try:
        encoded = encode_for_loss(tokenizer, convs, template, max_length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        total, count = token_nll(model, encoded, pad_id, batch_size)
    finally:
        model.train(was_training)
    if count == 0:
        from posttrain.data.schema import DataError

        raise DataError(
            f"no assistant tokens to score within likelihood.max_length={max_length}: every conversation needs an "
            "assistant reply that starts before the limit"
        )
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": count,
        "conversations": len(convs),
    }
