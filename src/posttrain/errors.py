"""The errors a user can cause, and the one place that turns them into one line and an exit code.

    raise UserError(f"{path}:{line}: field 'prompt': empty")          # exit 1: the run cannot go on
    raise UsageError("--dtype must be auto | fp32 | bf16, got 'x'")   # exit 2: the command line is wrong
    yaml = require("yaml", extra="core")                               # a missing optional dependency, named

Every command runs under `posttrain.cli.main`, which calls `report(prog, error)` for these (and for the standard
file errors that carry a file name) and prints no traceback. Anything else is a bug in posttrain and keeps its
traceback. Domain errors (DataError, ConfigError, TrainingError, StoreError) subclass these.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


class UserError(Exception):
    """Bad input or a state the run cannot continue from; the message names file, line and field where known."""

    exit_code = 1


class UsageError(UserError):
    """The command line or config is wrong (exit 2, like argparse)."""

    exit_code = 2


class MissingDependency(UserError):
    """An optional package a feature needs is not installed; the message names the pip extra."""


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingDependency naming `pip install 'posttrain[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what = feature or module
        raise MissingDependency(
            f"{what} needs the package '{module.split('.')[0]}', which is not installed "
            f"(pip install 'posttrain[{extra}]'): {e}"
        ) from None


def describe(error: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an error the user caused, or None for a bug (keep the traceback)."""
    if isinstance(error, UserError):
        return str(error), error.exit_code
    if isinstance(
        error, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
    ):
        name = error.filename or ""
        reason = error.strerror or type(error).__name__
        return (f"{name}: {reason.lower()}" if name else str(error)), 1
    if isinstance(error, UnicodeDecodeError):
        return f"input is not UTF-8 text ({error.reason} at byte {error.start})", 1
    return None


def report(prog: str, error: BaseException) -> int | None:
    """Print `prog: error: message` for a user error and return its exit code; None for anything else."""
    described = describe(error)
    if described is None:
        return None
    message, code = described
    line = "; ".join(" ".join(part.split()) for part in message.splitlines() if part.strip())
    print(f"{prog}: error: {line or type(error).__name__}", file=sys.stderr)
    return code
