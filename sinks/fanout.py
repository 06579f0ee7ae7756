"""Fan-out: every sink gets every batch, through its own thread and bounded queue.

- ``submit(batch)`` offers the batch to each sink's queue (bounded in events by
  ``queue_max_events``; a batch larger than the bound is still accepted into an
  empty queue so it cannot deadlock). ``when_full = "block"`` waits for room:
  backpressure up the pipeline. ``"drop_newest"`` drops the batch for that sink
  only, counted as discarded (``queue_full``).
- Consecutive drops of one sink form an episode; when the sink takes a batch
  again (or after ``MARKER_INTERVAL_S`` of dropping, or at close) one
  ``events-dropped`` marker event (sink, count, first/last key) goes to the OTHER
  sinks, so the loss is visible in the data and not only in a counter. Markers
  are built here (same shape as ``assembler.ecs.marker_doc``; kept local so sinks
  do not import the assembler). A sink that drops inside itself (``take_drops``:
  kafka) has its worker post the markers straight into the other queues. A marker
  is never refused for a full queue (one event over the bound); at close every
  worker waits for the drop-reporting sinks to finish writing before it writes its
  last markers and closes, so the last drops are marked too. A marker that still
  cannot be queued (that sink's worker has finished or was abandoned) is counted
  on the dropping sink (``errors["drop_marker_lost"]``, in events) and logged.
- A sink that encodes ahead (:class:`sinks.base.EncodingAhead`: jsonl) has each batch
  encoded by ``submit``, in the caller's thread, and its worker only writes; a batch
  that could not be encoded ahead is written by ``write_batch`` as from other sinks.
- A worker writes batches in order and flushes when its queue runs empty. A
  write that raises :class:`SinkWriteError` was already accounted by the sink
  and is only logged; any other exception is counted (``errors[ClassName]``),
  logged and retried (``write_attempts`` times, with backoff), then the batch
  is counted as discarded (``write_error``). Nothing escapes a worker thread.
- A sink whose output is gone for good (``output_closed``: stdout's reader exited,
  sinks/jsonl.py) is written no more: one line says so, and what it would have been
  given is counted as discarded (``output_closed``). ``all_outputs_closed()`` tells the
  tree keeper that nothing it makes can arrive anywhere.
- ``close()`` ends open drop episodes, lets every queue drain, flushes and
  closes every sink, and returns when all are done or ``shutdown_timeout_ms``
  (``[treekeeper] sinks_shutdown_timeout_ms``) passed; what is still queued then
  is counted as discarded (``shutdown_timeout``) and logged. A sink with
  ``stop_by(deadline)`` (kafka) is told to stop waiting ``CLOSE_RESERVE_S`` before
  that, so it can count what it gives up before the fan-out stops waiting for it.
  Events already inside a stuck sink's own buffer stay unaccounted (a jsonl/file
  sink's thread stuck in write(2)).
- A stop signal (``watch_stop``) ends a ``block`` wait: block means "wait while
  running". Once stopped, a submit blocked on a full sink waits at most
  ``shutdown_timeout_ms`` (the sinks are told ``stop_by`` then), and a batch that still
  does not fit is counted as discarded (``shutdown_timeout``) for that sink only;
  the other sinks get it.
- Latency: an event carrying ``recv_ns`` (the receiver's wall-clock stamp of
  the batch that completed it) is observed into the sink's histogram once a
  successful write of it has been flushed (``now - recv_ns``). A worker whose
  queue never runs empty flushes anyway every ``MAX_UNFLUSHED_STAMPS`` stamped
  events, so the pending stamps stay bounded.
- Durability for redelivery (docs/recovery.md): ``submit`` numbers its batches;
  a worker counts a batch done once written (or discarded, counted) and flushed,
  and flushes at least every ``DURABLE_FLUSH_S`` under load. ``durable_seq()``
  is the number below which every sink is done, so the tree keeper can
  acknowledge upstream. A batch a sink dropped counts as done for it (the drop
  is counted and reported by a marker).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

from auditstream.hostnode import local_host_name, local_node
from auditstream.latency import LatencyHistogram
from sinks.base import EncodingAhead, Event, Sink
from sinks.config import SinkConfig
from sinks.rotation import SinkWriteError

log = logging.getLogger(__name__)

MARKER_INTERVAL_S = 1.0
DEFAULT_SHUTDOWN_TIMEOUT_MS = 5000
# Of the shutdown timeout, what a sink that stops by a deadline keeps for counting what it
# gives up (kafka: purge and serve the delivery reports); at most half of the timeout.
CLOSE_RESERVE_S = 1.0
# How often a submit blocked on a full sink looks at the stop flag.
STOP_POLL_S = 0.1
MAX_UNFLUSHED_STAMPS = 65_536
DURABLE_FLUSH_S = 0.2  # under load, flush at least this often so acknowledgements flow

CallOutcome = Literal["ok", "accounted", "failed"]


def utc_timestamp_ms(now: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds, as ``@timestamp`` in docs: ``2017-03-31T21:29:12.404Z``."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def marker_doc(action: str, marker: dict[str, Any]) -> dict[str, Any]:
    """The minimal ECS document of a marker event (``raw == []``)."""
    return {
        "@timestamp": utc_timestamp_ms(),
        "event": {"kind": "event", "action": action},
        "auditstream": {"marker": marker},
        "tags": ["auditstream-marker"],
    }


def event_key(event: object) -> list[Any] | None:
    """The event's ``[node, sec, msec, serial]`` key, or None when it has none."""
    if isinstance(event, dict):
        key = event.get("key")
        if isinstance(key, list | tuple):
            return list(key)
    return None


def drop_marker_event(
    sink_name: str, count: int, first_key: object, last_key: object, cause: str
) -> dict[str, Any]:
    """An ``events-dropped`` marker event telling the other sinks what one sink lost."""
    now = time.time()
    marker = {
        "cause": cause,
        "sink": sink_name,
        "count": count,
        "first_key": first_key,
        "last_key": last_key,
    }
    # The drop happened on this host, in this run, whatever host the events came from: the
    # marker names it (a live run's docs all do; a Kafka key then keeps it with them).
    key = [local_node(), int(now), int(now * 1000) % 1000, 0]
    doc = marker_doc("events-dropped", marker)
    if local_node():
        doc["host"] = {"name": local_host_name()}
    return {"key": key, "raw": [], "doc": doc}


class DropReporting(Protocol):
    """A sink that drops inside itself (e.g. kafka's local queue) and reports the runs."""

    def take_drops(self) -> list[tuple[int, list[Any], list[Any]]]:
        """(count, first_key, last_key) of each run dropped since the last call."""


class StoppingByDeadline(Protocol):
    """A sink whose waits (for room, for a flush) can be bounded from another thread."""

    def stop_by(self, deadline: float) -> None:
        """Stop waiting at ``deadline`` (time.monotonic()), counting what is given up."""


@dataclass(frozen=True, slots=True)
class SinkMetrics:
    """Vector's component metrics for one sink, as seen through the fan-out."""

    component_received_events_total: int
    component_sent_events_total: int
    component_discarded_events_total: int
    discarded_by_reason: dict[str, int]
    component_errors_total: dict[str, int]
    # Events the sink had nothing to write for (the raw file sink: no raw records).
    skipped_events: int = 0


def receive_stamps(events: Sequence[Event]) -> list[int]:
    """The receiver's ``recv_ns`` stamps of the events that carry one (for the latency)."""
    return [stamp for event in events if (stamp := event.get("recv_ns")) is not None]


@dataclass(slots=True)
class _Encoded:
    """A batch its sink encoded ahead: what the worker needs of it, without the events
    (they are freed in the submitting thread, where they are still in the caches)."""

    payload: Any  # what EncodingAhead.encode returned
    count: int  # events in it
    stamps: list[int]  # their receive stamps (latency), as hold_stamps reads them

    def __len__(self) -> int:
        return self.count


Batch = list[Event] | _Encoded


class _EventQueue:
    """A FIFO of batches bounded in events, closable and abandonable."""

    def __init__(self, max_events: int) -> None:
        self._max_events = max_events
        self._batches: deque[Batch] = deque()
        self._seqs: deque[int] = deque()  # submit's number of each batch (0: a marker)
        self.taken_seq = 0  # the number of the batch get() returned last (worker thread only)
        self._events = 0
        self.markers_in = 0  # marker events queued by put_marker (the lane's received)
        self._closed = False
        self._finished = False  # the worker took its last batch: nothing more is written
        self._abandoned = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def _fits(self, count: int) -> bool:
        return self._events == 0 or self._events + count <= self._max_events

    def put(self, batch: Batch, block: bool, timeout: float | None = None, seq: int = 0) -> bool:
        """Queue the batch; False when it does not fit (in time) or the queue was abandoned."""
        with self._lock:
            if block:
                self._not_full.wait_for(lambda: self._abandoned or self._fits(len(batch)), timeout)
            if self._abandoned or not self._fits(len(batch)):
                return False
            self._batches.append(batch)
            self._seqs.append(seq)
            self._events += len(batch)
            self._not_empty.notify()
            return True

    def put_marker(self, batch: list[Event]) -> bool:
        """Queue a marker batch whatever the bound (they are few and must not be lost),
        also after close(); False once the worker has finished or the queue was abandoned."""
        with self._lock:
            if self._abandoned or self._finished:
                return False
            self._batches.append(batch)
            self._seqs.append(0)
            self._events += len(batch)
            self.markers_in += len(batch)
            self._not_empty.notify()
            return True

    def finish(self) -> list[Batch]:
        """The worker's last take: what is still queued (markers posted after close);
        put_marker fails from now on."""
        with self._lock:
            self._finished = True
            if self._abandoned:
                return []
            batches = list(self._batches)
            self._batches.clear()
            self._seqs.clear()
            self._events = 0
            return batches

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def get(self) -> Batch | None:
        """Next batch; None once closed and empty, or abandoned."""
        with self._lock:
            self._not_empty.wait_for(lambda: self._batches or self._closed or self._abandoned)
            if self._abandoned or not self._batches:
                return None
            batch = self._batches.popleft()
            self.taken_seq = self._seqs.popleft()
            self._events -= len(batch)
            self._not_full.notify_all()
            return batch

    def is_empty(self) -> bool:
        with self._lock:
            return not self._batches

    def skip(self, seq: int) -> None:
        """A numbered batch this sink will not get (dropped): done once the ones before are."""
        with self._lock:
            if not self._abandoned:
                self._batches.append([])
                self._seqs.append(seq)
                self._not_empty.notify()

    @property
    def depth_events(self) -> int:
        """Events queued now (read without the lock: a gauge, one int)."""
        return self._events

    def close(self) -> None:
        """No more batches will come; get() returns None after the last one."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()

    def abandon(self) -> int:
        """Throw away everything queued; return how many events that was."""
        with self._lock:
            self._abandoned = True
            left, self._events = self._events, 0
            self._batches.clear()
            self._seqs.clear()
            self._not_empty.notify_all()
            self._not_full.notify_all()
            return left


@dataclass(slots=True)
class _DropEpisode:
    started: float
    first: Event
    last: Event
    count: int = 0


@dataclass(slots=True)
class _Lane:
    """One sink with its queue, thread and the fan-out's own counters for it."""

    sink: Sink
    config: SinkConfig
    queue: _EventQueue
    thread: threading.Thread | None = None
    received: int = 0
    discarded: dict[str, int] = field(default_factory=dict)  # reason -> events
    errors: dict[str, int] = field(default_factory=dict)  # error_type -> count
    episode: _DropEpisode | None = None
    accounted_failures: int = 0  # SinkWriteErrors seen, only to rate-limit their logging
    dropped_batches: int = 0  # batches dropped for a full queue, only to rate-limit logging
    encode_failures: int = 0  # encode() raised (submit's thread), only to rate-limit logging
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    written_seq: int = 0  # submit number of the last batch written (or dropped)
    durable_seq: int = 0  # ... and flushed: every batch up to it is done for this sink
    flushed_at: float = 0.0
    unflushed_stamps: list[int] = field(default_factory=list)  # recv_ns written, not yet flushed
    # Set by the worker once it has written every batch close() left it (not the markers
    # others post after): the other workers wait for this before they write their last.
    writes_done: threading.Event = field(default_factory=threading.Event)
    unmarked_drops: int = 0  # events dropped here whose marker some sink could not take

    def discard(self, reason: str, count: int) -> None:
        self.discarded[reason] = self.discarded.get(reason, 0) + count

    def error(self, error_type: str) -> int:
        self.errors[error_type] = self.errors.get(error_type, 0) + 1
        return self.errors[error_type]

    def hold_stamps(self, events: Batch) -> None:
        """Remember the receive stamps of events just written (observed after the flush)."""
        stamps = events.stamps if isinstance(events, _Encoded) else receive_stamps(events)
        self.unflushed_stamps.extend(stamps)

    def observe_flushed(self, flushed: bool) -> None:
        """Observe held stamps as latencies now that they reached the OS (or forget them)."""
        stamps, self.unflushed_stamps = self.unflushed_stamps, []
        if flushed and stamps:
            now = time.time_ns()
            self.latency.observe_many(now - stamp for stamp in stamps)


def _output_closed(lane: _Lane) -> bool:
    """The lane's sink says its output is gone for good (sinks/jsonl.py ``output_closed``)."""
    return bool(getattr(lane.sink, "output_closed", False))


def _reports_drops(lane: _Lane) -> bool:
    """The lane's sink drops inside itself and reports it (``take_drops``: kafka)."""
    return callable(getattr(lane.sink, "take_drops", None))


def _worth_logging(count: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th... occurrence: visible, but bounded under a storm."""
    return count & (count - 1) == 0


class FanOut:
    """Deliver every submitted batch to every sink, each in its own thread."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        configs: Sequence[SinkConfig],
        shutdown_timeout_ms: int = DEFAULT_SHUTDOWN_TIMEOUT_MS,
        write_attempts: int = 3,
        retry_backoff_ms: int = 100,
    ) -> None:
        if len(sinks) != len(configs):
            raise ValueError(f"{len(sinks)} sinks but {len(configs)} sink configs")
        self._shutdown_timeout_s = shutdown_timeout_ms / 1000
        self._write_attempts = max(1, write_attempts)
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._closed = False
        self._closing = False
        self._reserve_s = min(CLOSE_RESERVE_S, self._shutdown_timeout_s / 2)
        self._stop_check: Callable[[], bool] | None = None
        self._stop_at: float | None = None  # a stop was seen while blocked: block waits end here
        # close(): the workers wait this long for the drop-reporting sinks' last markers: past
        # the sinks' stop_by deadline (from then on they only count, fast), before the end.
        self._reports_due_at: float | None = None
        self._marker_lock = threading.Lock()  # unmarked_drops, counted from several threads
        self.submitted = 0  # batches numbered by submit()
        self._lanes = [
            _Lane(sink, cfg, _EventQueue(cfg.queue_max_events))
            for sink, cfg in zip(sinks, configs, strict=True)
        ]
        for lane in self._lanes:
            lane.thread = threading.Thread(
                target=self._run, args=(lane,), name=f"sink-{lane.sink.name}", daemon=True
            )
            lane.thread.start()

    def submit(self, batch: Sequence[Event]) -> int:
        """Offer the batch to every sink (blocking or dropping per sink as configured).

        Returns the batch's number (see :meth:`durable_seq`); an empty batch gets none
        and returns the last number given.
        """
        if self._closed:
            raise RuntimeError("FanOut.submit after close")
        events = list(batch)
        if events:
            self.submitted += 1
            for lane in self._lanes:
                encoded = self._encode_ahead(lane, events)
                self._offer(lane, events, seq=self.submitted, encoded=encoded)
        return self.submitted

    def watch_stop(self, stop_requested: Callable[[], bool]) -> None:
        """Have a submit blocked on a full ``block`` sink look at ``stop_requested`` (the
        stage's signal flag): once it is true, the wait ends after ``shutdown_timeout_ms``."""
        self._stop_check = stop_requested

    def all_outputs_closed(self) -> bool:
        """Every sink's output is gone for good: nothing submitted can arrive anywhere."""
        return bool(self._lanes) and all(_output_closed(lane) for lane in self._lanes)

    def _encode_ahead(self, lane: _Lane, events: list[Event]) -> _Encoded | None:
        """The batch as the lane's sink encodes it ahead, or None (its worker then runs
        write_batch, which encodes and accounts as always)."""
        encode = getattr(lane.sink, "encode", None)
        if encode is None or _output_closed(lane):
            return None
        try:
            payload = encode(events)
        except Exception as err:  # the worker's write_batch encodes it again and accounts
            lane.encode_failures += 1
            if _worth_logging(lane.encode_failures):
                log.error("sink %s: encoding ahead failed: %r", lane.sink.name, err)
            return None
        if payload is None:
            return None
        return _Encoded(payload, len(events), receive_stamps(events))

    def durable_seq(self) -> int:
        """Every batch ``submit`` numbered up to this is written and flushed by every sink."""
        return min((lane.durable_seq for lane in self._lanes), default=self.submitted)

    def _offer(
        self,
        lane: _Lane,
        events: list[Event],
        seq: int = 0,
        encoded: _Encoded | None = None,
    ) -> None:
        lane.received += len(events)
        block = lane.config.when_full == "block"
        queued: Batch = events if encoded is None else encoded
        if self._put(lane, queued, block, seq):
            if lane.episode is not None:
                self._end_episode(lane)
            return
        if seq:
            lane.queue.skip(seq)
        if block:  # only a stop ends a block wait: counted, and no episode (nothing would end it)
            lane.discard("shutdown_timeout", len(events))
            lane.dropped_batches += 1
            if _worth_logging(lane.dropped_batches):
                log.error(
                    "sink %s: still full %d ms after the stop; %d events discarded so far "
                    "(shutdown_timeout)",
                    lane.sink.name,
                    int(self._shutdown_timeout_s * 1000),
                    lane.discarded["shutdown_timeout"],
                )
            return
        lane.discard("queue_full", len(events))
        now = time.monotonic()
        if lane.episode is None:
            lane.episode = _DropEpisode(now, events[0], events[-1])
        lane.episode.count += len(events)
        lane.episode.last = events[-1]
        lane.dropped_batches += 1
        if _worth_logging(lane.dropped_batches):
            log.warning("sink %s: queue full, dropped %d events", lane.sink.name, len(events))
        if now - lane.episode.started >= MARKER_INTERVAL_S:
            self._end_episode(lane)

    def _put(self, lane: _Lane, queued: Batch, block: bool, seq: int) -> bool:
        """Queue a batch; a block wait ends only when there is room, the queue is abandoned,
        or a stop was requested and the shutdown timeout has passed since."""
        if not block or self._stop_check is None:
            return lane.queue.put(queued, block=block, seq=seq)
        while True:
            stop_at = self._stop_at
            wait_s = STOP_POLL_S if stop_at is None else max(0.0, stop_at - time.monotonic())
            if lane.queue.put(queued, block=True, timeout=wait_s, seq=seq):
                return True
            if lane.queue.abandoned or stop_at is not None:
                return False
            if self._stop_check():
                self._begin_stop(lane)

    def _begin_stop(self, blocked: _Lane) -> None:
        """A stop was requested while a submit waits on a full sink: the wait ends after the
        shutdown timeout, and sinks that can be told to stop waiting are told."""
        self._stop_at = time.monotonic() + self._shutdown_timeout_s
        log.warning(
            "stop requested while sink %s is full; waiting at most %d ms (sinks_shutdown_timeout_ms)",
            blocked.sink.name,
            int(self._shutdown_timeout_s * 1000),
        )
        self._tell_stop_by(self._stop_at - self._reserve_s)

    def _tell_stop_by(self, deadline: float) -> None:
        for lane in self._lanes:
            stop_by = getattr(lane.sink, "stop_by", None)
            if not callable(stop_by):
                continue
            try:
                cast(StoppingByDeadline, lane.sink).stop_by(deadline)
            except Exception as err:  # the join's timeout still bounds close()
                log.error("sink %s: stop_by failed: %r", lane.sink.name, err)

    def _end_episode(self, lane: _Lane) -> None:
        episode, lane.episode = lane.episode, None
        if episode is None:
            return
        notice = drop_marker_event(
            lane.sink.name,
            episode.count,
            event_key(episode.first),
            event_key(episode.last),
            "sink-queue-full",
        )
        self._post_marker(lane, notice, episode.count)

    def _post_marker(self, source: _Lane, notice: Event, dropped: int) -> None:
        """Queue a drop marker for every sink but the one that dropped (any thread)."""
        for other in self._lanes:
            if other is source or other.queue.put_marker([notice]):
                continue
            with self._marker_lock:
                source.unmarked_drops += dropped
                lost = source.unmarked_drops
            log.error(
                "sink %s: the marker for %d events it dropped could not reach sink %s "
                "(already closed); %d dropped events unmarked there so far",
                source.sink.name,
                dropped,
                other.sink.name,
                lost,
            )

    def close(self) -> bool:
        """Drain, flush and close every sink; True when all finished within the timeout."""
        if self._closed:
            return True
        deadline = time.monotonic() + self._shutdown_timeout_s
        self._closing = True
        self._reports_due_at = deadline - self._reserve_s / 2
        self._tell_stop_by(deadline - self._reserve_s)
        for lane in self._lanes:
            self._end_episode(lane)
        self._closed = True
        for lane in self._lanes:
            lane.queue.close()
        finished = True
        for lane in self._lanes:
            assert lane.thread is not None
            lane.thread.join(max(0.0, deadline - time.monotonic()))
            if lane.thread.is_alive():
                finished = False
                left = lane.queue.abandon()
                lane.discard("shutdown_timeout", left)
                log.error(
                    "sink %s: not done after shutdown_timeout_ms=%d; %d queued events discarded",
                    lane.sink.name,
                    int(self._shutdown_timeout_s * 1000),
                    left,
                )
        return finished

    def _collect_sink_drops(self, lane: _Lane) -> None:
        """Post markers for the runs the lane's sink dropped inside itself (its worker)."""
        take_drops = getattr(lane.sink, "take_drops", None)
        if not callable(take_drops):
            return
        try:
            spans = take_drops()
            for count, first_key, last_key in spans:
                notice = drop_marker_event(
                    lane.sink.name, count, first_key, last_key, "sink-dropped"
                )
                self._post_marker(lane, notice, count)
        except Exception as err:
            if _worth_logging(lane.error(type(err).__name__)):
                log.error("sink %s: take_drops failed: %r", lane.sink.name, err)

    def stats(self) -> dict[str, SinkMetrics]:
        """Per-sink metrics: the fan-out's counters merged with the sink's own."""
        result: dict[str, SinkMetrics] = {}
        for lane in self._lanes:
            own = lane.sink.stats
            discarded = dict(lane.discarded)
            # A sink that says why it discarded (kafka: discarded_by_reason) is shown so.
            own_reasons = dict(getattr(lane.sink, "discarded_by_reason", None) or {})
            if own_reasons and sum(own_reasons.values()) == own.discarded_events:
                for reason, count in own_reasons.items():
                    discarded[reason] = discarded.get(reason, 0) + count
            elif own.discarded_events:
                discarded["sink"] = own.discarded_events
            errors = dict(own.errors)
            for error_type, count in dict(lane.errors).items():
                errors[error_type] = errors.get(error_type, 0) + count
            if lane.unmarked_drops:
                errors["drop_marker_lost"] = lane.unmarked_drops
            result[lane.sink.name] = SinkMetrics(
                component_received_events_total=lane.received + lane.queue.markers_in,
                component_sent_events_total=own.sent_events,
                component_discarded_events_total=sum(discarded.values()),
                discarded_by_reason=discarded,
                component_errors_total=errors,
                skipped_events=own.skipped_events,
            )
        return result

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Per sink: (events queued now, queue_max_events)."""
        return {
            lane.sink.name: (lane.queue.depth_events, lane.config.queue_max_events)
            for lane in self._lanes
        }

    def latency(self) -> dict[str, LatencyHistogram]:
        """Per sink: receive-to-flushed-write latency of the events that carry ``recv_ns``."""
        return {lane.sink.name: lane.latency for lane in self._lanes}

    def _run(self, lane: _Lane) -> None:
        while (events := lane.queue.get()) is not None:
            self._write_taken(lane, events, lane.queue.taken_seq)
        lane.writes_done.set()
        if not lane.queue.abandoned:
            # The drop-reporting sinks' last drops become markers in this queue: wait for
            # them to finish writing (bounded), then write what came.
            self._await_drop_reports(lane)
            for batch in lane.queue.finish():
                self._write_taken(lane, batch, 0)
        closed = self._guarded(lane, lane.sink.close, "close") == "ok"
        lane.observe_flushed(closed)
        self._collect_sink_drops(lane)

    def _await_drop_reports(self, lane: _Lane) -> None:
        due_at = self._reports_due_at
        for other in self._lanes:
            if other is not lane and _reports_drops(other):
                wait_s = None if due_at is None else max(0.0, due_at - time.monotonic())
                other.writes_done.wait(wait_s)

    def _write_taken(self, lane: _Lane, events: Batch, seq: int) -> None:
        """Write one batch the worker took, flush when due, post the sink's drop markers."""
        closed = _output_closed(lane)
        if events and closed:
            lane.discard("output_closed", len(events))  # done: counted, nowhere to go
        elif events and self._deliver(lane, events):
            lane.hold_stamps(events)
        if seq:
            lane.written_seq = seq
        if (
            lane.queue.is_empty()
            or len(lane.unflushed_stamps) >= MAX_UNFLUSHED_STAMPS
            or time.monotonic() - lane.flushed_at >= DURABLE_FLUSH_S
        ):
            flushed = not closed and self._guarded(lane, lane.sink.flush, "flush") == "ok"
            lane.observe_flushed(flushed)
            lane.flushed_at = time.monotonic()
            self._note_durable(lane)
        self._collect_sink_drops(lane)

    def _note_durable(self, lane: _Lane) -> None:
        # A sink that still holds undelivered events after its flush (it may report them
        # through an ``undelivered()`` method) is not done with them yet.
        undelivered = getattr(lane.sink, "undelivered", None)
        if callable(undelivered) and undelivered():
            return
        lane.durable_seq = lane.written_seq

    def _deliver(self, lane: _Lane, events: Batch) -> bool:
        """Write with retries; True when the sink took the whole batch without error."""
        for attempt in range(self._write_attempts):
            outcome = self._guarded(lane, lambda: self._write(lane.sink, events), "write")
            if outcome != "failed":  # done, or the sink accounted for its loss itself
                return outcome == "ok"
            if attempt + 1 < self._write_attempts:
                time.sleep(self._retry_backoff_s * 2**attempt)
        lane.discard("write_error", len(events))
        return False

    @staticmethod
    def _write(sink: Sink, events: Batch) -> None:
        if isinstance(events, _Encoded):
            cast(EncodingAhead, sink).write_encoded(events.payload, events.count)
        else:
            sink.write_batch(events)

    def _guarded(self, lane: _Lane, action: Callable[[], None], what: str) -> CallOutcome:
        """Run a sink call; count and log what it raises."""
        try:
            action()
        except SinkWriteError as err:  # counted by the sink itself
            lane.accounted_failures += 1
            if _output_closed(lane):  # once: nothing more is written to it
                log.warning(
                    "sink %s: its reader has gone (%s); %d events written, the rest discarded",
                    lane.sink.name,
                    err.__cause__ or err,
                    lane.sink.stats.sent_events,
                )
            elif _worth_logging(lane.accounted_failures):
                log.error("sink %s: %s failed: %s", lane.sink.name, what, err)
            return "accounted"
        except Exception as err:
            count = lane.error(type(err).__name__)
            if _worth_logging(count):
                log.error("sink %s: %s failed: %r", lane.sink.name, what, err, exc_info=count == 1)
            return "failed"
        return "ok"
