"""audit.log text as a source: files in order (plain or gzip), stdin, optionally followed."""

from __future__ import annotations

import gzip
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger("auditstream.receiver")
_GZIP_MAGIC = b"\x1f\x8b"
READ_HINT = 1 << 20  # bytes of lines per read: few syscalls, bounded memory
# A rotated file is still read this many 0.2 s polls after its last line: a writer that
# reopens its log only when told (logrotate, then a signal) may append to it meanwhile.
ROTATED_QUIET_POLLS = 5


class SourceError(OSError):
    """A file cannot be opened or read; the message names it."""


@dataclass(slots=True)
class FileProgress:
    """How far the source is, for the progress bar."""

    name: str = ""
    done_bytes: int = 0  # compressed bytes for .gz (the file position)
    total_bytes: int = 0  # sum of all file sizes (0 for stdin)


def check_readable(paths: list[str]) -> None:
    """Fail early, before any process starts, on a missing or unreadable file."""
    for path in paths:
        if path == "-":
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror or err}") from err
        if os.path.isdir(path):
            raise SourceError(f"cannot read {path}: is a directory")


def _open(path: str) -> tuple[BinaryIO, BinaryIO]:
    """Return (reader, raw file) — the raw file's position measures progress."""
    if path == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err.strerror or err}") from err
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


class LogSource:
    """Yields lists of raw lines (bytes, newline kept) from the files, in order."""

    def __init__(
        self, paths: list[str], *, follow: bool = False, start: tuple[int, int] = (0, 0)
    ) -> None:
        self.paths = paths or ["-"]
        self.follow = follow
        self.progress = FileProgress()
        self.stop = False
        for path in self.paths:
            if path != "-" and os.path.exists(path):
                self.progress.total_bytes += os.path.getsize(path)
        self._base = 0
        # (file index, offset in its decompressed text) where reading starts (a checkpoint
        # of a restarted receiver) and, after each chunk, where the next one begins.
        self.start = start
        self.position = start
        # Follow mode, while waiting for the file to grow: called every 0.2 s; True stops.
        self.on_idle: Callable[[], bool] | None = None
        self.rotations = 0  # followed file rotated or truncated, and opened again

    def chunks(self) -> Iterator[list[bytes]]:
        first, offset = self.start
        for index, path in enumerate(self.paths):
            if index < first:
                if path != "-" and os.path.exists(path):
                    self._base += os.path.getsize(path)
                continue
            seek_to = offset if index == first else 0
            while True:
                reader, raw = _open(path)
                self.progress.name = path
                self.position = (index, 0)
                replaced = False
                try:
                    if seek_to:
                        reader.seek(seek_to)  # gzip: decompresses up to there
                        self.position = (index, seek_to)
                    last = index == len(self.paths) - 1
                    replaced = yield from self._read(reader, raw, path, last=last)
                except (OSError, EOFError, gzip.BadGzipFile) as err:
                    raise SourceError(f"error reading {path}: {err}") from err
                finally:
                    if raw is not sys.stdin.buffer:
                        self._base += os.fstat(raw.fileno()).st_size
                        reader.close()
                        raw.close()
                if not replaced:
                    break
                # Followed and rotated (or truncated): go on with what the path is now.
                self.rotations += 1
                log.info("%s was rotated or truncated: reading it again from its start", path)
                seek_to = 0

    def _read(
        self, reader: BinaryIO, raw: BinaryIO, path: str, *, last: bool
    ) -> Generator[list[bytes], None, bool]:
        """Yield the file's lines; True when, followed, the path was rotated or truncated
        under us (every line of the old file read): the caller opens it again."""
        pending = b""
        replaced = False
        quiet = 0  # polls without a line since the path was replaced
        while not self.stop:
            lines = reader.readlines(READ_HINT)
            if not lines:
                if self.follow and last and raw is not sys.stdin.buffer:
                    if self.on_idle is not None and self.on_idle():
                        replaced = False  # nothing is opened again
                        break  # told to stop while waiting for more
                    if replaced:
                        quiet += 1
                        if quiet > ROTATED_QUIET_POLLS:
                            break  # the old file is read to its end and stays quiet
                    # Like tail -F: auditd renames audit.log and starts a new one (or a
                    # copytruncate empties it); read what is left of this one, then that.
                    elif _replaced(path, raw):
                        replaced = True
                        continue  # read once more at once: the last lines before the rename
                    time.sleep(0.2)  # follow: wait for auditd to append
                    continue
                break
            quiet = 0
            if pending:
                lines[0] = pending + lines[0]
                pending = b""
            if not lines[-1].endswith(b"\n") and self.follow and not replaced:
                pending = lines.pop()  # an incomplete line being written right now
            if raw is not sys.stdin.buffer and isinstance(raw, io.BufferedReader):
                self.progress.done_bytes = self._base + raw.tell()
                self.position = (self.position[0], reader.tell() - len(pending))
            if lines:
                yield lines
        if pending:
            if raw is not sys.stdin.buffer:
                self.position = (self.position[0], reader.tell())
            yield [pending]
        return replaced and not self.stop


def _replaced(path: str, raw: BinaryIO) -> bool:
    """The path now names another file (rotated), or this one shrank (truncated)."""
    try:
        now = os.stat(path)
    except OSError:
        return False  # between auditd's rename and its new file: look again later
    mine = os.fstat(raw.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or mine.st_size < raw.tell()
