"""`train.host_memory`: glibc accepts the two mallopt settings once per process; elsewhere a quiet False."""

import platform
import sys

import pytest

from posttrain.train import host_memory


def test_keep_freed_host_memory_is_applied_once_and_reports_it(monkeypatch):
    monkeypatch.setattr(host_memory, "_done", None)
    first = host_memory.keep_freed_host_memory()
    assert host_memory.keep_freed_host_memory() is first  # cached: mallopt runs once
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True


def test_no_mallopt_is_a_quiet_false(monkeypatch):
    monkeypatch.setattr(host_memory, "_done", None)
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("no libc")))
    if not sys.platform.startswith("linux"):
        pytest.skip("linux only")
    assert host_memory.keep_freed_host_memory() is False
    monkeypatch.setattr(host_memory, "_done", None)
