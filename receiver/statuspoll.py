"""The kernel's audit status, polled on a thread of its own so the reader never sleeps in it.

The kernel penalizes *any* task that sends it an audit netlink request while its record
queue is over the backlog limit ("penalize the sender now" in ``audit_receive``, in recent
kernels and their stable backports), the audit PID's holder included: the sender
sleeps until kauditd's next pass, for at most ``backlog_wait_time`` (240 s at HZ=250 with
auditd's 60000). An AUDIT_GET from the reading thread at the edge of capacity stopped the
reading (8 ms seen here at 50,000 events/s) while kauditd waited for room in our socket
(HZ/10 per record, then its retry and hold queues, which drop silently on a kernel booted
without audit=1). Here only this thread sleeps; the reader takes the newest reading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from receiver.kernel import AuditStatus

# A poll that takes longer than this was held by the kernel: counted.
SLOW_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class StatusReading:
    """One answer to AUDIT_GET: the status, or why there is none."""

    status: AuditStatus | None
    error: OSError | None


class KernelStatusPoller:
    """Asks ``fetch`` every ``interval_s`` on a daemon thread; ``take()`` never blocks."""

    def __init__(self, fetch: Callable[[], AuditStatus], interval_s: float) -> None:
        self._fetch = fetch
        self._interval_s = interval_s
        self._newest: StatusReading | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.slow_polls = 0  # polls the kernel held for longer than SLOW_POLL_S
        self.longest_poll_s = 0.0
        self._thread = threading.Thread(target=self._run, name="kernel-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self) -> StatusReading | None:
        """The newest reading not taken yet, or None."""
        with self._lock:
            reading, self._newest = self._newest, None
        return reading

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop polling; False if the thread is still held in the kernel (it is a daemon)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            status: AuditStatus | None = None
            error: OSError | None = None
            try:
                status = self._fetch()
            except OSError as err:  # NetlinkError included
                error = err
            seconds = time.monotonic() - started
            self.longest_poll_s = max(self.longest_poll_s, seconds)
            if seconds > SLOW_POLL_S:
                self.slow_polls += 1
            with self._lock:
                self._newest = StatusReading(status, error)
            self._wake.wait(self._interval_s)
            self._wake.clear()
