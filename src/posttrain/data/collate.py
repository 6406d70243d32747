"""SFT samples: tokenise with labels, pad or pack into micro-batches, and feed the loop in a seeded, resumable order.

    samples, report = tokenize_sft(convs, tok, "auto", max_length=1024, truncation="right")
    batch = pad_collate(samples[:8], pad_id=tok.pad_token_id)     # input_ids, attention_mask, labels, position_ids
    batch = pack_collate(samples[:8])                            # one row, positions restart per sample
    source = SFTBatches(samples, batch_size=8, grad_accum=4, packing=False, group_by_length=True, seed=0,
                        pad_id=tok.pad_token_id)

Labels are aligned with input_ids (-100 = no loss); the loss shifts them. Padding is labelled -100 by position, never
by comparing ids with the pad id, so a tokenizer whose pad is its EOS still trains the EOS that ends each reply.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from posttrain.data import memo
from posttrain.data.chat import encode_conversation, encode_text
from posttrain.data.order import epoch_order, split_step
from posttrain.data.schema import Conversation, DataError
from posttrain.train.protocols import PADDING

IGNORE = -100
"""Label value that carries no loss."""


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss. labels[0] is never predicted (the loss shifts)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        return sum(t != IGNORE for t in self.labels[1:])


# --------------------------------------------------------------------------------------------------------------
# tokenisation and truncation


def _text_sample(conv: Conversation, tokenizer: Any, counts: Counter) -> Sample:
    """Plain text: every token trained, EOS appended so documents end."""
    ids = encode_text(tokenizer, conv.messages[0].content, counts=counts)
    ids = [*ids, tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids
    return Sample(ids, list(ids))


def _chat_sample(conv: Conversation, tokenizer: Any, template: str, counts: Counter) -> Sample:
    ids, mask = encode_conversation(tokenizer, conv.messages, template, counts=counts)
    return Sample(ids, [t if m else IGNORE for t, m in zip(ids, mask)])


def _keep_right(s: Sample, n: int, bos: int | None) -> Sample:
    return Sample(s.input_ids[:n], s.labels[:n])


def _keep_left(s: Sample, n: int, bos: int | None) -> Sample:
    """The last n tokens, keeping a leading BOS."""
    if bos is not None and s.input_ids[0] == bos:
        return Sample([bos, *s.input_ids[len(s) - n + 1 :]], [IGNORE, *s.labels[len(s) - n + 1 :]])
    return Sample(s.input_ids[len(s) - n :], s.labels[len(s) - n :])


TRUNCATION: dict[str, Callable[[Sample, int, int | None], Sample] | None] = {
    "right": _keep_right,
    "left": _keep_left,
    "drop": None,
}
"""What to do with a sample longer than max_length: keep its start, keep its end, or drop it."""


def tokenize_sft(
    convs: list[Conversation],
    tokenizer: Any,
    template: str = "auto",
    max_length: int = 1024,
    truncation: str = "right",
) -> tuple[list[Sample], dict[str, int]]:
    """Conversations -> Samples with assistant-only labels (text-format samples train every token), and a report:
    {samples, truncated, dropped_too_long, dropped_no_loss, tokens, loss_tokens, end_markers_stripped,
    end_markers_mapped} (the last two: end-of-text markers written as text, see `posttrain.data.markers`)."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {' | '.join(TRUNCATION)}, got {truncation!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    k = memo.key(convs, tokenizer, template, max_length, truncation)
    done = memo.get(k)
    if done is None:
        with warnings.catch_warnings(record=True) as said:  # kept, to be said again on every memo hit
            warnings.simplefilter("always")
            samples, report = _tokenize_all(convs, tokenizer, template, max_length, truncation)
        done = (samples, report, [(w.message, w.category) for w in said])
        memo.put(k, done)
    samples, report, said = done
    for message, category in said:
        warnings.warn(message, category, stacklevel=2)
    return list(samples), dict(report)


def _tokenize_all(
    convs: list[Conversation], tokenizer: Any, template: str, max_length: int, truncation: str
) -> tuple[list[Sample], dict[str, int]]:
    cut = TRUNCATION[truncation]
    report = dict(samples=0, truncated=0, dropped_too_long=0, dropped_no_loss=0, tokens=0, loss_tokens=0)
    out, no_loss, markers = [], [], Counter(end_markers_stripped=0, end_markers_mapped=0)
    for i, conv in enumerate(convs):
        text = conv.meta.get("format") == "text"
        s = (
            _text_sample(conv, tokenizer, markers)
            if text
            else _chat_sample(conv, tokenizer, template, markers)
        )
        if len(s) > max_length:
            if cut is None:
                report["dropped_too_long"] += 1
                continue
            s = cut(s, max_length, tokenizer.bos_token_id)
            report["truncated"] += 1
        if s.loss_tokens == 0:
            no_loss.append(i)
            continue
        out.append(s)
        report["tokens"] += len(s)
        report["loss_tokens"] += s.loss_tokens
    report["samples"], report["dropped_no_loss"] = len(out), len(no_loss)
    report.update(markers)
    if no_loss:
        warnings.warn(
            f"dropped {len(no_loss)} sample(s) with no assistant tokens left to train on (after "
            f"truncation={truncation!r}, max_length={max_length}); first indices: {no_loss[:10]}",
            stacklevel=2,
        )
    return out, report


# --------------------------------------------------------------------------------------------------------------
# collation


def pad_collate(samples: list[Sample], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Rows padded to the longest. Pads: attention 0, label -100; position ids count real tokens only."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be left or right, got {side!r}")
    T = max(len(s) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), T), dtype=torch.long)
    for i, s in enumerate(samples):
        o = T - len(s) if side == "left" else 0
        ids[i, o : o + len(s)] = torch.tensor(s.input_ids, dtype=torch.long)
        labels[i, o : o + len(s)] = torch.tensor(s.labels, dtype=torch.long)
        mask[i, o : o + len(s)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0.. on real tokens, 0 on left pads
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": position_ids}


def pack_collate(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """All samples in one (1, sum T) row without padding. Position ids restart at 0 per sample and there is no
    attention_mask, so transformers detects the packed sequences from the positions and blocks cross-sample
    attention; each sample's first label is -100 so no sample is trained to predict from the previous one."""
    ids, labels, positions = [], [], []
    for s in samples:
        ids += s.input_ids
        labels += [IGNORE, *s.labels[1:]]
        positions += range(len(s))
    row = lambda xs: torch.tensor([xs], dtype=torch.long)  # noqa: E731
    return {"input_ids": row(ids), "labels": row(labels), "position_ids": row(positions)}


# --------------------------------------------------------------------------------------------------------------
# the batch source


class SFTBatches:
    """BatchSource over Samples: a new seeded order of optimiser steps every epoch (`posttrain.data.order`), each step
    `batch_size * grad_accum * world_size` samples cut into micro-batches; rank r of W trains micro-batches
    r * grad_accum ... (r + 1) * grad_accum - 1, so the W ranks together see what one process with grad_accum * W
    would (and what one process with batch_size * W would). Cycles through epochs; `state_dict` = {epoch, position}
    resumes exactly. A rank left without samples in a short last step trains a PADDING micro-batch (weight 0)."""

    def __init__(
        self,
        samples: list,
        batch_size: int,
        grad_accum: int = 1,
        packing: bool = False,
        group_by_length: bool = True,
        seed: int = 0,
        pad_id: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not samples:
            raise DataError("no samples to train on")
        if batch_size < 1 or grad_accum < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, grad_accum >= 1, 0 <= rank < world_size; got {batch_size}, "
                f"{grad_accum}, {rank}, {world_size}"
            )
        self.samples, self.batch_size, self.grad_accum = samples, batch_size, grad_accum
        self.packing, self.group_by_length, self.seed, self.pad_id = packing, group_by_length, seed, pad_id
        self.rank, self.world_size = rank, world_size
        self.lengths = [self.length(s) for s in samples]
        self.epoch, self.position = 0, 0
        self._order = self._epoch(0)

    def length(self, sample) -> int:
        """What grouping by length sorts on."""
        return len(sample)

    def _epoch(self, epoch: int) -> list[list[int]]:
        step_size = self.batch_size * self.grad_accum * self.world_size
        return epoch_order(self.lengths, step_size, self.seed, epoch, self.group_by_length)

    def steps_per_epoch(self) -> int:
        return len(self._order)

    def _collate(self, batch: list[int]) -> dict[str, torch.Tensor]:
        chosen = [self.samples[i] for i in batch]
        return pack_collate(chosen) if self.packing else pad_collate(chosen, self.pad_id)

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        if self.position >= self.steps_per_epoch():
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch(self.epoch)
        step = self._order[self.position]
        self.position += 1
        parts = split_step(step, self.grad_accum * self.world_size)
        mine = [p for p in parts[self.rank * self.grad_accum : (self.rank + 1) * self.grad_accum] if p]
        if not mine:  # fewer samples than ranks in this step: a stand-in that counts for nothing
            return [{**self._collate(step[:1]), PADDING: True}]
        return [self._collate(p) for p in mine]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch(self.epoch)
