"""The metrics process: ``GET /metrics`` in Prometheus text format, from the stages' status files.

``python -m auditstream.metrics --config FILE`` — started by the supervisor when
``[runtime] metrics_listen`` is set. Each scrape reads ``status-*.json`` in the
runtime directory (the receiver writes its own every ``status_poll_ms``, the
assemblers and the tree keeper every second), so a scrape costs the stages
nothing and this process holds no pipeline state. Single-threaded on purpose:
scrapes are rare, and a slow client is cut off by the socket timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from auditstream import runtime
from auditstream.config import Config, parse_listen
from auditstream.prometheus import CONTENT_TYPE, MetricFamily, render
from auditstream.stage import EXIT_FATAL, StageContext, stage_main

log = logging.getLogger("auditstream.metrics")
ACCEPT_POLL_S = 0.2  # how often the accept loop looks at the stop flag
CLIENT_TIMEOUT_S = 5.0
SINK_DISCARD_REASONS = ("queue_full", "write_error", "shutdown_timeout", "sink")
RECENT_QUANTILES = (("0.5", "p50_s"), ("0.99", "p99_s"), ("1", "max_s"))


@dataclass(frozen=True, slots=True)
class StageStatus:
    """One status file: its content and how old it is."""

    name: str  # receiver, assembler-0, treekeeper (the file's name)
    data: dict[str, Any]
    age_s: float


_unreadable_warned: set[str] = set()


def read_statuses(run_dir: Path, now: float) -> list[StageStatus]:
    """Every readable ``status-*.json`` (a file being replaced or half-read is skipped)."""
    found: list[StageStatus] = []
    for path in runtime.status_files(run_dir):  # with [runtime] user, most are under stages/
        try:
            # The age of the very file read: a stage replaces its status by rename, and
            # a stat of the path afterwards could pair old counts with a fresh age.
            with path.open("rb") as fh:
                age = max(0.0, now - os.fstat(fh.fileno()).st_mtime)
                data = json.loads(fh.read())
        except PermissionError as err:  # e.g. another stage's file under another user
            if path.name not in _unreadable_warned:
                _unreadable_warned.add(path.name)
                log.warning("cannot read %s: its metrics are left out (%s)", path, err.strerror)
            continue
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(StageStatus(path.stem.removeprefix("status-"), data, age))
    return found


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: object) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Families:
    """The metric families of one scrape, in exposition order."""

    def __init__(self) -> None:
        self.received = MetricFamily(
            "component_received_events_total",
            "counter",
            "Items a component received (the receiver and assemblers count raw records).",
        )
        self.sent = MetricFamily(
            "component_sent_events_total",
            "counter",
            "Items a component sent on (sinks: written, or delivered for kafka).",
        )
        self.discarded = MetricFamily(
            "component_discarded_events_total", "counter", "Items a component discarded, by reason."
        )
        self.errors = MetricFamily(
            "component_errors_total", "counter", "Errors in a component, by error_type and stage."
        )
        # Ours since the receiver registered: the kernel's own counter (below) also holds
        # what other readers lost before this run, and a fresh start must not show that.
        self.kernel_lost = MetricFamily(
            "auditstream_kernel_lost_total",
            "counter",
            "Audit records the kernel lost since this run's receiver registered (netlink and"
            " multicast sources).",
        )
        self.kernel_lost_since_boot = MetricFamily(
            "auditstream_kernel_lost_since_boot",
            "gauge",
            "The kernel's own audit lost counter: since boot, all readers (auditctl -s lost).",
        )
        self.kernel_backlog = MetricFamily(
            "auditstream_kernel_backlog", "gauge", "Audit records queued in the kernel."
        )
        self.kernel_backlog_limit = MetricFamily(
            "auditstream_kernel_backlog_limit", "gauge", "The kernel's audit backlog limit."
        )
        self.queue = MetricFamily(
            "auditstream_queue_events",
            "gauge",
            "Items waiting inside a component (receiver: batched records; assembler: open"
            " events; sink: the fan-out queue).",
        )
        self.queue_max = MetricFamily(
            "auditstream_queue_max_events", "gauge", "Capacity of a sink's fan-out queue."
        )
        self.in_flight = MetricFamily(
            "auditstream_hop_in_flight",
            "gauge",
            "Sent by one side of a ZeroMQ hop minus received by the other (status files of"
            " up to a second apart: approximate).",
        )
        self.lost = MetricFamily(
            "auditstream_events_lost_total", "counter", "Events missing from serial gaps."
        )
        self.frame_gaps = MetricFamily(
            "auditstream_frame_gaps_total", "counter", "Frames missing between two stages."
        )
        self.latency = MetricFamily(
            "auditstream_event_latency_seconds",
            "histogram",
            "From the receiver reading an event's last record to a sink's flushed write.",
        )
        self.latency_recent = MetricFamily(
            "auditstream_event_latency_recent_seconds",
            "gauge",
            "Exact latency quantiles over a sink's last 10000 observed events (1 = max).",
        )
        self.age = MetricFamily(
            "auditstream_status_age_seconds",
            "gauge",
            "Seconds since a stage last wrote its status (a stuck or dead stage grows).",
        )

    def all(self) -> list[MetricFamily]:
        return [value for value in vars(self).values() if isinstance(value, MetricFamily)]

    def component(self, block: dict[str, Any]) -> dict[str, str]:
        """Samples of one stage's ``component`` block; returns its identifying labels."""
        labels = {
            "component_id": str(block.get("id", "")),
            "component_kind": str(block.get("kind", "")),
            "component_type": str(block.get("type", "")),
        }
        self.received.add(_int(block.get("received_events")), labels)
        self.sent.add(_int(block.get("sent_events")), labels)
        for reason, count in _dict(block.get("discarded_events")).items():
            self.discarded.add(_int(count), {**labels, "reason": str(reason)})
        for stage, types in _dict(block.get("errors")).items():
            for error_type, count in _dict(types).items():
                self.errors.add(
                    _int(count), {**labels, "error_type": str(error_type), "stage": str(stage)}
                )
        return labels


def _sink_types(cfg: Config) -> dict[str, str]:
    from sinks import SinkError
    from sinks.config import sink_configs_from_tables

    try:
        return {s.name: s.type for s in sink_configs_from_tables(cfg.sinks)}
    except SinkError:
        return {}


def _sinks(out: Families, tree: dict[str, Any], sink_types: dict[str, str]) -> None:
    for name, metrics in _dict(tree.get("sinks")).items():
        block = _dict(metrics)
        labels = {"component_id": name, "component_kind": "sink"}
        labels["component_type"] = sink_types.get(name, "")
        out.received.add(_int(block.get("component_received_events_total")), labels)
        out.sent.add(_int(block.get("component_sent_events_total")), labels)
        reasons = {reason: 0 for reason in SINK_DISCARD_REASONS}
        reasons.update({k: _int(v) for k, v in _dict(block.get("discarded_by_reason")).items()})
        for reason, count in reasons.items():
            out.discarded.add(count, {**labels, "reason": reason})
        for error_type, count in _dict(block.get("component_errors_total")).items():
            out.errors.add(_int(count), {**labels, "error_type": error_type, "stage": "sending"})
    for name, queue in _dict(tree.get("sink_queues")).items():
        labels = {"component_id": name, "queue": "fanout"}
        out.queue.add(_int(_dict(queue).get("events")), labels)
        out.queue_max.add(_int(_dict(queue).get("max_events")), labels)
    for name, hist in _dict(tree.get("latency")).items():
        snap = _dict(hist)
        bounds = [_number(b) for b in snap.get("bounds_s", [])]
        counts = [_int(c) for c in snap.get("counts", [])]
        if len(counts) == len(bounds) + 1:
            out.latency.add_histogram(
                {"component_id": name}, bounds, counts, _number(snap.get("sum_s"))
            )
        recent = _dict(snap.get("recent"))
        if _int(recent.get("events")):
            for quantile, key in RECENT_QUANTILES:
                labels = {"component_id": name, "quantile": quantile}
                out.latency_recent.add(_number(recent.get(key)), labels)


def collect(statuses: list[StageStatus], sink_types: dict[str, str]) -> list[MetricFamily]:
    """Every metric family from the stages' status files."""
    out = Families()
    by_name = {s.name: s.data for s in statuses}
    for status in statuses:
        data = status.data
        labels = out.component(_dict(data.get("component")))
        out.age.add(round(status.age_s, 3), {"component_id": status.name})
        if "frame_gaps" in data:
            out.frame_gaps.add(_int(data["frame_gaps"]), {"component_id": labels["component_id"]})
        if status.name.startswith("assembler-"):
            out.lost.add(_int(data.get("lost_events")), {"component_id": status.name})
            queue = {"component_id": status.name, "queue": "open_events"}
            out.queue.add(_int(data.get("open_events")), queue)
    receiver = by_name.get("receiver")
    if receiver is not None:
        kernel = _dict(receiver.get("kernel"))
        if kernel:
            if "lost_since_start" in kernel:
                out.kernel_lost.add(_int(kernel["lost_since_start"]))
            out.kernel_lost_since_boot.add(_int(kernel.get("lost")))
            out.kernel_backlog.add(_int(kernel.get("backlog")))
            out.kernel_backlog_limit.add(_int(kernel.get("backlog_limit")))
        queue = {"component_id": "receiver", "queue": "batched_records"}
        out.queue.add(_int(receiver.get("batched_records")), queue)
    tree = by_name.get("treekeeper")
    if tree is not None:
        _sinks(out, tree, sink_types)
    _hops(out, by_name)
    return out.all()


def _hops(out: Families, by_name: dict[str, dict[str, Any]]) -> None:
    """Sent minus received per hop: ZeroMQ has no queue-depth API, so this is the depth."""
    assemblers = [d for name, d in by_name.items() if name.startswith("assembler-")]
    if not assemblers:
        return
    taken = sum(_int(_dict(d.get("component")).get("received_events")) for d in assemblers)
    given = sum(_int(_dict(d.get("component")).get("sent_events")) for d in assemblers)
    receiver = by_name.get("receiver")
    if receiver is not None:
        sent = _int(_dict(receiver.get("component")).get("sent_events"))
        out.in_flight.add(max(0, sent - taken), {"hop": "receiver->assembler", "unit": "records"})
    tree = by_name.get("treekeeper")
    if tree is not None:
        got = _int(_dict(tree.get("component")).get("received_events"))
        out.in_flight.add(max(0, given - got), {"hop": "assembler->treekeeper", "unit": "events"})


class MetricsServer(HTTPServer):
    """HTTP on one address; knows where the status files are."""

    def __init__(self, address: tuple[str, int], run_dir: Path, sink_types: dict[str, str]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.run_dir = run_dir
        self.sink_types = sink_types
        self.scrapes = 0
        super().__init__(address, MetricsHandler)

    def server_bind(self) -> None:
        # HTTPServer's own server_bind does a reverse DNS lookup of the host: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics``; anything else is 404 (405 for other methods)."""

    server: MetricsServer
    timeout = CLIENT_TIMEOUT_S
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")
            return
        statuses = read_statuses(self.server.run_dir, time.time())
        body = render(collect(statuses, self.server.sink_types)).encode("utf-8")
        self.server.scrapes += 1
        self._reply(200, CONTENT_TYPE, body)

    def do_HEAD(self) -> None:
        self._reply(405, "text/plain; charset=utf-8", b"")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def run(cfg: Config, ctx: StageContext) -> int:
    host, port = parse_listen(cfg.runtime.metrics_listen, "[runtime].metrics_listen")
    # A scraper that hangs up mid-reply must raise BrokenPipeError here, not kill us.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        server = MetricsServer((host, port), Path(cfg.runtime.dir), _sink_types(cfg))
    except OSError as err:  # port in use, address not on this host: restarting will not help
        log.error(
            "cannot serve metrics on %s ([runtime].metrics_listen): %s",
            cfg.runtime.metrics_listen,
            err.strerror or err,
        )
        return EXIT_FATAL
    server.timeout = ACCEPT_POLL_S
    log.info("serving Prometheus metrics on http://%s/metrics", cfg.runtime.metrics_listen)
    # Nothing flows through this stage, so no eof tells it the pipeline ended: a supervisor
    # that died (SIGKILL) shows as a new parent.
    parent = os.getppid()
    try:
        while not ctx.stop_requested:
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone; stopping", parent)
                break
            server.handle_request()
    finally:
        server.server_close()
    log.info("stopped after %d scrapes", server.scrapes)
    return 0


if __name__ == "__main__":
    sys.exit(stage_main("metrics", run))
