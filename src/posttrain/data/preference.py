"""Preference data for reward models and DPO: pairs, hh-rlhf transcripts, K-way rankings; tokenise.

    items = read_preferences("prefs.jsonl")                 # Preference and Ranking records, format auto
    pairs = to_pairs(items)                                 # rankings -> all K(K-1)/2 ordered pairs
    samples, report = tokenize_pairs(pairs, tok, "auto", max_length=1024, prompt_floor=64)
    batch = pair_collate(samples[:8], pad_id=tok.pad_token_id)   # 2B rows: chosen rows, then rejected rows

Collation and the batch source live in `posttrain.data.preference_batches` (re-exported here).

Formats (per record with `auto`):
  pairs    {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages, "margin"?: float}
           (without "prompt", chosen/rejected are whole conversations and their shared prefix is the prompt)
  hh       {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}   (Anthropic hh-rlhf)
  ranking  {"prompt": str | messages, "responses": [str, ...], "ranking": [best index, ..., worst index]}

Checked per record (a DataError names file, line and field): a prompt with no text, a response that is not a string
or a non-empty message list, a `margin` that is not a finite number, a ranking that is not a permutation of response
indices. (An empty reply is allowed: a model that says nothing is a response labellers rank, usually last.) A pair whose chosen equals its rejected (after the
shared prompt is split off; public sets such as hh-rlhf hold a few) teaches nothing: `read_preferences` drops those
and prints how many (and where the first was) on stderr; a file of nothing else is an error.

A prompt's token ids come from `chat.encode_prompt` (one BOS, ends with the generation prompt). A response's
ids are the ids of the whole conversation minus that prefix, up to and including the reply's end-of-turn
token; the prefix is checked, so chosen and rejected always share identical prompt ids.
"""

from __future__ import annotations

import math
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.schema import (  # noqa: F401  (PairSample, RankSample re-exported)
    DataError,
    Message,
    PairSample,
    Preference,
    Ranking,
    RankSample,
    messages_from,
    require_prompt,
    where,
)

FORMATS = ("auto", "pairs", "hh", "ranking")

# ------------------------------------------------------------------------------------------------------------
# parsing


def _assistant(obj: Any, path: str | None, line: int | None, fld: str) -> list[Message]:
    """A response: a plain string is one assistant message; a list is parsed as messages (an empty list is an error;
    an empty reply is a response like any other, and usually the worse one)."""
    msgs = [Message("assistant", obj)] if isinstance(obj, str) else messages_from(obj, path, line, fld)
    if not msgs:
        raise DataError(f"{where(path, line, fld)}: empty response (no messages)")
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
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
        raise DataError(f"{where(path, line, 'margin')}: expected a finite number, got {m!r}")
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
    require_prompt(prompt, path, line, "prompt")
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
    require_prompt(prompt, path, line, "chosen")
    return Preference(prompt, c, r, _margin(rec, path, line), _meta(rec, path, line))


def parse_ranking(rec: dict, path: str | None = None, line: int | None = None) -> Ranking:
    if "prompt" not in rec:
        raise DataError(
            f"{where(path, line, 'prompt')}: missing (a ranking needs prompt, responses and ranking)"
        )
    prompt = require_prompt(messages_from(rec["prompt"], path, line, "prompt"), path, line, "prompt")
    responses, ranking = rec.get("responses"), rec.get("ranking")
    if (
        not isinstance(responses, list)
        or len(responses) < 2
        or not all(isinstance(x, str) for x in responses)
    ):
        raise DataError(f"{where(path, line, 'responses')}: expected a list of at least 2 strings")
    if (
        not isinstance(ranking, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking)
        or sorted(ranking) != list(range(len(responses)))
    ):
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

    items, same = [], []
    for path, line, rec in read_records(source):
        item = parse_record(rec, format, path, line, system_prompt)
        if isinstance(item, Preference) and item.chosen == item.rejected:
            same.append(where(path, line))
        else:
            items.append(item)
    if same and not items:
        raise DataError(f"{same[0]} field 'rejected': the same as chosen, like every pair of {source}")
    if same:
        print(
            f"posttrain: {source}: dropped {len(same)} pair(s) whose chosen equals rejected (first: {same[0]})",
            file=sys.stderr,
        )
    if not items:
        raise DataError(f"{source}: no preference records (the file is empty)")
    return items


def to_pairs(items: list[Preference | Ranking], which: str = "all") -> list[Preference]:
    """Rankings expanded to ordered (better, worse) pairs (`which`: all K(K-1)/2, best vs each other, or
    best vs worst; see `Ranking.pairs`); pairs kept as they are."""
    out: list[Preference] = []
    for it in items:
        out.extend(it.pairs(which) if isinstance(it, Ranking) else [it])
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
class TruncationReport:
    samples: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    end_markers_stripped: int = 0
    """End-of-text markers written as text at the end of a message, removed (`posttrain.data.markers`)."""
    end_markers_mapped: int = 0
    """Such markers inside a message, replaced by the tokenizer's own end-of-text token."""
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
    from posttrain.data.markers import clean_messages

    counts = Counter(end_markers_stripped=0, end_markers_mapped=0)
    p_ids = encode_prompt(tokenizer, prompt, template, counts=counts)
    for r in responses:  # counted here once; response_ids cleans the same text again
        clean_messages(tokenizer, [{"role": m.role, "content": m.content} for m in r], counts)
    report.end_markers_stripped += counts["end_markers_stripped"]
    report.end_markers_mapped += counts["end_markers_mapped"]
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


# re-exported: collation and the batch source used to live here
from posttrain.data.preference_batches import (  # noqa: E402, F401
    ROW_LENGTH,
    PreferenceBatches,
    pad_rows,
    pair_collate,
    ranking_collate,
    shared_prompt_collate,
    shared_row_length,
)
