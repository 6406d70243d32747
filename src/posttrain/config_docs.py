"""Every config key with its type, default and one-line doc, read from the dataclasses themselves: the `--help` of
each training command and the commented YAML of `posttrain config COMMAND`.

    rows = keys(SFTConfig)          # [Key("train.lr", "float", 0.0001, "Peak learning rate."), ...]
    print(help_text(SFTConfig))     # grouped by section, choices spelt out
    print(commented_yaml(SFTConfig))  # every key, a `# doc` line above each; `--config` reads it back

The docs are the string literals written under each field (the convention of this package's configs), found by
parsing the class's source with `ast`, so they live once, next to the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml


@dataclass(frozen=True)
class Key:
    name: str
    """Dotted key, as `key=value` and YAML nesting spell it."""
    type: str
    default: Any
    doc: str


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: the string literal under it} for `cls` and its dataclass bases (a subclass's own doc wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """A type as a reader wants it: `a | b | c` for choices, `list[str]`, `int | None`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args if a is not type(None)) + (
            " | null" if type(None) in args else ""
        )
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def keys(cls: type, instance: Any = None, prefix: str = "") -> list[Key]:
    """Every leaf key of config class `cls` (defaults from `instance`, else a default instance), in field order."""
    obj = instance if instance is not None else cls()
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            section = value if dataclasses.is_dataclass(value) else tp()
            out += keys(tp, section, f"{prefix}{f.name}.")
            continue
        out.append(Key(f"{prefix}{f.name}", type_name(tp), _plain(value), docs.get(f.name, "")))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("...") else text


INTRO = "config keys (--config FILE.yaml and/or key=value; `posttrain config COMMAND` prints a file):"


def help_text(cls: type, width: int = 110, intro: str = INTRO) -> str:
    """The keys of `cls` grouped by section: `  name (type, default D)` then the doc, wrapped and indented."""
    lines: list[str] = [intro]
    section = None
    for k in keys(cls):
        head = k.name.rsplit(".", 1)[0] if "." in k.name else ""
        if head != section:
            section = head
            lines += ["", f"{head}:" if head else "top level:"]
        lines.append(f"  {k.name}  ({k.type}; default {_show(k.default)})")
        if k.doc:
            lines += textwrap.wrap(k.doc, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def commented_yaml(cls: type, title: str = "", instance: Any = None, width: int = 110) -> str:
    """Every key of `cls` as YAML (values from `instance`, else the defaults), each under `# doc (type)` comments;
    `load_config(cls, that file)` gives the same config back."""
    out: list[str] = [f"# {title}", "#"] if title else []
    out += [
        "# Every key with its default. Delete what you do not change; `key=value` on the command line wins.",
        "",
    ]
    _yaml_lines(cls, instance, 0, out, width)
    return "\n".join(out) + "\n"


def _yaml_lines(cls: type, obj: Any, depth: int, out: list[str], width: int) -> None:
    obj = obj if obj is not None else cls()
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    pad = "  " * depth
    for f in dataclasses.fields(cls):
        tp, value, doc = hints[f.name], getattr(obj, f.name), docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            section = value if dataclasses.is_dataclass(value) else tp()
            if doc:
                out += textwrap.wrap(
                    doc, width - len(pad), initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# "
                )
            out.append(f"{pad}{f.name}:")
            _yaml_lines(tp, section, depth + 1, out, width)
            continue
        note = f"{doc} ({type_name(tp)})" if doc else f"({type_name(tp)})"
        out += textwrap.wrap(note, width - len(pad), initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# ")
        out.append(f"{pad}{f.name}: {_show(_plain(value))}")
