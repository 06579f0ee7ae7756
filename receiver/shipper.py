"""Batch raw records and ship them to the assembler(s), sharded by serial number."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import BinaryIO

from auditstream import wire
from auditstream.logline import format_log_line

RawRecord = tuple[int, bytes, str]


def serial_of(data: bytes) -> int:
    """The SERIAL of ``audit(SEC.MSEC:SERIAL)``, or 0 when the header is malformed."""
    colon = data.find(b":", 6, 40)
    close = data.find(b")", colon, 60)
    if colon < 0 or close < 0:
        return 0
    digits = data[colon + 1 : close]
    return int(digits) if digits.isdigit() else 0


@dataclass(slots=True)
class ShipperStats:
    records: int = 0
    batches: int = 0
    blocked_sends: int = 0  # times a full assembler pushed back
    dropped_records: int = 0  # when_full = drop_newest
    recorded_records: int = 0


class RecordShipper:
    """Collects records into one batch per assembler and sends when full or old."""

    def __init__(
        self,
        outlets: list[wire.Outlet],
        *,
        batch_max_records: int,
        batch_max_ms: int,
        drop_when_full: bool = False,
        record_to: BinaryIO | None = None,
    ) -> None:
        self.outlets = outlets
        self.batch_max = batch_max_records
        self.batch_max_s = batch_max_ms / 1000
        self.drop_when_full = drop_when_full
        self.record_to = record_to
        self.batches: list[list[RawRecord]] = [[] for _ in outlets]
        self.oldest = [0.0 for _ in outlets]
        self.stats = ShipperStats()

    def add(self, records: list[RawRecord]) -> None:
        if self.record_to is not None:
            self.record_to.write(b"".join(format_log_line(t, d, n) + b"\n" for t, d, n in records))
            self.stats.recorded_records += len(records)
        self.stats.records += len(records)
        shards = len(self.outlets)
        now = time.monotonic()
        for rec in records:
            index = serial_of(rec[1]) % shards if shards > 1 else 0
            batch = self.batches[index]
            if not batch:
                self.oldest[index] = now
            batch.append(rec)
            if len(batch) >= self.batch_max:
                self._send(index)

    def flush_due(self) -> None:
        """Send batches older than batch_max_ms (keeps latency bounded at low rates)."""
        now = time.monotonic()
        for index, batch in enumerate(self.batches):
            if batch and now - self.oldest[index] >= self.batch_max_s:
                self._send(index)

    def flush(self) -> None:
        for index, batch in enumerate(self.batches):
            if batch:
                self._send(index)
        if self.record_to is not None:
            self.record_to.flush()

    def _send(self, index: int) -> None:
        batch = self.batches[index]
        self.batches[index] = []
        body = {"recs": batch, "recv_ns": time.time_ns()}
        outlet = self.outlets[index]
        if outlet.send(wire.RECORDS, body, block=False):
            self.stats.batches += 1
            return
        self.stats.blocked_sends += 1
        if self.drop_when_full:
            self.stats.dropped_records += len(batch)
            return
        outlet.send(wire.RECORDS, body)  # block: backpressure reaches the source
        self.stats.batches += 1

    def send_eof(self, stats: dict[str, object]) -> None:
        self.flush()
        for outlet in self.outlets:
            outlet.send(wire.EOF_KIND, {"stats": stats})
