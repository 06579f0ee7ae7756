"""Sleeping until a child process exits, so the supervisor sees an exit at once.

A pidfd (Linux 5.3+) becomes readable when its process exits; select() on the stages'
pidfds with the loop's poll interval as timeout wakes the supervisor at the exit
rather than up to one interval later (which every replay used to wait at its end).
Without pidfds it is a plain sleep, as before.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Iterable


class ExitWatch:
    """Waits for any of a set of child pids to exit, or for a timeout."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self.available = hasattr(os, "pidfd_open")

    def wait(self, pids: Iterable[int], timeout_s: float) -> None:
        """Sleep up to ``timeout_s``; return early once one of ``pids`` has exited.

        Pass only children whose exit has not been seen yet: an exited one's pidfd stays
        readable, so it would end every wait at once."""
        wanted = set(pids)
        for pid in list(self._fds):
            if pid not in wanted:
                os.close(self._fds.pop(pid))
        for pid in wanted - self._fds.keys():
            if not self.available:
                break
            try:
                self._fds[pid] = os.pidfd_open(pid)
            except OSError as err:  # ENOSYS: a kernel before 5.3
                self.available = err.errno != errno.ENOSYS
                break
        if not wanted or len(self._fds) != len(wanted):
            time.sleep(timeout_s)  # some child is not watched: wake on time only
            return
        select.select(list(self._fds.values()), [], [], timeout_s)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
