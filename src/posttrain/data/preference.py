"""Preference data for reward models and DPO: pairs, hh-rlhf transcripts, K-way rankings; tokenise; collate.

    items = read_preferences("prefs.jsonl")                 # Preference and Ranking records, format auto
    pairs = to_pairs(items)                                 # rankings -> all K(K-1)/2 ordered pairs
    samples, report = tokenize_pairs(pairs, tok, "auto", max_length=1024, prompt_floor=64)
    batch = pair_collate(samples[:8], pad_id=tok.pad_token_id)   # 2B rows: chosen rows, then rejected rows

Formats (per record with `auto`):
  pairs    {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages, "margin"?: float}
           (without "prompt", chosen/rejected are whole conversations and their shared prefix is the prompt)
  hh       {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}   (Anthropic hh-rlhf)
  ranking  {"prompt": str | messages, "responses": [str, ...], "ranking": [best index, ..., worst index]}

A prompt's token ids come from `chat.encode_prompt` (one BOS, ends with the generation prompt). A response's
ids are the ids of the whole conversation minus that prefix, up to and including the reply's end-of-turn
token; the prefix is checked, so chosen and rejected always share identical prompt ids.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.data.schema import DataError, Message, Preference, Ranking, messages_from, where

FORMATS = ("auto", "pairs", "hh", "ranking")

# ------------------------------------------------------------------------------------------------------------
# parsing


def _assistant(obj: Any, path: str | None, line: int | None, fld: str) -> list[Message]:
    """A response: a plain string is one assistant message; a list is parsed as messages."""
    if isinstance(obj, str):
        return [Message("assistant", obj)]
    msgs = messages_from(obj, path, line, fld)
    if not msgs:
        raise DataError(f"{where(path, line, fld)}: empty response")
    return msgs


def split_shared_prefix(
    chosen: list[Message], rejected: list[Message], path: str | None = None, line: int | None = None
) -> tuple[list[Message], list[Message], list[Message]]:
    """Two whole conversations -> (shared prompt ending at a user turn, chosen continuation, rejected
    continuation)."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1].role != "user":  # the prompt ends where the assistant starts replying
        k -= 1
    if k == 0:
        raise DataError(
            f"{where(path, line, 'chosen')}: chosen and rejected share no user turn to use as prompt"
        )
    if k == len(chosen) or k == len(rejected):
        raise DataError(f"{where(path, line, 'chosen')}: no assistant reply after the shared prompt")
    return chosen[:k], chosen[k:], rejected[k:]


def _margin(rec: dict, path: str | None, line: int | None) -> float | None:
    m = rec.get("margin")
    if m is None:
        return None
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise DataError(f"{where(path, line, 'margin')}: expected a number, got {m!r}")
    return float(m)


def _meta(rec: dict, path: str | None, line: int | None) -> dict:
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where(path, line, 'meta')}: expected an object, got {type(meta).__name__}")
    return dict(meta)


def parse_pair(rec: dict, path: str | None = None, line: int | None = None) -> Preference:
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise DataError(f"{where(path, line, key)}: missing (a pair needs prompt, chosen and rejected)")
    chosen = _assistant(rec["chosen"], path, line, "chosen")
    rejected = _assistant(rec["rejected"], path, line, "rejected")
    if "prompt" in rec:
        prompt = messages_from(rec["prompt"], path, line, "prompt")
    else:  # implicit prompt: whole conversations in chosen / rejected
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected, path, line)
    if not prompt:
        raise DataError(f"{where(path, line, 'prompt')}: empty prompt")
    return Preference(prompt, chosen, rejected, _margin(rec, path, line), _meta(rec, path, line))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_turns(
    text: Any, path: str | None = None, line: int | None = None, fld: str = "chosen"
) -> list[Message]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [user 'hi', assistant 'hello']."""
    if not isinstance(text, str):
        raise DataError(
            f"{where(path, line, fld)}: expected an hh-rlhf transcript string, got {type(text).__name__}"
        )
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(
            f"{where(path, line, fld)}: not an hh-rlhf transcript (expected '\\n\\nHuman: ...' turns)"
        )
    return [Message(_HH_ROLE[role], body.strip()) for role, body in zip(parts[1::2], parts[2::2])]


def parse_hh(rec: dict, path: str | None = None, line: int | None = None) -> Preference:
    chosen = hh_turns(rec.get("chosen"), path, line, "chosen")
    rejected = hh_turns(rec.get("rejected"), path, line, "rejected")
    prompt, c, r = split_shared_prefix(chosen, rejected, path, line)
    return Preference(prompt, c, r, _margin(rec, path, line), _meta(rec, path, line))


def parse_ranking(rec: dict, path: str | None = None, line: int | None = None) -> Ranking:
    prompt = messages_from(rec.get("prompt"), path, line, "prompt")
    responses, ranking = rec.get("responses"), rec.get("ranking")
    if (
        not isinstance(responses, list)
        or len(responses) < 2
        or not all(isinstance(x, str) for x in responses)
    ):
        raise DataError(f"{where(path, line, 'responses')}: expected a list of at least 2 strings")
    if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))):
        raise DataError(
            f"{where(path, line, 'ranking')}: expected a permutation of 0..{len(responses) - 1} "
            f"(response indices, best first), got {ranking!r}"
        )
    return Ranking(prompt, list(responses), list(ranking), _meta(rec, path, line))


PARSERS: dict[str, Callable[[dict, str | None, int | None], Preference | Ranking]] = {
    "pairs": parse_pair,
    "hh": parse_hh,
    "ranking": parse_ranking,
}


def detect_format(rec: dict, path: str | None = None, line: int | None = None) -> str:
    if "responses" in rec and "ranking" in rec:
        return "ranking"
    if (
        "chosen" in rec
        and "prompt" not in rec
        and isinstance(rec["chosen"], str)
        and _HH_TURN.match(rec["chosen"])
    ):
        return "hh"
    if "chosen" in rec and "rejected" in rec:
        return "pairs"
    raise DataError(
        f"{where(path, line)}: cannot tell the preference format from keys {sorted(rec)}; "
        "expected prompt/chosen/rejected, hh-rlhf chosen/rejected transcripts, or prompt/responses/ranking"
    )


def parse_record(
    rec: Any,
    fmt: str = "auto",
    path: str | None = None,
    line: int | None = None,
    system_prompt: str | None = None,
) -> Preference | Ranking:
    if fmt not in FORMATS:
        raise DataError(f"unknown preference format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not isinstance(rec, dict):
        raise DataError(f"{where(path, line)}: expected a JSON object, got {type(rec).__name__}")
    item = PARSERS[detect_format(rec, path, line) if fmt == "auto" else fmt](rec, path, line)
    if system_prompt and item.prompt[0].role != "system":
        item.prompt = [Message("system", system_prompt), *item.prompt]
    return item


def read_preferences(
    source: str, format: str = "auto", system_prompt: str | None = None
) -> list[Preference | Ranking]:
    """Every record of `source` (file, comma-separated files, Hub name) as a Preference or a Ranking."""
    from posttrain.data.readers import read_records

    items = [parse_record(rec, format, path, line, system_prompt) for path, line, rec in read_records(source)]
    if not items:
        raise DataError(f"{source}: no preference records")
    return items


def to_pairs(items: list[Preference | Ranking]) -> list[Preference]:
    """Rankings expanded to all K(K-1)/2 ordered (better, worse) pairs; pairs kept as they are."""
    out: list[Preference] = []
    for it in items:
        out.extend(it.pairs() if isinstance(it, Ranking) else [it])
    return out


def holdout(items: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Seeded split into (train, eval); eval gets round(fraction * n) items (at least 1 when fraction > 0)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(items), []
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(fraction * len(items)))
    held = set(idx[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def read_splits(
    data: str,
    format: str = "auto",
    system_prompt: str | None = None,
    eval_data: str | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list, list]:
    """(train, eval) records: eval from `eval_data` when given, else a seeded `eval_fraction` of `data`."""
    if not data:
        raise DataError("no training data: set `data: path/to/prefs.jsonl` (or data=... on the command line)")
    items = read_preferences(data, format, system_prompt)
    if eval_data:
        return items, read_preferences(eval_data, format, system_prompt)
    return holdout(items, eval_fraction, seed)


# ------------------------------------------------------------------------------------------------------------
# tokenisation and truncation


@dataclass
class PairSample:
    """One tokenised comparison. `ref_*`: reference-model sequence log-probs when precomputed."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float = 0.0
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class RankSample:
    """One tokenised ranking; `responses` are already in preference order, best first."""

    prompt_ids: list[int]
    responses: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(r) for r in self.responses)


@dataclass
class TruncationReport:
    samples: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    notes: list[str] = field(default_factory=list)


def response_ids(
    tokenizer,
    prompt: list[Message],
    response: list[Message],
    prompt_ids: list[int],
    template: str = "auto",
    loc: str = "<data>",
) -> list[int]:
    """Ids of `prompt + response` minus the prompt prefix, ending with the reply's last assistant token."""
    from posttrain.data.chat import encode_conversation

    ids, mask = encode_conversation(tokenizer, [*prompt, *response], template)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids:
        raise DataError(
            f"{loc}: the conversation's tokens do not start with the prompt's tokens; the chat template "
            f"{template!r} renders the prompt differently with and without a reply"
        )
    last = max((i for i, m in enumerate(mask) if m), default=-1)
    if last < n:
        raise DataError(f"{loc}: the response has no assistant tokens after the prompt")
    return ids[n : last + 1]


def truncate(
    prompt: list[int],
    responses: list[list[int]],
    max_length: int,
    prompt_floor: int,
    bos_id: int | None = None,
) -> tuple[list[int], list[list[int]], bool, bool]:
    """Fit prompt + longest response into max_length: cut the prompt from the left (keeping a leading BOS)
    down to `prompt_floor` tokens (at most half of max_length), then the responses from the right.
    Returns (prompt, responses, prompt_cut, response_cut)."""
    prompt_floor = min(prompt_floor, max_length // 2)
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, responses, False, False
    budget = max(prompt_floor, max_length - longest)
    prompt_cut = len(prompt) > budget
    if prompt_cut:
        keep_bos = bos_id is not None and prompt[0] == bos_id
        prompt = (
            [prompt[0], *prompt[len(prompt) - budget + 1 :]] if keep_bos else prompt[len(prompt) - budget :]
        )
    room = max_length - len(prompt)
    response_cut = longest > room
    return prompt, [r[:room] for r in responses], prompt_cut, response_cut


def _encode(
    tokenizer,
    prompt: list[Message],
    responses: list[list[Message]],
    template: str,
    max_length: int,
    prompt_floor: int,
    report: TruncationReport,
    loc: str,
) -> tuple[list[int], list[list[int]]]:
    from posttrain.data.chat import encode_prompt

    p_ids = encode_prompt(tokenizer, prompt, template)
    r_ids = [response_ids(tokenizer, prompt, r, p_ids, template, loc) for r in responses]
    p_ids, r_ids, p_cut, r_cut = truncate(p_ids, r_ids, max_length, prompt_floor, tokenizer.bos_token_id)
    report.samples += 1
    report.prompt_truncated += p_cut
    report.response_truncated += r_cut
    return p_ids, r_ids


def tokenize_pairs(
    pairs: list[Preference], tokenizer, template: str = "auto", max_length: int = 1024, prompt_floor: int = 64
) -> tuple[list[PairSample], TruncationReport]:
    report, out = TruncationReport(), []
    for i, p in enumerate(pairs):
        p_ids, (c, r) = _encode(
            tokenizer,
            p.prompt,
            [p.chosen, p.rejected],
            template,
            max_length,
            prompt_floor,
            report,
            f"pair {i}",
        )
        out.append(PairSample(p_ids, c, r, p.margin or 0.0))
    return out, report


def tokenize_rankings(
    rankings: list[Ranking], tokenizer, template: str = "auto", max_length: int = 1024, prompt_floor: int = 64
) -> tuple[list[RankSample], TruncationReport]:
    report, out = TruncationReport(), []
    for i, rk in enumerate(rankings):
        ordered = [[Message("assistant", rk.responses[j])] for j in rk.ranking]
        p_ids, r_ids = _encode(
            tokenizer, rk.prompt, ordered, template, max_length, prompt_floor, report, f"ranking {i}"
        )
        out.append(RankSample(p_ids, r_ids))
    return out, report


# ------------------------------------------------------------------------------------------------------------
# collation


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


class PreferenceBatches:
    """BatchSource over tokenised pairs or rankings: seeded shuffling per epoch, optional grouping by length
    (less padding), `grad_accum` micro-batches per optimiser step, exact resume from `state_dict`."""

    def __init__(
        self,
        samples: list,
        batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        pad_id: int = 0,
        collate: Callable[[list, int], dict] = pair_collate,
        group_by_length: bool = True,
    ):
        if not samples:
            raise DataError("no preference samples to train on")
        self.samples, self.batch_size, self.grad_accum = samples, batch_size, grad_accum
        self.seed, self.pad_id, self.collate, self.group_by_length = seed, pad_id, collate, group_by_length
        self.length = ROW_LENGTH.get(collate, len)
        self.epoch, self.cursor = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        idx = list(range(len(self.samples)))
        rng.shuffle(idx)
        if self.group_by_length:  # sort within large seeded windows, then shuffle whole batches
            window = self.batch_size * 50
            idx = [
                i
                for w in range(0, len(idx), window)
                for i in sorted(idx[w : w + window], key=lambda j: -self.length(self.samples[j]))
            ]
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.group_by_length:
            rng.shuffle(batches)
        return batches

    def steps_per_epoch(self) -> int:
        return -(-len(self._order) // self.grad_accum)

    def next_step(self) -> list[dict] | None:
        if self.cursor >= len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        chunk = self._order[self.cursor : self.cursor + self.grad_accum]
        self.cursor += len(chunk)
        return [self.collate([self.samples[i] for i in b], self.pad_id) for b in chunk]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._epoch_order(self.epoch)
