"""The file source's checkpoint: where a restarted receiver resumes reading.

After each chunk of lines the receiver notes the read position and, per assembler,
how many batches must be acknowledged before everything up to that position is in
every sink. The checkpoint is the newest such position that is fully acknowledged;
it is written atomically to the runtime directory a few times a second (and whenever
it has moved over more than ``auditstream.redelivery.checkpoint_lag_records``), with the
line counters as of that position. A receiver started again by the same supervisor
resumes from it (docs/recovery.md); what it reads again that was already written
downstream is dropped there as duplicates.

A followed log may also have a position file (``[receiver] position_file``, ``replay
--position-file``): the same acknowledged position, written at the same moments and at a
clean stop, with the file's identity instead of an index, so that a follow started again
later (a new supervisor) resumes where the last one stopped (receiver/position.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from auditstream.marker_records import RESTART_GAP_TYPE
from auditstream.redelivery import write_atomically
from receiver.logsource import FileIdentity
from receiver.netlink import all_of_node
from receiver.position import POSITION_VERSION, head_digest
from receiver.replaybuffer import serial_of

log = logging.getLogger("auditstream.receiver")
WRITE_EVERY_S = 0.25
# A position file that cannot be written is warned about again this often while it lasts.
POSITION_WARN_EVERY_S = 60.0


@dataclass(slots=True)
class Checkpoint:
    owner: int  # the supervisor's pid: a checkpoint of another run is not ours
    files: list[str]
    file_index: int
    inode: int
    offset: int  # in the file's decompressed text
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def position(self) -> tuple[int, int]:
        return self.file_index, self.offset


@dataclass(slots=True)
class _ReadMark:
    position: tuple[int, int]
    needed: list[int]  # per shard: batches to be acknowledged
    counters: dict[str, int]
    reading: FileIdentity | None = None  # the plain file ``position`` is in

    @property
    def key(self) -> tuple[tuple[int, int], FileIdentity | None]:
        return self.position, self.reading


class CheckpointKeeper:
    """Turns acknowledged batch numbers into a durable read position, and persists it
    (and, given ``position_file``, the followed log's position file too)."""

    def __init__(
        self,
        path: Path,
        files: list[str],
        max_lag_records: int = 0,
        *,
        position_file: Path | None = None,
    ) -> None:
        self.path = path
        self.files = files
        # Written also once this many records past the written one (0: by time only).
        self.max_lag_records = max_lag_records
        self.position_file = position_file
        self._written_records = 0
        self._marks: deque[_ReadMark] = deque()
        self._durable: _ReadMark | None = None
        self._written: tuple[tuple[int, int], FileIdentity | None] | None = None
        self._last_write = 0.0
        self.writes = 0
        self.position_write_errors = 0
        self._position_warned = 0.0

    def chunk_read(
        self,
        position: tuple[int, int],
        needed: list[int],
        counters: dict[str, int],
        reading: FileIdentity | None = None,
    ) -> None:
        self._marks.append(_ReadMark(position, needed, counters, reading))

    def resumed_at(
        self, position: tuple[int, int], reading: FileIdentity | None, counters: dict[str, int]
    ) -> None:
        """Where reading starts: durable already (a clean stop before nothing new writes it)."""
        self._durable = _ReadMark(position, [], counters, reading)
        self._written = self._durable.key
        self._written_records = counters.get("records", 0)

    def update(self, acked_below: list[int], *, force: bool = False) -> None:
        """Advance over read positions whose batches are all acknowledged; write now and then."""
        marks = self._marks
        while marks and all(a >= n for a, n in zip(acked_below, marks[0].needed, strict=True)):
            self._durable = marks.popleft()
        now = time.monotonic()
        durable = self._durable
        if durable is None or durable.key == self._written:
            return
        lag = durable.counters.get("records", 0) - self._written_records
        if force or now - self._last_write >= WRITE_EVERY_S or 0 < self.max_lag_records <= lag:
            self._write(durable)
            self._last_write = now

    def _write(self, mark: _ReadMark) -> None:
        index, offset = mark.position
        try:
            inode = os.stat(self.files[index]).st_ino
        except OSError:
            inode = 0
        checkpoint = Checkpoint(os.getppid(), self.files, index, inode, offset, mark.counters)
        write_atomically(self.path, json.dumps(asdict(checkpoint)).encode())
        self._write_position(mark, clean_stop=False)
        self._written = mark.key
        self._written_records = mark.counters.get("records", 0)
        self.writes += 1

    def finish(self, *, clean_stop: bool) -> None:
        """At the stop (after ``update(force=True)``): the position file once more, saying
        whether everything read up to it was acknowledged and nothing past it was sent."""
        if self._durable is not None:
            self._write_position(self._durable, clean_stop=clean_stop)

    def _write_position(self, mark: _ReadMark, *, clean_stop: bool) -> None:
        if self.position_file is None or mark.reading is None:
            return  # (a gzip being read has no plain offset: the last position stays)
        reading = mark.reading
        saved = {
            "version": POSITION_VERSION,
            "path": os.path.abspath(self.files[-1]),  # the followed log
            "device": reading.device,
            "inode": reading.inode,
            "head_length": len(reading.head),
            "head_sha256": head_digest(reading.head),
            "offset": mark.position[1],
            "clean_stop": clean_stop,
            "owner": os.getppid(),  # the supervisor: a receiver restarted in its run
            "saved_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        try:
            write_atomically(self.position_file, json.dumps(saved, indent=1).encode() + b"\n")
        except OSError as err:
            self.position_write_errors += 1
            now = time.monotonic()
            if now - self._position_warned >= POSITION_WARN_EVERY_S:
                self._position_warned = now
                log.warning(
                    "cannot write position file %s: %s; a restart may send events again",
                    self.position_file, err.strerror or err,
                )  # fmt: skip


def checkpoint_counters(path: Path) -> dict[str, int] | None:
    """The line counters of this run's checkpoint, if a predecessor of this receiver left one."""
    try:
        data = json.loads(path.read_text())
        if data["owner"] == os.getppid():
            return {str(k): int(v) for k, v in data["counters"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def load_checkpoint(path: Path, files: list[str]) -> Checkpoint | None:
    """The checkpoint a previous receiver of this run left, if it is usable."""
    try:
        data = json.loads(path.read_text())
        checkpoint = Checkpoint(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        log.error("ignoring unreadable checkpoint %s: %s", path, err)
        return None
    if checkpoint.owner != os.getppid() or checkpoint.files != files:
        return None  # another run's
    if not 0 <= checkpoint.file_index < len(files):
        log.error("ignoring checkpoint %s: file index %d out of range", path, checkpoint.file_index)
        return None
    try:
        inode = os.stat(files[checkpoint.file_index]).st_ino
    except OSError as err:
        log.error(
            "checkpoint names %s, which cannot be read: %s", files[checkpoint.file_index], err
        )
        return None
    if inode != checkpoint.inode:
        log.error(
            "%s was replaced since the checkpoint (inode %d, was %d): reading it from the start",
            files[checkpoint.file_index],
            inode,
            checkpoint.inode,
        )
        checkpoint.offset = 0
    return checkpoint


DISCONTINUITY_JUMP = 1 << 24  # a larger jump is a new serial space (reboot), not loss


class SerialMark:
    """Live sources: per node, the newest serial known durable and the newest read.

    The kernel (or a pipe) cannot give a restarted receiver what its predecessor had
    read but not yet delivered. Usually the assemblers, which keep their state, see that
    hole as a serial gap; if an assembler restarted too (or was reset), only this mark
    can name it. It is rewritten in place (one small ``pwrite``) each time records are
    read, and a successor inherits it: its first record of each node shows the range
    that may be lost (or, if none comes, the predecessor's newest read serial does),
    reported as a marker record (the first event read is included: we may have started
    inside it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.durable: dict[str, int] = {}
        self.read: dict[str, int] = {}
        self._inherited: dict[str, tuple[int, int]] = {}  # node -> (durable, read)
        self._fd: int | None = None
        self._size = 0

    def inherit(self) -> bool:
        """Take over what a predecessor of this run left; True if there was one."""
        try:
            data = json.loads(self.path.read_bytes())
            owner, durable, read = data["owner"], data["durable"], data["read"]
            inherited = {str(n): (int(durable[n]), int(read.get(n, durable[n]))) for n in durable}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return False
        if owner != os.getppid():
            return False
        self._inherited = inherited
        self.durable = {node: pair[0] for node, pair in inherited.items()}
        return True

    def records_read(
        self, records: list[tuple[int, bytes, str]], serials: list[int] | None = None
    ) -> list[tuple[int, bytes, str]]:
        """Note what was read (persisted); marker records for what a predecessor may have lost.

        ``serials``: the records' serials if the caller parsed them already.
        """
        markers: list[tuple[int, bytes, str]] = []
        read = self.read
        if serials is None:
            serials = [serial_of(data) if type_ > 0 else 0 for type_, data, _ in records]
        node = records[0][2] if records else ""
        if node in read and not self._inherited and all_of_node(records, node):
            # The usual case (a live source, already reading its one node, this host's):
            # only the newest serial moves.
            newest = max(serials, default=0)
            if newest > read[node]:
                read[node] = newest
            if records:
                self._write()
            return markers
        for (type_, _data, node), serial in zip(records, serials, strict=True):
            if type_ <= 0:
                continue
            if node not in read:
                inherited = self._inherited.pop(node, None)
                if inherited is not None:
                    # We start reading where the predecessor stopped, maybe inside this
                    # first event: its head may be gone too.
                    markers.extend(_gap_marker(node, inherited[0] + 1, serial))
                elif node not in self.durable:
                    self.durable[node] = serial - 1  # nothing of this node is durable yet
            if serial > read.get(node, -1):
                read[node] = serial
        if records:
            self._write()
        return markers

    def leftover_markers(self) -> list[tuple[int, bytes, str]]:
        """At the end: nodes the predecessor read that we never saw again."""
        markers: list[tuple[int, bytes, str]] = []
        for node, (durable, read) in self._inherited.items():
            markers.extend(_gap_marker(node, durable + 1, read))
        self._inherited.clear()
        return markers

    def acked(self, durable_serials: dict[str, int]) -> None:
        """Move the durable mark with acknowledgements."""
        changed = False
        for node, serial in durable_serials.items():
            if serial > self.durable.get(node, -1):
                self.durable[node] = serial
                changed = True
        if changed:
            self._write()

    def _write(self) -> None:
        # Written after every read (live: ~1000 times a second at 50k records/s): orjson.
        payload = orjson.dumps({"owner": os.getppid(), "durable": self.durable, "read": self.read})
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # In place, padded with spaces (valid JSON) so a shorter text never leaves a tail.
        self._size = max(self._size, len(payload))
        os.pwrite(self._fd, payload.ljust(self._size), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _gap_marker(node: str, first: int, last: int) -> list[tuple[int, bytes, str]]:
    if not first <= last < first + DISCONTINUITY_JUMP:
        return []
    log.warning(
        "restarted: serials %d..%d%s may be lost (read by the receiver that died)",
        first, last, f" of node {node}" if node else "",
    )  # fmt: skip
    text = f"first_serial={first} last_serial={last} count={last - first + 1}"
    return [(RESTART_GAP_TYPE, text.encode(), node)]
