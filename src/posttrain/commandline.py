"""The command-line edge of every command (training commands, data, eval, generate, chat, merge, bench).

    p = ArgumentParser(prog="posttrain generate")     # a usage error raises UsageError: one line, exit 2
    p.add_argument("--batch-size", type=positive(int), default=16)
    out = output_file(args.out, "--out")              # refuses a directory before any work is done

argparse prints the whole usage block before its error line; here the error is one line that points at --help, and
`posttrain.cli.main` prints it like every other user error (`posttrain.errors`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UsageError

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
"""--dtype values (`posttrain.models.DTYPES` and auto), listed here so that parsing imports no torch."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their line breaks kept), and every option's default after its help, unless it is
    None, false or empty, or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or default is argparse.SUPPRESS or default in ("", [])
        if "%(default)" in text or not action.option_strings or empty:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise UsageError (subcommands made with add_subparsers inherit the class) and
    whose help shows defaults (`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def positive(kind: Callable[[str], float], allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse `type` for numbers > 0 (>= 0 with allow_zero); NaN and inf are refused."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"expected a number {'>=' if allow_zero else '>'} 0, got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__  # what argparse names in "invalid int value"
    return parse


def output_file(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output file: refused (exit 2) when it is a directory or its parent is a file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory (give a file name)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, not a directory")
    return path


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output directory: refused (exit 2) when it, or one of its parents, is a file."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
    return path
