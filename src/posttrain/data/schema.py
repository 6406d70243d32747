"""The project's data schema: conversations for SFT, preferences and rankings for reward models and DPO.

On disk every record is one JSON object per line (JSONL):

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}], "meta": {...}}
    {"prompt": [...messages...], "chosen": [...], "rejected": [...], "meta": {...}}
    {"prompt": [...messages...], "responses": ["...", "..."], "ranking": [2, 0, 1], "meta": {...}}

`ranking` lists response indices best first. `meta` is free-form (source, task, phrasing, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import UserError

ROLES = ("system", "user", "assistant")


class DataError(UserError, ValueError):
    """Bad input data; the message names file, line and field."""


def where(path: str | None, line: int | None, fld: str | None = None) -> str:
    """'data.jsonl:12 field messages[1].role' style location prefix for error messages."""
    loc = str(path or "<data>")
    if line is not None:
        loc += f":{line}"
    if fld:
        loc += f" field '{fld}'"
    return loc


@dataclass
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.meta:
            out["meta"] = self.meta
        return out

    @property
    def prompt(self) -> list[Message]:
        """Messages before the last assistant reply."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]


@dataclass
class Preference:
    """One comparison: the same prompt, a preferred and a dispreferred assistant continuation."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": [m.to_dict() for m in self.chosen],
            "rejected": [m.to_dict() for m in self.rejected],
        }
        if self.margin is not None:
            out["margin"] = self.margin
        if self.meta:
            out["meta"] = self.meta
        return out


PAIR_MODES = ("all", "best", "best_worst")
"""How a ranking becomes pairs (`Ranking.pairs`)."""


@dataclass
class Ranking:
    """K responses to one prompt, ordered by preference (`ranking[0]` is the index of the best)."""

    prompt: list[Message]
    responses: list[str]
    ranking: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": [m.to_dict() for m in self.prompt],
            "responses": list(self.responses),
            "ranking": list(self.ranking),
        }
        if self.meta:
            out["meta"] = self.meta
        return out

    def pairs(self, which: str = "all") -> list[Preference]:
        """Ordered (better, worse) preferences: "all" K*(K-1)/2 pairs; "best" the best against each other
        response (K-1); "best_worst" the best against the worst (1, UltraFeedback-style binarisation)."""
        if which not in PAIR_MODES:
            raise ValueError(f"pairs must be one of {', '.join(PAIR_MODES)}, got {which!r}")
        r = self.ranking
        if which == "all":
            idx = [(b, w) for i, b in enumerate(r) for w in r[i + 1 :]]
        elif which == "best":
            idx = [(r[0], w) for w in r[1:]]
        else:
            idx = [(r[0], r[-1])] if len(r) > 1 else []
        return [
            Preference(
                prompt=self.prompt,
                chosen=[Message("assistant", self.responses[b])],
                rejected=[Message("assistant", self.responses[w])],
                meta=dict(self.meta),
            )
            for b, w in idx
        ]


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


def messages_from(
    obj: Any, path: str | None = None, line: int | None = None, fld: str = "messages"
) -> list[Message]:
    """Parse a list of {role, content} (OpenAI) or {from, value} (ShareGPT) dicts, or a plain string (one user turn)."""
    if isinstance(obj, str):
        return [Message("user", obj)]
    if not isinstance(obj, list):
        raise DataError(f"{where(path, line, fld)}: expected a list of messages, got {type(obj).__name__}")
    out = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict):
            raise DataError(f"{where(path, line, f'{fld}[{i}]')}: expected an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = normalise_role(role, path, line, f"{fld}[{i}].role")
        if not isinstance(content, str):
            raise DataError(f"{where(path, line, f'{fld}[{i}].content')}: expected a string, got {content!r}")
        out.append(Message(role, content))
    return out


def require_prompt(
    msgs: list[Message], path: str | None, line: int | None, fld: str = "prompt"
) -> list[Message]:
    """`msgs`, refused (DataError naming file, line and field) when no user or assistant turn has any text."""
    if not any(m.content.strip() for m in msgs if m.role != "system"):
        raise DataError(f"{where(path, line, fld)}: empty prompt")
    return msgs


_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


def normalise_role(role: Any, path: str | None = None, line: int | None = None, fld: str = "role") -> str:
    if not isinstance(role, str) or role.strip().lower() not in _ROLE_ALIASES:
        raise DataError(
            f"{where(path, line, fld)}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        )
    return _ROLE_ALIASES[role.strip().lower()]


@dataclass
class PromptRow:
    ids: list[int]
    """Encoded prompt (with generation prompt)."""
    messages: list[dict[str, str]] | None = None
    """The prompt as messages (None for raw token prompts)."""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """Where the prompt came from (file:line), for error messages."""
