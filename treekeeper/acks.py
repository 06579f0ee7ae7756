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
from auditstream.config import Config
from auditstream.redelivery import acks_endpoint

log = logging.getLogger("auditstream.treekeeper")
HELLO_EVERY_S = 2.0  # said again now and then: a receiver that restarted must hear it
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


class AckTracker:
    """Follows frames through the reorder window and the sinks; yields watermarks."""

    def __init__(self, token: int) -> None:
        self.token = token
        self._frames: dict[int, deque[_Frame]] = {}
        self._held: dict[int, _Frame] = {}  # id(event) -> its frame, while in the window
        self._sealed: list[_Frame] = []  # frames whose last event left in the current round
        self.foreign_frames = 0  # frames without our token: written, never acknowledged

    def frame_arrived(
        self, shard: int, body: dict[str, Any], events: list[Event], submitted: int
    ) -> None:
        """Register an events (or eof) frame and the events of it that go on to the tree.

        ``submitted`` is the fan-out's last batch number: a frame with nothing to wait
        for is durable once everything submitted so far is.
        """
        if "durable_below" not in body:
            return  # an assembler without redelivery fields: nothing to acknowledge
        ackable = body.get("token") == self.token
        if not ackable:
            self.foreign_frames += 1
        frame = _Frame(shard, int(body["epoch"]), int(body["durable_below"]), ackable, 0)
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
        """(shard, epoch, durable_below) of the newest done ackable frame of each assembler."""
        acks = []
        for shard, frames in self._frames.items():
            newest: _Frame | None = None
            while frames and _is_done(frames[0], durable_seq):
                frame = frames.popleft()
                if frame.ackable:
                    newest = frame
            if newest is not None:
                acks.append((shard, newest.epoch, newest.durable_below))
        return acks


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
        self._hello_due = True
        self._next_hello = 0.0
        self.acks_sent = 0

    @property
    def hello_due(self) -> bool:
        """A hello waits for a receiver to hear it (none has connected since it was due)."""
        return self._hello_due

    def service(self, durable_seq: int) -> None:
        """Say hello when a receiver (re)connects; send the acknowledgements that are due."""
        assert self.outlet.watch is not None
        now = time.monotonic()
        if self.outlet.watch.poll() or now >= self._next_hello:
            self._hello_due = True
        if self._hello_due and self.outlet.send(wire.HELLO, {"token": self.token}, block=False):
            self._hello_due = False
            self._next_hello = now + HELLO_EVERY_S
        for shard, epoch, durable_below in self.tracker.done(durable_seq):
            self._pending[shard] = {"epoch": epoch, "shard": shard, "durable_below": durable_below}
        for shard in list(self._pending):
            if not self.outlet.send(wire.ACK, self._pending[shard], block=False):
                break  # no receiver right now: the newest ack per assembler waits
            del self._pending[shard]
            self.acks_sent += 1

    def close(self, linger_ms: int) -> None:
        self.outlet.close(linger_ms=linger_ms)
