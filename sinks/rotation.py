"""A buffered, size-rotated output file that never splits a line and counts every loss.

Used by the ``jsonl`` and ``file`` sinks. The caller hands over whole chunks (one
event's line or lines); a chunk is never split across files or writes that can
leave half of it behind:

- Rotation happens between chunks, before a chunk would make the file exceed
  ``max_bytes``: ``PATH.N`` is deleted, ``PATH.i`` becomes ``PATH.i+1``, ``PATH``
  becomes ``PATH.1`` (then ``PATH.1.gz`` when ``compress``; gzip runs in the
  caller's thread, the sink's own fan-out thread, so only that sink waits).
- A failed write(2) on a regular file is undone with ftruncate(2) back to the last
  complete chunk, so a retried write cannot glue two half lines together.
- Every event is accounted in the sink's :class:`SinkStats`: ``sent_events`` once its
  bytes reached the OS, ``discarded_events`` (and ``errors[ERRNO]``) when a write
  failed; then :class:`SinkWriteError` is raised. The next write reopens the file.

``-`` is stdout (fd 1, never closed, no rotation). A FIFO or character device is
written as is, without rotation or fsync; a FIFO is opened at the first write, in
the writer's thread, because opening a FIFO blocks until a reader appears.
A rotation that fails (rename error) is counted as ``errors["rotate"]``, logged,
and writing goes on in the current file, which then rotates again one
``max_bytes`` later. New files are created mode 0600: audit data is sensitive.
An existing file whose last line is unfinished (no final newline: a writer killed
mid-line) gets a newline before the first chunk written to it, so the torn line stays
alone and every line written after it is whole; a warning names the file
(``errors["unfinished_line"]``). That newline counts against ``max_bytes`` like our own
bytes (if it does not fit, the file rotates first and gets it there): only a file that was
already ``max_bytes`` or more when opened ends up larger.
Stdout whose reader exited (EPIPE) is gone for good: :attr:`RotatingWriter.output_closed`.
What a regular file has written leaves the page cache once it is on disk
(:mod:`sinks.page_cache`).
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable

from sinks.base import SinkError, SinkStats
from sinks.config import FileOutputConfig
from sinks.page_cache import WrittenPages

log = logging.getLogger(__name__)

_FILE_MODE = 0o600
_GZIP_LEVEL = 6  # level 9 costs ~3x the CPU for a few per cent on JSON lines


class SinkWriteError(SinkError):
    """Delivery failed; the sink has already counted the error and the events lost."""


def errno_name(err: OSError) -> str:
    """``EPIPE`` for a broken pipe; the exception class name when there is no errno."""
    if err.errno is not None:
        return errno.errorcode.get(err.errno, f"errno{err.errno}")
    return type(err).__name__


class RotatingWriter:
    """Append chunks to ``output.path``, buffered, rotated and accounted in ``stats``.

    The events a pipe took before a write failed (its reader exited) count as sent:
    ``events_in(data)``, when given, says how many whole events ``data`` (a start of what
    was written) holds; otherwise the writer counts the chunks that went out whole."""

    def __init__(
        self,
        sink_name: str,
        output: FileOutputConfig,
        stats: SinkStats,
        events_in: Callable[[bytes], int] | None = None,
    ) -> None:
        self._name = sink_name
        self._events_in = events_in
        self._output = output
        self._stats = stats
        self._path = output.path
        self._fd: int | None = None
        self._size = 0
        self._pages: WrittenPages | None = None  # a regular file's page cache
        self._buffer = bytearray()
        self._pending_events = 0
        # A pipe's buffered chunks, without events_in: (end offset, events), to count the
        # events its reader took whole before it left.
        self._chunk_ends: list[tuple[int, int]] | None = None
        self._newline_due = False  # the file ends in an unfinished line: end it first
        self._warned_unfinished = False
        self.output_closed = False  # stdout's reader exited: nothing written can arrive
        self._is_stdout = output.path == "-"
        self._is_fifo = False
        self._is_regular = False
        if not self._is_stdout:
            self._inspect_and_open()
        self._rotates = self._is_regular and output.max_bytes > 0
        if not self._is_regular and events_in is None:
            self._chunk_ends = []

    @property
    def path(self) -> str:
        """The path written to (``-`` for stdout)."""
        return self._path

    def _inspect_and_open(self) -> None:
        try:
            mode = os.stat(self._path).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        except OSError as err:
            raise SinkError(f"sink {self._name}: cannot use {self._path}: {err.strerror}") from err
        self._is_fifo = stat.S_ISFIFO(mode)
        self._is_regular = stat.S_ISREG(mode)
        if self._is_fifo:
            return  # opened lazily: open(2) on a FIFO waits for a reader
        try:
            self._open()
        except OSError as err:
            raise SinkError(f"sink {self._name}: cannot open {self._path}: {err.strerror}") from err

    def _open(self) -> int:
        if self._is_stdout:
            self._fd = 1
            return 1
        flags = os.O_WRONLY | os.O_CLOEXEC
        if not self._is_fifo:
            flags |= os.O_APPEND | os.O_CREAT
        fd = os.open(self._path, flags, _FILE_MODE)
        self._fd = fd
        self._size = os.fstat(fd).st_size if self._is_regular else 0
        self._pages = WrittenPages(self._size) if self._is_regular else None
        self._newline_due = self._size > 0 and self._ends_unfinished()
        return fd

    def _ends_unfinished(self) -> bool:
        """The regular file's last byte is not a newline (read through a read-only fd: ours
        is write-only). Logged and counted once per writer."""
        try:
            reader = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                last = os.pread(reader, 1, self._size - 1)
            finally:
                os.close(reader)
        except OSError as err:  # unreadable (e.g. mode 0200): append as before
            log.warning(
                "sink %s: cannot check that %s ends in a whole line: %s",
                self._name,
                self._path,
                err.strerror,
            )
            return False
        if last in (b"\n", b""):
            return False
        if not self._warned_unfinished:
            self._warned_unfinished = True
            self._stats.error("unfinished_line")
            log.warning(
                "sink %s: %s ends in an unfinished line (no final newline: a writer stopped "
                "mid-line?); ending it with a newline, so it stays alone on its line",
                self._name,
                self._path,
            )
        return True

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd != 1:
            try:
                os.close(fd)
            except OSError as err:
                log.warning("sink %s: closing %s: %s", self._name, self._path, err.strerror)

    def append(self, chunk: bytes, events: int = 1) -> None:
        """Buffer one whole chunk holding ``events`` events; write when the buffer is full."""
        if self._rotates:
            used = self._used_bytes()
            if used > 0 and used + len(chunk) > self._output.max_bytes:
                try:
                    self._drain()
                except SinkWriteError:
                    self._stats.discarded_events += events  # this chunk never got buffered
                    raise
                self._rotate()
        self._pending_events += events
        if not self._buffer and len(chunk) >= self._output.buffer_bytes:
            # It fills the buffer alone (the jsonl sink's encode_lines makes such chunks):
            # written as it is, not copied into the buffer first.
            if self._chunk_ends is not None:
                self._chunk_ends.append((len(chunk), events))
            self._write_out(chunk)
            return
        self._buffer += chunk
        if self._chunk_ends is not None:
            self._chunk_ends.append((len(self._buffer), events))
        if len(self._buffer) >= self._output.buffer_bytes:
            self._drain()

    def room(self) -> tuple[int, int]:
        """(most, enough): a chunk of at most ``most`` bytes goes in without a rotation; one
        of ``enough`` bytes or more fills the buffer (the last of its lines takes it there)."""
        most = sys.maxsize
        if self._rotates:  # an empty file takes one line of any size: append() alone does that
            most = self._output.max_bytes - self._used_bytes()
        return most, max(1, self._output.buffer_bytes - len(self._buffer))

    def _used_bytes(self) -> int:
        """What the current file holds once the buffer is written: the newline still due
        after a torn last line is written first, so it counts against ``max_bytes`` too."""
        return self._size + int(self._newline_due) + len(self._buffer)

    def flush(self) -> None:
        """Hand everything buffered to the OS (and fsync a regular file when configured)."""
        self._drain()
        if self._output.fsync and self._is_regular and self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as err:
                self._stats.error(errno_name(err))
                raise SinkWriteError(
                    f"sink {self._name}: fsync {self._path}: {err.strerror}"
                ) from err

    def close(self) -> None:
        """Flush and close; stdout stays open."""
        try:
            self.flush()
        finally:
            self._close_fd()

    def _drain(self) -> None:
        if self._buffer:
            self._write_out(self._buffer)
            self._buffer.clear()

    def _write_out(self, data: bytes | bytearray) -> None:
        """Write ``data`` (the buffer, or a chunk that fills it alone) and count the pending
        events sent; on an error, :meth:`_fail` counts them discarded and raises."""
        size_before = self._size
        done = 0
        try:
            fd = self._fd if self._fd is not None else self._open()
            size_before = self._size  # _open() learnt the size of a reopened file
            if self._newline_due:  # before our first chunk: the torn line stays alone
                os.write(fd, b"\n")
                self._newline_due = False
                self._size += 1
                size_before = self._size
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                done += written
            view.release()
        except OSError as err:
            self._fail(err, size_before, bytes(data[:done]) if done else b"")
        self._size += len(data)
        self._stats.sent_events += self._pending_events
        self._pending_events = 0
        if self._chunk_ends:
            self._chunk_ends.clear()
        if self._pages is not None:
            self._pages.written(fd, self._size)  # what is on disk leaves the page cache

    def _fail(self, err: OSError, size_before: int, delivered: bytes = b"") -> None:
        lost = self._pending_events
        if delivered and not self._is_regular:  # a pipe's reader got these
            if self._events_in is not None:
                taken = self._events_in(delivered)
            else:
                ends = self._chunk_ends or []
                taken = sum(events for end, events in ends if end <= len(delivered))
            taken = min(lost, taken)
            self._stats.sent_events += taken
            lost -= taken
        if self._chunk_ends:
            self._chunk_ends.clear()
        if self._is_stdout and err.errno == errno.EPIPE:
            self.output_closed = True
        self._buffer = bytearray()  # a memoryview may still pin the old one
        self._pending_events = 0
        self._stats.discarded_events += lost
        self._stats.error(errno_name(err))
        if self._is_regular and self._fd is not None:
            try:  # drop a partly written chunk so the next write starts on a line boundary
                os.ftruncate(self._fd, size_before)
            except OSError as trunc_err:
                log.warning("sink %s: truncate %s: %s", self._name, self._path, trunc_err)
        self._close_fd()
        raise SinkWriteError(
            f"sink {self._name}: writing {self._path} failed: {err.strerror} "
            f"({errno_name(err)}); {lost} events discarded"
        ) from err

    def _rotate(self) -> None:
        if self._newline_due and self._fd is not None:
            try:  # the torn line ends here too: `cat PATH.1 PATH` must not glue it to ours
                os.write(self._fd, b"\n")
                self._newline_due = False
            except OSError as err:
                self._stats.error(errno_name(err))
                log.warning("sink %s: ending %s's last line: %s", self._name, self._path, err)
        self._close_fd()
        try:
            rotate_files(self._path, self._output.keep_files, self._output.compress)
        except OSError as err:
            self._stats.error("rotate")
            log.error("sink %s: rotating %s failed: %s", self._name, self._path, err)
        self._size = 0  # after a failed rotation, retry one max_bytes later


def rotated_name(path: str, index: int, compressed: bool) -> str:
    """``events.jsonl.3`` or ``events.jsonl.3.gz``."""
    return f"{path}.{index}.gz" if compressed else f"{path}.{index}"


def rotate_files(path: str, keep_files: int, compress: bool) -> None:
    """Shift ``PATH.i`` to ``PATH.i+1``, ``PATH`` to ``PATH.1``; keep at most ``keep_files``."""
    _remove_beyond(path, keep_files - 1)  # PATH.keep_files is shifted out next
    if keep_files == 0:
        os.unlink(path)
        return
    for index in range(keep_files - 1, 0, -1):
        for compressed in (False, True):
            source = rotated_name(path, index, compressed)
            if os.path.lexists(source):
                os.replace(source, rotated_name(path, index + 1, compressed))
    first = rotated_name(path, 1, False)
    os.replace(path, first)
    if compress:
        _gzip_file(first, rotated_name(path, 1, True))


def _remove_beyond(path: str, last_kept: int) -> None:
    """Delete ``PATH.N`` and ``PATH.N.gz`` for N > last_kept (also leftovers of older configs)."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.([0-9]+)(\.gz)?")
    for entry in os.scandir(directory or "."):
        match = pattern.fullmatch(entry.name)
        if match and int(match.group(1)) > last_kept:
            os.unlink(entry.path)


def _gzip_file(source: str, target: str) -> None:
    temporary = target + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    with (
        open(fd, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL) as packed,
        open(source, "rb") as plain,
    ):
        shutil.copyfileobj(plain, packed, 1 << 20)
    os.replace(temporary, target)
    os.unlink(source)
