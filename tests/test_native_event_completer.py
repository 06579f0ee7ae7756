"""assembler.native_ecs.EventCompleter (C, assembler/csrc/ecs_event.h) against
``Assembly._complete``, the Python completion callback it stands in for.

Two assemblies with written docs take the same batches, one with the C callback and one
with ``_complete`` alone; their events (key, raw records or count, the written doc, the
receive stamp) and counters must be equal, for the corpus logs (events C declines, events
without EOE that end by timeout or at close), the generated logs and the load generator's
kind of event, with and without raw records and receive stamps. What the callback cannot
do (one record, a declined event, an exception of a C step) must reach ``_complete``
unchanged; a signal's exception must not be swallowed.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generated_logs import write_generated_log
from native_helpers import native_module, rss_kib
from test_ecs_golden_docs import _inputs

import assembler.events as events_module
from assembler.parse import Record
from assembler.reassembler import CompletionReason
from assembler.stage import Assembly
from auditstream.config import Config
from auditstream.doc_text import WrittenDoc
from auditstream.logline import LineError, split_log_line

native_ecs: Any = native_module("assembler.native_ecs")
native_coalesce: Any = native_module("assembler.native_coalesce")

LOAD_EVENT = (
    b"type=SYSCALL msg=audit(1795473252.716:%d): arch=c000003e syscall=257 success=yes "
    b"exit=3 a0=ffffff9c a1=7f0ea1d5a0b1 a2=80000 a3=0 items=1 ppid=10838 pid=10865 "
    b"auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) "
    b'ses=4294967295 comm="loadgen" exe="/tmp/loadgen" key="load"\n'
    b'type=CWD msg=audit(1795473252.716:%d): cwd="/work"\n'
    b'type=PATH msg=audit(1795473252.716:%d): item=0 name="/etc/ld.so.cache" inode=2244660 '
    b"dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 "
    b"cap_fe=0 cap_fver=0 cap_frootid=0\n"
    b"type=PROCTITLE msg=audit(1795473252.716:%d): proctitle=2F746D702F6C6F616467656E\n"
    b"type=EOE msg=audit(1795473252.716:%d): \n"
)


def assembly(native: bool, raw: bool) -> Assembly:
    """An assembly with written docs whose callback is the C one (native) or _complete."""
    saved = events_module._NATIVE_COMPLETER
    if not native:
        events_module._NATIVE_COMPLETER = None
    cfg = Config()
    cfg.receiver.source = "file"  # as a replay: ENRICHED trailers are split off
    try:
        made = Assembly(cfg, event_time=True, written_docs=True)
    finally:
        events_module._NATIVE_COMPLETER = saved
    made.raw_records = raw
    callback = made.reassembler._on_complete
    assert (type(callback) is native_ecs.EventCompleter) is native
    return made


def rows(text: bytes) -> list[list[Any]]:
    """The log's lines as the receiver sends them; lines that are not records skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(list(split_log_line(line)))
        except LineError:
            continue
    return out


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its doc as plain values (a WrittenDoc's fields, else the dict), and
    without the wall-clock time that markers (gaps, parse errors) are made at."""
    doc = event["doc"]
    if type(doc) is WrittenDoc:
        return {**event, "doc": tuple(doc)}
    if "auditstream-marker" in doc.get("tags", ()):
        node, _, _, serial = event["key"]
        return {**event, "key": [node, serial], "doc": {**doc, "@timestamp": None}}
    return event


def run(made: Assembly, batches: list[list[list[Any]]], stamped: bool) -> list[dict[str, Any]]:
    """Every event the assembly makes of the batches (then closed), comparable."""
    out: list[dict[str, Any]] = []
    for index, batch in enumerate(batches):
        made.push_batch(batch, 1_795_473_252_000_000_000 + index if stamped else None)
        made.maintain()
        out += made.out
        made.out = []
    made.close()
    return [comparable(event) for event in out + made.out]


def batches_of(text: bytes, size: int = 97) -> list[list[list[Any]]]:
    """The log's rows cut in batches of ``size`` (not a divisor of events: runs get cut)."""
    lines = rows(text)
    return [lines[start : start + size] for start in range(0, len(lines), size)]


def load_log(events: int) -> bytes:
    """``events`` events of the load generator's shape, serials in order."""
    return b"".join(LOAD_EVENT % ((serial,) * 5) for serial in range(1000, 1000 + events))


def inputs(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """Every corpus input, two generated logs (RAW and ENRICHED) and load events."""
    yield from _inputs().items()
    for enriched in (False, True):
        log = write_generated_log(
            tmp_path / f"gen{enriched}.log", 6000, *(["--enriched"] if enriched else [])
        )
        yield f"generated enriched={enriched}", log.read_bytes()
    yield "load", load_log(2000)


@pytest.mark.parametrize(("raw", "stamped"), [(False, True), (True, False)])
def test_events_and_counters_equal_those_of_complete(
    tmp_path: Path, raw: bool, stamped: bool
) -> None:
    """Every input gives the same events and counters with the C callback as with _complete,
    and the C callback takes most of the generated and load events itself."""
    for name, text in inputs(tmp_path):
        batches = batches_of(text)
        reference = assembly(native=False, raw=raw)
        want = run(reference, batches, stamped)
        mine = assembly(native=True, raw=raw)
        handed_over: list[int] = []

        def counting(
            records: list[Record],
            reason: CompletionReason,
            handed_over: list[int] = handed_over,
            python_complete: Any = mine._complete,
        ) -> None:
            handed_over.append(len(records))
            python_complete(records, reason)

        mine.reassembler._on_complete = native_ecs.EventCompleter(
            mine, native_coalesce.coalesce, counting, events_module._COMPLETED_BY
        )
        got = run(mine, batches, stamped)
        assert got == want, name
        assert mine.counts == reference.counts, name
        if name.startswith(("generated", "load")):
            assert len(handed_over) < 0.05 * len(got), (name, len(handed_over), len(got))


def test_what_it_cannot_do_goes_to_the_fallback_unchanged() -> None:
    """One record, a declined event and a C step's exception reach the fallback with the same
    arguments, and nothing is appended for them by the C callback."""
    made = assembly(native=True, raw=False)
    records = made.parse_batch(rows(load_log(1)), True)[0]
    assert isinstance(records, list) and len(records) == 5
    calls: list[tuple[list[Record], CompletionReason]] = []

    def fallback(records: list[Record], reason: CompletionReason) -> None:
        calls.append((records, reason))

    def raising(records: list[Record]) -> None:
        raise ValueError("a bug in coalesce")

    def declining(records: list[Record]) -> None:
        return None

    reason = CompletionReason.EOE
    for coalesce, given in [
        (native_coalesce.coalesce, records[:1]),
        (declining, records),
        (raising, records),
    ]:
        completer = native_ecs.EventCompleter(made, coalesce, fallback, events_module._COMPLETED_BY)
        completer(given, reason)
        assert calls.pop() == (given, reason)
        assert made.out == []
    unknown_reason = native_ecs.EventCompleter(made, native_coalesce.coalesce, fallback, {})
    unknown_reason(records, reason)
    assert calls.pop() == (records, reason)
    native_ecs.EventCompleter(
        made, native_coalesce.coalesce, fallback, events_module._COMPLETED_BY
    )(records, reason)
    assert calls == [] and len(made.out) == 1 and made.counts["events"] == 1


def test_a_signal_during_a_c_step_is_not_swallowed() -> None:
    """A KeyboardInterrupt (what SIGINT raises) from a step propagates; the fallback is not
    called."""
    made = assembly(native=True, raw=False)
    records = made.parse_batch(rows(load_log(1)), True)[0]
    calls: list[Any] = []

    def interrupted(records: list[Record]) -> None:
        raise KeyboardInterrupt

    completer = native_ecs.EventCompleter(
        made, interrupted, lambda *args: calls.append(args), events_module._COMPLETED_BY
    )
    with pytest.raises(KeyboardInterrupt):
        completer(records, CompletionReason.EOE)
    assert calls == [] and made.out == []


def test_an_assembly_that_holds_it_is_collected() -> None:
    """The assembly → reassembler → callback → assembly cycle is freed by the collector."""
    made = assembly(native=True, raw=False)
    alive = weakref.ref(made)
    del made
    gc.collect()
    assert alive() is None


def test_no_leak_over_many_events() -> None:
    """100k load events through the C callback, shipped and dropped, leave RSS within 20 MB."""
    made = assembly(native=True, raw=True)
    text = load_log(2000)
    batches = batches_of(text, 512)
    for batch in batches:
        made.push_batch(batch, 1)
        made.out = []
    before = rss_kib()
    for round_ in range(50):
        shifted = load_log(2000).replace(b".716:", b".%03d:" % (round_ % 1000))
        for batch in batches_of(shifted, 512):
            made.push_batch(batch, 1)
            made.maintain()
            made.out = []
    growth_kib = rss_kib() - before
    assert made.counts["events"] == 102_000
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
