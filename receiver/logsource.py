"""audit.log text as a source: files in order (plain or gzip), stdin, optionally followed."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import stat
import sys
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from auditstream.escape import escape
from receiver.event_tail import LINGER_POLL_S, STOP_GRACE_S, EventTail
from receiver.gzip_text import gzip_copy_text, is_gzip_name

log = logging.getLogger("auditstream.receiver")
_GZIP_MAGIC = b"\x1f\x8b"
READ_HINT = 1 << 20  # bytes of lines per read: few syscalls, bounded memory
FOLLOW_POLL_S = 0.2  # follow mode: how often a quiet log is looked at again
# A followed path that cannot be opened (gone, unreadable) is warned about again this often.
TROUBLE_REPEAT_S = 60.0
HEAD_BYTES = 64  # a followed file's first bytes: rewritten ones mean a copytruncate
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip header and checks its trailer
_SALVAGE_BLOCK = 1 << 16  # compressed bytes fed at once when reading up to a damage
# The names a process gives its own descriptors: `replay <(zcat a.gz)` passes /dev/fd/63.
_OWN_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/thread-self/fd)/(\d+)")


class SourceError(OSError):
    """A file cannot be opened or read; the message names it."""


@dataclass(slots=True, frozen=True)
class FileIdentity:
    """A plain file being read, as a position file names it: its device and inode, and its
    first HEAD_BYTES bytes as read (fewer while it was shorter), which tell a copytruncate."""

    device: int
    inode: int
    head: bytes


@dataclass(slots=True, frozen=True)
class DamagedInput:
    """An input file read up to a damage (corrupt or truncated gzip, a read error): the
    lines before it were passed on, the rest of the file is lost."""

    path: str
    cause: str  # gzip_corrupt, gzip_truncated, read_error
    error: str
    read_lines: int  # lines of it passed on (by this receiver)
    read_bytes: int  # bytes of its text passed on (from its start: its offset of the damage)

    def marker_data(self) -> bytes:
        """The marker record's data: what the assembler puts under auditstream.marker."""
        details = {
            "cause": self.cause,
            "file": escape(os.fsencode(self.path)),  # a name is any bytes
            "error": self.error,
            "read_lines": self.read_lines,
            "read_bytes": self.read_bytes,
        }
        return json.dumps(details).encode()


@dataclass(slots=True)
class FileProgress:
    """How far the source is, for the progress bar."""

    name: str = ""
    done_bytes: int = 0  # compressed bytes for .gz (the file position)
    total_bytes: int = 0  # sum of all file sizes (0 for stdin)


def check_readable(paths: list[str], *, follow: bool = False) -> None:
    """Fail early, before any process starts, on a missing or unreadable file.

    Only a regular file is opened: opening a named pipe would wait for its writer, and
    closing it again could lose what the writer had sent (or fail the writer with EPIPE).
    Followed, the last file may not exist yet (auditd creates it): the receiver waits for
    it as tail -F does, and says so.
    """
    for at, path in enumerate(paths):
        if path == "-":
            continue
        if follow and at == len(paths) - 1 and not os.path.lexists(path):
            continue
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise SourceError(f"cannot read {path}: is a directory")
            if stat.S_ISREG(mode):
                with open(path, "rb"):
                    pass
            elif not os.access(path, os.R_OK):
                raise PermissionError(13, os.strerror(13))
        except SourceError:
            raise
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror or err}") from err


def check_position_file(path: str) -> None:
    """Fail early on a position file that cannot be written: a directory, or a directory
    that is missing or read-only (the receiver would only warn at each write)."""
    if os.path.isdir(path):
        raise SourceError(f"position file {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise SourceError(f"position file {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SourceError(f"position file {path}: cannot write in {parent}")


def inherited_fds(paths: list[str]) -> list[int]:
    """The descriptors of this process that ``paths`` name (/dev/fd/N, /proc/self/fd/N):
    the receiver needs them open too (0 included: /dev/stdin is the receiver's stdin)."""
    fds = []
    for path in paths:
        if path == "/dev/stdin":
            fds.append(0)
        elif (found := _OWN_FD_PATH.fullmatch(path)) is not None:
            fds.append(int(found.group(1)))
    return sorted(set(fds))


def rereadable(path: str) -> bool:
    """A regular file: a restarted receiver can open it again and seek to where it was."""
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # gone or unreadable: opening it says so, with its name


def _open(path: str) -> tuple[BinaryIO, BinaryIO]:
    """Return (reader, raw file) — the raw file's position measures progress."""
    if path == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        if _is_gzip(raw):
            return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    except OSError:
        pass  # a read error (EIO) at its start: reading it fails again, and is reported
    return raw, raw


def _is_gzip(raw: BinaryIO) -> bool:
    return bool(raw.peek(2)[:2] == _GZIP_MAGIC)  # type: ignore[attr-defined]


def _damage_cause(error: Exception | None) -> str:
    if isinstance(error, EOFError):
        return "gzip_truncated"
    if isinstance(error, zlib.error | gzip.BadGzipFile):
        return "gzip_corrupt"
    return "read_error"


def _plain_text(raw: io.BufferedReader) -> Generator[bytes, None, Exception | None]:
    """A plain file's bytes from its position, one read(2) at a time: a read error (EIO)
    leaves everything before it read (a short read comes first)."""
    while True:
        try:
            data = raw.read1(_SALVAGE_BLOCK)  # what peek() buffered, then one read(2)
        except OSError as err:
            return err
        if not data:
            return None
        yield data


def _gzip_text(raw: io.BufferedReader) -> Generator[bytes, None, Exception | None]:
    """A gzip file's text from its start, member after member, up to its first damage:
    returns that error (EOFError: truncated), None at a clean end. GzipFile loses what
    the failing read had decompressed; here a block that fails is fed again byte by
    byte from a copy of the decompressor, so every byte before the damage comes out."""
    state = [zlib.decompressobj(_GZIP_WBITS)]
    while block := raw.read1(_SALVAGE_BLOCK):
        before = state[0].copy()
        try:
            texts = _inflate(state, block)
        except zlib.error:
            state[0] = before
            for at in range(len(block)):
                try:
                    texts = _inflate(state, block[at : at + 1])
                except zlib.error as err:
                    return err
                yield from texts
            continue  # (fed byte by byte without an error after all: on with the next)
        yield from texts
    if not state[0].eof:
        return EOFError("Compressed file ended before the end-of-stream marker was reached")
    return None


def _inflate(state: list[zlib._Decompress], data: bytes) -> list[bytes]:
    """Decompress ``data`` with ``state[0]``, which a new gzip member replaces; zero bytes
    between members are padding, as gzip allows."""
    texts = []
    while data:
        if state[0].eof:
            data = data.lstrip(b"\0")
            if not data:
                break
            state[0] = zlib.decompressobj(_GZIP_WBITS)
        texts.append(state[0].decompress(data))
        data = state[0].unused_data if state[0].eof else b""
    return texts


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
        # Follow mode: a stop was asked for; what the file holds now is still read.
        self.draining = False
        # Follow mode: the last lines passed on, and when a stop stops waiting for the rest
        # of the events they began (receiver/event_tail.py).
        self._tail = EventTail()
        self._linger_until: float | None = None
        self.stop_unended_events = 0  # events a stop left unended after STOP_GRACE_S
        # The file now at the followed path, opened as soon as a rotation was seen (so a
        # further rotation cannot take it away before it is read): read after the old one.
        self._successor: tuple[BinaryIO, BinaryIO] | None = None
        self._trouble = _PathTrouble()
        # Files read only up to a damage; each is also passed to on_damaged, in its place
        # between the last lines before the damage and the next file's first.
        self.damaged: list[DamagedInput] = []
        self.on_damaged: Callable[[DamagedInput], None] | None = None
        self._file_lines = 0  # lines of the current file passed on
        # The plain file being read (device, inode) and its first bytes as passed on: what a
        # position file keeps (receiver/checkpoint.py). None for gzip, stdin, a pipe.
        self._file_id: tuple[int, int] | None = None
        self._read_head = b""
        # Followed with a position file: a stop leaves an unfinished last line unread
        # (its position is before it), instead of passing its first part on alone.
        self.resumable = False

    @property
    def reading(self) -> FileIdentity | None:
        """The plain file ``position`` is in, as a position file names it."""
        if self._file_id is None:
            return None
        return FileIdentity(self._file_id[0], self._file_id[1], self._read_head)

    def chunks(self) -> Iterator[list[bytes]]:
        first, offset = self.start
        for index, path in enumerate(self.paths):
            if index < first:
                if path != "-" and os.path.exists(path):
                    self._base += os.path.getsize(path)
                continue
            seek_to = offset if index == first else 0
            if path != "-" and not self.follow and not rereadable(path):
                yield from self._read_pipe(index, path)
                continue
            followed = self.follow and path != "-" and index == len(self.paths) - 1
            while True:
                if self._successor is not None:
                    (reader, raw), self._successor = self._successor, None
                elif followed:
                    opened = self._open_followed(path)
                    if opened is None:
                        break  # stopped while waiting for it
                    reader, raw = opened
                else:
                    reader, raw = _open(path)
                self.progress.name = path
                self.position = (index, 0)
                self._file_lines = 0
                self._note_file(reader, raw, seek_to)
                replaced = False
                failure: Exception | None = None
                try:
                    if seek_to:
                        reader.seek(seek_to)  # gzip: decompresses up to there
                        self.position = (index, seek_to)
                    last = index == len(self.paths) - 1
                    replaced = yield from self._read(reader, raw, path, last=last)
                except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
                    failure = err
                finally:
                    if raw is not sys.stdin.buffer:
                        self._base += os.fstat(raw.fileno()).st_size
                        reader.close()
                        raw.close()
                if failure is not None:
                    yield from self._read_up_to_damage(index, path, failure)
                    break  # the rest of this file is lost: on with the next one
                if not replaced:
                    break
                seek_to = 0  # followed and rotated: on with the new file, from its start
        if self._successor is not None:  # stopped before it was read
            self._successor[0].close()
            self._successor[1].close()
            self._successor = None

    def _read(
        self, reader: BinaryIO, raw: BinaryIO, path: str, *, last: bool
    ) -> Generator[list[bytes], None, bool]:
        """Yield the file's lines; True when, followed, the path was rotated under us (every
        line of the old file read): the caller goes on with ``self._successor``."""
        pending = b""
        followed = self.follow and last and raw is not sys.stdin.buffer
        # Plain followed files: their first bytes tell a copytruncate even when the writer
        # has already written past our position again (the size alone would not).
        regular = followed and reader is raw and stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
        head = _head(raw) if regular else None
        successor_written = False  # the new file has data: the writer has left the old one
        while not self.stop:
            if head is not None:
                old_head = head
                head, truncated = _check_head(raw, head)
                if truncated:
                    # logrotate's copytruncate copied the file before emptying it: what the
                    # writer appended after our last read is in the copy, past our offset.
                    read_to = raw.tell() - len(pending)
                    copy = _copytruncate_copy(path, old_head, read_to)
                    if copy is not None:
                        pending = b""  # the copy holds that line whole, if it was finished
                        yield from self._read_copy(copy, read_to, path)
                    elif pending:
                        self._file_lines += 1
                        yield [pending]  # an unfinished line of the old text: shown as it is
                        pending = b""
                    raw.seek(0)
                    self.position = (self.position[0], 0)
                    self._read_head = b""
                    self.rotations += 1
                    log.info(
                        "%s was truncated (copytruncate): reading it again from its start", path
                    )
            lines = reader.readlines(READ_HINT)
            if not lines:
                if not followed:
                    break
                if self._successor is not None and (successor_written or self.draining):
                    break  # read to its end after the writer moved on: on with the new file
                if self.draining:
                    if self._linger(path):
                        continue  # an event's other records are being written: read them
                    break  # stopping: everything written before the stop is read
                if self.on_idle is not None and self.on_idle():
                    self.draining = True  # read once more to the end, then stop
                    continue
                if self._successor is None:
                    self._successor = self._rotated_to(path, raw)
                # Leave the old file once the new one has data: a single writer (auditd,
                # or one reopening after logrotate's signal) wrote its last line to the
                # old file before, so one more read of it gets them all.
                if self._successor is not None and _has_data(self._successor[1]):
                    successor_written = True
                    continue
                time.sleep(FOLLOW_POLL_S)  # follow: wait for auditd to append
                continue
            if pending:
                lines[0] = pending + lines[0]
                pending = b""
            if not lines[-1].endswith(b"\n") and followed:
                pending = lines.pop()  # an incomplete line being written right now
            if raw.seekable() and raw is not sys.stdin.buffer:
                self.progress.done_bytes = self._base + raw.tell()
                self.position = (self.position[0], reader.tell() - len(pending))
                if len(self._read_head) < HEAD_BYTES:
                    self._note_head(lines)
            else:  # a pipe has no position: count what was passed on (for a damage's report)
                self.position = (self.position[0], self.position[1] + sum(map(len, lines)))
            if lines:
                self._file_lines += len(lines)
                if followed:
                    self._tail.saw(lines)
                yield lines
        if pending and followed and self.resumable and self._successor is None:
            # Stopping while the writer is inside a line: the next follow reads it whole.
            log.info("%s: its unfinished last line is left for the next follow", path)
            pending = b""
        if pending:
            self.position = (self.position[0], self.position[1] + len(pending))
            self._file_lines += 1
            yield [pending]
        return self._successor is not None and not self.stop

    def _linger(self, path: str) -> bool:
        """Stopping at the log's end: True while an event the last lines began has no EOE yet
        and STOP_GRACE_S has not passed since the drain reached the end (after a short
        wait, to read again); False to stop, saying so if an event stays unended."""
        unended = self._tail.unended()
        if not unended:
            return False
        now = time.monotonic()
        if self._linger_until is None:
            self._linger_until = now + STOP_GRACE_S
        if now < self._linger_until:
            time.sleep(LINGER_POLL_S)
            return True
        self.stop_unended_events = len(unended)
        serials = ", ".join(str(serial) for _node, serial in sorted(unended)[:5])
        # Info, not a warning: a record that never gets an EOE (a 13xx record written outside
        # a syscall) is a whole event, and ends up here too.
        log.info(
            "%s: stopping with %d event(s) whose EOE was not written within %.1f s "
            "(serials %s): completed with the records they have",
            path,
            len(unended),
            STOP_GRACE_S,
            serials,
        )
        return False

    def _read_copy(self, copy: str, offset: int, path: str) -> Generator[list[bytes], None, None]:
        """The lines of a copytruncate's copy past ``offset``, where our last read of
        ``path`` ended. The position stays in the old text until the log is read again from
        its start: a position file written meanwhile names the old file, whose copy a
        restart finds (receiver/position.py)."""
        read = 0
        try:
            reader, raw = _open(copy)  # plain, or gzip (logrotate's compress at once)
            with raw, reader:
                reader.seek(offset)  # gzip: decompresses up to there
                while lines := reader.readlines(READ_HINT):
                    read += sum(map(len, lines))
                    self._file_lines += len(lines)
                    yield lines
        except (OSError, EOFError, zlib.error) as err:
            log.warning(
                "%s was truncated (copytruncate): its copy %s could not be read past byte %d "
                "(%s); what the log held after that byte may be missing",
                path, copy, offset + read, getattr(err, "strerror", None) or err,
            )  # fmt: skip
            return
        log.info(
            "%s was truncated (copytruncate): read the %d bytes it held past byte %d from "
            "its copy %s", path, read, offset, copy,
        )  # fmt: skip

    def _note_file(self, reader: BinaryIO, raw: BinaryIO, offset: int) -> None:
        """A file opened, to be read from ``offset``: note what a position file names."""
        self._file_id, self._read_head = None, b""
        if reader is not raw or raw is sys.stdin.buffer:
            return  # gzip (its offset is in the text), stdin
        try:
            st = os.fstat(raw.fileno())
            if stat.S_ISREG(st.st_mode):
                self._file_id = (st.st_dev, st.st_ino)
                if offset:  # resumed past its start: the head a position file matched
                    self._read_head = _head(raw)[: min(offset, HEAD_BYTES)]
        except OSError:
            pass  # (EIO) the read that follows meets it too, and reports it

    def _note_head(self, lines: list[bytes]) -> None:
        """Keep the file's first bytes from the lines just read, if they begin where the
        kept head ends: the head of the text passed on, not of what the file holds now."""
        size = sum(map(len, lines))
        if self.position[1] - size != len(self._read_head):
            return
        for line in lines:
            self._read_head += line[: HEAD_BYTES - len(self._read_head)]
            if len(self._read_head) >= HEAD_BYTES:
                break

    def _rotated_to(self, path: str, raw: BinaryIO) -> tuple[BinaryIO, BinaryIO] | None:
        """The file the path names now, opened, if it is not ``raw``'s (auditd renamed the
        log and started a new one); None while it is the same, gone or unreadable."""
        try:
            now = os.stat(path)
        except OSError as err:  # deleted, or between auditd's rename and its new file
            self._trouble.saw(path, err, "still reading the open file")
            return None
        mine = os.fstat(raw.fileno())
        if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            self._trouble.cleared(path)
            return None
        try:
            opened = _open(path)
        except SourceError as err:
            self._trouble.saw(path, err.__cause__ or err, "still reading the old file")
            return None
        self._trouble.cleared(path)
        self.rotations += 1
        log.info("%s was rotated: reading the new file once the old one is read", path)
        return opened

    def _open_followed(self, path: str) -> tuple[BinaryIO, BinaryIO] | None:
        """Open the followed path, waiting (as tail -F) while it is missing or unreadable;
        None if told to stop meanwhile."""
        while True:
            try:
                opened = _open(path)
            except SourceError as err:
                self._trouble.saw(path, err.__cause__ or err, "waiting for it")
                if self.stop or self.draining or (self.on_idle is not None and self.on_idle()):
                    return None
                time.sleep(FOLLOW_POLL_S)
                continue
            self._trouble.cleared(path)
            return opened

    def _read_pipe(self, index: int, path: str) -> Generator[list[bytes], None, None]:
        """A pipe or FIFO (`<(zcat a.gz)`), read once: through the reader that passes on every
        line before a damage, since it cannot be read again to find them."""
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror or err}") from err
        self.progress.name = path
        self.position = (index, 0)
        self._file_lines = 0
        with raw:
            try:
                error = yield from self._salvage(raw, 0)
            except OSError as err:  # its first read (the gzip test)
                error = err
        if error is not None:
            self._report_damage(path, error)

    def _read_up_to_damage(
        self, index: int, path: str, failure: Exception
    ) -> Generator[list[bytes], None, None]:
        """After ``failure`` reading ``path``: its lines from where the last chunk ended up
        to the damage itself (a failed read loses the lines it had gathered, up to a MiB),
        then the report. Stdin cannot be read again: what the read had gathered is lost."""
        offset = self.position[1] if self.position[0] == index else 0
        error: Exception | None = failure
        if rereadable(path):
            try:
                with open(path, "rb") as raw:
                    error = yield from self._salvage(raw, offset)
            except OSError as err:
                error = err
            if error is None:  # read to its end this time (a passing read error)
                log.warning("%s: %s; read again without error", path, failure)
                return
        self._report_damage(path, error or failure)

    def _report_damage(self, path: str, error: Exception) -> None:
        said = (error.strerror if isinstance(error, OSError) else None) or str(error)
        damage = DamagedInput(path, _damage_cause(error), said, self._file_lines, self.position[1])
        log.error(
            "%s: %s, after %d lines (%d bytes of text): the rest of this file is not read",
            path, damage.error, damage.read_lines, damage.read_bytes,
        )  # fmt: skip
        self.damaged.append(damage)
        if self.on_damaged is not None:
            self.on_damaged(damage)

    def _salvage(
        self, raw: io.BufferedReader, offset: int
    ) -> Generator[list[bytes], None, Exception | None]:
        """The lines of an opened file from text ``offset`` up to its first damage, exactly;
        returns that damage's error (None: no damage this time)."""
        if _is_gzip(raw):
            texts = _gzip_text(raw)
            skip = offset  # a gzip cannot seek: decompress it again from its start
        else:
            if offset:
                raw.seek(offset)
            texts = _plain_text(raw)
            skip = 0
        tail = b""
        whole: list[bytes] = []  # pieces of whole lines not passed on yet
        size = 0
        while True:
            try:
                text = next(texts)
            except StopIteration as stop:
                error: Exception | None = stop.value
                break
            except OSError as err:
                error = err
                break
            if skip:
                text, skip = text[skip:], max(0, skip - len(text))
            text = tail + text
            cut = text.rfind(b"\n") + 1
            tail = text[cut:]
            if cut:
                whole.append(text[:cut])
                size += cut
            if size >= READ_HINT:  # pieces fed byte by byte are small: a chunk of them
                yield self._pass_on(b"".join(whole), b"")
                whole, size = [], 0
        if whole or tail:  # tail: the line the damage cut (or a last one without newline)
            yield self._pass_on(b"".join(whole), tail)
        return error

    def _pass_on(self, text: bytes, tail: bytes) -> list[bytes]:
        """The lines of ``text`` (then ``tail``), counted as read from the current file."""
        lines = io.BytesIO(text).readlines()
        if tail:
            lines.append(tail)
        self._file_lines += len(lines)
        self.position = (self.position[0], self.position[1] + len(text) + len(tail))
        return lines


def _has_data(raw: BinaryIO) -> bool:
    return os.fstat(raw.fileno()).st_size > 0


def _head(raw: BinaryIO) -> bytes:
    """The file's first bytes (fewer while it is shorter)."""
    return os.pread(raw.fileno(), HEAD_BYTES, 0)


def _copytruncate_copy(path: str, head: bytes, offset: int) -> str | None:
    """logrotate's copy of ``path`` made before a copytruncate emptied it: a regular file in
    its directory whose name begins with the log's, longer than ``offset`` (it holds text
    not read yet), whose first bytes are ``head`` (the log's before, as many as we read of
    it up to HEAD_BYTES: an empty or shorter head names no file). The largest such file;
    else the largest such ``.gz``, by its text (compressed at once: receiver/gzip_text.py);
    None if there is none."""
    if len(head) < min(HEAD_BYTES, offset) or not head:
        return None
    directory, base = os.path.split(os.path.abspath(path))
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    found: list[tuple[int, str]] = []
    gzipped: list[tuple[int, str]] = []  # logrotate's compress without delaycompress
    for entry in entries:
        if entry.name == base or not entry.name.startswith(base):
            continue
        candidate = os.path.join(directory, entry.name)
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            if is_gzip_name(entry.name):
                text = gzip_copy_text(candidate, len(head), offset + 1)
                if text is not None and text[1] == head:
                    gzipped.append((text[0], candidate))
                continue
            if st.st_size <= offset:
                continue
            with open(candidate, "rb") as fh:
                if fh.read(len(head)) != head:
                    continue
        except OSError:
            continue
        found.append((st.st_size, candidate))
    # The plain copy, while it is there: its .gz may still be being written.
    return max(found)[1] if found else max(gzipped)[1] if gzipped else None


def _check_head(raw: BinaryIO, head: bytes) -> tuple[bytes, bool]:
    """The file's first bytes now, and whether it was truncated since ``head`` was taken:
    it shrank below our position, or its first bytes changed (emptied, written again)."""
    now = _head(raw)
    if not now.startswith(head):
        return now, True
    return now, os.fstat(raw.fileno()).st_size < raw.tell()


class _PathTrouble:
    """Warnings about a followed path that cannot be opened: at the first failure, again
    every TROUBLE_REPEAT_S while it lasts (naming the error), and once it is back."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last_warned = 0.0

    def saw(self, path: str, err: BaseException, doing: str) -> None:
        now = time.monotonic()
        if self.since is None or now - self.last_warned >= TROUBLE_REPEAT_S:
            said = (err.strerror if isinstance(err, OSError) else None) or str(err)
            log.warning("cannot open followed %s: %s; %s (as tail -F)", path, said, doing)
            self.last_warned = now
            if self.since is None:
                self.since = now

    def cleared(self, path: str) -> None:
        if self.since is not None:
            log.warning("%s can be read now (after %.0f s)", path, time.monotonic() - self.since)
            self.since = None
