"""Tokenised SFT data remembered within one process, keyed by everything that decides the result.

A sweep or a study calls `posttrain.run.sft.run` several times on the same files (the demo: five PEFT methods on
one 32K-record mixture, about 30 s of tokenising each on two cores). `tokenize_sft` asks this memo first. The key
is a SHA-256 over the conversations' full contents, the tokenizer's serialised definition (vocabulary, merges,
normaliser, pre-tokeniser, added tokens), its special tokens and BOS behaviour, the chat template's source, and
the length settings, so any change to any of them is a miss; a tokenizer without a serialisable backend (a slow
one) is never memoised. It lives in memory only: nothing is written to disk, and a new process starts empty.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from typing import Any

ENTRIES = 4
"""Distinct tokenised sets kept (least recently used dropped first)."""

_MEMO: OrderedDict[str, Any] = OrderedDict()


def key(convs: list, tokenizer: Any, template: str, *settings: Any) -> str | None:
    """The memo key, or None when the tokenizer cannot be fingerprinted."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    from posttrain.data.chat import get_template

    with warnings.catch_warnings():  # the fallback warning is the tokenising pass's to give
        warnings.simplefilter("ignore")
        source = get_template(template, tokenizer)
    h = hashlib.sha256()
    special = [
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        getattr(tokenizer, "add_bos_token", None),
        getattr(tokenizer, "add_eos_token", None),
        str(tokenizer.special_tokens_map),
        type(tokenizer).__name__,
    ]
    for part in (backend.to_str(), json.dumps(special), source, json.dumps([str(s) for s in settings])):
        h.update(part.encode())
        h.update(b"\0")
    for conv in convs:
        h.update(repr(conv).encode())
        h.update(b"\0")
    return h.hexdigest()


def get(k: str | None) -> Any:
    if k is None or k not in _MEMO:
        return None
    _MEMO.move_to_end(k)
    return _MEMO[k]


def put(k: str | None, value: Any) -> None:
    if k is None:
        return
    _MEMO[k] = value
    while len(_MEMO) > ENTRIES:
        _MEMO.popitem(last=False)


def clear() -> None:
    _MEMO.clear()
