"""One input batch of raw records, parsed and cut into runs of one event each.

The records of one kernel event arrive together (SYSCALL, CWD, PATH…, EOE), so the
reassembler can take them as a run (:meth:`Reassembler.push_run`): one lookup of the
event key per run instead of one per record. A run is what :func:`parse_batch` cuts:

- consecutive records with one key (node, sec, msec, serial), ended after an EOE;
- a record whose type completes alone (``reassembler.completes_alone``) is a run of its
  own;
- a line that is not a record (type <= 0, the receiver's markers) or whose header does
  not parse is an :class:`Unparsed` item in its place, so the caller keeps the order.

Pushing the runs in order is pushing their records one by one in order: the cut only
decides how many records one call takes. ``assembler/csrc/parse.c`` does the same in C
(``parse_batch``); this function is the reference (tests/test_native_parse.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from assembler.parse import ParseError, Record, parse_record
from assembler.reassembler import Reassembler
from auditstream.record_kinds import EOE_TYPE, completes_alone


class Unparsed(NamedTuple):
    """A line of the batch that is no record: a marker (error None) or a header error."""

    type: int
    data: bytes
    node: str
    error: str | None  # the ParseError's message; None for type <= 0


BatchItem = list[Record] | Unparsed


def parse_batch(recs: Sequence[Sequence[Any]], trailer: bool = True) -> list[BatchItem]:
    """``[type, data, node]`` rows parsed and cut into runs (see the module docstring)."""
    out: list[BatchItem] = []
    run: list[Record] | None = None
    for type_, data, node in recs:
        if type_ <= 0:
            out.append(Unparsed(type_, data, node, None))
            run = None
            continue
        try:
            rec = parse_record(type_, data, node, trailer=trailer)
        except ParseError as err:
            out.append(Unparsed(type_, data, node, str(err)))
            run = None
            continue
        if completes_alone(rec.type):
            out.append([rec])
            run = None
            continue
        if run is not None and _same_key(run[0], rec):
            run.append(rec)
        else:
            run = [rec]
            out.append(run)
        if rec.type == EOE_TYPE:
            run = None
    return out


def push_items(
    items: list[BatchItem],
    reassembler: Reassembler[Record],
    clock_ms: int,
    event_time: bool,
    on_unparsed: Callable[[Unparsed], None],
) -> tuple[int, Record | None]:
    """Push parse_batch's items in order: each run into ``reassembler`` (one record:
    ``push``, more: ``push_run``) at ``clock_ms``, which with ``event_time`` first moves on
    to the run's own time if later; each Unparsed to ``on_unparsed``. Returns the clock and
    the last record of the last run (None: no run). ``assembler/csrc/runs.c`` does the same
    in C, with push_run's whole-event case inlined; this function is the reference
    (tests/test_native_runs.py)."""
    last: Record | None = None
    for item in items:
        if isinstance(item, Unparsed):  # a marker or a bad header, in its place
            on_unparsed(item)
            continue
        first = item[0]
        if event_time:
            stamp = first.sec * 1000 + first.msec  # one key: one time for the run
            if stamp > clock_ms:
                clock_ms = stamp
        if len(item) == 1:
            reassembler.push(first, clock_ms)
        else:
            reassembler.push_run(item, clock_ms)
        last = item[-1]
    return clock_ms, last


def _same_key(a: Record, b: Record) -> bool:
    return a.serial == b.serial and a.sec == b.sec and a.msec == b.msec and a.node == b.node
