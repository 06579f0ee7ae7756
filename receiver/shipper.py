"""Batch raw records and ship them to the assembler(s), sharded by serial number.

Each batch goes through the :class:`receiver.redelivery.DeliveryGuard`, which numbers
it, keeps it until the tree keeper acknowledges it and sends it again after a crash
downstream (docs/recovery.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from auditstream.logline import format_log_line
from auditstream.native import load_native
from receiver.checkpoint import SerialMark
from receiver.netlink import RawRecord, all_of_node
from receiver.redelivery import DeliveryGuard
from receiver.replaybuffer import newest_key, record_serials, serial_of

__all__ = ["RawRecord", "RecordShipper", "ShipperStats", "serial_of"]

Dealt = list[tuple[list[RawRecord], list[int]]]


def python_deal(records: list[RawRecord], serials: list[int], shards: int) -> Dealt:
    """Each shard's records and serials, in order: record i goes to serials[i] % shards."""
    parts: Dealt = [([], []) for _ in range(shards)]
    for rec, serial in zip(records, serials, strict=True):
        part_records, part_serials = parts[serial % shards]
        part_records.append(rec)
        part_serials.append(serial)
    return parts


# receiver/csrc/shards.c where built: the same, without a Python step per record.
deal: Callable[[list[RawRecord], list[int], int], Dealt] = (
    load_native("receiver.native_shards", "deal") or python_deal
)


@dataclass(slots=True)
class ShipperStats:
    records: int = 0
    batches: int = 0
    blocked_sends: int = 0  # times a full assembler pushed back
    queued_sends: int = 0  # batches kept unsent because the assembler was full (live)
    dropped_records: int = 0  # when_full = drop_newest
    recorded_records: int = 0


class RecordShipper:
    """Collects records into one batch per assembler and sends when full or old."""

    def __init__(
        self,
        guard: DeliveryGuard,
        *,
        batch_max_records: int,
        batch_max_ms: int,
        drop_when_full: bool = False,
        record_to: BinaryIO | None = None,
        never_block: bool = False,
        node: str = "",
    ) -> None:
        self.guard = guard
        # The node the source gives records that name none (live: this host's, one shared
        # str; a file: ""): a batch all of it needs no per-node work (its serials suffice).
        self.node = node
        # Live kernel sources: a send must never stall the netlink read (see receiver/live.py).
        self.never_block = never_block
        self.batch_max = batch_max_records
        self.batch_max_s = batch_max_ms / 1000
        self.drop_when_full = drop_when_full
        # Each record is written with its own node: live, the sources gave this host's to
        # those that name none (``node``), so their replay names it as the live docs did; a
        # replay's recording keeps its input's lines (a log without node= stays without).
        self.record_to = record_to
        shards = len(guard.outlets)
        self.batches: list[list[RawRecord]] = [[] for _ in range(shards)]
        self.batch_serials: list[list[int]] = [[] for _ in range(shards)]  # live, or sharded
        self.batch_has_nodes = [False for _ in range(shards)]  # a record not of self.node
        self.oldest = [0.0 for _ in range(shards)]
        self.batch_since_ns = [0 for _ in range(shards)]  # the batch's first add's
        self.stats = ShipperStats()
        # Live: the durable serial mark (it names what a predecessor may have lost).
        self.serial_mark: SerialMark | None = None
        # Live with several assemblers: (event ms, serial) of the newest record read. Each
        # batch carries it, and an assembler with nothing batched gets it in a TICK, so
        # that its claim to the tree keeper's reorder window moves while it is quiet
        # (treekeeper/reorder.py); a quiet shard would otherwise hold every event.
        self.read_to: tuple[int, int] | None = None
        self.conveyed: list[tuple[int, int] | None] = [None for _ in range(shards)]
        self.last_out = [0.0 for _ in range(shards)]

    def add(self, records: list[RawRecord], waited_since_ns: int | None = None) -> None:
        """Batch ``records``; ``waited_since_ns``: the wall-clock time since which they may
        have waited in the source (a batch's ``recv_ns``, the latency's start, is its
        records' earliest: docs/design.md); None: they arrived now."""
        if self.record_to is not None:
            self.record_to.write(b"".join(format_log_line(t, d, n) + b"\n" for t, d, n in records))
            self.stats.recorded_records += len(records)
        self.stats.records += len(records)
        shards = len(self.batches)
        # Parsed once here for the serial mark, the sharding and the replay buffers.
        serials = record_serials(records) if self.never_block or shards > 1 else None
        if self.serial_mark is not None:
            markers = self.serial_mark.records_read(records, serials)
            if markers:
                records = markers + records
                serials = [0] * len(markers) + serials if serials is not None else None
        now = time.monotonic()
        since_ns = time.time_ns() if waited_since_ns is None else waited_since_ns
        if shards == 1 or serials is None:  # live, or a file (which needs no serials)
            self._add_run(records, serials, now, since_ns)
            return
        if self.never_block and (key := newest_key(records)) is not None:
            self.read_to = key
        for index, (part, part_serials) in enumerate(deal(records, serials, shards)):
            if part:
                self._add_run(part, part_serials, now, since_ns, index)

    def _add_run(
        self,
        records: list[RawRecord],
        serials: list[int] | None,
        now: float,
        since_ns: int,
        index: int = 0,
    ) -> None:
        """Append ``records`` (and their ``serials``) to shard ``index``'s batch a slice at a
        time, sending each batch that fills: no Python step per record (~250,000 a second
        live). A batch they begin takes ``since_ns`` as its receive stamp."""
        taken, total = 0, len(records)
        while taken < total:
            batch = self.batches[index]
            if not batch:
                self.oldest[index] = now
                self.batch_since_ns[index] = since_ns
            end = taken + max(1, self.batch_max - len(batch))
            part = records[taken:end]
            batch += part
            if serials is not None:
                self.batch_serials[index] += serials[taken:end]
                if not self.batch_has_nodes[index] and not all_of_node(part, self.node):
                    self.batch_has_nodes[index] = True
            taken += len(part)
            if len(batch) >= self.batch_max:
                self._send(index)

    def flush_due(self) -> None:
        """Send batches older than batch_max_ms (keeps latency bounded at low rates)."""
        self.guard.poll()  # acknowledgements and resends also flow while the source is quiet
        now = time.monotonic()
        for index, batch in enumerate(self.batches):
            if batch and now - self.oldest[index] >= self.batch_max_s:
                self._send(index)
        read_to = self.read_to
        if read_to is None:
            return
        for index, batch in enumerate(self.batches):
            if (
                not batch and self.conveyed[index] != read_to
                and now - self.last_out[index] >= self.batch_max_s
                and self.guard.send_tick(index, {"read_to": list(read_to)})
            ):  # fmt: skip
                self.conveyed[index] = read_to
                self.last_out[index] = now

    def is_idle(self) -> bool:
        """Nothing batched, nothing waiting to be sent, every shard told how far reading got:
        the reader may wait for records without a deadline of its own."""
        return (
            not any(self.batches)
            and self.guard.has_nothing_to_send()
            and (self.read_to is None or all(c == self.read_to for c in self.conveyed))
        )

    def send_batched(self) -> None:
        """Send every batch that holds records, whatever its age."""
        for index, batch in enumerate(self.batches):
            if batch:
                self._send(index)

    def flush(self) -> None:
        self.send_batched()
        if self.record_to is not None:
            self.record_to.flush()

    def _send(self, index: int) -> None:
        batch = self.batches[index]
        self.batches[index] = []
        serials: list[int] | None = self.batch_serials[index]
        self.batch_serials[index] = []
        if self.batch_has_nodes[index] or not serials:  # nodes, or serials never parsed:
            serials = None  # the replay buffer works the ranges out if it must
        self.batch_has_nodes[index] = False
        body: dict[str, object] = {"recs": batch, "recv_ns": self.batch_since_ns[index]}
        if self.read_to is not None:  # every record of this shard read so far is in it
            body["read_to"] = list(self.read_to)
            self.conveyed[index] = self.read_to
            self.last_out[index] = time.monotonic()
        outcome = self.guard.send_batch(
            index, body, len(batch), drop=self.drop_when_full, wait=not self.never_block,
            serials=serials,
        )  # fmt: skip
        if outcome == "queued":
            self.stats.queued_sends += 1
        if outcome == "dropped":
            self.stats.blocked_sends += 1
            self.stats.dropped_records += len(batch)
            return
        if outcome == "blocked":
            self.stats.blocked_sends += 1
        self.stats.batches += 1

    def send_eof(self, stats: dict[str, object]) -> None:
        """Send what is batched, then the eof (after every batch, and again after a resend)."""
        if self.serial_mark is not None:
            self.add(self.serial_mark.leftover_markers())
        self.flush()
        self.guard.finish({"stats": stats})

    def batches_needed(self) -> list[int]:
        """Per shard: how many batches must be acknowledged to cover every record added."""
        return [
            number + (1 if batch else 0)
            for number, batch in zip(self.guard.next_numbers(), self.batches, strict=True)
        ]
