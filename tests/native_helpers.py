"""Shared by the tests of the C code (tests/test_native_*.py): its modules, and this process's RSS."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from auditstream.native import MODE_ENV


def native_module(name: str) -> ModuleType:
    """The C module ``name``; a skip when it is not built, a failure when CI requires it
    (``AUDITSTREAM_NATIVE=1``)."""
    if os.environ.get(MODE_ENV) == "1":
        return importlib.import_module(name)
    module: ModuleType = pytest.importorskip(
        name, reason=f"{name} is not built (pip install -e . with gcc and the Python headers)"
    )
    return module


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
