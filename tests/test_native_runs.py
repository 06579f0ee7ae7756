"""assembler.native_runs.push_items (C, assembler/csrc/runs.c) against assembler.batch.push_items.

Two reassemblers take the same batches, one through each function. After every batch and
at the close they must have handed out, reported lost and counted the same, and hold the
same state: open events, recently completed keys (in order), clock, and every node's
serial bookkeeping. The streams are kernel-like (whole runs in near serial order, with
gaps, repeats, strays, new serial spaces, events without EOE, lone records, markers),
interleaved (records alone that join an open event), random (hypothesis), sharded, in
event time and in wall time, with the bounds that make
push_run evict or go record by record. Ints beyond what C keeps, and an exception from the
completion callback, must leave what the Python function leaves.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module
from test_reassembler import SEC, Collector, _kernel_like_rows, random_rows

from assembler.batch import Unparsed, parse_batch, push_items
from assembler.parse import Record
from assembler.reassembler import CompletionReason, Reassembler

native_runs: Any = native_module("assembler.native_runs")

Row = tuple[int, bytes, str]


def state(reassembler: Reassembler[Record]) -> object:
    """Everything a reassembler holds, comparable between two of them."""
    nodes = {
        name: (
            node.stride, node.offset, node.last_seen, node.frontier, node.floor,
            list(node.pending), dict(node.completed_at), node.candidate,
            node.candidate_new_space, dict(node.alone),
        )
        for name, node in reassembler._nodes.items()
    }  # fmt: skip
    opened = [
        (
            key,
            [(r.type, r.serial) for r in event.records],
            event.first_ms,
            event.unwrapped,
            event.batch,
        )
        for key, event in reassembler._open.items()
    ]
    stats = reassembler.stats
    counters = (
        stats.records, dict(stats.events), stats.lost, stats.late_records, stats.discontinuities,
        stats.stray_serials, stats.stale_serials, stats.in_flight,
    )  # fmt: skip
    return opened, list(reassembler._recent), reassembler._clock, nodes, counters


def handed_out(collector: Collector) -> object:
    """The events (types, serials, nodes, reason) and losses a collector saw."""
    events = [
        ([(r.type, r.serial, r.node) for r in records], reason)
        for records, reason in collector.events
    ]
    return events, collector.lost


class Side:
    """A reassembler fed through one push_items, with what it handed out."""

    def __init__(self, push: Any, **limits: Any) -> None:
        self.push = push
        self.collector = Collector()
        self.unparsed: list[Unparsed] = []
        self.reassembler: Reassembler[Record] = Reassembler(
            self.collector.complete, self.collector.on_lost, **limits
        )
        self.clock = 0
        self.last: list[object] = []
        self.push_runs = 0  # calls of push_run: the runs C left to Python
        push_run = self.reassembler.push_run

        def counted(records: list[Record], now_ms: int) -> None:
            self.push_runs += 1
            push_run(records, now_ms)

        self.reassembler.push_run = counted  # type: ignore[method-assign]

    def batch(self, rows: list[Row], event_time: bool, wall_ms: int, number: int) -> None:
        items = parse_batch([list(row) for row in rows])
        self.reassembler.batch = number
        clock = self.clock if event_time else wall_ms
        self.clock, last = self.push(
            items, self.reassembler, clock, event_time, self.unparsed.append
        )
        self.last.append(None if last is None else (last.type, last.serial))
        self.reassembler.maintain(self.clock)

    def outcome(self) -> object:
        return (
            handed_out(self.collector),
            state(self.reassembler),
            self.unparsed,
            self.last,
            self.clock,
        )


def both_ways(rows: list[Row], size: int, event_time: bool, **limits: Any) -> tuple[Side, Side]:
    """Feed ``rows`` in batches of ``size`` both ways; equal after every batch and the close."""
    python, native = Side(push_items, **limits), Side(native_runs.push_items, **limits)
    for number, start in enumerate(range(0, len(rows), size)):
        for side in (python, native):
            side.batch(rows[start : start + size], event_time, 5 * start, number)
        assert native.outcome() == python.outcome(), start
    for side in (python, native):
        side.reassembler.close()
    assert native.outcome() == python.outcome()
    return python, native


def kernel_rows(rng: random.Random, count: int, swaps: float = 0.05) -> list[Row]:
    """Kernel-like events (test_reassembler's, with some neighbours swapped: completed out of
    order) with receiver markers and bad lines among them, and event time moving on per event
    (so that events time out and serials settle)."""
    events: list[list[Row]] = []
    for rtype, data, node in _kernel_like_rows(rng, count):
        if (
            events
            and events[-1][-1][1] == data
            and events[-1][-1][2] == node
            and events[-1][-1][0] != 1320
        ):
            events[-1].append((rtype, data, node))
        else:
            events.append([(rtype, data, node)])
    for index in range(len(events) - 1):
        if rng.random() < swaps:
            events[index], events[index + 1] = events[index + 1], events[index]
    rows: list[Row] = []
    for index, event in enumerate(events):
        if rng.random() < 0.01:
            rows.append((rng.choice([0, -1]), b"lost=3", ""))
        if rng.random() < 0.005:
            rows.append((1300, b"no header here", event[0][2]))
        stamp = b"%d.%03d:" % (SEC + index // 40, index % 1000)
        rows += [
            (rtype, data.replace(b"%d.000:" % SEC, stamp), node) for rtype, data, node in event
        ]
    return rows


@pytest.mark.parametrize("seed", range(30))
def test_kernel_like_streams(seed: int) -> None:
    """Kernel-like streams give the same hand-outs, losses, counters and state both ways."""
    rng = random.Random(seed)
    limits = {
        "timeout_ms": rng.choice([0, 2, 50, 10**9]),
        "max_recent": rng.choice([16384, 4]),
        "max_in_flight": rng.choice([1000, 3]),
        "max_records_per_event": rng.choice([8192, 3]),
    }
    python, native = both_ways(
        kernel_rows(rng, 400), rng.randint(5, 80), rng.random() < 0.5, **limits
    )
    if limits["max_records_per_event"] > 3:  # C takes most runs itself
        assert native.push_runs < 0.4 * python.push_runs, (native.push_runs, python.push_runs)


@pytest.mark.parametrize("seed", range(6))
def test_sharded_streams(seed: int) -> None:
    """One shard's serials (every third), kernel-like, give the same both ways."""
    rng = random.Random(seed)
    rows = [
        row for row in kernel_rows(rng, 900)
        if row[0] <= 0 or b"):" not in row[1] or int(row[1].split(b":", 1)[1].split(b")")[0]) % 3 == 1
    ]  # fmt: skip
    both_ways(rows, rng.randint(5, 80), True, shard=(1, 3), timeout_ms=rng.choice([0, 50]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_streams(data: st.DataObject) -> None:
    """Random rows of run types, markers and serials give the same both ways."""
    raw = random_rows(data)
    limits = {
        "timeout_ms": data.draw(st.sampled_from([0, 10**9]), label="timeout"),
        "max_in_flight": data.draw(st.sampled_from([1000, 2]), label="max_in_flight"),
        "max_records_per_event": data.draw(st.sampled_from([8192, 2, 3]), label="max_records"),
        "max_recent": data.draw(st.sampled_from([16384, 1]), label="max_recent"),
    }
    size = max(1, len(raw) // data.draw(st.integers(1, 4), label="batches"))
    both_ways(raw, size, data.draw(st.booleans(), label="event_time"), **limits)


def test_most_whole_runs_are_completed_in_c() -> None:
    """Whole events in serial order: neither push_run nor _note_completed is called, but for the
    first event of the node and the serials of the batch before the first settle."""
    side = Side(native_runs.push_items, timeout_ms=0)
    rows = [
        (rtype, b"audit(%d.000:%d): x=1" % (SEC, serial), "")
        for serial in range(1, 2001) for rtype in (1300, 1302, 1320)
    ]  # fmt: skip
    calls: list[str] = []
    reassembler = side.reassembler
    for name in ("push_run", "_note_completed"):
        method = getattr(reassembler, name)
        setattr(
            reassembler, name, lambda *args, _m=method, _n=name: (calls.append(_n), _m(*args))[1]
        )
    for number, start in enumerate(range(0, len(rows), 300)):
        side.batch(rows[start : start + 300], True, 0, number)
    assert len(side.collector.events) == 2000
    assert calls.count("push_run") == 1  # the first: its node is new
    assert calls.count("_note_completed") == 100  # the first batch: no frontier before maintain


def interleaved_rows(rng: random.Random, count: int) -> list[Row]:
    """Kernel-like rows with the records of neighbouring events interleaved, as two CPUs'
    exits can write them to a log: records alone that join an event already open."""
    events: list[list[Row]] = [[]]
    for row in kernel_rows(rng, count, swaps=0.0):
        events[-1].append(row)
        if row[0] == 1320 or row[0] <= 0 or rng.random() < 0.02:
            events.append([])
    rows: list[Row] = []
    for first, second in zip(events[0::2], events[1::2], strict=False):
        while first or second:  # alternate, one or two records at a time
            for event in (first, second):
                take = rng.choice([1, 1, 2])
                rows += event[:take]
                del event[:take]
    return rows


@pytest.mark.parametrize("seed", range(20))
def test_interleaved_events(seed: int) -> None:
    """Records of events that interleave give the same hand-outs, losses, counters and state
    both ways, with the bounds that evict by record count and by events in flight."""
    rng = random.Random(seed)
    limits = {
        "timeout_ms": rng.choice([0, 50, 10**9]),
        "max_in_flight": rng.choice([1, 3, 1000]),
        "max_records_per_event": rng.choice([2, 3, 1000]),
    }
    both_ways(interleaved_rows(rng, 300), rng.choice([3, 7, 64]), rng.random() < 0.7, **limits)


def test_records_that_join_an_open_event_are_pushed_in_c() -> None:
    """Two events' records alternating one by one: only the record that opens each event goes
    to push; the others, the EOE that completes it among them, are appended in C."""
    side = Side(native_runs.push_items, timeout_ms=0)
    pushed: list[int] = []
    push = side.reassembler.push
    side.reassembler.push = lambda rec, now: (pushed.append(rec.serial), push(rec, now))[1]  # type: ignore[method-assign]
    rows = []
    for serial in range(1, 1001, 2):
        for rtype in (1300, 1302, 1320):
            for own in (serial, serial + 1):
                rows.append((rtype, b"audit(%d.000:%d): x=1" % (SEC, own), ""))
    for number, start in enumerate(range(0, len(rows), 300)):
        side.batch(rows[start : start + 300], True, 0, number)
    assert len(side.collector.events) == 1000
    assert all(reason is CompletionReason.EOE for _, reason in side.collector.events)
    assert sorted(pushed) == list(range(1, 1001))  # each event's first record only


@pytest.mark.parametrize(
    "rows",
    [
        [
            (1300, b"audit(%d.000:5): x=1" % (1 << 61), ""),
            (1320, b"audit(%d.000:5): x=1" % (1 << 61), ""),
        ],
        [(1300, b"audit(%d.000:5): x=1" % SEC, ""), (1320, b"audit(%d.000:5): x=1" % SEC, "")],
    ],
    ids=["huge time", "clock beyond 2^62"],
)
def test_ints_beyond_c_go_to_python(rows: list[Row]) -> None:
    """A run time or clock C does not keep hands the batch to Python, with the same result."""
    python, native = Side(push_items), Side(native_runs.push_items)
    for side in (python, native):
        side.clock = 1 << 63
        side.batch(rows * 3, True, 0, 0)
        side.batch(
            [(1300, b"audit(%d.000:9): x=1" % SEC, ""), (1320, b"audit(%d.000:9): x=1" % SEC, "")],
            True,
            0,
            1,
        )
    assert native.outcome() == python.outcome()
    assert len(python.collector.events) >= 1


def test_an_exception_in_the_callback_leaves_the_same_state() -> None:
    """A completion callback that raises on the third event: the same exception, then the
    same counters and state both ways."""
    outcomes = []
    for push in (push_items, native_runs.push_items):
        side = Side(push)
        seen: list[int] = []

        def complete(
            records: list[Record], reason: CompletionReason, _seen: list[int] = seen
        ) -> None:
            _seen.append(records[0].serial)
            if len(_seen) == 3:
                raise RuntimeError("a broken sink")

        side.reassembler._on_complete = complete
        rows = [
            (t, b"audit(%d.000:%d): x=1" % (SEC, s), "") for s in range(1, 7) for t in (1300, 1320)
        ]
        side.batch(rows[:2], True, 0, 0)  # the node's first serial: Python's path
        with pytest.raises(RuntimeError, match="a broken sink"):
            side.batch(rows[2:], True, 0, 1)
        outcomes.append((seen, state(side.reassembler)))
    assert outcomes[0] == outcomes[1]


def test_a_serial_once_a_stray_ahead_completes_as_python_says() -> None:
    """A stray 5,000 ahead stays in the node's ``alone`` after it is judged; when the space
    reaches that serial in order, its completion is what note_completed makes of it."""
    serials = [*range(1, 11), 5010, *range(11, 5101)]
    rows = [
        (rtype, b"audit(%d.%03d:%d): x=1" % (SEC + index // 1000, index % 1000, serial), "")
        for index, serial in enumerate(serials) for rtype in (1300, 1320)
    ]  # fmt: skip
    _, native = both_ways(rows, 400, True, timeout_ms=0)
    assert native.push_runs < 20
