"""The receiver's replay buffer: numbered batches of one shard, kept until they are durable.

Every batch sent to an assembler gets the next number of its shard and stays here
until the tree keeper acknowledges that everything made from batches below some
number is written and flushed by every sink. If the assembler (or the tree keeper)
restarts, the batches still here are sent again, in order (docs/recovery.md).

The buffer is bounded. A file source waits for acknowledgements when it is full; a
live source cannot make the kernel wait, so it stops protecting its oldest batch
(``evict_oldest``) and remembers that batch's serial range: should a resend need it,
that range is reported as lost instead of being silently gone.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgpack

from auditstream import wire
from auditstream.native import load_native


def serial_of(data: bytes) -> int:
    """The SERIAL of ``audit(SEC.MSEC:SERIAL)``, or 0 when the header is malformed."""
    colon = data.find(b":", 6, 40)
    close = data.find(b")", colon, 60)
    if colon < 0 or close < 0:
        return 0
    digits = data[colon + 1 : close]
    return int(digits) if digits.isdigit() else 0


_HEADER_SERIAL = re.compile(rb"audit\(\d+\.\d+:(\d+)\)")


def _record_serial(record: tuple[int, bytes, str]) -> int:
    """The serial of one record: 0 for markers, :func:`serial_of` for odd headers."""
    type_, data, _node = record
    if type_ <= 0:
        return 0
    m = _HEADER_SERIAL.match(data)
    return int(m[1]) if m else serial_of(data)


# C (receiver/csrc/lines.c) where built: the usual header read without a regex; it calls
# _record_serial, the reference, for any record it does not read itself.
_NATIVE_RECORD_SERIALS = load_native("receiver.native_lines", "record_serials")


def record_serials(records: Sequence[tuple[int, bytes, str]]) -> list[int]:
    """The serial of each record (0 for markers and malformed headers), parsed once per read.

    The usual kernel header is one C-level match; anything else gets :func:`serial_of`.
    """
    if _NATIVE_RECORD_SERIALS is not None:
        serials: list[int] = _NATIVE_RECORD_SERIALS(records, _record_serial)
        return serials
    return python_record_serials(records)


def python_record_serials(records: Sequence[tuple[int, bytes, str]]) -> list[int]:
    """:func:`record_serials` in Python (the reference of the C version)."""
    match = _HEADER_SERIAL.match
    return [
        (int(m[1]) if (m := match(data)) else serial_of(data)) if type_ > 0 else 0
        for type_, data, _node in records
    ]


_HEADER_KEY = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\)")


def newest_key(records: Sequence[tuple[int, bytes, str]]) -> tuple[int, int] | None:
    """(event ms, serial) of the last audit record of ``records``; None if there is none."""
    for type_, data, _node in reversed(records):
        if type_ > 0 and (m := _HEADER_KEY.match(data)):
            return int(m[1]) * 1000 + int(m[2]), int(m[3])
    return None


@dataclass(slots=True)
class BufferedBatch:
    number: int
    body: bytes  # the packed records frame body, as sent
    records: int
    last: tuple[str, int] | None  # (node, serial) of its last audit record
    last_ms: int | None = None  # event time (ms) of its last audit record with the usual header
    # (first, last, distinct) serials when every record is of one node, its last audit
    # record's (live: this host's): an eviction then needs no unpacking. None: work it
    # out from ``body``.
    serial_range: tuple[int, int, int] | None = None


@dataclass(slots=True)
class SerialGap:
    """Serials of batches evicted before they were acknowledged (may be lost on a resend)."""

    node: str
    first_serial: int
    last_serial: int
    count: int  # distinct serials
    below_batch: int  # the evicted batches' numbers are all below this

    def as_wire(self) -> list[object]:
        return [self.node, self.first_serial, self.last_serial, self.count]


@dataclass(slots=True)
class ShardBufferStats:
    batches: int = 0  # numbered and kept
    redelivered_batches: int = 0  # sent again after a peer came back
    evicted_batches: int = 0  # dropped unacknowledged because the buffer was full
    reported_gaps: int = 0  # serial ranges handed to a resume as possibly lost


class ShardBuffer:
    """One shard's numbered batches from the oldest unacknowledged one on."""

    def __init__(self, shard: int, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("replay buffer capacity must be at least 1 batch")
        self.shard = shard
        self.capacity = capacity
        self.next_number = 0  # the number the next batch gets
        self.acked_below = 0  # every batch below this is durable downstream
        self.cursor = 0  # the number of the next batch to transmit
        self.sent_below = 0  # every batch below this was transmitted at least once
        self._kept: deque[BufferedBatch] = deque()
        self._gaps: list[SerialGap] = []
        self.stats = ShardBufferStats()
        self.kept_records = 0
        self.newest_ms: int | None = None  # the latest event time of any batch added

    def __len__(self) -> int:
        return len(self._kept)

    def is_full(self) -> bool:
        return len(self._kept) >= self.capacity

    def add(
        self, body: dict[str, object], records: int, serials: list[int] | None = None
    ) -> BufferedBatch:
        """Number ``body`` (it gains ``batch``), pack it and keep it.

        ``serials``: the records' serials when all are of one node (see BufferedBatch).
        """
        body["batch"] = self.next_number
        packed = wire.pack_body(body)
        last, last_ms = _last_record(body.get("recs"))
        batch = BufferedBatch(self.next_number, packed, records, last, last_ms)
        if last_ms is not None and (self.newest_ms is None or last_ms > self.newest_ms):
            self.newest_ms = last_ms
        self.kept_records += records
        if serials is not None:
            found = [serial for serial in serials if serial]
            if found:
                batch.serial_range = (min(found), max(found), len(set(found)))
        self._kept.append(batch)
        self.next_number += 1
        self.stats.batches += 1
        return batch

    def unsent(self) -> Iterator[BufferedBatch]:
        """Batches from the cursor on, oldest first."""
        if not self._kept:
            return
        start = self.cursor - self._kept[0].number
        for index in range(max(start, 0), len(self._kept)):
            yield self._kept[index]

    def mark_sent(self, batch: BufferedBatch) -> None:
        self.cursor = batch.number + 1
        if batch.number < self.sent_below:
            self.stats.redelivered_batches += 1
        else:
            self.sent_below = batch.number + 1

    def caught_up(self) -> bool:
        return self.cursor >= self.next_number

    def ack(self, durable_below: int) -> list[BufferedBatch]:
        """Forget batches below ``durable_below``; return the ones freed."""
        if durable_below <= self.acked_below:
            return []
        durable_below = min(durable_below, self.next_number)
        self.acked_below = durable_below
        freed = []
        while self._kept and self._kept[0].number < durable_below:
            freed.append(self._pop_oldest())
        self.cursor = max(self.cursor, durable_below)
        self._gaps = [gap for gap in self._gaps if gap.below_batch > durable_below]
        return freed

    def oldest_is_sent(self) -> bool:
        return bool(self._kept) and self._kept[0].number < self.cursor

    def evict_oldest(self) -> None:
        """Stop protecting the oldest (sent) batch; remember its serials for a resend."""
        batch = self._pop_oldest()
        self.stats.evicted_batches += 1
        for gap in serial_gaps(batch):
            last = self._gaps[-1] if self._gaps else None
            if last is not None and last.node == gap.node:  # one range per run of evictions
                last.first_serial = min(last.first_serial, gap.first_serial)
                last.last_serial = max(last.last_serial, gap.last_serial)
                last.count += gap.count
                last.below_batch = gap.below_batch
            else:
                self._gaps.append(gap)
        self.cursor = max(self.cursor, batch.number + 1)

    def rewind(self) -> tuple[int, list[SerialGap]]:
        """Send everything kept again: the first number to resend and the unprotected gaps."""
        start = self._kept[0].number if self._kept else self.next_number
        self.cursor = start
        gaps, self._gaps = self._gaps, []
        self.stats.reported_gaps += len(gaps)
        return start, gaps

    def forget_all(self) -> None:
        """Nothing is protected (no tree keeper acknowledges): keep no copies."""
        while self._kept and self._kept[0].number < self.cursor:
            self._pop_oldest()

    def _pop_oldest(self) -> BufferedBatch:
        batch = self._kept.popleft()
        self.kept_records -= batch.records
        return batch

    def event_ms_kept(self) -> int | None:
        """How much event time the kept batches span: from the oldest one's last record to
        the latest record added (None if a header was not the usual one)."""
        if not self._kept or self._kept[0].last_ms is None or self.newest_ms is None:
            return None
        return self.newest_ms - self._kept[0].last_ms


def _last_record(recs: object) -> tuple[tuple[str, int] | None, int | None]:
    """(node, serial) of the last audit record of a batch, and its event time in ms."""
    if isinstance(recs, list):
        for type_, data, node in reversed(recs):
            if type_ > 0:
                if m := _HEADER_KEY.match(data):
                    return (node, int(m[3])), int(m[1]) * 1000 + int(m[2])
                return (node, serial_of(data)), None  # an odd header: its serial, no time
    return None, None


def serial_gaps(batch: BufferedBatch) -> list[SerialGap]:
    """The serial range of each node in a packed records batch."""
    if batch.serial_range is not None and batch.last is not None:  # a serial: an audit record
        first, last, count = batch.serial_range
        return [SerialGap(batch.last[0], first, last, count, batch.number + 1)]
    body = msgpack.unpackb(batch.body, raw=False)
    serials: dict[str, set[int]] = {}
    for type_, data, node in body["recs"]:
        if type_ > 0:
            serials.setdefault(node, set()).add(serial_of(data))
    return [
        SerialGap(node, min(found), max(found), len(found), batch.number + 1)
        for node, found in sorted(serials.items())
    ]
