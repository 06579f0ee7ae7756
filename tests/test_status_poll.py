"""The kernel status poller: the reader takes readings without ever waiting for the kernel."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time

import pytest
from live_helpers import KernelState, auditctl, kernel_clean

from receiver.kernel import AuditStatus, get_status, set_status
from receiver.netlink import AuditNetlink, NetlinkError
from receiver.statuspoll import SLOW_POLL_S, KernelStatusPoller, StatusReading

__all__ = ["kernel_clean"]  # the fixture is used by name


def status(lost: int = 0, backlog: int = 0) -> AuditStatus:
    return AuditStatus(
        mask=0,
        enabled=1,
        failure=1,
        pid=1,
        rate_limit=0,
        backlog_limit=8192,
        lost=lost,
        backlog=backlog,
        feature_bitmap=0,
        backlog_wait_time=60000,
        backlog_wait_time_actual=0,
    )


def wait_for(poller: KernelStatusPoller, timeout_s: float = 5.0) -> StatusReading:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reading = poller.take()
        if reading is not None:
            return reading
        time.sleep(0.005)
    raise AssertionError("no reading")


def test_take_does_not_wait_for_a_poll_the_kernel_holds() -> None:
    """While a poll is held (as the kernel holds a request when its queue is over the limit), take() returns at once."""
    release = threading.Event()
    calls = 0

    def held_fetch() -> AuditStatus:
        nonlocal calls
        calls += 1
        if calls == 2:
            release.wait(10)
        return status(lost=calls)

    poller = KernelStatusPoller(held_fetch, interval_s=0.01)
    poller.start()
    try:
        assert wait_for(poller).status == status(lost=1)
        deadline = time.monotonic() + 2
        while calls < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        for _ in range(100):
            assert poller.take() is None
        assert time.monotonic() - started < 0.1
        time.sleep(SLOW_POLL_S * 2)
        release.set()
        assert wait_for(poller).status == status(lost=2)
        assert poller.slow_polls == 1
        assert poller.longest_poll_s > SLOW_POLL_S
    finally:
        release.set()
        assert poller.stop()


def test_a_failed_poll_is_a_reading_with_its_error() -> None:
    """A netlink error reaches the reader as the reading's error; polling goes on."""
    results: list[AuditStatus | OSError] = [
        NetlinkError(errno.EPERM, "audit request 1000"),
        status(lost=7),
    ]

    def fetch() -> AuditStatus:
        result = results.pop(0) if results else status(lost=7)
        if isinstance(result, OSError):
            raise result
        return result

    poller = KernelStatusPoller(fetch, interval_s=0.01)
    poller.start()
    try:
        first = wait_for(poller)
        assert first.status is None and isinstance(first.error, NetlinkError)
        assert first.error.errno == errno.EPERM
        assert wait_for(poller).status == status(lost=7)
    finally:
        assert poller.stop()


def test_stop_reports_a_thread_still_held_in_the_kernel() -> None:
    """stop() gives up after its timeout and says so when a poll never returns."""
    release = threading.Event()
    entered = threading.Event()

    def stuck() -> AuditStatus:
        entered.set()
        release.wait(10)
        return status()

    poller = KernelStatusPoller(stuck, interval_s=0.01)
    poller.start()
    assert entered.wait(2)
    try:
        assert poller.stop(timeout_s=0.05) is False
    finally:
        release.set()
    assert poller.stop(timeout_s=2) is True


@pytest.mark.kernel
def test_the_kernel_holds_a_status_poll_but_not_the_reader(kernel_clean: KernelState) -> None:
    """With the audit queue over its limit the real kernel holds AUDIT_GET; only the poll thread waits."""
    holder = AuditNetlink(rcvbuf_bytes=4096)  # registered, never read: the queue overflows
    control = AuditNetlink(rcvbuf_bytes=1 << 20)
    holder.open()
    control.open()
    load: subprocess.Popen[bytes] | None = None
    poller: KernelStatusPoller | None = None
    try:
        auditctl("-b", "16", "--backlog_wait_time", "250")  # 1 s at HZ=250, 0.25 s at HZ=1000
        auditctl("-a", "always,exit", "-F", "arch=b64", "-S", "getppid", "-k", "status-poll")
        set_status(holder, "pid", os.getpid())
        set_status(control, "enabled", 1)
        load = subprocess.Popen([sys.executable, "-c", "import os\nwhile True: os.getppid()"])
        poller = KernelStatusPoller(lambda: get_status(control), interval_s=0.002)
        poller.start()
        slowest_take = 0.0
        deadline = time.monotonic() + 20
        while poller.slow_polls == 0 and time.monotonic() < deadline:
            started = time.monotonic()
            poller.take()
            slowest_take = max(slowest_take, time.monotonic() - started)
            time.sleep(0.001)
        assert poller.slow_polls > 0, "the kernel never held an AUDIT_GET with its queue full"
        assert poller.longest_poll_s > SLOW_POLL_S
        assert slowest_take < SLOW_POLL_S
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if poller is not None:
            poller.stop(timeout_s=5)
        found = kernel_clean.settings
        set_status(control, "enabled", found["enabled"])
        set_status(control, "pid", 0)
        auditctl("-d", "always,exit", "-F", "arch=b64", "-S", "getppid", "-k", "status-poll")
        auditctl("-b", str(found["backlog_limit"]))
        auditctl("--backlog_wait_time", str(found["backlog_wait_time"]))
        holder.close()
        control.close()
