"""The tree keeper's reorder window: events reach the process table in kernel order.

The assembler completes events in EOE order and N sharded assemblers interleave;
laurel updates its table from SYSCALL records as they arrive, so it sees forks in
kernel order. Feeding the table through this window gives us the same order.

Two ways out of the window:
- by time: an event leaves once it is ``window_ms`` (of event time, or of the wall
  clock live) older than the slowest source still sending; this is the only way in
  replay, so a replay's documents never depend on timing;
- by claim (live): each assembler says with every frame which key it has sent
  everything below (``sent_below``: its oldest open event, or just past the last
  record it received). An event below the claims of every source still sending can
  no longer be overtaken by an event an assembler has already seen, so it leaves at
  once. The window is then the longest an event waits, not the shortest.

Event time can go back for good: files given newest first (``replay audit.log*``), a log
made of several hosts' logs end to end, a clock stepped back, one record stamped far in
the future. The window would then hold the events ahead of the new times until the end
of input, and with them the acknowledgements the receiver waits for. So when
:data:`BACKWARD_RUN` events in a row of one source are more than ``jump_ms`` older than
its newest, that source starts a new timeline: everything held leaves, in order, and its
newest time is the new timeline's. An isolated old event (a syscall that blocked for an
hour is stamped at its entry) does not count: the next event of normal time resets the run.
"""

from __future__ import annotations

import heapq
from typing import Any, Generic, TypeVar, cast

from auditstream.native import load_native

T = TypeVar("T")
OrderKey = tuple[int, int]  # (event time in ms, serial): the order the table wants
BACKWARD_RUN = 32  # events in a row behind a source's newest by more than jump_ms
MIN_JUMP_MS = 1000


class ReorderWindow(Generic[T]):
    """Hold events for ``window_ms`` of event time; release them in (time, serial) order.

    Each source (assembler) has its own newest time and the window moves with the
    slowest source that still sends: sharded assemblers drift apart by more than the
    window under load, and the events of the one behind would come too late.
    ``max_held`` bounds memory under a time jump.
    """

    def __init__(
        self, window_ms: int = 250, max_held: int = 10000, sources: int = 0, jump_ms: int = 0
    ) -> None:
        """``sources``: how many must have sent an event before anything is released by time
        (an assembler that starts late is otherwise already behind); 0 waits for none.
        ``jump_ms``: a step back in one source's event time that may start a new timeline
        (0: four windows, at least :data:`MIN_JUMP_MS`)."""
        self.window_ms = window_ms
        self.max_held = max_held
        self.jump_ms = jump_ms or max(MIN_JUMP_MS, 4 * window_ms)
        # source -> (events in a row far behind its newest, the newest time among them)
        self._behind: dict[int, tuple[int, int]] = {}
        self.timelines = 0  # times a source's event time went back for good
        self.last_jump_ms = 0  # how far back the last one went
        self._heap: list[tuple[int, int, int, T]] = []
        self._count = 0
        # source -> its newest event time; -1: expected, nothing seen yet
        self._newest: dict[int, int] = dict.fromkeys(range(sources), -1)
        self._closed: set[int] = set()  # sources that ended: they do not hold the window
        self._horizon = self._slowest()
        # source -> its latest sent_below claim (live only)
        self._claims: dict[int, OrderKey] = {}
        self.released_by_claim = 0
        self.released_full = 0  # events let go because max_held were held, before their time

    def horizon(self) -> int:
        """The event time every source still sending has reached (below 1 before that)."""
        return self._horizon

    def _slowest(self) -> int:
        open_times = [t for s, t in self._newest.items() if s not in self._closed]
        if open_times:
            return min(open_times)
        return max(self._newest.values(), default=0)

    def close_source(self, source: int) -> list[T]:
        """``source`` sends nothing more (its eof): stop waiting for it; return what that frees."""
        self._closed.add(source)
        self._claims.pop(source, None)
        self._horizon = self._slowest()
        return self._release_claimed()

    def push(self, item: T, at_ms: int, serial: int, source: int = 0) -> list[T]:
        """Add one event; return the events now older than the window, in order."""
        out: list[T] = []
        self.push_into(item, at_ms, serial, source, out)
        return out

    def push_into(self, item: T, at_ms: int, serial: int, source: int, out: list[T]) -> None:
        """:meth:`push`, appending what it releases to ``out`` (one list for a whole frame)."""
        # _note_time and _release_by_time, inlined: this runs for every event.
        newest = self._newest.get(source, -1)
        if at_ms < newest - self.jump_ms:
            out += self._note_time(at_ms, source)
        else:
            if self._behind:
                self._behind.pop(source, None)
            if at_ms > newest:
                self._newest[source] = at_ms
                if newest <= self._horizon or source in self._closed:
                    self._horizon = self._slowest()
        self._count += 1
        heap = self._heap
        heapq.heappush(heap, (at_ms, serial, self._count, item))
        limit = self._horizon - self.window_ms
        while heap and heap[0][0] < limit:
            out.append(heapq.heappop(heap)[3])
        if len(heap) > self.max_held:
            self._release_full(out)

    def push_frame(self, events: list[Any], source: int, out: list[Any], start: int = 0) -> int:
        """The tree keeper's loop over a frame's events from ``start``: each event with
        records goes in at ``sec * 1000 + msec`` of its key ``[node, sec, msec, serial]``,
        what that releases onto ``out``. Returns the index of the first event it leaves to
        the caller (a marker: no records), else ``len(events)``. (The C window also leaves
        to the caller an event whose key is not ``[str, int, int, int]``.)"""
        for at in range(start, len(events)):
            event = events[at]
            if not event["raw"]:
                return at
            _, sec, msec, serial = event["key"]
            self.push_into(event, sec * 1000 + msec, serial, source, out)
        return len(events)

    def see(self, at_ms: int, source: int = 0) -> list[T]:
        """An event of ``source`` that does not go through the window (a duplicate dropped)
        still says how far that source's time has moved: return what that releases."""
        return self._release_by_time(self._note_time(at_ms, source))

    def _note_time(self, at_ms: int, source: int) -> list[T]:
        """Move ``source``'s newest time; everything held when its time went back for good."""
        newest = self._newest.get(source, -1)
        if at_ms < newest - self.jump_ms:
            if self._went_back(source, at_ms, newest):
                return self.flush()  # what was ahead of the new timeline waits for nothing
            return []
        if self._behind:
            self._behind.pop(source, None)  # back to its time: those were isolated old events
        if at_ms > newest:  # only then can the horizon move
            self._newest[source] = at_ms
            # The horizon is the slowest open source's time: a source ahead of it moving
            # further ahead leaves it where it is (no min() over the sources per event).
            if newest <= self._horizon or source in self._closed:
                self._horizon = self._slowest()
        return []

    def _release_by_time(self, out: list[T]) -> list[T]:
        limit = self._horizon - self.window_ms
        heap = self._heap
        while heap and heap[0][0] < limit:
            out.append(heapq.heappop(heap)[3])
        if len(heap) > self.max_held:
            self._release_full(out)
        return out

    def _release_full(self, out: list[T]) -> None:
        """Memory bound: the oldest leave before their time; an event of a source behind
        may then reach the table after later ones (counted: ``released_full``)."""
        heap = self._heap
        while len(heap) > self.max_held:
            out.append(heapq.heappop(heap)[3])
            self.released_full += 1

    def _went_back(self, source: int, at_ms: int, newest: int) -> bool:
        """Count one more event far behind ``source``'s newest; True when its time has gone
        back for good (its newest is then the new timeline's)."""
        run, run_newest = self._behind.get(source, (0, at_ms))
        run, run_newest = run + 1, max(run_newest, at_ms)
        if run < BACKWARD_RUN:
            self._behind[source] = (run, run_newest)
            return False
        del self._behind[source]
        self._newest[source] = run_newest
        self._horizon = self._slowest()
        self.timelines += 1
        self.last_jump_ms = newest - run_newest
        return True

    def claim(self, source: int, sent_below: OrderKey) -> list[T]:
        """``source`` has sent every event it has seen below ``sent_below``: release, in order,
        what no source still sending can precede any more."""
        if source in self._closed:
            return []
        self._claims[source] = sent_below
        return self._release_claimed()

    def _release_claimed(self) -> list[T]:
        claims = self._claims
        if not self._heap or not claims:
            return []
        # Every source that may still send must have claimed: an expected one that has
        # not (a late start) could still send anything.
        for source in self._newest:
            if source not in claims and source not in self._closed:
                return []
        limit = min(claims.values())
        out: list[T] = []
        heap = self._heap
        while heap and (heap[0][0], heap[0][1]) < limit:
            out.append(heapq.heappop(heap)[3])
        self.released_by_claim += len(out)
        return out

    def due(self, now_ms: int) -> list[T]:
        """Release what is older than the window at ``now_ms`` (live: the wall clock)."""
        out: list[T] = []
        limit = now_ms - self.window_ms
        while self._heap and self._heap[0][0] < limit:
            out.append(heapq.heappop(self._heap)[3])
        return out

    def flush(self) -> list[T]:
        """Release everything held, in order (end of input)."""
        out = [heapq.heappop(self._heap)[3] for _ in range(len(self._heap))]
        return out


# The C window where built and allowed (treekeeper/csrc/reorder.c); the class above stays
# the reference (tests/test_native_reorder.py holds the two equal).
_NATIVE_WINDOW: Any = load_native("treekeeper.native_reorder", "ReorderWindow")


def new_window(*, window_ms: int, max_held: int, sources: int) -> ReorderWindow[Any]:
    """A reorder window: the C one where built and allowed, else :class:`ReorderWindow`."""
    if _NATIVE_WINDOW is not None:
        window = _NATIVE_WINDOW(window_ms=window_ms, max_held=max_held, sources=sources)
        return cast(ReorderWindow[Any], window)
    return ReorderWindow(window_ms=window_ms, max_held=max_held, sources=sources)
