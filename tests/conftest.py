"""Shared fixtures: where the corpus is, and the guard that kernel tests put back what they changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import AUDITD, AuditdDaemon, KernelState, LiveRun, kernel_clean

__all__ = ["kernel_clean"]  # a fixture the auditd fixture below uses

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


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def runs() -> Iterator[list[LiveRun]]:
    """`auditstream run` children of a test; each is killed (as a group) if still alive."""
    made: list[LiveRun] = []
    yield made
    for run in made:
        run.kill()


@pytest.fixture
def auditd(kernel_clean: KernelState, tmp_path: Path) -> Iterator[AuditdDaemon]:
    """Debian's auditd holding the audit pid for the test; stopped by pid and enabled flag
    put back."""
    if not AUDITD.exists():
        pytest.skip(f"{AUDITD} (package auditd) is not installed")
    daemon = AuditdDaemon(tmp_path / "auditd")
    try:
        yield daemon.start()
    finally:
        daemon.stop()
