"""Group audit records into events and detect lost events from serial gaps.

Modelled on go-libaudit's Reassembler (push / maintain / close, complete and
lost callbacks), with the rules of DESIGN §3:

* An event is keyed on ``(node, sec, msec, serial)``. It completes at its EOE
  record; the EOE stays in the event's record list (the raw file sink writes it
  back so ``ausearch`` can read the output; other consumers skip type 1320).
* Records that never have companions complete at once (reason SINGLE):
  everything outside the kernel range 1300-2099, except LOGIN (1006), which
  modern kernels emit inside a syscall context followed by SYSCALL and EOE
  (laurel's ``record-login.txt``); and KERNEL (2000), the boot-time
  "audit initialized" record, which has no syscall context. A single record is
  its own event even when a kernel event shares its serial (systemd's
  SERVICE_START is sent from an audited ``sendto``); it does not claim the key.
* Otherwise an event completes ``timeout_ms`` after its first record (checked by
  :meth:`Reassembler.maintain`), or when more than ``max_in_flight`` events are
  open (oldest first), or at :meth:`Reassembler.close`. An event that reaches
  ``max_records_per_event`` records is also evicted (memory bound); what follows
  for its key is LATE.
* A record arriving for a key that completed recently is emitted alone with
  reason LATE: never merged into a wrong event, never dropped.
* An EOE for an unknown key opens the event (records delivered out of order);
  it then completes at the timeout with every record that arrived for it.

Loss: per node, serials are unwrapped to an unbounded integer (2^32 rollover is
continuity) and a frontier marks "every serial below is settled". A gap below a
completed serial is reported lost only once no open event of that node lies
below it and the serial after the gap completed ``timeout_ms`` ago (or at
close), because events complete out of order. A jump of more than 2^24 ahead,
or of more than 2^12 back, is a discontinuity (reboot, another log), never loss.
A record cut inside its header (a torn line) is reported as a parse error with its
text; :meth:`Reassembler.note_cut_record` lets it stand for the serial after the
newest seen, which then is not reported lost a second time (docs/schema.md).

Clock: ``now_ms`` is event time for files and wall time live. The reassembler
keeps the largest value seen, so a clock that steps back never un-expires
anything and open events stay in time order (one dict, oldest first).
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from assembler.recent_keys import RecentKeys as PyRecentKeys
from auditstream.native import load_native
from auditstream.record_kinds import EOE_TYPE, KERNEL_TYPE, LOGIN_TYPE

# The keys of the events completed last (a late record's is among them): in C where built,
# so that assembler/csrc/runs.c adds to it without a Python call.
RecentKeys: type[PyRecentKeys] = (
    load_native("assembler.native_recent", "RecentKeys") or PyRecentKeys
)
SERIAL_MODULUS = 1 << 32
SERIAL_MASK = SERIAL_MODULUS - 1
# Larger serial jumps are a new serial space, not loss (go-libaudit's 2^24 rule).
DISCONTINUITY_JUMP = 1 << 24
# Going back, more than this is a new serial space too: the kernel's records come nearly
# in serial order (out of order by what two CPUs interleave), while a reboot starts again
# at 1 and an older log given later starts lower; as a gap, either read as the whole
# distance lost.
BACKWARD_JUMP = 1 << 12
# Each new serial space starts this far above the last, so spaces never overlap.
_SPACE_STRIDE = 1 << 40
# What unwrap() says about a serial: in the current space, the second of a new space
# (the first stood alone until then), or one that stands alone for now (_NodeSerials._far).
IN_SPACE, NEW_SPACE, ALONE = 0, 1, 2
MAX_ALONE_SERIALS = 64  # remembered, so that their completions stay out of gap tracking
# Gap tracking starts this far below a node's first serial: records come nearly in serial
# order, so anything lower predates where reading began (a stray, or the tail of an
# earlier log) and is no evidence that the serials between it and the first were lost.
START_SLACK = 256
# Bounds on bookkeeping that hostile input could otherwise grow without limit.
MAX_PENDING_SERIALS = 1 << 16
MAX_CLAIMED_SERIALS = 64
MAX_NODES = 4096

EventKey = tuple[str, int, int, int]


class AuditRecord(Protocol):
    """What the reassembler reads from a record (``assembler.parse.Record`` fits)."""

    @property
    def type(self) -> int: ...
    @property
    def node(self) -> str: ...
    @property
    def sec(self) -> int: ...
    @property
    def msec(self) -> int: ...
    @property
    def serial(self) -> int: ...


RecordT = TypeVar("RecordT", bound=AuditRecord)


class CompletionReason(enum.Enum):
    """Why an event was handed on."""

    EOE = "eoe"
    SINGLE = "single"
    TIMEOUT = "timeout"
    EVICTED = "evicted"
    CLOSED = "closed"
    LATE = "late"

    # Members are singletons compared by identity: hash them by identity too. Enum's own
    # __hash__ is a Python function, run for every counter update and set lookup per event.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class LostRange:
    """Serials ``first_serial..last_serial`` (inclusive, may wrap past 2^32-1) never arrived."""

    node: str
    first_serial: int
    last_serial: int
    count: int


@dataclass(slots=True)
class ReassemblerStats:
    """Counters; ``in_flight`` is the number of open events right now."""

    records: int = 0
    events: dict[CompletionReason, int] = field(
        default_factory=lambda: dict.fromkeys(CompletionReason, 0)
    )
    lost: int = 0
    late_records: int = 0
    discontinuities: int = 0
    # Events whose serial fit neither the serial space nor began a new one (not tracked).
    stray_serials: int = 0
    # Events whose serial was already settled (duplicate serial, or reported lost earlier).
    stale_serials: int = 0
    in_flight: int = 0


class _OpenEvent(Generic[RecordT]):
    """An event still collecting records."""

    __slots__ = ("batch", "first_ms", "records", "unwrapped")

    def __init__(self, record: RecordT, first_ms: int, unwrapped: int, batch: int) -> None:
        self.records = [record]
        self.first_ms = first_ms
        self.unwrapped = unwrapped
        self.batch = batch  # the input batch of its first record (redelivery watermark)


class _NodeSerials:
    """One node's serial space: unwrapping, completed-but-unsettled serials, frontier."""

    __slots__ = (
        "alone", "candidate", "candidate_new_space", "claimed", "completed_at", "floor",
        "frontier", "last_seen", "offset", "pending", "stats", "stride",
    )  # fmt: skip

    def __init__(
        self, stride: int = 1, offset: int = 0, stats: ReassemblerStats | None = None
    ) -> None:
        # With N sharded assemblers this one sees only serials offset, offset+N, …:
        # gaps are tracked on serial // N, and reported back in kernel serials.
        self.stride = stride
        self.offset = offset
        self.stats = stats if stats is not None else ReassemblerStats()
        # Unwrapped serial of the newest event opened; None before the first.
        self.last_seen: int | None = None
        # Every unwrapped serial below the frontier is settled; None until first settle.
        self.frontier: int | None = None
        self.floor = 0  # until the first settle, completions below this are not tracked
        self.pending: list[int] = []  # heap of completed serials at or above the frontier
        self.completed_at: dict[int, int] = {}  # pending serial -> clock when completed
        # A serial far from the space's newest waits for the next to decide (_far()); it
        # and the recent strays are out of gap tracking: unwrapped -> completion clock.
        self.candidate: int | None = None
        self.candidate_new_space = False
        self.alone: dict[int, int | None] = {}
        # Unwrapped serials a cut record stands for (claim_next): a gap leaves them out.
        self.claimed: set[int] = set()

    def unwrap(self, serial: int) -> tuple[int, int]:
        """Map a 32-bit serial to this node's unbounded line, and say how it fits
        (IN_SPACE, NEW_SPACE, ALONE)."""
        if self.stride != 1:
            serial //= self.stride  # sharded: rollover then reads as a discontinuity, not loss
        serial &= SERIAL_MASK
        last = self.last_seen
        if last is None:
            self.last_seen = serial
            self.floor = serial - START_SLACK
            return serial, IN_SPACE
        delta = (serial - last) & SERIAL_MASK
        if delta >= SERIAL_MODULUS >> 1:
            delta -= SERIAL_MODULUS
        if -BACKWARD_JUMP <= delta <= BACKWARD_JUMP:
            unwrapped = last + delta
            if delta > 0:
                self.last_seen = unwrapped
                if self.candidate is not None:
                    self._stray()  # the space went on: the far one was a stray
            return unwrapped, IN_SPACE
        return self._far(serial, last, delta)

    def _far(self, serial: int, last: int, delta: int) -> tuple[int, int]:
        """A serial far from the space's newest. It stands alone, out of gap tracking, until
        the next serial decides. One close to it (another serial): it was the first of a new
        space (a reboot, an older log; more than 2^12 back or 2^24 ahead) or the end of a
        real gap (up to 2^24 ahead), and is tracked from then on. One that goes on from the
        space's newest: it was a stray (a corrupt or forged line), counted and never
        tracked. So one stray line no longer reports the distance to it as lost."""
        candidate = self.candidate
        if candidate is not None:
            near = (serial - candidate) & SERIAL_MASK
            if near >= SERIAL_MODULUS >> 1:
                near -= SERIAL_MODULUS
            if near == 0:
                return candidate, ALONE
            if -BACKWARD_JUMP <= near <= BACKWARD_JUMP:
                unwrapped = candidate + near
                self.last_seen = max(candidate, unwrapped)
                self.candidate = None
                completed = self.alone.pop(candidate, None)
                if completed is not None:  # it completed while alone: track it now
                    self.note_completed(candidate, completed)
                return unwrapped, NEW_SPACE if self.candidate_new_space else IN_SPACE
            self._stray()  # neither close to it nor to the space: it was a stray
        if BACKWARD_JUMP < delta <= DISCONTINUITY_JUMP:
            unwrapped, self.candidate_new_space = last + delta, False
        else:  # far above everything so far (spaces never overlap), same low 32 bits
            base = max(last, candidate or 0) + _SPACE_STRIDE
            unwrapped, self.candidate_new_space = (base & ~SERIAL_MASK) | serial, True
        self.candidate = unwrapped
        alone = self.alone
        alone[unwrapped] = None
        if len(alone) > MAX_ALONE_SERIALS:
            del alone[next(iter(alone))]
        return unwrapped, ALONE

    def _stray(self) -> None:
        self.candidate = None
        self.stats.stray_serials += 1

    def claim_next(self, digits: bytes) -> bool:
        """A record cut inside its header came after the newest serial seen: let it stand
        for the next serial, which its parse-error event reports with its text, if its
        serial ``digits`` (a cut serial's beginning) fit that serial. Without digits only
        when every serial comes here: with several assemblers the next one may be
        another's. False: nothing claimed (that gap, if any, is reported as lost)."""
        last = self.last_seen
        if last is None or self.candidate is not None or (not digits and self.stride != 1):
            return False
        claim = last + 1
        serial = (claim & SERIAL_MASK) * self.stride + self.offset
        if not str(serial).encode("ascii").startswith(digits):
            return False
        claimed = self.claimed
        if self.frontier is not None:
            claimed.difference_update([s for s in claimed if s < self.frontier])
        if len(claimed) >= MAX_CLAIMED_SERIALS:
            claimed.discard(min(claimed))
        claimed.add(claim)
        return True

    def _gap(self, node: str, first: int, end: int) -> list[LostRange]:
        """The lost ranges of unwrapped serials ``first..end-1``, less the claimed ones."""
        lost: list[LostRange] = []
        claimed = self.claimed
        cuts = sorted(s for s in claimed if first <= s < end) if claimed else []
        for serial in cuts:
            claimed.discard(serial)
            if first < serial:
                lost.append(self._range(node, first, serial))
            first = serial + 1
        if first < end:
            lost.append(self._range(node, first, end))
        return lost

    def _range(self, node: str, first: int, end: int) -> LostRange:
        low, high = first & SERIAL_MASK, (end - 1) & SERIAL_MASK
        if self.stride != 1:
            low = low * self.stride + self.offset
            high = high * self.stride + self.offset
        return LostRange(node, low, high, end - first)

    def note_completed(self, unwrapped: int, now_ms: int) -> bool:
        """Record a completed serial; False if it was already settled or completed."""
        alone = self.alone
        if alone and unwrapped in alone:
            if alone[unwrapped] is None:  # kept, in case the next serial makes it tracked
                alone[unwrapped] = now_ms
            return True  # alone: neither a gap before it nor a frontier past it
        frontier = self.frontier
        if frontier is not None and unwrapped <= frontier:
            if unwrapped < frontier:
                return False
            # In-order fast path: advance over it and any completed serials after it.
            frontier += 1
            pending = self.pending
            while pending and pending[0] == frontier:
                del self.completed_at[heapq.heappop(pending)]
                frontier += 1
            self.frontier = frontier
            return True
        if unwrapped in self.completed_at or (frontier is None and unwrapped < self.floor):
            return False
        heapq.heappush(self.pending, unwrapped)
        self.completed_at[unwrapped] = now_ms
        return True

    def settle(
        self, node: str, settled_before_ms: int | None, lowest_open: int | None
    ) -> list[LostRange]:
        """Advance the frontier over completed serials; return the gaps it passes.

        ``settled_before_ms`` None forces settling (close, memory bound); otherwise a
        serial counts only if it completed at or before that clock value. Nothing at
        or above ``lowest_open`` (the node's lowest open event) is passed.
        """
        lost: list[LostRange] = []
        pending = self.pending
        while pending:
            lowest = pending[0]
            if settled_before_ms is not None and (
                self.completed_at[lowest] > settled_before_ms
                or (lowest_open is not None and lowest_open < lowest)
            ):
                break
            heapq.heappop(pending)
            del self.completed_at[lowest]
            frontier = self.frontier
            # A larger gap is a new serial space, counted at unwrap.
            if frontier is not None and frontier < lowest <= frontier + DISCONTINUITY_JUMP:
                lost += self._gap(node, frontier, lowest)
            self.frontier = lowest + 1
            while pending and pending[0] == lowest + 1:
                lowest = heapq.heappop(pending)
                del self.completed_at[lowest]
                self.frontier = lowest + 1
        return lost


class Reassembler(Generic[RecordT]):
    """Turns a stream of records into complete events; not thread-safe."""

    def __init__(
        self,
        on_complete: Callable[[list[RecordT], CompletionReason], None],
        on_lost: Callable[[LostRange], None],
        *,
        max_in_flight: int = 1000,
        timeout_ms: int = 2000,
        max_recent: int = 16384,
        max_records_per_event: int = 8192,
        shard: tuple[int, int] = (0, 1),
        max_open_batches: int = 0,
    ) -> None:
        """``shard`` = (index, count): this reassembler gets serials with serial % count == index.
        ``max_open_batches``: :meth:`maintain` completes (EVICTED) an event whose first record
        came that many input batches ago (0: no bound), see :meth:`maintain`."""
        if min(max_in_flight, max_recent, max_records_per_event) < 1 or timeout_ms < 0:
            raise ValueError("limits must be >= 1 and timeout_ms >= 0")
        self._on_complete = on_complete
        self._on_lost = on_lost
        self._max_in_flight = max_in_flight
        self._timeout_ms = timeout_ms
        self._max_records_per_event = max_records_per_event
        self._max_open_batches = max_open_batches
        # Insertion order is age order (the clock never goes back): oldest first.
        self._open: OrderedDict[EventKey, _OpenEvent[RecordT]] = OrderedDict()
        self._recent = RecentKeys(max_recent)
        self._nodes: dict[str, _NodeSerials] = {}
        self._shard_index, self._shard_count = shard
        self._clock = 0
        self._stats = ReassemblerStats()
        # The number of the input batch being pushed (set by the caller); open events keep
        # the one of their first record, so the caller knows which batches are fully out.
        self.batch = 0

    @property
    def stats(self) -> ReassemblerStats:
        """Live counters (``in_flight`` refreshed on read)."""
        self._stats.in_flight = len(self._open)
        return self._stats

    def push(self, rec: RecordT, now_ms: int) -> None:
        """Add one record; may complete events through the callbacks."""
        stats = self._stats
        stats.records += 1
        if now_ms > self._clock:
            self._clock = now_ms
        rtype = rec.type
        # completes_alone(rtype), inlined: this runs for every record.
        if (rtype < 1300 or rtype >= 2100 or rtype == KERNEL_TYPE) and rtype != LOGIN_TYPE:
            node = self._node(rec.node)
            unwrapped, fit = node.unwrap(rec.serial)
            if fit:
                self._count_fit(fit)
            stats.events[CompletionReason.SINGLE] += 1
            self._on_complete([rec], CompletionReason.SINGLE)
            self._note_completed(node, rec.node, unwrapped)
            return
        key = (rec.node, rec.sec, rec.msec, rec.serial)
        event = self._open.get(key)
        if event is not None:
            records = event.records
            records.append(rec)
            if rtype == EOE_TYPE:
                self._finish(key, event, CompletionReason.EOE)
            elif len(records) >= self._max_records_per_event:
                # Memory bound against a flood of one key (same timestamp: never times out).
                self._finish(key, event, CompletionReason.EVICTED)
            return
        if key in self._recent:
            stats.late_records += 1
            stats.events[CompletionReason.LATE] += 1
            self._on_complete([rec], CompletionReason.LATE)
            return
        node = self._node(rec.node)
        unwrapped, fit = node.unwrap(rec.serial)
        if fit:
            self._count_fit(fit)
        # An EOE seen first opens the event: the rest of it is still on its way.
        self._open[key] = _OpenEvent(rec, self._clock, unwrapped, self.batch)
        if len(self._open) > self._max_in_flight:
            self._evict_oldest()

    def push_run(self, records: list[RecordT], now_ms: int) -> None:
        """:meth:`push` each of ``records``, in order, with one key lookup for all.

        For a run as :func:`assembler.batch.parse_batch` cuts them: one key, no record
        that completes alone (but in a run of one), an EOE only last. Anything the
        shortcut does not cover (one record, a key completed recently, a run that may
        reach ``max_records_per_event``) goes record by record.
        """
        first = records[0]
        if len(records) == 1:
            self.push(first, now_ms)
            return
        key = (first.node, first.sec, first.msec, first.serial)
        event = self._open.get(key)
        held = len(event.records) if event is not None else 0
        if held + len(records) >= self._max_records_per_event or (
            event is None and key in self._recent
        ):
            for rec in records:
                self.push(rec, now_ms)
            return
        stats = self._stats
        stats.records += len(records)
        if now_ms > self._clock:
            self._clock = now_ms
        if event is None:
            node = self._nodes.get(first.node) or self._node(first.node)
            unwrapped, fit = node.unwrap(first.serial)
            if fit:
                self._count_fit(fit)
            if records[-1].type == EOE_TYPE:
                # The whole event in one run (most events): complete it without opening it,
                # but evict as opening it would have (record by record it would be open).
                # This is _done() inlined, with note_completed()'s in-order case: it runs
                # for nearly every event, and each Python call is ~0.1 µs of ~11.
                if len(self._open) >= self._max_in_flight:
                    self._evict_oldest()
                self._recent.add(key)
                stats.events[CompletionReason.EOE] += 1
                self._on_complete(records, CompletionReason.EOE)
                if unwrapped == node.frontier and not node.pending and not node.alone:
                    node.frontier = unwrapped + 1
                else:
                    self._note_completed(node, first.node, unwrapped)
                return
            event = self._open[key] = _OpenEvent(first, self._clock, unwrapped, self.batch)
            if len(self._open) > self._max_in_flight:
                self._evict_oldest()
            event.records += records[1:]
        else:
            event.records += records
        if records[-1].type == EOE_TYPE:
            self._finish(key, event, CompletionReason.EOE)

    def oldest_open_batch(self) -> int | None:
        """The input batch of the oldest open event's first record (None: nothing open).

        Events are opened in arrival order and batch numbers only grow, so the oldest
        open event holds the smallest number.
        """
        for event in self._open.values():
            return event.batch
        return None

    def open_from(self) -> tuple[int, int] | None:
        """(event ms, serial) of the open event that sorts first; None: nothing open.

        Arrival order is not key order (records of two CPUs interleave), so all are read:
        a few live, at most ``max_in_flight``.
        """
        if not self._open:
            return None
        return min((sec * 1000 + msec, serial) for _, sec, msec, serial in self._open)

    def has_timed_work(self) -> bool:
        """maintain() may still have work without more input: an event is open, or a
        completed serial waits for the gap below it to settle (the assembler's idle wait)."""
        return bool(self._open) or any(node.pending for node in self._nodes.values())

    def renumber_open(self, batch: int) -> None:
        """Give every open event ``batch`` as its first batch (the batch numbering restarted)."""
        for event in self._open.values():
            event.batch = batch

    def maintain(self, now_ms: int) -> None:
        """Complete events older than the timeout and report gaps that can no longer fill."""
        if now_ms > self._clock:
            self._clock = now_ms
        deadline = self._clock - self._timeout_ms
        open_events = self._open
        while open_events:
            key, event = next(iter(open_events.items()))
            if event.first_ms > deadline:
                break
            self._finish(key, event, CompletionReason.TIMEOUT)
        # An open event holds its first batch in the receiver's replay buffer. In replay the
        # clock is event time, which moves only with more input, and more input waits for
        # room in that buffer: a record without its EOE (a log cut mid-event) in a log
        # denser than the buffer holds would stop the stream. So an event is also done
        # once it is this many batches old; a kernel's records of one event come together.
        if self._max_open_batches:
            oldest_allowed = self.batch - self._max_open_batches
            while open_events:
                key, event = next(iter(open_events.items()))
                if event.batch > oldest_allowed:
                    break
                self._finish(key, event, CompletionReason.EVICTED)
        self._settle_all(deadline)

    def close(self) -> None:
        """Complete every open event (CLOSED) and report every remaining gap."""
        while self._open:
            key, event = self._open.popitem(last=False)
            self._finish(key, event, CompletionReason.CLOSED, already_removed=True)
        for name, node in self._nodes.items():
            self._report(node.settle(name, None, None))

    def note_cut_record(self, node: str, digits: bytes) -> bool:
        """A record of ``node`` cut inside its header (its parse error carries its text):
        it stands for the next serial, see :meth:`_NodeSerials.claim_next`."""
        serials = self._nodes.get(node)
        return serials is not None and serials.claim_next(digits)

    def _node(self, name: str) -> _NodeSerials:
        node = self._nodes.get(name)
        if node is None:
            if len(self._nodes) >= MAX_NODES:
                self._forget_oldest_node()
            node = self._nodes[name] = _NodeSerials(
                self._shard_count, self._shard_index, self._stats
            )
        return node

    def _forget_oldest_node(self) -> None:
        # Hostile input with endless node names: settle and drop the oldest node's state.
        name = next(iter(self._nodes))
        self._report(self._nodes.pop(name).settle(name, None, None))

    def _finish(
        self,
        key: EventKey,
        event: _OpenEvent[RecordT],
        reason: CompletionReason,
        *,
        already_removed: bool = False,
    ) -> None:
        if not already_removed:
            del self._open[key]
        self._done(key, event.records, reason, self._nodes.get(key[0]), event.unwrapped)

    def _done(
        self,
        key: EventKey,
        records: list[RecordT],
        reason: CompletionReason,
        node: _NodeSerials | None,
        unwrapped: int,
    ) -> None:
        """Hand on the records of a completed event (no longer open) and note its serial."""
        self._recent.add(key)
        self._stats.events[reason] += 1
        self._on_complete(records, reason)
        if node is not None:
            self._note_completed(node, key[0], unwrapped)

    def _evict_oldest(self) -> None:
        """Complete the oldest open event (EVICTED): more than max_in_flight are open."""
        oldest_key, oldest = self._open.popitem(last=False)
        self._finish(oldest_key, oldest, CompletionReason.EVICTED, already_removed=True)

    def _count_fit(self, fit: int) -> None:
        if fit == NEW_SPACE:
            self._stats.discontinuities += 1

    def _note_completed(self, node: _NodeSerials, name: str, unwrapped: int) -> None:
        if not node.note_completed(unwrapped, self._clock):
            self._stats.stale_serials += 1
        elif len(node.pending) > MAX_PENDING_SERIALS:
            # Memory bound: settle the oldest gaps now, even if they might still fill.
            self._report(node.settle(name, None, None))

    def _settle_all(self, settled_before_ms: int) -> None:
        lowest_open: dict[str, int] = {}
        if any(node.pending for node in self._nodes.values()):
            for (name, _, _, _), event in self._open.items():
                current = lowest_open.get(name)
                if current is None or event.unwrapped < current:
                    lowest_open[name] = event.unwrapped
        for name, node in self._nodes.items():
            if node.pending:
                self._report(node.settle(name, settled_before_ms, lowest_open.get(name)))

    def _report(self, lost: list[LostRange]) -> None:
        for lost_range in lost:
            self._stats.lost += lost_range.count
            self._on_lost(lost_range)
