"""Immutable audit configuration (`auditctl -e 2`): register the PID, touch nothing else.

Locking the real kernel cannot be undone before a reboot, so these tests cannot use the
kernel of the machine that runs them (every later test, and the machine's owner, would
find it locked). Instead the session talks to a stand-in that answers as the kernel does
for a locked configuration (kernel/audit.c: AUDIT_SET of anything but the pid, and rule
changes, fail with EPERM). The unlocked paths of the same code run against the real
kernel in tests/test_kernel_live.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from receiver.kernel import (
    AUDIT_ADD_RULE,
    AUDIT_DEL_RULE,
    AUDIT_GET,
    AUDIT_SET,
    STATUS,
    STATUS_BITS,
    STATUS_FIELDS,
    KernelSession,
)
from receiver.netlink import NetlinkError, NetlinkMessage
from receiver.rules import KernelSettings, Rule, parse_rules

LOCKED_STATUS = dict.fromkeys(STATUS_FIELDS, 0) | {
    "enabled": 2,
    "failure": 1,
    "backlog_limit": 8192,
    "backlog_wait_time": 60000,
}


class LockedKernel:
    """Answers audit requests as a kernel whose audit configuration is locked."""

    def __init__(self) -> None:
        self.status = dict(LOCKED_STATUS)
        self.requests: list[tuple[int, dict[str, int] | bytes]] = []

    def open(self) -> None:
        """Nothing to open: the stand-in has no socket."""

    def close(self) -> None:
        """Nothing to close."""

    def request(
        self, msg_type: int, payload: bytes = b"", *, reply_type: int | None = None,
        multi: bool = False, timeout_s: float = 5.0,
    ) -> list[NetlinkMessage]:  # fmt: skip
        if msg_type == AUDIT_GET:
            body = STATUS.pack(*self.status.values())
            return [NetlinkMessage(AUDIT_GET, 0, 1, body)]
        if msg_type == AUDIT_SET:
            words = dict(zip(STATUS_FIELDS, STATUS.unpack(payload), strict=True))
            self.requests.append((msg_type, words))
            if words["mask"] != STATUS_BITS["pid"]:
                raise NetlinkError(errno.EPERM, "audit request 1001: Operation not permitted")
            self.status["pid"] = words["pid"]
            return []
        self.requests.append((msg_type, payload))
        if msg_type in (AUDIT_ADD_RULE, AUDIT_DEL_RULE):
            raise NetlinkError(errno.EPERM, f"audit request {msg_type}: Operation not permitted")
        raise AssertionError(f"unexpected request {msg_type}")


def _session(tmp_path: Path) -> tuple[KernelSession, LockedKernel]:
    session = KernelSession(state_path=tmp_path / "kernel-state.json")
    kernel = LockedKernel()
    session._conn = kernel  # type: ignore[assignment]
    return session, kernel


def _rules() -> list[Rule]:
    return parse_rules([b"-a always,exit -F arch=b64 -S execve -k exec"], source="test").rules


def test_locked_kernel_gets_only_the_pid(tmp_path: Path) -> None:
    """With enabled 2 the session registers its pid and sends no setting or rule change."""
    session, kernel = _session(tmp_path)
    settings = KernelSettings(enabled=1, backlog_limit=16384, backlog_wait_time=1000)
    session.start(pid=os.getpid(), settings=settings, rules=_rules())
    assert session.immutable
    assert kernel.status["pid"] == os.getpid()
    kinds = [(t, w["mask"] if isinstance(w, dict) else None) for t, w in kernel.requests]
    assert kinds == [(AUDIT_SET, STATUS_BITS["pid"])]
    assert kernel.status["backlog_limit"] == 8192


def test_locked_kernel_restore_only_unregisters(tmp_path: Path) -> None:
    """Stopping puts back only the pid: quiesce and restore try no locked change."""
    session, kernel = _session(tmp_path)
    session.start(pid=os.getpid(), settings=KernelSettings(enabled=1), rules=_rules())
    kernel.requests.clear()
    session.quiesce()
    session.restore()
    assert kernel.status["pid"] == 0
    assert [(t, w["mask"]) for t, w in kernel.requests if isinstance(w, dict)] == [
        (AUDIT_SET, STATUS_BITS["pid"])
    ]
    assert not any(t in (AUDIT_ADD_RULE, AUDIT_DEL_RULE) for t, _ in kernel.requests)
    assert not (tmp_path / "kernel-state.json").exists()


def test_locked_kernel_state_file_lists_no_settings(tmp_path: Path) -> None:
    """The write-ahead state file of a locked session records the pid and nothing else."""
    import json

    session, _ = _session(tmp_path)
    session.start(pid=os.getpid(), settings=KernelSettings(enabled=1), rules=_rules())
    state = json.loads((tmp_path / "kernel-state.json").read_text())
    assert state["settings"] == {} and state["rules"] == []
    assert state["audit_pid"] == os.getpid()
    session.restore()


def test_asking_to_lock_is_refused(tmp_path: Path) -> None:
    """A rule file with `-e 2` is refused: locking would last until reboot."""
    session, kernel = _session(tmp_path)
    kernel.status["enabled"] = 0
    with pytest.raises(ValueError, match="until reboot"):
        session.start(pid=os.getpid(), settings=KernelSettings(enabled=2), rules=[])
    assert kernel.requests == []

