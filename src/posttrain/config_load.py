"""Config files and `key=value` overrides -> typed dataclasses, and back: the loader behind `posttrain.config`.

    cfg = load_config(SFTConfig, "run.yaml", ["train.lr=3e-4", "peft.method=lora"])
    data = to_dict(cfg)                  # plain nested dict (YAML / JSON)

Unknown keys are errors that name the nearest valid key; values are checked against the annotated types and each
dataclass's `checks` / `check()`; an error in a file names the file and line of the key. A section with a
`shorthand` field takes a plain value (`model: DIR` is `model: {name: DIR}`), combined with its keys in either order.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from posttrain.errors import UsageError

T = TypeVar("T")


class ConfigError(UsageError, ValueError):
    """A config key or value is wrong; the message names the key (and file, when there is one)."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert a YAML value to the annotated type; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        short = getattr(tp, "shorthand", None)
        if short and not isinstance(value, (dict, list)):
            value = {SCALAR: value}
        if not isinstance(value, dict) or (SCALAR in value and not short):
            shown = value.get(SCALAR, value) if isinstance(value, dict) else value
            raise ConfigError(f"{key}: expected a mapping, got {shown!r}")
        if (
            SCALAR in value
        ):  # the plain value and `name` both given: the later one wins (merge keeps recency order)
            named: dict[str, Any] = {}
            for k, v in value.items():
                named.pop(short if k == SCALAR else k, None)
                named[short if k == SCALAR else k] = v
            value = named
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is typing.Literal:
        return _choice(value, args, key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or SCALAR in value:
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _choice(value: Any, choices: tuple, key: str) -> Any:
    """`value` when it is one of `choices` (a Literal's values), else a ConfigError naming the nearest one."""
    if value in choices:
        return value
    names = [str(c) for c in choices]
    near = difflib.get_close_matches(str(value), names, n=1, cutoff=0.4)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise ConfigError(f"{key}: {value!r} is not one of {' | '.join(names)}{hint}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys raise ConfigError with a suggestion."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        factory = fields[key].default_factory
        if (
            isinstance(value, dict)
            and dataclasses.is_dataclass(hints[key])
            and factory is not dataclasses.MISSING
        ):
            value = merge(to_dict(factory()), value)  # keys not given keep the field's own default (a preset)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    obj = cls(**kwargs)
    check_values(obj, prefix)
    return obj


def check_values(obj: Any, prefix: str = "") -> None:
    """A dataclass's `checks` ({field: Check}) and `check()` (-> [(field, expected)]), as one ConfigError."""
    bad = [
        (name, c.text) for name, c in getattr(type(obj), "checks", {}).items() if not c.ok(getattr(obj, name))
    ]
    if hasattr(obj, "check"):
        bad += obj.check()
    if bad:
        name, expected = bad[0]
        value = obj
        for part in name.split("."):  # a check on a nested field names it dotted ("model.quantization")
            value = getattr(value, part)
        raise ConfigError(f"{prefix}{name}: must be {expected}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


SCALAR = ""
"""The key a section's plain value is kept under when keys of the section are given too (`model=DIR` with
`model.quantization=nf4`); the section's `shorthand` field takes it."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.lr=3e-4', 'peft.method=lora'] -> {'train': {'lr': 0.0003}, 'peft': {'method': 'lora'}}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if p in node and not isinstance(node[p], (dict, list)):
                node[p] = {SCALAR: node[p]}  # `model=DIR model.quantization=nf4`
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        last = parts[-1]
        if isinstance(node.get(last), dict) and not isinstance(value, (dict, list)):
            node[last][SCALAR] = value  # `model.quantization=nf4 model=DIR`
        else:
            node[last] = value
    return out


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `top` wins. A plain value meeting a section (`model: DIR` in the file,
    `model.quantization=nf4` on top, or the reverse) is kept under SCALAR inside it, for the section's shorthand;
    in such a section keys set by `top` move to the end, so that the later of SCALAR and the shorthand field wins."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if isinstance(v, dict) and old is not None and not isinstance(old, (dict, list)):
            old = {SCALAR: old}
        if isinstance(old, dict) and v is not None and not isinstance(v, (dict, list)) and old:
            v = {SCALAR: v}
        if k == SCALAR or SCALAR in out:  # re-inserted last: the later of SCALAR and `name` wins
            out.pop(k, None)
        out[k] = merge(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (optional), apply `key=value` overrides, build `cls`. Errors name the file."""
    data: dict[str, Any] = {}
    text = ""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    from_file = data
    data = merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if not path:
            raise
        key = _error_key(str(e))
        line = _key_line(text, key) if key and _has_key(from_file, key) else None
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {e}") from None


def _error_key(message: str) -> str | None:
    """The dotted key a ConfigError message starts with ('train.lr: ...', "unknown config key 'x.y'")."""
    import re

    m = re.match(r"unknown config key '([\w.]+)'", message) or re.match(r"([\w.]+)(?:\[\d+\])?: ", message)
    return m.group(1) if m else None


def _has_key(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _key_line(text: str, key: str) -> int | None:
    """1-based line of dotted `key` in YAML `text` (None when it cannot be found)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return line
        for k, v in node.value:
            if getattr(k, "value", None) == part:
                line, node = k.start_mark.line + 1, v
                break
        else:
            return line
    return line


def save_config(cfg: Any, path: str | Path) -> None:
    from posttrain.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
