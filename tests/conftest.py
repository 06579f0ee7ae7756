"""Shared fixtures: where the corpus is, and the guard that kernel tests put back what they changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
LOCAL_GOLIBAUDIT = REPO / "tests" / "corpus" / "go-libaudit"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared conformance corpus (../shared/corpus), or skip."""
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS}")
    return CORPUS


def _kernel_audit_state() -> tuple[str, str] | None:
    if os.geteuid() != 0 or shutil.which("auditctl") is None:
        return None
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=False).stdout
    keep = [
        ln
        for ln in status.splitlines()
        if ln.split(" ")[0]
        in ("enabled", "pid", "backlog_limit", "rate_limit", "failure", "backlog_wait_time")
    ]
    rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=False).stdout
    return "\n".join(keep), rules


@pytest.fixture(scope="session", autouse=True)
def kernel_audit_restored() -> Iterator[None]:
    """Every test run leaves the kernel's audit settings and rules as it found them."""
    if os.environ.get("AUDITSTREAM_TEST_SHARED_KERNEL") == "1":
        # A developer machine where others use the audit subsystem at the same time.
        yield
        return
    before = _kernel_audit_state()
    yield
    after = _kernel_audit_state()
    assert before == after, (
        f"kernel audit state changed by the tests:\nbefore={before}\nafter={after}"
    )
