"""The tree keeper process: enrich events with the process tree and fan them out to the sinks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from auditstream import runtime, wire
from auditstream.component_status import PROCESSING, ComponentStatus
from auditstream.config import Config
from auditstream.logs import RateLimitedLog
from auditstream.redelivery import is_restart
from auditstream.stage import StageContext, merge_stats, ms_until, write_status
from sinks import sinks_take_doc_text
from sinks.fanout import FanOut, marker_doc
from treekeeper.acks import AckSender
from treekeeper.control import ControlServer
from treekeeper.dedupe import Dedupe, recover_sink_tails
from treekeeper.merge import FrameMerge
from treekeeper.pipeline import TreeStep, build_fanout, fanout_stats

log = logging.getLogger("auditstream.treekeeper")
IDLE_POLL_MS = 100
# An idle tree keeper (nothing in the window, the sinks or an ack) sleeps until its next
# timed work, this long at most: a stop signal does not end a wait (PEP 475 retries it).
IDLE_MAX_MS = 1000
# While a hello waits for the receiver to connect: the receiver reads nothing before it.
HELLO_POLL_MS = 10
MAX_PARKED_EVENTS = 10_000  # frames parked for the merge, in events (~1.5 KB each)
STATUS_EVERY_S = 1.0


def status_of(
    received: int, sent: int, inlet: wire.Inlet, fanout: FanOut, transport_errors: int = 0
) -> dict[str, Any]:
    """``status-treekeeper.json``: counters, per-sink queue depths and latency histograms."""
    component = ComponentStatus(
        "treekeeper", "transform", "treekeeper", received_events=received, sent_events=sent
    )
    component.error(PROCESSING, "transport_error", transport_errors)
    return {
        "component": component.as_json(),
        "received_events": received,
        "frames_received": inlet.stats.frames,
        "frame_gaps": inlet.stats.gaps,
        "sinks": fanout_stats(fanout),
        "sink_queues": {
            name: {"events": depth, "max_events": limit}
            for name, (depth, limit) in fanout.queue_depths().items()
        },
        "latency": {name: hist.snapshot() for name, hist in fanout.latency().items()},
    }


def run(cfg: Config, ctx: StageContext) -> int:
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inlet = wire.Inlet(zctx, runtime.treekeeper_endpoint(cfg), hwm=cfg.runtime.hwm_messages)
    dedupe = Dedupe.for_config(cfg)  # redelivery sends some events twice (docs/recovery.md)
    if is_restart(runtime.stage_dir(cfg), "treekeeper"):
        # Before the sinks open: cut a half-written line, learn what they already hold.
        known = recover_sink_tails(cfg, dedupe)
        log.warning("restarted: %d records already in the sinks will not be written twice", known)
    try:
        fanout = build_fanout(cfg)
    except Exception as err:
        log.error("cannot start sinks: %s", err)
        inlet.close()
        zctx.term()
        return 2
    # A stop signal ends a wait on a full `block` sink after sinks_shutdown_timeout_ms.
    fanout.watch_stop(lambda: ctx.stop_requested)
    step = TreeStep(cfg)
    # Decode only the docs' heads (auditstream/doc_text.py).
    doc_text = sinks_take_doc_text(cfg.sinks)
    runtime.ready_path(cfg).touch(mode=0o600)
    control = ControlServer(zctx, str(runtime.stage_dir(cfg)))
    acks = AckSender(zctx, cfg)
    sent = 0

    def submit(batch: list[dict[str, Any]]) -> None:
        nonlocal sent
        acks.tracker.released(batch)
        if batch:
            sent += len(batch)
            acks.tracker.submitted(fanout.submit(batch))

    transport_errors = TransportErrors()
    # Only an eof made for this tree keeper (our token) ends the input of an assembler.
    eofs: dict[int, dict[str, Any]] = {}
    received = 0
    last_status = 0.0
    merge = replay_merge(cfg)
    # What a wait for a frame wakes for besides one: `auditstream tree` asks, a receiver joins.
    frames = FrameWait(inlet, control, acks)
    outputs_closed = False

    def handle(frame: wire.Frame) -> None:
        nonlocal received
        if frame.kind == wire.EVENTS:
            arrived = frames_events(frame, transport_errors, doc_text=doc_text)
            events = dedupe.filter(arrived)
            received += len(events)
            acks.tracker.frame_arrived(frame.sender, frame.body, events, fanout.submitted)
            sent_below = frame.body.get(wire.SENT_BELOW)
            if len(events) == len(arrived):
                submit(step.process(events, frame.sender, sent_below))
            else:  # the window learns the dropped ones' times too, in frame order
                kept = {id(event) for event in events}
                dropped = {id(event) for event in arrived if id(event) not in kept}
                submit(step.process(arrived, frame.sender, sent_below, dropped))
        elif frame.kind == wire.EOF_KIND:
            acks.tracker.frame_arrived(frame.sender, frame.body, [], fanout.submitted, final=True)
            if frame.body.get("token") in (None, acks.token):
                eofs[frame.sender] = frame.body.get("stats", {})
                submit(step.source_done(frame.sender))

    while len(eofs) < cfg.assembler.instances:
        waiting = merge is not None and merge.parked_frames > 0
        if acks.hello_due and not waiting:
            frame = frames.recv(HELLO_POLL_MS)
        elif waiting:
            frame = inlet.recv(MERGE_PATIENCE_MS)
        else:
            frame = frames.recv(idle_wait_ms(step, acks, fanout, ctx, last_status + STATUS_EVERY_S))
        now = time.monotonic()
        if frame is None:
            if merge is not None and waiting:  # the one we wait for is quiet: on with the oldest
                for parked in merge.take(stalled=True):
                    handle(parked)
            submit(step.maintain())
            if ctx.should_stop_when_idle(now):
                break  # told to stop, and upstream has gone quiet: no eof is coming
        else:
            if frame.kind == wire.EVENTS:
                ctx.input_arrived()
            if merge is None:
                handle(frame)
            else:
                merge.add(frame)
                for parked in merge.take():
                    handle(parked)
        acks.service(fanout.durable_seq())
        control.serve(step.table)
        if not outputs_closed and fanout.all_outputs_closed():
            # Stdout's reader exited (| head): the supervisor stops the source as on a first
            # signal; what is in flight drains here, counted as discarded (output_closed).
            outputs_closed = True
            try:
                runtime.output_closed_path(cfg).touch(mode=0o600)
            except OSError as err:  # the replay then runs to its end, discarding
                log.warning("cannot tell the supervisor that every output is closed: %s", err)
        if now - last_status >= STATUS_EVERY_S:
            last_status = now
            write_status(
                runtime.status_path(cfg, "treekeeper"),
                status_of(received, sent, inlet, fanout, transport_errors.frames),
            )
    if merge is not None:
        for parked in merge.drain():
            handle(parked)
    submit(step.close())
    fanout.close()
    acks.service(fanout.durable_seq(), now_all=True)  # all flushed: the last acknowledgements
    upstream: dict[str, Any] = {}
    for index in sorted(eofs):
        merge_stats(upstream, eofs[index])
    # The final counters and latencies, flushed: what a reader sees after the stop.
    write_status(
        runtime.status_path(cfg, "treekeeper"),
        status_of(received, sent, inlet, fanout, transport_errors.frames),
    )
    stats = {
        "treekeeper": {
            "received_events": received,
            "events_out": sent,
            "frame_gaps": inlet.stats.gaps,
            "duplicates_dropped": dedupe.dropped,
            "gap_markers": step.gap_markers,
            "transport_errors": transport_errors.frames,
            "foreign_hash_frames": transport_errors.foreign_hashes,
            "acks_sent": acks.acks_sent,
            # Replay: frames taken before every assembler had one parked (treekeeper/merge.py).
            "frames_taken_early": merge.taken_early if merge is not None else 0,
            "outputs_closed": outputs_closed,
            **step.stats(),
        },
        "sinks": fanout_stats(fanout),
    }
    merge_stats(upstream, stats)
    write_status(runtime.summary_path(cfg), upstream)
    runtime.ready_path(cfg).unlink(missing_ok=True)
    control.close()
    acks.close(linger_ms=ACK_LINGER_MS)
    inlet.close()
    zctx.term()
    return 0


def idle_wait_ms(
    step: TreeStep, acks: AckSender, fanout: FanOut, ctx: StageContext, status_due: float
) -> int:
    """How long the loop may wait for a frame: IDLE_POLL_MS (0 during a /proc sweep) while
    anything is in flight (held in the window, written by the sinks, not acknowledged: the
    sinks' progress wakes no one here) or a stop is asked (STOP_IDLE_S is counted in these
    turns); else until the next timed work (a table's deadline, an ack or hello, the status
    file), at most IDLE_MAX_MS."""
    if ctx.stop_requested or acks.tracker.outstanding or fanout.durable_seq() < fanout.submitted:
        return step.idle_poll_ms(IDLE_POLL_MS)
    due_ms = ms_until(min(status_due, acks.next_due(time.monotonic())))
    return min(step.idle_poll_ms(IDLE_POLL_MS, IDLE_MAX_MS), due_ms)


class FrameWait:
    """The loop's wait for a frame, which a control request or a receiver joining the ack
    socket ends too: with idle waits of up to IDLE_MAX_MS, `auditstream tree` and a
    restarted receiver's hello would otherwise wait for the next turn; and while a hello is
    due, the receiver reads nothing before it, so the first records of every replay waited
    up to the whole wait for it."""

    def __init__(self, inlet: wire.Inlet, control: ControlServer, acks: AckSender) -> None:
        assert acks.outlet.watch is not None  # the ack socket is always watched
        self.inlet = inlet
        self.poller = zmq.Poller()
        for sock in (inlet.sock, control.sock, acks.outlet.watch.monitor):
            self.poller.register(sock, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> wire.Frame | None:
        """The next frame within ``timeout_ms``; None when it passes or something else woke."""
        ready = self.poller.poll(timeout_ms)
        if any(sock is self.inlet.sock for sock, _ in ready):
            return self.inlet.recv(0)
        return None


MERGE_PATIENCE_MS = 50  # replay: how long to wait for a quiet assembler (treekeeper/merge.py)


def replay_merge(cfg: Config) -> FrameMerge | None:
    """Replay of a finite log with several assemblers: their frames in event-time order.
    Live (and following a log) frames go as they come: there time releases them anyway,
    and latency counts."""
    r = cfg.receiver
    if cfg.assembler.instances < 2 or r.source != "file" or r.follow:
        return None
    return FrameMerge(cfg.assembler.instances, max_events=MAX_PARKED_EVENTS)


ACK_LINGER_MS = 2000  # the last acknowledgements to a live receiver; none if it is gone


@dataclass(slots=True)
class TransportErrors:
    """Events frames whose docs did not decode (a bug upstream): counted, logged, marked."""

    frames: int = 0
    foreign_hashes: int = 0  # frames whose heads hash unlike us: decoded whole (slower), not lost
    warn: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))


def frames_events(
    frame: wire.Frame, errors: TransportErrors, *, doc_text: bool = False
) -> list[dict[str, Any]]:
    """The frame's events with their docs; an event whose doc was lost in transit becomes a
    ``transport-error`` marker doc (its key and raw records kept, so the file sink still
    writes them), never a crash or a silent drop.

    ``doc_text``: audit events get their doc's head and text (:func:`wire.events_with_heads`),
    for sinks that write the text (:func:`sinks.sinks_take_doc_text`)."""
    try:
        if doc_text:
            if wire.HEADS_JSON in frame.body and not wire.hashes_agree(frame.body):
                errors.foreign_hashes += 1
                errors.warn.warning(
                    "hash-probe",
                    "assembler %d hashes unlike this tree keeper (started apart from the "
                    "supervisor, without one PYTHONHASHSEED?): its docs are decoded whole",
                    frame.sender,
                )
            return wire.events_with_heads(frame.body)
        return wire.events_of(frame.body)
    except wire.DocsError as err:
        errors.frames += 1
        errors.warn.warning("docs", "assembler %d sent undecodable docs: %s", frame.sender, err)
        events: list[dict[str, Any]] = frame.body["events"]
        for event in events:
            if event.get("doc") is None:
                marker = {"cause": "transport_error", "error": str(err), "key": event.get("key")}
                event["doc"] = marker_doc("transport-error", marker)
        return events
