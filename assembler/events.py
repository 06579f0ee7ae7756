"""Turn completed record groups and detected holes into the events that travel downstream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from assembler.coalesce import coalesce
from assembler.ecs import build_doc, marker_doc
from assembler.native import (
    native_build_doc,
    native_coalesce,
    native_event_completer,
    native_write_doc,
)
from assembler.parse import Record
from assembler.reassembler import CompletionReason, LostRange
from auditstream.escape import escape
from auditstream.logline import format_log_line
from auditstream.marker_records import (
    KERNEL_LOST_TYPE,
    SOCKET_OVERRUN_TYPE,
    SOURCE_RECONNECT_TYPE,
)

Event = dict[str, Any]

# Reasons that mean the event may be cut short; consumers see how it ended.
_UNCERTAIN = frozenset(
    (
        CompletionReason.TIMEOUT,
        CompletionReason.EVICTED,
        CompletionReason.CLOSED,
        CompletionReason.LATE,
    )
)
PARSE_ERROR_SNIPPET_BYTES = 4096


# The C versions where built and allowed (assembler/native.py); each may decline an
# event (None), and the Python function, the reference, does it then.
_NATIVE_COALESCE = native_coalesce()
_NATIVE_BUILD_DOC = native_build_doc()
_NATIVE_WRITE_DOC = native_write_doc()
_NATIVE_COMPLETER = native_event_completer()
# completed_by of each reason that says the event may be cut short (None: not written).
_COMPLETED_BY = {
    reason: reason.name.lower() if reason in _UNCERTAIN else None for reason in CompletionReason
}


def event_from_records(
    records: list[Record], reason: CompletionReason, *, raw: bool = True, written: bool = False
) -> Event:
    """The event of complete ``records``; ``raw=False``: the record count in place of the
    raw records (no sink writes them: packing and unpacking them cost ~3.5 µs per event).

    ``written``: the doc as its JSON text where the C writer takes the event (a
    :class:`~auditstream.doc_text.WrittenDoc`, for an event that is only shipped:
    ``wire.pack_events_body`` puts it in ``docs_json`` as ``orjson.dumps`` of the dict
    would be), else the dict."""
    first = records[0]
    coalesced = _NATIVE_COALESCE(records) if _NATIVE_COALESCE is not None else None
    if coalesced is None:
        coalesced = coalesce(records)
    completed_by = _COMPLETED_BY[reason]
    doc: Any = None
    if written and _NATIVE_WRITE_DOC is not None:
        doc = _NATIVE_WRITE_DOC(records, coalesced, completed_by)
    if doc is None:
        doc = _NATIVE_BUILD_DOC(records, coalesced) if _NATIVE_BUILD_DOC is not None else None
        if doc is None:
            doc = build_doc(records, coalesced)
        if completed_by is not None:
            doc.setdefault("auditstream", {})["completed_by"] = completed_by
    return {
        "key": [first.node, first.sec, first.msec, first.serial],
        "raw": [[r.type, r.data, r.node] for r in records] if raw else len(records),
        "doc": doc,
    }


CompleteFn = Callable[[list[Record], CompletionReason], None]


class EventTarget(Protocol):
    """What :class:`~assembler.native_ecs.EventCompleter` reads of the assembly per event."""

    out: list[Event]
    recv_ns: int | None
    raw_records: bool
    counts: dict[str, int]


def written_event_completer(target: EventTarget, fallback: CompleteFn) -> CompleteFn:
    """The completion callback of an assembly whose docs are written: the C one where
    coalesce and ``write_doc`` are C too (it does ``fallback``'s work for the events both
    take: ``event_from_records(records, reason, raw=target.raw_records, written=True)``
    with ``recv_ns``, appended to ``target.out`` and counted in ``counts["events"]``, and
    calls ``fallback`` for any other), else ``fallback`` itself."""
    if _NATIVE_COMPLETER is None or _NATIVE_COALESCE is None or _NATIVE_WRITE_DOC is None:
        return fallback
    return _NATIVE_COMPLETER(target, _NATIVE_COALESCE, fallback, _COMPLETED_BY)


def _marker_ms(at_ms: int | None) -> int:
    """A marker's time: ``at_ms`` (a replay's event time, so that a replay of old logs dates
    its markers among their events, and does so the same way every run), else now."""
    return at_ms if at_ms is not None else time.time_ns() // 1_000_000


def lost_event(lost: LostRange, at_ms: int | None = None) -> Event:
    now_ms = _marker_ms(at_ms)
    details = {
        "cause": "serial_gap",
        "first_serial": lost.first_serial,
        "last_serial": lost.last_serial,
        "count": lost.count,
    }
    doc = marker_doc("events-lost", lost.node, now_ms // 1000, now_ms % 1000, details)
    key = [lost.node, now_ms // 1000, now_ms % 1000, lost.first_serial]
    return {"key": key, "raw": [], "doc": doc}


def parse_error_event(
    type_: int, data: bytes, node: str, error: str, at_ms: int | None = None
) -> Event:
    now_ms = _marker_ms(at_ms)
    snippet = data[:PARSE_ERROR_SNIPPET_BYTES]
    # The prefix alone from format_log_line: it turns CR/LF in data into spaces (for log
    # files), and escape() already keeps them off the line, exactly (%0a).
    details = {
        "cause": "parse_error",
        "error": error,
        "record": escape(format_log_line(type_, b"", node) + snippet if type_ else snippet),
        "record_bytes": len(data),
    }
    doc = marker_doc("parse-error", node, now_ms // 1000, now_ms % 1000, details)
    raw = [[type_, data, node]] if type_ else []
    return {"key": [node, now_ms // 1000, now_ms % 1000, 0], "raw": raw, "doc": doc}


def damaged_input_event(data: bytes, at_ms: int | None = None) -> Event:
    """A replayed file was read only up to a damage (corrupt or truncated gzip, a read
    error): its rest is lost. ``data`` is the receiver's JSON of the details."""
    try:
        details = json.loads(data)
    except ValueError:
        details = None
    if not isinstance(details, dict):
        details = {"cause": "input_damaged", "error": escape(data)}
    now_ms = _marker_ms(at_ms)
    doc = marker_doc("input-damaged", "", now_ms // 1000, now_ms % 1000, details)
    return {"key": ["", now_ms // 1000, now_ms % 1000, 0], "raw": [], "doc": doc}


# Synthetic record types the receiver sends (see docs/internals.md).
RECEIVER_MARKERS = {
    KERNEL_LOST_TYPE: ("kernel-lost", "kernel_lost"),
    SOCKET_OVERRUN_TYPE: ("socket-overrun", "socket_overrun"),
    SOURCE_RECONNECT_TYPE: ("source-reconnected", "source_reconnected"),
}


def receiver_marker_event(type_: int, data: bytes, node: str = "") -> Event:
    """The kernel's lost counter rose, the netlink socket overran, or auditd's socket came
    back: say so in the stream, of the source's node (live: this host, ``host.name``)."""
    action, cause = RECEIVER_MARKERS.get(type_, ("receiver-marker", "unknown"))
    details: dict[str, Any] = {"cause": cause}
    for item in data.decode("ascii", "replace").split():
        key, _, value = item.partition("=")
        details[key] = int(value) if value.isdigit() else value
    if "lost" in details:
        details["count"] = details["lost"]
    now_ms = time.time_ns() // 1_000_000
    doc = marker_doc(action, node, now_ms // 1000, now_ms % 1000, details)
    return {"key": [node, now_ms // 1000, now_ms % 1000, 0], "raw": [], "doc": doc}
