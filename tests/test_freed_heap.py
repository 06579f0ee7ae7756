"""The stages keep freed heap memory for reuse instead of faulting it in again each batch."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Ten rounds of what a batch does to the heap: 16 MB in 4 KB blocks (above pymalloc's
# 512 bytes, below glibc's mmap threshold), all freed again. Prints the minor page
# faults of rounds 2..10.
CHURN = """
import json, resource, sys
from auditstream.stage import keep_freed_heap
kept = keep_freed_heap() if sys.argv[1] == "keep" else None
def round_():
    blocks = [bytearray(4096) for _ in range(4096)]
    del blocks
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    round_()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _churn(mode: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], cwd=REPO, env=env, capture_output=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt() tuning is glibc's")
def test_freed_heap_is_reused_without_page_faults() -> None:
    """After keep_freed_heap() repeated 16 MB alloc/free rounds fault nothing in; without it they do."""
    default, kept = _churn("default"), _churn("keep")
    assert kept["kept"] is True
    # 9 rounds x 16 MB = 36,864 pages when each round's heap went back to the kernel.
    assert isinstance(default["faults"], int) and default["faults"] > 9 * 2000, default
    assert isinstance(kept["faults"], int) and kept["faults"] < 500, kept


def test_a_users_malloc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GLIBC_TUNABLES naming malloc settings the stage leaves malloc as the user set it."""
    from auditstream.stage import keep_freed_heap

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert keep_freed_heap() is False
