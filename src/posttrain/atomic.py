"""Files that are either the old version or the whole new one, never half of either.

    with atomic_open(path) as f:          # text, utf-8; written to .NAME.tmp-PID, fsync'd, renamed over path
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with atomic_dir(out_dir) as tmp:      # a whole directory (a model, an adapter), swapped in when complete
        model.save_pretrained(tmp)
    atomic_write_text(path, text)
    atomic_write_json(path, obj)

A writer killed mid-way (exception, SIGKILL, power cut after the rename) leaves the previous file untouched; the
temporary file is removed on an exception and, after a kill, is a hidden `.NAME.tmp-PID` sibling. The parent
directory is fsync'd after the rename so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path) -> None:
    """fsync every file under `directory`, then the directories: before renaming a whole directory into place."""
    directory = Path(directory)
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(directory)


@contextlib.contextmanager
def atomic_dir(out: str | Path, create: bool = True) -> Iterator[Path]:
    """A temporary sibling directory `.NAME.tmp-PID` to write into; on a clean exit it is fsync'd and replaces
    `out` (the old one is moved aside to `.NAME.old-PID` for the instant of the swap, then removed); on an error it
    is removed and `out` is untouched. Only a kill between the two renames leaves `out` missing, with the previous
    one intact in `.NAME.old-PID`. With create=False the temporary path is handed over before it exists (for
    writers such as `save_pretrained` that make their own directory)."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on a clean exit fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    binary = "b" in mode
    f = open(tmp, mode, encoding=None if binary else encoding)  # noqa: SIM115 (closed below, before the rename)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> int:
    """Write one JSON object per line; returns the number of rows."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
