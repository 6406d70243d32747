"""Preference batches: collate tokenised pairs / rankings into model inputs, and the BatchSource over them.

    batch = pair_collate(samples[:8], pad_id)            # 2B rows: chosen rows, then rejected rows
    batch = shared_prompt_collate(samples[:8], pad_id)   # B rows [prompt | chosen | rejected], 4D mask
    batch = ranking_collate(rank_samples, pad_id)        # one row per response, best first
    source = PreferenceBatches(samples, batch_size=8, grad_accum=2, seed=0, pad_id=1, **shard_args())

Under torchrun each rank takes a contiguous share of every optimiser step's global micro-batches, exactly as
`posttrain.data.collate.SFTBatches` does, so W ranks together see what one process with grad_accum * W would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from posttrain.data.collate import SFTBatches
from posttrain.data.schema import DataError, PairSample, RankSample


def pad_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int, side: str = "right") -> dict:
    """Rows prompt+response padded to the batch max. labels = response tokens (-100 elsewhere); position ids
    count real tokens only, so left and right padding give the same positions."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be left or right, got {side!r}")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    labels = torch.full((len(lengths), T), -100, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        o = T - lengths[i] if side == "left" else 0
        ids[i, o : o + lengths[i]] = torch.tensor(p + r, dtype=torch.long)
        labels[i, o + len(p) : o + lengths[i]] = torch.tensor(r, dtype=torch.long)
        mask[i, o : o + lengths[i]] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}


def _pair_extras(batch: dict, samples: list[PairSample]) -> dict:
    batch["margin"] = torch.tensor([s.margin for s in samples], dtype=torch.float32)
    batch["num_pairs"] = len(samples)
    batch["num_seqs"] = 2 * len(samples)
    if all(s.ref_chosen is not None and s.ref_rejected is not None for s in samples):
        refs = [s.ref_chosen for s in samples] + [s.ref_rejected for s in samples]
        batch["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
    return batch


def pair_collate(samples: list[PairSample], pad_id: int, side: str = "right") -> dict:
    """B pairs -> one batch of 2B rows (chosen rows 0..B-1, rejected rows B..2B-1) so one forward serves both.

    The log-prob gather spec says which hidden state predicts which response token of which sequence:
    `lp_row`, `lp_pos`, `lp_tok`, `lp_seq` (each (N,), N = response tokens), sequences 0..B-1 chosen, B..2B-1
    rejected."""
    prompts = [s.prompt_ids for s in samples] * 2
    responses = [s.chosen_ids for s in samples] + [s.rejected_ids for s in samples]
    batch = pad_rows(prompts, responses, pad_id, side)
    targets = batch["labels"][:, 1:]  # token t is predicted by the hidden state at t-1
    rows, pos = (targets != -100).nonzero(as_tuple=True)
    batch.update(lp_row=rows, lp_pos=pos, lp_tok=targets[rows, pos], lp_seq=rows)
    return _pair_extras(batch, samples)


def shared_prompt_collate(samples: list[PairSample], pad_id: int) -> dict:
    """B pairs -> B rows [prompt, chosen, rejected]: the prompt is computed once for both responses.

    The rejected tokens take positions right after the prompt and cannot attend to the chosen tokens, so every
    hidden state equals the one of the separate row prompt+rejected. Needs a custom 4D attention mask
    (`attn_mask_4d`, (B, 1, T, T) bool, True = attend: sdpa attention); pad queries attend to themselves
    only."""
    lens = [(len(s.prompt_ids), len(s.chosen_ids), len(s.rejected_ids)) for s in samples]
    T = max(p + c + r for p, c, r in lens)
    B = len(samples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    mask2d = torch.zeros((B, T), dtype=torch.long)
    mask4d = torch.tril(torch.ones(T, T, dtype=torch.bool)).repeat(B, 1, 1, 1)  # (B, 1, T, T)
    spec: list[list[int]] = [[], [], [], []]  # row, pos, token, seq
    for b, (s, (p, c, r)) in enumerate(zip(samples, lens)):
        if p == 0:
            raise DataError(f"pair {b}: empty prompt; the first response token would have no predictor")
        n = p + c + r
        ids[b, :n] = torch.tensor(s.prompt_ids + s.chosen_ids + s.rejected_ids, dtype=torch.long)
        positions[b, :n] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
        mask2d[b, :n] = 1
        mask4d[b, 0, p + c : n, p : p + c] = False  # rejected does not see chosen
        mask4d[b, 0, n:, :] = False
        mask4d[b, 0, range(n, T), range(n, T)] = True
        c_pos = [p - 1 + j for j in range(c)]
        r_pos = [p - 1] + [p + c - 1 + j for j in range(1, r)]  # the first rejected token follows the prompt
        for pos, toks, seq in ((c_pos, s.chosen_ids, b), (r_pos, s.rejected_ids, B + b)):
            spec[0] += [b] * len(toks)
            spec[1] += pos
            spec[2] += toks
            spec[3] += [seq] * len(toks)
    batch = {"input_ids": ids, "attention_mask": mask2d, "attn_mask_4d": mask4d, "position_ids": positions}
    batch.update(
        {k: torch.tensor(v, dtype=torch.long) for k, v in zip(("lp_row", "lp_pos", "lp_tok", "lp_seq"), spec)}
    )
    return _pair_extras(batch, samples)


def ranking_collate(samples: list[RankSample], pad_id: int, side: str = "right") -> dict:
    """Rankings -> one row per response (each ranking's responses best first, rankings one after another)."""
    prompts = [s.prompt_ids for s in samples for _ in s.responses]
    responses = [r for s in samples for r in s.responses]
    batch = pad_rows(prompts, responses, pad_id, side)
    batch["group_sizes"] = [len(s.responses) for s in samples]
    batch["num_rankings"] = len(samples)
    return batch


def shared_row_length(s: PairSample) -> int:
    return len(s.prompt_ids) + len(s.chosen_ids) + len(s.rejected_ids)


# collate -> length of the longest row a sample makes (what grouping by length should sort on); default `len`
ROW_LENGTH: dict[Callable, Callable[[Any], int]] = {shared_prompt_collate: shared_row_length}


class PreferenceBatches(SFTBatches):
    """BatchSource over tokenised pairs or rankings: seeded shuffling per epoch, optional grouping by length
    (less padding), `grad_accum` micro-batches per rank per optimiser step, exact resume from `state_dict`.
    Stepping, the data order (`posttrain.data.order`), rank sharding and resume are SFTBatches'; only the length
    that grouping sorts on and the collation differ."""

    def __init__(
        self,
        samples: list,
        batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        pad_id: int = 0,
        collate: Callable[[list, int], dict] = pair_collate,
        group_by_length: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not samples:
            raise DataError("no preference samples to train on")
        self.collate, self._row_length = collate, ROW_LENGTH.get(collate, len)
        super().__init__(
            samples,
            batch_size,
            grad_accum,
            group_by_length=group_by_length,
            seed=seed,
            pad_id=pad_id,
            rank=rank,
            world_size=world_size,
        )

    def length(self, sample) -> int:
        return self._row_length(sample)

    def _collate(self, batch: list[int]) -> dict:
        return self.collate([self.samples[i] for i in batch], self.pad_id)


def preference_batches(
    samples: list, train, pad_id: int, collate: Callable[[list, int], dict]
) -> PreferenceBatches:
    """The source a run trains on: sizes, seed and grouping from `train` (a TrainConfig); under torchrun this
    rank's share (`posttrain.train.distributed.shard_args`)."""
    from posttrain.train.distributed import shard_args

    return PreferenceBatches(
        samples,
        train.batch_size,
        train.grad_accum,
        train.seed,
        pad_id,
        collate=collate,
        group_by_length=train.group_by_length,
        **shard_args(),
    )
