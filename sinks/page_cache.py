"""What a file sink has written leaves the page cache once it is on disk.

An archive is written once and read back rarely (a restarted tree keeper reads its tail,
``tail -f`` reads what was just written), so its pages in the page cache only push out
what other programs use, and a busy host's archive grows by gigabytes a day. Every
``STEP_BYTES`` written, :class:`WrittenPages` starts the writeback of that step
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``: it does not wait for it) and drops from the
cache what it sent to disk two steps before (``posix_fadvise(POSIX_FADV_DONTNEED)``), so
the newest two to three steps stay cached. Dropping only what went to disk a step earlier
keeps the drop from writing back dirty pages in the writer's thread (which made a plain
``POSIX_FADV_DONTNEED`` cost more than it saved, twenty-eighth pass). The pages freed are
the next ones the writer's own writes take: on a VM whose host takes back the guest's free
memory, a page of new page cache costs ~9 µs to fault in from the host, and a writer that
reuses its pages does not pay it (docs/performance.md, twenty-ninth pass).

Both calls are hints: where one fails (a file system without them, not Linux) writing goes
on as before, the cache kept.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

STEP_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """glibc's sync_file_range (Python has none), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC = _sync_file_range()
_DROP = getattr(os, "posix_fadvise", None)


class WrittenPages:
    """The page cache of one file written by appending, from ``size`` bytes on."""

    def __init__(self, size: int) -> None:
        self.synced_to = size  # writeback started up to here
        self.dropped_to = size  # dropped from the cache up to here
        self.enabled = _SYNC is not None and _DROP is not None

    def written(self, fd: int, end: int) -> None:
        """The file now ends at ``end``: start the writeback of what was written since the
        last call, and drop what was sent to disk before the call before."""
        if not self.enabled or end - self.synced_to < STEP_BYTES:
            return
        start, self.synced_to = self.synced_to, end
        assert _SYNC is not None and _DROP is not None
        if _SYNC(fd, start, end - start, _SYNC_FILE_RANGE_WRITE) != 0:
            self.enabled = False  # not on this file system: keep the cache, as without it
            return
        drop_end = start - STEP_BYTES
        if drop_end > self.dropped_to:
            try:
                _DROP(fd, self.dropped_to, drop_end - self.dropped_to, os.POSIX_FADV_DONTNEED)
            except OSError:
                self.enabled = False
                return
            self.dropped_to = drop_end
