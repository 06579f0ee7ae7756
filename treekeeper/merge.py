"""Replay: the frames of sharded assemblers taken in event-time order, not arrival order.

Each assembler ships its events in roughly its own event-time order, but nothing keeps
two assemblers at the same time: the tree keeper's inlet reads its peers' pipes in turn,
so whatever one pipe got ahead stays ahead, by seconds of event time. The reorder
window (treekeeper/reorder.py) then held up to its bound (``max_held``) of decoded
events, and past the bound let them go before the behind assembler's earlier ones had
come: the process table saw children before their fork, and a replay's documents
depended on the number of assemblers and on timing (measured: 7.6 % of the docs of an
800k-line replay with two assemblers differed from those of one).

So in replay the tree keeper reads every frame that has arrived and parks it, as
received (undecoded docs, a few hundred bytes per event), in a queue per assembler;
it takes next the parked frame whose first event is oldest, once every assembler
still sending has one parked. Each assembler's frames keep their order. The window
then holds about a frame's worth of events.

Waiting for an assembler has two bounds, so that parking never stalls the stream: the
parked events (``max_events``; unacknowledged frames keep the receiver's replay buffer
full) and input that stops (the tree keeper's ``MERGE_PATIENCE_MS`` without a frame,
``take(stalled=True)``: the assembler we wait for may be waiting for the receiver, which
waits for acknowledgements). Either takes the oldest parked frame, as before parking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from auditstream import wire
from auditstream.native import load_native

IMMEDIATE = -1  # the order key of a frame that holds no timed event: it goes at once
# frame_order_key's loop in C where built and allowed (treekeeper/csrc/reorder.c); the loop
# below stays the reference (tests/test_native_reorder.py holds the two equal).
_NATIVE_OLDEST: Callable[[list[Any]], int | None] | None = load_native(
    "treekeeper.native_reorder", "oldest_event_ms"
)


def frame_order_key(frame: wire.Frame) -> int:
    """Event ms of the frame's oldest audit event; :data:`IMMEDIATE` when it has none
    (an eof, a frame of markers or of acknowledgement fields only)."""
    if frame.kind != wire.EVENTS or type(frame.body) is not dict:
        return IMMEDIATE
    events = frame.body.get("events")
    if type(events) is not list:
        return IMMEDIATE
    if _NATIVE_OLDEST is not None:
        found: int | None = _NATIVE_OLDEST(events)
        if found is not None:
            return found
    return oldest_event_ms(events)


def oldest_event_ms(events: list[Any]) -> int:
    """The smallest event time (ms) of the events with records and a well-formed key."""
    oldest = IMMEDIATE
    for event in events:
        if type(event) is not dict or not event.get("raw"):  # markers skip the window
            continue
        key = event.get("key")
        if type(key) is not list or len(key) != 4:
            continue
        sec, msec = key[1], key[2]
        if type(sec) is not int or type(msec) is not int:
            continue
        at_ms = sec * 1000 + msec
        if oldest == IMMEDIATE or at_ms < oldest:
            oldest = at_ms
    return oldest


def frame_event_count(frame: wire.Frame) -> int:
    if type(frame.body) is not dict:
        return 0
    events = frame.body.get("events")
    return len(events) if type(events) is list else 0


class FrameMerge:
    """Park frames per sender; hand them back in order of their oldest event's time."""

    def __init__(self, sources: int, max_events: int) -> None:
        self.sources = sources
        self.max_events = max_events
        self._parked: dict[int, deque[tuple[int, int, wire.Frame]]] = {}
        self._closed: set[int] = set()  # senders whose eof has been handed back
        self.parked_events = 0
        self.taken_early = 0  # frames taken without every sender having one parked

    @property
    def parked_frames(self) -> int:
        return sum(len(queue) for queue in self._parked.values())

    def add(self, frame: wire.Frame) -> None:
        """Park a frame that arrived."""
        count = frame_event_count(frame)
        queue = self._parked.setdefault(frame.sender, deque())
        queue.append((frame_order_key(frame), count, frame))
        self.parked_events += count

    def take(self, *, stalled: bool = False) -> list[wire.Frame]:
        """The frames that may go now, in order. ``stalled``: no frame came for the
        patience: the oldest parked one goes even though a sender has none parked."""
        out: list[wire.Frame] = []
        while True:
            frame = self._next(force=stalled or self.parked_events > self.max_events)
            if frame is None:
                return out
            stalled = False  # one frame per stall: it may be all the stalled sender waited for
            out.append(frame)

    def drain(self) -> list[wire.Frame]:
        """Every parked frame, in order (the input ended)."""
        out: list[wire.Frame] = []
        while (frame := self._next(force=True)) is not None:
            out.append(frame)
        return out

    def _next(self, force: bool) -> wire.Frame | None:
        best: int | None = None
        best_key = 0
        waiting_for_one = False
        for sender in range(self.sources):
            queue = self._parked.get(sender)
            if not queue:
                if sender not in self._closed:
                    waiting_for_one = True
                continue
            key = queue[0][0]
            if key == IMMEDIATE:
                return self._pop(sender)
            if best is None or key < best_key:
                best, best_key = sender, key
        for sender, queue in self._parked.items():  # a sender numbered past the expected
            if queue and not 0 <= sender < self.sources:
                return self._pop(sender)
        if best is None or (waiting_for_one and not force):
            return None
        if waiting_for_one:
            self.taken_early += 1
        return self._pop(best)

    def _pop(self, sender: int) -> wire.Frame:
        queue = self._parked[sender]
        _, count, frame = queue.popleft()
        self.parked_events -= count
        if frame.kind == wire.EOF_KIND:
            # Not waited for any more. Should it send again (a resend after a restart
            # behind it), its frames still go in order, only without waiting for it.
            self._closed.add(sender)
        return frame
