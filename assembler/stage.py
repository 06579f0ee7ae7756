"""The assembler process: group raw records into events, interpret them, push events on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from assembler.batch import Unparsed
from assembler.events import (
    Event,
    damaged_input_event,
    event_from_records,
    lost_event,
    parse_error_event,
    receiver_marker_event,
    written_event_completer,
)
from assembler.native import parse_batch_function, push_items_function
from assembler.parse import Record, cut_header_serial
from assembler.reassembler import CompletionReason, LostRange, Reassembler
from assembler.redelivery import (
    BatchStream,
    replay_gap_events,
    restart_gap_event,
)
from auditstream import runtime, wire
from auditstream.component_status import PROCESSING, ComponentStatus
from auditstream.config import Config, batching
from auditstream.logs import RateLimitedLog
from auditstream.marker_records import DAMAGED_INPUT_TYPE, RESTART_GAP_TYPE
from auditstream.record_kinds import EOE_TYPE
from auditstream.stage import (
    StageContext,
    lower_priority,
    merge_stats,
    ms_until,
    write_status,
)
from sinks import sinks_take_doc_text, sinks_write_raw

log = logging.getLogger("auditstream.assembler")
_PARSE_BATCH = parse_batch_function()  # C where built (assembler/native.py)
_PUSH_ITEMS = push_items_function()
# Sources whose records come straight from the kernel, which appends no ENRICHED trailer:
# there a 0x1d can only come from user text (an AUDIT_USER message) and must not name
# fields, or a process allowed to send user messages could name its own event's user.*
# with a `UID="root"`-style trailer (docs/fuzz.md).
KERNEL_SOURCES = ("netlink", "multicast")


OUT_BATCH_EVENTS = 256
REPLAY_NICE = 10  # the assemblers' nice value in replay (process and autogroup)
IDLE_POLL_MS = 100
# An idle assembler (no open event, nothing to ship) sleeps until its status is due, this
# long at most: a stop signal does not end a wait (PEP 475 retries it).
IDLE_MAX_MS = 1000
STATUS_EVERY_S = 1.0


class Assembly:
    """Records in, events out, with the counters the summary needs."""

    def __init__(
        self, cfg: Config, *, event_time: bool, index: int = 0, written_docs: bool = False
    ) -> None:
        self.out: list[Event] = []
        self.event_time = event_time  # files: timeouts in the log's own time
        # Records from the kernel have no ENRICHED trailer (KERNEL_SOURCES).
        self.trailer = cfg.receiver.source not in KERNEL_SOURCES
        self.parse_batch = _PARSE_BATCH
        self.push_items = _PUSH_ITEMS
        self.follow = cfg.receiver.follow
        self.input_at = time.monotonic()
        self.shards = cfg.assembler.instances
        self.raw_records = sinks_write_raw(cfg.sinks)  # else events carry the record count
        # Audit docs as their JSON text (WrittenDoc) where C writes them: run() asks for it,
        # as its events are only shipped; in process (tests, tools) docs stay dicts.
        self.written_docs = written_docs
        self.clock_ms = 0
        # The receive stamp of the batch being pushed: events completed by one of its
        # records carry it (for an EOE-ended event, the EOE's receive time). None outside
        # push_batch, so events completed by a timeout carry no stamp.
        self.recv_ns: int | None = None
        # Live: (event ms, serial) of the last record received, for sent_below(); with
        # several assemblers also the receiver's newest record read (read_to of a batch
        # or TICK), when every record of ours read before it has reached us.
        self.last_key: tuple[int, int] | None = None
        self.read_to: tuple[int, int] | None = None
        self.reassembler = Reassembler(
            # The C callback does _complete's work for the events C writes (events.py).
            written_event_completer(self, self._complete) if written_docs else self._complete,
            self._lost,
            max_in_flight=cfg.assembler.max_in_flight,
            timeout_ms=cfg.assembler.event_timeout_ms,
            shard=(index, cfg.assembler.instances),
            # A quarter of the receiver's buffer for this shard: with the unshipped events (at
            # most an eighth) and what the tree keeper's reorder window holds, it never fills.
            max_open_batches=max(1, batching(cfg.receiver).replay_buffer_batches // 4),
        )
        self.counts: dict[str, int] = {
            "records": 0,
            "parse_errors": 0,
            "events": 0,
            "lone_eoes": 0,  # an EOE whose event was complete without it, or lies elsewhere
            "lost_events": 0,
            "lost_markers": 0,
            "interpret_errors": 0,
            "kernel_loss_markers": 0,
            "docs_not_json": 0,  # sent in msgpack instead (the jsonl sink will refuse them)
        }
        self.warn = RateLimitedLog(log)

    def docs_not_json(self, count: int, reason: str) -> None:
        """Count docs that orjson refused; they travel in msgpack, as before the JSON transport."""
        self.counts["docs_not_json"] += count
        self.warn.warning(
            "doc-json", "%d event docs are not JSON (%s): sent as msgpack", count, reason
        )

    def _complete(self, records: list[Record], reason: CompletionReason) -> None:
        if len(records) == 1 and records[0].type == EOE_TYPE:
            # It says only "that event ended": after its event timed out, a log given twice,
            # a file cut after an event's records. Counted, not turned into an error event.
            self.counts["lone_eoes"] += 1
            return
        try:
            event = event_from_records(
                records, reason, raw=self.raw_records, written=self.written_docs
            )
            if self.recv_ns is not None:
                event["recv_ns"] = self.recv_ns  # outside "doc": never written by a sink
            self.out.append(event)
            self.counts["events"] += 1
        except Exception as err:  # a bug or hostile record must not stop the stream
            self.counts["interpret_errors"] += 1
            self.warn.warning("interpret", "cannot interpret event %s: %r", records[0].serial, err)
            for rec in records:
                self.out.append(
                    parse_error_event(
                        rec.type, rec.data, rec.node, f"interpret: {err!r}", self.marker_ms()
                    )
                )

    def _lost(self, lost: LostRange) -> None:
        self.counts["lost_events"] += lost.count
        self.counts["lost_markers"] += 1
        event = lost_event(lost, self.marker_ms())
        if self.shards > 1:  # this assembler sees every Nth serial: the range is strided
            event["doc"]["auditstream"]["marker"]["serial_stride"] = self.shards
        self.out.append(event)

    def marker_ms(self) -> int | None:
        """A marker's time in ms: in replay the event time reached (the log's own clock),
        live None (now)."""
        return self.clock_ms if self.event_time and self.clock_ms > 0 else None

    def note_read_to(self, read_to: Any) -> None:
        """The receiver had read up to this (event ms, serial), and sent us all of ours."""
        if (
            isinstance(read_to, list | tuple)  # a records frame's arrays are tuples
            and len(read_to) == 2
            and all(type(v) is int for v in read_to)
        ):
            self.read_to = (read_to[0], read_to[1])

    def push_batch(self, recs: Sequence[Sequence[Any]], recv_ns: int | None = None) -> None:
        self.recv_ns = recv_ns
        self.input_at = time.monotonic()
        try:
            self._push_records(recs)
        finally:
            self.recv_ns = None

    def _push_records(self, recs: Sequence[Sequence[Any]]) -> None:
        self.counts["records"] += len(recs)
        if (
            not self.event_time
        ):  # live: one clock read per batch (records of a batch arrived together)
            self.clock_ms = time.monotonic_ns() // 1_000_000
        self.clock_ms, last = self.push_items(
            self.parse_batch(recs, self.trailer),
            self.reassembler,
            self.clock_ms,
            self.event_time,
            self._unparsed,
        )
        if last is not None and not self.event_time:
            self.last_key = (last.sec * 1000 + last.msec, last.serial)

    def _unparsed(self, item: Unparsed) -> None:
        type_, data, node, error = item
        if error is None:
            self._special(type_, data, node)
            return
        self.counts["parse_errors"] += 1
        self.warn.warning("parse", "unparseable record: %s", error)
        self.out.append(parse_error_event(type_, data, node, error, self.marker_ms()))
        digits = cut_header_serial(data)
        if digits is not None:  # a torn line: its event is reported here, not as a gap too
            self.reassembler.note_cut_record(node, digits)

    def sent_below(self) -> list[int] | None:
        """Live: [event ms, serial] below which every event seen here has been completed
        (the tree keeper's reorder window releases on it); None in replay, where only
        event time may release, so that documents never depend on timing."""
        seen = [key for key in (self.last_key, self.read_to) if key is not None]
        if not seen or self.event_time:
            return None
        ms, serial = max(seen)
        below = (ms, serial + 1)  # the last record's own event is complete or open
        open_from = self.reassembler.open_from()
        if open_from is not None and open_from < below:
            below = open_from
        return [below[0], below[1]]

    def _special(self, type_: int, data: bytes, node: str) -> None:
        """Type 0: a line that is not a record; negative: the receiver reports a loss."""
        if type_ == 0:
            self.counts["parse_errors"] += 1
            self.out.append(
                parse_error_event(0, data, node, "not an audit record line", self.marker_ms())
            )
            return
        if type_ == RESTART_GAP_TYPE:  # a restarted live receiver names what it lost
            self.out.append(restart_gap_event(data, node))
            return
        if type_ == DAMAGED_INPUT_TYPE:  # a replayed file read only up to a damage
            self.out.append(damaged_input_event(data, self.marker_ms()))
            return
        self.counts["kernel_loss_markers"] += 1
        self.out.append(receiver_marker_event(type_, data, node))

    def maintain(self) -> None:
        if not self.event_time:
            self.clock_ms = time.monotonic_ns() // 1_000_000
        elif self.follow:
            # A followed log may stay quiet for long: its time moves on with the wall
            # clock meanwhile, so an event's timeout still ends it (tail -f latency).
            quiet_ms = int((time.monotonic() - self.input_at) * 1000)
            self.reassembler.maintain(self.clock_ms + quiet_ms)
            return
        self.reassembler.maintain(self.clock_ms)

    def close(self) -> None:
        self.reassembler.close()

    def status(self, index: int, events_sent: int, inlet: wire.Inlet) -> dict[str, Any]:
        """``status-assembler-N.json``: records in, events out, open events, errors."""
        component = ComponentStatus(
            f"assembler-{index}",
            "transform",
            "assembler",
            received_events=self.counts["records"],
            sent_events=events_sent,
        )
        component.error(PROCESSING, "parse_failed", self.counts["parse_errors"])
        component.error(PROCESSING, "interpret_failed", self.counts["interpret_errors"])
        component.error(PROCESSING, "doc_not_json", self.counts["docs_not_json"])
        rs = self.reassembler.stats
        return {
            "component": component.as_json(),
            **self.counts,
            "late_records": rs.late_records,
            "stray_serials": rs.stray_serials,
            "open_events": rs.in_flight,  # the assembler's own queue: events waiting for EOE
            "frames_received": inlet.stats.frames,
            "frame_gaps": inlet.stats.gaps,
        }


def run(cfg: Config, ctx: StageContext) -> int:
    if cfg.receiver.source == "file" and not cfg.receiver.follow:
        # The tree keeper is the one stage that cannot be spread over CPUs: when they are
        # short, it goes first, and the assemblers take what it leaves (docs/performance.md).
        # Not live or following a log: there they would yield to the host's load as well.
        lower_priority(REPLAY_NICE)
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inlet = wire.Inlet(
        zctx, runtime.assembler_endpoint(cfg, ctx.index), hwm=cfg.runtime.hwm_messages
    )
    # immediate: while the tree keeper is down we wait, rather than queue for a dead peer.
    outlet = wire.Outlet(
        zctx,
        runtime.treekeeper_endpoint(cfg),
        sender=ctx.index,
        hwm=cfg.runtime.hwm_messages,
        immediate=True,
        watch=True,
    )

    def new_assembly() -> Assembly:
        # Its events are only packed (wire.pack_events_body): docs written as text.
        file = cfg.receiver.source == "file"
        return Assembly(cfg, event_time=file, index=ctx.index, written_docs=True)

    assembly = new_assembly()
    stream = BatchStream()  # the receiver's numbered batches (docs/recovery.md)

    events_sent = 0
    # Unshipped events keep their batches unacknowledged in the receiver's replay buffer:
    # ship at least every eighth of that buffer, or a small buffer fills before we ship.
    ship_every_batches = max(1, batching(cfg.receiver).replay_buffer_batches // 8)
    batches_unshipped = 0
    status_file = runtime.status_path(cfg, f"assembler-{ctx.index}")
    next_status = 0.0
    shipped_watermark: dict[str, Any] = {}
    shipped_claim: list[int] | None = None
    heads = sinks_take_doc_text(cfg.sinks)  # else the tree keeper decodes whole docs
    shipped = True  # ship() ran since the last frame: what the frames changed has gone on

    def ship() -> None:
        nonlocal events_sent, shipped_watermark, shipped_claim, batches_unshipped, shipped
        batches_unshipped = 0
        shipped = True
        watermark = stream.frame_fields(assembly.reassembler.oldest_open_batch())
        claim = assembly.sent_below()
        # An empty frame too when only the watermark moved (the receiver waits for it) or
        # only the claim did (the tree keeper may hold events another assembler completed).
        if assembly.out or watermark != shipped_watermark or claim != shipped_claim:
            fields = watermark if claim is None else {**watermark, wire.SENT_BELOW: claim}
            packed = wire.pack_events_body(assembly.out, fields, heads=heads)
            if packed.msgpack_docs:
                assembly.docs_not_json(packed.msgpack_docs, packed.first_error)
            send_downstream(outlet, wire.EVENTS, packed.body, ctx, tail=packed.docs_json)
            events_sent += len(assembly.out)
            assembly.out = []
            shipped_watermark = watermark
            shipped_claim = claim

    upstream: dict[str, Any] = {}
    eof_forwarded = False
    while True:
        frame = inlet.recv(
            IDLE_POLL_MS if not shipped else idle_wait_ms(assembly, ctx, next_status)
        )
        if (now := time.monotonic()) >= next_status:
            next_status = now + STATUS_EVERY_S
            write_status(status_file, assembly.status(ctx.index, events_sent, inlet))
        if frame is None:
            assembly.maintain()
            ship()
            # After our eof went on, the receiver may still need us for a resend (a stage
            # behind us restarted) until it says stop; a stop signal ends that wait.
            if ctx.stop_requested and eof_forwarded:
                break
            if ctx.should_stop_when_idle(time.monotonic()):  # no eof is coming: upstream died
                break
            continue
        ctx.input_arrived()
        shipped = False
        if frame.kind == wire.RECORDS:
            if not stream.accept(frame.body):
                continue
            assembly.reassembler.batch = frame.body.get("batch", 0)
            assembly.push_batch(frame.body["recs"], frame.body.get("recv_ns"))
            assembly.note_read_to(frame.body.get("read_to"))
            if assembly.event_time:
                # Replay: timeouts, evictions and gap markers at each batch's end, not when
                # the input happens to be idle, so that their place in the output never
                # depends on timing (event time moves only here, so later calls add nothing).
                assembly.maintain()
            batches_unshipped += 1
            if (
                len(assembly.out) >= OUT_BATCH_EVENTS
                or batches_unshipped >= ship_every_batches
                or not inlet.sock.poll(0)
            ):
                if not assembly.event_time:
                    assembly.maintain()
                ship()
        elif frame.kind == wire.RESUME:
            if stream.resume(frame.body):  # start over: the receiver resends what is not durable
                assembly = new_assembly()
                upstream = {}
            else:  # same records, new numbering (a live receiver restarted)
                assembly.reassembler.renumber_open(int(frame.body["from"]))
            assembly.out.extend(replay_gap_events(frame.body))
            eof_forwarded = False
        elif frame.kind == wire.EOF_KIND:
            merge_stats(upstream, frame.body.get("stats", {}))
            _forward_eof(assembly, stream, inlet, outlet, upstream, ship, ctx)
            upstream = {}
            eof_forwarded = True
        elif frame.kind == wire.TICK:
            assembly.note_read_to(frame.body.get("read_to"))
            ship()
        elif frame.kind == wire.STOP:
            break
        # A signal alone does not stop us while frames flow: the receiver stops first and its
        # eof drains the pipe in order.
    if not eof_forwarded:  # stopped without an eof (upstream died): still report our counters
        _forward_eof(assembly, stream, inlet, outlet, upstream, ship, ctx)
    outlet.close(linger_ms=EXIT_LINGER_MS)
    inlet.close()
    zctx.term()
    return 0


def idle_wait_ms(assembly: Assembly, ctx: StageContext, status_due: float) -> int:
    """How long the loop may wait for a frame: IDLE_POLL_MS while an event is open (its
    timeout), a serial gap may still settle, events wait to be shipped, or a stop is asked
    (STOP_IDLE_S is counted in these turns); else until the status file is due, at most
    IDLE_MAX_MS."""
    if ctx.stop_requested or assembly.out or assembly.reassembler.has_timed_work():
        return IDLE_POLL_MS
    return min(IDLE_MAX_MS, ms_until(status_due))


EXIT_LINGER_MS = 10_000  # a tree keeper that is gone for longer cannot take our tail anyway


def _forward_eof(
    assembly: Assembly,
    stream: BatchStream,
    inlet: wire.Inlet,
    outlet: wire.Outlet,
    upstream: dict[str, Any],
    ship: Callable[[], None],
    ctx: StageContext,
) -> None:
    """Complete every open event, ship them, and send the eof with our counters."""
    assembly.close()
    ship()
    stats = dict(assembly.counts)
    rs = assembly.reassembler.stats
    stats["late_records"] = rs.late_records
    stats["stray_serials"] = rs.stray_serials
    stats["frame_gaps"] = inlet.stats.gaps
    stats["refused_batches"] = (
        stream.stats.stale_batches
        + stream.stats.duplicate_batches
        + stream.stats.out_of_order_batches
    )
    stats["resets"] = stream.stats.resets
    if ctx.index != 0:
        upstream.pop("receiver", None)  # every assembler got the receiver's eof; count it once
    merge_stats(upstream, {"assembler": stats})
    body = {"stats": upstream, **stream.frame_fields(None)}
    send_downstream(outlet, wire.EOF_KIND, wire.pack_body(body), ctx)


def send_downstream(
    outlet: wire.Outlet, kind: bytes, packed: bytes, ctx: StageContext, *, tail: bytes | None = None
) -> bool:
    """Send, waiting while the tree keeper is busy or away; give up only when told to stop
    and no tree keeper is connected (it finished, or is gone: its successor gets a resend).
    The body is packed once by the caller: a busy tree keeper costs no re-encoding."""
    watch = outlet.watch
    while not outlet.send_packed(kind, packed, tail=tail, block=False):
        if watch is not None:
            watch.poll()
            if ctx.stop_requested and not watch.connected:
                log.warning("stopping, no tree keeper connected: %s not sent", kind.decode())
                return False
        outlet.writable(IDLE_POLL_MS)
    return True
