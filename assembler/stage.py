"""The assembler process: group raw records into events, interpret them, push events on."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from assembler.events import (
    Event,
    event_from_records,
    lost_event,
    parse_error_event,
    receiver_marker_event,
)
from assembler.parse import ParseError, Record, parse_record
from assembler.reassembler import CompletionReason, LostRange, Reassembler
from auditstream import runtime, wire
from auditstream.config import Config
from auditstream.logs import RateLimitedLog
from auditstream.stage import StageContext, merge_stats

log = logging.getLogger("auditstream.assembler")
OUT_BATCH_EVENTS = 256
IDLE_POLL_MS = 100


class Assembly:
    """Records in, events out, with the counters the summary needs."""

    def __init__(self, cfg: Config, *, event_time: bool, index: int = 0) -> None:
        self.out: list[Event] = []
        self.event_time = event_time  # files: timeouts in the log's own time
        self.shards = cfg.assembler.instances
        self.clock_ms = 0
        self.reassembler = Reassembler(
            self._complete,
            self._lost,
            max_in_flight=cfg.assembler.max_in_flight,
            timeout_ms=cfg.assembler.event_timeout_ms,
            shard=(index, cfg.assembler.instances),
        )
        self.counts: dict[str, int] = {
            "records": 0,
            "parse_errors": 0,
            "events": 0,
            "lost_events": 0,
            "lost_markers": 0,
            "interpret_errors": 0,
            "kernel_loss_markers": 0,
        }
        self.warn = RateLimitedLog(log)

    def _complete(self, records: list[Record], reason: CompletionReason) -> None:
        try:
            self.out.append(event_from_records(records, reason))
            self.counts["events"] += 1
        except Exception as err:  # a bug or hostile record must not stop the stream
            self.counts["interpret_errors"] += 1
            self.warn.warning("interpret", "cannot interpret event %s: %r", records[0].serial, err)
            for rec in records:
                self.out.append(
                    parse_error_event(rec.type, rec.data, rec.node, f"interpret: {err!r}")
                )

    def _lost(self, lost: LostRange) -> None:
        self.counts["lost_events"] += lost.count
        self.counts["lost_markers"] += 1
        event = lost_event(lost)
        if self.shards > 1:  # this assembler sees every Nth serial: the range is strided
            event["doc"]["auditstream"]["marker"]["serial_stride"] = self.shards
        self.out.append(event)

    def push_batch(self, recs: list[list[Any]]) -> None:
        self.counts["records"] += len(recs)
        if (
            not self.event_time
        ):  # live: one clock read per batch (records of a batch arrived together)
            self.clock_ms = time.monotonic_ns() // 1_000_000
        for type_, data, node in recs:
            if type_ <= 0:
                self._special(type_, data, node)
                continue
            try:
                rec = parse_record(type_, data, node)
            except ParseError as err:
                self.counts["parse_errors"] += 1
                self.warn.warning("parse", "unparseable record: %s", err)
                self.out.append(parse_error_event(type_, data, node, str(err)))
                continue
            if self.event_time:
                stamp = rec.sec * 1000 + rec.msec
                if stamp > self.clock_ms:
                    self.clock_ms = stamp
            self.reassembler.push(rec, self.clock_ms)

    def _special(self, type_: int, data: bytes, node: str) -> None:
        """Type 0: a line that is not a record; negative: the receiver reports a loss."""
        if type_ == 0:
            self.counts["parse_errors"] += 1
            self.out.append(parse_error_event(0, data, node, "not an audit record line"))
            return
        self.counts["kernel_loss_markers"] += 1
        self.out.append(receiver_marker_event(type_, data))

    def maintain(self) -> None:
        if not self.event_time:
            self.clock_ms = time.monotonic_ns() // 1_000_000
        self.reassembler.maintain(self.clock_ms)

    def close(self) -> None:
        self.reassembler.close()


def run(cfg: Config, ctx: StageContext) -> int:
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inlet = wire.Inlet(
        zctx, runtime.assembler_endpoint(cfg, ctx.index), hwm=cfg.runtime.hwm_messages
    )
    outlet = wire.Outlet(
        zctx, runtime.treekeeper_endpoint(cfg), sender=ctx.index, hwm=cfg.runtime.hwm_messages
    )
    assembly = Assembly(cfg, event_time=cfg.receiver.source == "file", index=ctx.index)

    def ship() -> None:
        if assembly.out:
            outlet.send(wire.EVENTS, {"events": assembly.out})
            assembly.out = []

    upstream: dict[str, Any] = {}
    while True:
        frame = inlet.recv(IDLE_POLL_MS)
        if frame is None:
            assembly.maintain()
            ship()
            if ctx.should_stop_when_idle(time.monotonic()):  # no eof is coming: upstream died
                break
            continue
        ctx.input_arrived()
        if frame.kind == wire.RECORDS:
            assembly.push_batch(frame.body["recs"])
            if len(assembly.out) >= OUT_BATCH_EVENTS or not inlet.sock.poll(0):
                assembly.maintain()
                ship()
        elif frame.kind == wire.EOF_KIND:
            merge_stats(upstream, frame.body.get("stats", {}))
            break
        # A signal alone does not stop us while frames flow: the receiver stops first and its
        # eof drains the pipe in order.
    assembly.close()
    ship()
    stats = dict(assembly.counts)
    rs = assembly.reassembler.stats
    stats["late_records"] = getattr(rs, "late_records", 0)
    stats["frame_gaps"] = inlet.stats.gaps
    if ctx.index != 0:
        upstream.pop("receiver", None)  # every assembler got the receiver's eof; count it once
    merge_stats(upstream, {"assembler": stats})
    outlet.send(wire.EOF_KIND, {"stats": upstream})
    outlet.close()
    inlet.close()
    zctx.term()
    return 0
