"""The assembler's half of redelivery: which numbered batches it has, and what is fully out.

The receiver numbers its batches per shard and keeps them until the tree keeper
acknowledges them (docs/recovery.md). A ``resume`` frame tells this assembler where
the stream (re)starts; batches must then arrive in order. With every events frame the
assembler reports ``durable_below``: every batch below that number has been turned
into events in this frame or an earlier one (no record of it is waiting in an open
event), so once those frames are in every sink the receiver may forget the batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from assembler.events import Event, lost_event
from assembler.reassembler import LostRange
from auditstream.logs import RateLimitedLog

log = logging.getLogger("auditstream.assembler")


@dataclass(slots=True)
class BatchStreamStats:
    resumes: int = 0
    resets: int = 0
    stale_batches: int = 0  # from before the last resume (another epoch, or none yet)
    duplicate_batches: int = 0  # already had it (a resend overlapping what arrived)
    out_of_order_batches: int = 0  # refused: a resume with a resend always follows


class BatchStream:
    """Accepts the receiver's numbered batches in order and computes the durable watermark."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.expect: int | None = None  # None: no resume yet, numbered batches are refused
        self.token: int | None = None  # the tree keeper's token from the last resume
        self.stats = BatchStreamStats()
        self.warn = RateLimitedLog(log)

    def resume(self, body: dict[str, Any]) -> bool:
        """Apply a ``resume`` frame; True when the assembler must drop its state (reset)."""
        self.stats.resumes += 1
        epoch, start = int(body["epoch"]), int(body["from"])
        reset = bool(body.get("reset", True))
        # The same receiver resuming the stream we are reading, without a reset: it saw us
        # join only after it had sent to us. What we have taken stays ours; sent again, it
        # is a duplicate, not records to take twice (the second pass made lone-EOE events).
        if not reset and epoch == self.epoch and self.expect is not None:
            start = max(start, self.expect)
        self.epoch = epoch
        self.expect = start
        self.token = body.get("token")
        if reset:
            self.stats.resets += 1
        return reset

    def accept(self, body: dict[str, Any]) -> bool:
        """True if this records frame is the next batch (or an unnumbered one)."""
        number = body.get("batch")
        if number is None:
            return True  # a sender without redelivery (a bench, a test): take it as is
        if self.expect is None or body.get("epoch") != self.epoch:
            self.stats.stale_batches += 1
            return False
        if number < self.expect:
            self.stats.duplicate_batches += 1
            return False
        if number > self.expect:
            # Frames of one connection are never reordered; this one followed a reconnect
            # and the resume that restarts the stream is right behind it.
            self.stats.out_of_order_batches += 1
            self.warn.warning(
                "batch-order", "batch %d arrived while expecting %d; waiting for a resume",
                number, self.expect,
            )  # fmt: skip
            return False
        self.expect = number + 1
        return True

    def durable_below(self, oldest_open_batch: int | None) -> int:
        """Every batch below the result has no record left in an open event."""
        if self.expect is None:
            return 0
        if oldest_open_batch is None:
            return self.expect
        return min(oldest_open_batch, self.expect)

    def frame_fields(self, oldest_open_batch: int | None) -> dict[str, Any]:
        """What an events frame (and the eof) carries for the tree keeper's acknowledgements."""
        if self.epoch is None:
            return {}
        return {
            "epoch": self.epoch,
            "durable_below": self.durable_below(oldest_open_batch),
            "token": self.token,
        }


def replay_gap_events(body: dict[str, Any]) -> list[Event]:
    """``events-lost`` markers for batches the receiver could not keep for a resend.

    The receiver's replay buffer is bounded; live, it stops protecting its oldest
    batches when full. If a resend then needs them, their serial range is reported.
    """
    events = []
    for gap in body.get("gaps", []):
        node, first, last, count = str(gap[0]), int(gap[1]), int(gap[2]), int(gap[3])
        event = lost_event(LostRange(node, first, last, count))
        event["doc"]["auditstream"]["marker"]["cause"] = "replay_buffer_overflow"
        events.append(event)
    return events


def restart_gap_event(data: bytes, node: str) -> Event:
    """The ``events-lost`` marker for serials a restarted live receiver could not get again."""
    fields = dict(item.partition("=")[::2] for item in data.decode("ascii", "replace").split())
    first, last = int(fields.get("first_serial", 0)), int(fields.get("last_serial", 0))
    event = lost_event(LostRange(node, first, last, int(fields.get("count", last - first + 1))))
    event["doc"]["auditstream"]["marker"]["cause"] = "receiver_restart"
    return event
