"""The messages of any record posttrain reads, whatever its format: what `data stats` and `data filter` look at.

msgs = record_messages(rec, "data.jsonl", 12)   # preference records: prompt + chosen; rankings: the best reply
"""

from __future__ import annotations

from posttrain.data.preference import parse_record
from posttrain.data.readers import FORMATS, detect_format
from posttrain.data.schema import Message, Ranking


def record_messages(rec: dict, path: str, line: int) -> list[Message]:
    """The messages of any record posttrain reads (every format above, preference pairs with the chosen reply,
    rankings with the best one), checked: a bad record is a DataError naming file, line and field."""
    if "chosen" in rec or {"responses", "ranking"} <= set(rec):
        item = parse_record(rec, "auto", path, line)
        if isinstance(item, Ranking):
            return [*item.prompt, Message("assistant", item.responses[item.ranking[0]])]
        return [*item.prompt, *item.chosen]
    return FORMATS[detect_format(rec, path, line)](rec, path, line)
