"""The tree keeper's acknowledgements: which receiver batches are now in every sink.

Each events frame of an assembler carries ``durable_below`` (every receiver batch
below it is turned into events in this frame or an earlier one), the receiver's
``epoch`` and the ``token`` of the tree keeper the assembler was last reset for. A
frame is done once each of its events has left the reorder window and every sink
has written and flushed the fan-out batch that carried it (:meth:`FanOut.durable_seq`).
Frames of one assembler are done in order; the newest done frame's watermark goes to
the receiver as ``ack {epoch, shard, durable_below}``. Only frames with this tree
keeper's token count: frames made before the assemblers were reset for it may
follow events its predecessor never wrote.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from auditstream import wire
from auditstream.config import Config, batching
from auditstream.redelivery import acks_endpoint

log = logging.getLogger("auditstream.treekeeper")
HELLO_EVERY_S = 2.0  # said again now and then: a receiver that restarted must hear it
# While frames keep coming, an assembler's acks are sent at most this often (see service).
ACK_EVERY_S = 0.1
ACKS_HWM = 1000
Event = dict[str, Any]


@dataclass(slots=True)
class _Frame:
    shard: int
    epoch: int
    durable_below: int
    ackable: bool  # carries our token
    waiting: int  # its events still held in the reorder window
    seq: int | None = None  # the fan-out batch after which it is durable (None: not yet out)
    final: bool = False  # an eof: the receiver waits for its ack to end (no coalescing)


class AckTracker:
    """Follows frames through the reorder window and the sinks; yields watermarks."""

    def __init__(self, token: int) -> None:
        self.token = token
        self._frames: dict[int, deque[_Frame]] = {}
        self._held: dict[int, _Frame] = {}  # id(event) -> its frame, while in the window
        self._sealed: list[_Frame] = []  # frames whose last event left in the current round
        self.foreign_frames = 0  # frames without our token: written, never acknowledged
        self.final_done = False  # the last done() released an eof frame

    def frame_arrived(
        self,
        shard: int,
        body: dict[str, Any],
        events: list[Event],
        submitted: int,
        *,
        final: bool = False,
    ) -> None:
        """Register an events (or eof: ``final``) frame and the events of it that go on to
        the tree.

        ``submitted`` is the fan-out's last batch number: a frame with nothing to wait
        for is durable once everything submitted so far is.
        """
        if "durable_below" not in body:
            return  # an assembler without redelivery fields: nothing to acknowledge
        ackable = body.get("token") == self.token
        if not ackable:
            self.foreign_frames += 1
        frame = _Frame(
            shard, int(body["epoch"]), int(body["durable_below"]), ackable, 0, final=final
        )
        for event in events:
            self._held[id(event)] = frame
        frame.waiting = len(events)
        if not events:
            frame.seq = submitted
        self._frames.setdefault(shard, deque()).append(frame)

    def released(self, events: list[Event]) -> None:
        """These events left the window and are about to be submitted to the sinks."""
        held = self._held
        if not held:
            return
        for event in events:
            frame = held.pop(id(event), None)
            if frame is not None:
                frame.waiting -= 1
                if frame.waiting == 0:
                    self._sealed.append(frame)

    def submitted(self, seq: int) -> None:
        """The events released since the last call went out as fan-out batch ``seq``."""
        for frame in self._sealed:
            frame.seq = seq
        self._sealed.clear()

    def done(self, durable_seq: int) -> list[tuple[int, int, int]]:
        """(shard, epoch, durable_below) of the newest done ackable frame of each assembler;
        :attr:`final_done` says whether an eof was among them."""
        acks = []
        self.final_done = False
        for shard, frames in self._frames.items():
            newest: _Frame | None = None
            while frames and _is_done(frames[0], durable_seq):
                frame = frames.popleft()
                if frame.ackable:
                    newest = frame
                    self.final_done |= frame.final
            if newest is not None:
                acks.append((shard, newest.epoch, newest.durable_below))
        return acks

    @property
    def outstanding(self) -> bool:
        """A frame is not acknowledged yet: its events are in the window or the sinks."""
        return any(self._frames.values())


def _is_done(frame: _Frame, durable_seq: int) -> bool:
    return frame.waiting == 0 and frame.seq is not None and frame.seq <= durable_seq


class AckSender:
    """The tree keeper's end of the ack hop: says hello with its token, sends watermarks."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], cfg: Config) -> None:
        self.token = int.from_bytes(os.urandom(6), "big")
        self.outlet = wire.Outlet(
            zctx, acks_endpoint(cfg), hwm=ACKS_HWM, immediate=True, watch=True, bind=True
        )
        self.tracker = AckTracker(self.token)
        self._pending: dict[int, dict[str, Any]] = {}  # shard -> newest ack not yet sent
        self._sent_below: dict[int, int] = {}  # shard -> durable_below of its last ack sent
        # An ack waits for ACK_EVERY_S only while it frees less than this of the receiver's
        # replay buffer (an eighth, as the assemblers ship: a full buffer never waits on us).
        self._batches_per_ack = max(1, batching(cfg.receiver).replay_buffer_batches // 8)
        self._next_ack = 0.0
        self._hello_due = True
        self._next_hello = 0.0
        self.acks_sent = 0

    @property
    def hello_due(self) -> bool:
        """A hello waits for a receiver to hear it (none has connected since it was due)."""
        return self._hello_due

    def service(self, durable_seq: int, *, now_all: bool = False) -> None:
        """Say hello when a receiver (re)connects; send the acknowledgements that are due.

        Each ack wakes a thread here and two in the receiver: while frames keep coming,
        an assembler's newest ack goes at most every ACK_EVERY_S, unless it frees an
        eighth of the receiver's replay buffer; an eof's (the receiver waits for it to
        end) and ``now_all`` (the last, after the sinks closed) go at once."""
        assert self.outlet.watch is not None
        now = time.monotonic()
        if self.outlet.watch.poll() or now >= self._next_hello:
            self._hello_due = True
        if self._hello_due and self.outlet.send(wire.HELLO, {"token": self.token}, block=False):
            self._hello_due = False
            self._next_hello = now + HELLO_EVERY_S
        pending = self._pending
        done = self.tracker.done(durable_seq)
        for shard, epoch, durable_below in done:
            pending[shard] = {"epoch": epoch, "shard": shard, "durable_below": durable_below}
        if not pending:
            return
        due = now_all or self.tracker.final_done or now >= self._next_ack
        if not due and not any(self._frees_enough(shard, ack) for shard, ack in pending.items()):
            return
        for shard in list(pending):
            if not self.outlet.send(wire.ACK, pending[shard], block=False):
                break  # no receiver right now: the newest ack per assembler waits
            self._sent_below[shard] = pending.pop(shard)["durable_below"]
            self.acks_sent += 1
            self._next_ack = now + ACK_EVERY_S

    def next_due(self, now: float) -> float:
        """The monotonic time from which :meth:`service` has timed work: a held ack goes
        (again every ACK_EVERY_S while no receiver takes it), or the next hello. (A frame
        still in the window or the sinks is not timed: see :attr:`AckTracker.outstanding`.)"""
        if not self._pending:
            return self._next_hello
        next_ack = self._next_ack if self._next_ack > now else now + ACK_EVERY_S
        return min(next_ack, self._next_hello)

    def _frees_enough(self, shard: int, ack: dict[str, Any]) -> bool:
        below: int = ack["durable_below"]
        return below - self._sent_below.get(shard, 0) >= self._batches_per_ack

    def close(self, linger_ms: int) -> None:
        self.outlet.close(linger_ms=linger_ms)
