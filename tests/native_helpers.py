"""Shared by the tests of the C code (tests/test_native_*.py): its modules, the tally of a
differential comparison, and this process's RSS."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

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


Item = TypeVar("Item")


def tally(compare: Callable[[Item], bool | None], items: Iterable[Item]) -> tuple[int, int]:
    """(taken by C, declined by C) over ``items``: ``compare`` checks C against Python for
    one and says True, False, or None when there is nothing to compare."""
    taken = declined = 0
    for item in items:
        result = compare(item)
        taken += result is True
        declined += result is False
    return taken, declined


def assert_mostly_taken(counts: tuple[int, int], what: str) -> None:
    """A generated log's tally: over 1000 events compared, and C took at least 95 % of them."""
    taken, declined = counts
    total = taken + declined
    assert total > 1000
    assert taken >= 0.95 * total, f"C {what} {taken} of {total} events ({declined} declined)"


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
