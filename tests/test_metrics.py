"""Stage metrics: latency histogram, Prometheus rendering, the /metrics process, cpu_affinity."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from live_helpers import (
    Event,
    KernelState,
    LiveRun,
    free_port,
    is_audit_event,
    kernel_clean,
    read_events,
    stage_pids,
    wait_for_events,
)

from assembler.stage import Assembly
from auditstream import config as config_mod
from auditstream.latency import LatencyHistogram, percentile
from auditstream.metrics import StageStatus, collect
from auditstream.prometheus import MetricFamily, escape_label_value, format_value, render
from receiver.kernel import AuditStatus
from receiver.live import KernelCounters
from receiver.netlink import NLMSG_HEADER, AuditNetlink
from sinks.config import FileOutputConfig, SinkConfig
from sinks.fanout import FanOut
from sinks.jsonl import JsonlSink

REPO = Path(__file__).resolve().parents[1]
__all__ = ["kernel_clean"]  # the live test uses the fixture by name
EVENTS = 640  # SYSCALL + EOE each: 1280 records, 20 batches of 64 (see _pipeline_config)


# --- a strict parser of the text exposition format 0.0.4 -------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    """One parsed metric family."""

    type: str
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(text: str, line: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match, f"bad label syntax at {text[pos:]!r} in {line!r}"
        name = match.group(1)
        assert name not in labels, f"label {name} twice in {line!r}"
        labels[name] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        pos = match.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected , at {text[pos:]!r} in {line!r}"
            pos += 1
    return labels


def parse_exposition(text: str) -> dict[str, Family]:
    """Parse and check the grammar: TYPE before samples, names of the family, no duplicates."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):
        assert line, "empty line"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, Family(type="untyped")).help = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            family = families.setdefault(name, Family(type=kind))
            assert not family.samples, f"TYPE after samples: {line}"
            family.type, current = kind, name
            continue
        assert not line.startswith("#"), f"unknown comment {line!r}"
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, label_text, value_text = match.groups()
        assert current is not None, f"sample before any TYPE: {line}"
        suffixes = ("_bucket", "_sum", "_count") if families[current].type == "histogram" else ("",)
        assert name in {current + s for s in suffixes}, f"{name} outside family {current}"
        labels = _labels(label_text or "", line)
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate series {line}"
        seen.add(key)
        value = float(value_text)  # accepts +Inf, -Inf, NaN as the format spells them
        families[current].samples.append((name, labels, value))
    return families


def values(families: dict[str, Family], name: str, **match: str) -> list[float]:
    """Values of the samples named ``name`` whose labels include ``match``."""
    family_name = re.sub(r"_(bucket|sum|count)\Z", "", name) if name not in families else name
    family = families.get(family_name)
    if family is None:
        return []
    return [
        v
        for n, labels, v in family.samples
        if n == name and all(labels.get(k) == want for k, want in match.items())
    ]


def check_histogram(families: dict[str, Family], name: str, **match: str) -> int:
    """Buckets ascend in le and count; +Inf equals _count. Returns the count."""
    family = families[name]
    assert family.type == "histogram"
    buckets = [
        (float(labels["le"]), v)
        for n, labels, v in family.samples
        if n == name + "_bucket" and all(labels.get(k) == want for k, want in match.items())
    ]
    assert buckets and buckets[-1][0] == math.inf
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), f"buckets not cumulative: {counts}"
    (total,) = values(families, name + "_count", **match)
    assert buckets[-1][1] == total
    return int(total)


# --- unit tests -------------------------------------------------------------------------


def test_histogram_buckets_are_upper_inclusive_and_count_every_observation() -> None:
    """A latency equal to a bound lands in that bound's bucket; negatives count as 0."""
    hist = LatencyHistogram(bounds_s=(0.001, 0.01), recent_events=100)
    hist.observe_many([1_000_000, 1_000_001, 10_000_000, 10_000_001, -5])
    snap = hist.snapshot()
    assert snap["counts"] == [2, 2, 1]  # {0, 1 ms} {1 ms + 1 ns, 10 ms} {10 ms + 1 ns}
    assert snap["count"] == 5
    assert snap["sum_s"] == pytest.approx((1_000_000 + 1_000_001 + 10_000_000 + 10_000_001) / 1e9)
    assert snap["max_s"] == pytest.approx(0.010000001)


def test_histogram_recent_window_is_exact_and_bounded() -> None:
    """p50/p99/max come from the last N observations exactly; older ones leave the window."""
    hist = LatencyHistogram(recent_events=100)
    hist.observe_many([10**9] * 50)  # pushed out below by 100 newer values
    hist.observe_many(range(1_000_000, 101_000_000, 1_000_000))  # 1..100 ms
    recent = hist.recent()
    assert recent.events == 100
    assert recent.p50_s == pytest.approx(0.050)
    assert recent.p99_s == pytest.approx(0.099)
    assert recent.max_s == pytest.approx(0.100)
    assert hist.snapshot()["max_s"] == pytest.approx(1.0)  # since start, not windowed
    assert percentile([], 0.99) == 0


def test_render_escapes_label_values_and_help() -> None:
    """Backslash, quote and newline in label values and HELP are escaped as the format says."""
    family = MetricFamily("x_total", "counter", "help with \\ and\nnewline")
    family.add(3, {"component_id": 'jsonl:/tmp/a"b\\c\nd'})
    text = render([family])
    assert text == (
        "# HELP x_total help with \\\\ and\\nnewline\n"
        "# TYPE x_total counter\n"
        'x_total{component_id="jsonl:/tmp/a\\"b\\\\c\\nd"} 3\n'
    )
    parsed = parse_exposition(text)
    assert parsed["x_total"].samples[0][1]["component_id"] == 'jsonl:/tmp/a"b\\c\nd'
    assert escape_label_value("plain") == "plain"


def test_render_histogram_is_cumulative_with_inf_sum_count() -> None:
    """Per-bucket counts become cumulative buckets ending at +Inf, and _count equals +Inf."""
    family = MetricFamily("lat_seconds", "histogram", "h")
    family.add_histogram({"component_id": "s"}, [0.1, 1.0], [2, 0, 3], 7.5)
    parsed = parse_exposition(render([family]))
    assert check_histogram(parsed, "lat_seconds", component_id="s") == 5
    assert values(parsed, "lat_seconds_bucket", le="1.0") == [2]
    assert values(parsed, "lat_seconds_sum") == [7.5]


def test_render_refuses_bad_names_and_formats_special_values() -> None:
    """Invalid metric or label names raise; infinities and NaN use the format's spelling."""
    with pytest.raises(ValueError):
        MetricFamily("bad-name", "gauge", "h")
    with pytest.raises(ValueError):
        MetricFamily("ok", "gauge", "h").add(1, {"bad-label": "x"})
    assert [format_value(v) for v in (math.inf, -math.inf, math.nan, 2, 0.25)] == [
        "+Inf",
        "-Inf",
        "NaN",
        "2",
        "0.25",
    ]


def test_collect_reports_hop_in_flight_and_kernel_from_status_files() -> None:
    """Sent minus received per ZeroMQ hop, the kernel's counters, and sink queues."""

    def component(cid: str, received: int, sent: int) -> dict[str, object]:
        return {
            "id": cid,
            "kind": "transform",
            "type": "t",
            "received_events": received,
            "sent_events": sent,
            "discarded_events": {},
            "errors": {},
        }

    statuses = [
        StageStatus(
            "receiver",
            {
                "component": component("receiver", 100, 90),
                "kernel": {"lost": 7, "lost_since_start": 2, "backlog": 3, "backlog_limit": 8192},
                "batched_records": 10,
            },
            0.5,
        ),
        StageStatus(
            "assembler-0", {"component": component("assembler-0", 40, 20), "open_events": 2}, 0.1
        ),
        StageStatus("assembler-1", {"component": component("assembler-1", 45, 25)}, 0.1),
        StageStatus(
            "treekeeper",
            {
                "component": component("treekeeper", 41, 41),
                "sink_queues": {"out": {"events": 4, "max_events": 10}},
            },
            0.2,
        ),
    ]
    parsed = parse_exposition(render(collect(statuses, {})))
    assert values(parsed, "auditstream_hop_in_flight", hop="receiver->assembler") == [5]
    assert values(parsed, "auditstream_hop_in_flight", hop="assembler->treekeeper") == [4]
    assert values(parsed, "auditstream_kernel_lost_total") == [2]
    assert values(parsed, "auditstream_kernel_lost_since_boot") == [7]
    assert parsed["auditstream_kernel_lost_since_boot"].type == "gauge"
    assert values(parsed, "auditstream_kernel_backlog") == [3]
    assert values(parsed, "auditstream_queue_events", component_id="out") == [4]
    assert values(parsed, "auditstream_queue_events", component_id="assembler-0") == [2]
    assert values(parsed, "auditstream_status_age_seconds", component_id="receiver") == [0.5]


def test_kernel_lost_total_counts_from_the_receivers_start_across_the_u32_wrap() -> None:
    """The counter is what the kernel lost after the receiver's first status read, through the
    kernel's u32 wrap; the gauge stays the kernel's own count since boot."""

    def kernel_status(lost: int) -> AuditStatus:
        return AuditStatus(0, 1, 1, 42, 0, 8192, lost, 0, 0, 0, 0)

    counters = KernelCounters(kernel_status(0xFFFFFFF0))  # another reader lost those
    assert counters.lost_since_start() == 0
    assert counters.update(kernel_status(5)) == 0x15
    assert counters.lost_since_start() == 0x15
    kernel = {"lost": counters.last.lost, "lost_since_start": counters.lost_since_start()}
    receiver = StageStatus("receiver", {"kernel": kernel}, 0.1)
    parsed = parse_exposition(render(collect([receiver], {})))
    assert values(parsed, "auditstream_kernel_lost_total") == [0x15]
    assert parsed["auditstream_kernel_lost_total"].type == "counter"
    assert values(parsed, "auditstream_kernel_lost_since_boot") == [5]


def test_a_receiver_status_without_lost_since_start_gives_no_lost_counter() -> None:
    """A status file that does not say what this run lost (a receiver of an older version)
    leaves the counter out instead of exporting the kernel's count since boot as ours."""
    receiver = StageStatus("receiver", {"kernel": {"lost": 6144256, "backlog": 0}}, 0.1)
    parsed = parse_exposition(render(collect([receiver], {})))
    assert "auditstream_kernel_lost_total" not in parsed
    assert values(parsed, "auditstream_kernel_lost_since_boot") == [6144256]


def test_fanout_observes_latency_of_stamped_events_after_the_flush(tmp_path: Path) -> None:
    """Stamped events are observed once written and flushed; the stamp never reaches the file."""
    out = tmp_path / "out.jsonl"
    sink = JsonlSink("out", FileOutputConfig(str(out)))
    fan = FanOut([sink], [SinkConfig("jsonl", "out")])
    stamp = time.time_ns() - 30_000_000  # received 30 ms ago
    events = [
        {"key": ["", 1, 0, n], "raw": [], "doc": {"n": n}, "recv_ns": stamp} for n in range(20)
    ]
    events.append({"key": ["", 1, 0, 99], "raw": [], "doc": {"n": 99}})  # not stamped
    fan.submit(events)
    assert fan.close()
    snap = fan.latency()["out"].snapshot()
    assert snap["count"] == 20
    assert snap["recent"]["p50_s"] >= 0.030
    assert sum(snap["counts"][:5]) == 0  # nothing below the 25 ms bound
    assert len(read_events(out)) == 21
    assert b"recv_ns" not in out.read_bytes()


SYSCALL_BODY = (
    b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=0 ppid=1 pid=4242"
    b" auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1"
    b' comm="true" exe="/bin/true" key=(null)'
)


def _records(serial: int, eoe: bool) -> list[list[object]]:
    """An execve SYSCALL record (and its EOE) as the receiver ships them."""
    header = f"audit(1700000000.{serial:03d}:{serial}): ".encode()
    recs: list[list[object]] = [[1300, header + SYSCALL_BODY, ""]]
    if eoe:
        recs.append([1320, header, ""])
    return recs


def test_assembler_stamps_events_completed_by_a_record_of_the_batch() -> None:
    """An EOE-ended event carries its batch's recv_ns; one completed later (close) carries none."""
    assembly = Assembly(config_mod.Config(), event_time=True)
    assembly.push_batch(_records(1, eoe=True) + _records(2, eoe=False), recv_ns=123)
    stamped = list(assembly.out)
    assembly.out = []
    assembly.close()  # completes serial 2 without its EOE
    assert [(e["key"][3], e.get("recv_ns")) for e in stamped] == [(1, 123)]
    assert [(e["key"][3], "recv_ns" in e) for e in assembly.out] == [(2, False)]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[runtime]\nmetrics_listen = "9464"\n', "[runtime].metrics_listen"),
        ('[runtime]\nmetrics_listen = "127.0.0.1:70000"\n', "[runtime].metrics_listen"),
        ('[runtime]\nmetrics_listen = "::1:9464"\n', "[runtime].metrics_listen"),
        ("[receiver]\ncpu_affinity = [-1]\n", "[receiver].cpu_affinity"),
        (f"[assembler]\ncpu_affinity = [0, {os.cpu_count()}]\n", "[assembler].cpu_affinity"),
        ('[treekeeper]\ncpu_affinity = ["0"]\n', "[treekeeper].cpu_affinity"),
        ("[receiver]\npriority_boost = 21\n", "[receiver].priority_boost"),
        ("[receiver]\npriority_boost = -1\n", "[receiver].priority_boost"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """A bad listen address, CPU number or priority boost is refused at load with the key named."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(config_mod.ConfigError, match=re.escape(key)):
        config_mod.load(path)


# --- real processes ---------------------------------------------------------------------


def scrape(port: int) -> tuple[str, str]:
    """(Content-Type, body) of GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.headers["Content-Type"], reply.read().decode("utf-8")


def write_log(path: Path, events: int) -> None:
    """``events`` SYSCALL+EOE pairs, 10 ms of event time apart, serials from 1."""
    lines = []
    for n in range(1, events + 1):
        header = f"audit({1700000000 + n // 100}.{(n % 100) * 10:03d}:{n}): "
        lines.append(f"type=SYSCALL msg={header}".encode() + SYSCALL_BODY)
        lines.append(f"type=EOE msg={header}".encode())
    path.write_bytes(b"\n".join(lines) + b"\n")


def _pipeline_config(
    path: Path, port: int, *, receiver: str = "", assembler: str = "", treekeeper: str = ""
) -> Path:
    path.write_text(
        f'[runtime]\nmetrics_listen = "127.0.0.1:{port}"\n'
        # follow mode holds a partial batch back: the log is a whole number of batches
        f"[receiver]\nbatch_max_records = 64\n{receiver}"
        f"[assembler]\n{assembler}"
        f"[treekeeper]\nreorder_window_ms = 0\n{treekeeper}"
    )
    return path


@dataclass
class FollowedReplay:
    """`auditstream replay --follow` with metrics on ``port``."""

    proc: subprocess.Popen[bytes]
    log: Path
    out: Path
    port: int
    stderr: Path

    def stage_pids(self) -> dict[str, int]:
        """Stage name -> pid (assembler-N by index), from the supervisor's children."""
        return stage_pids(self.proc.pid)

    def stop(self) -> int:
        """SIGINT; the follow loop reads the log to its end, then the pipeline drains."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def followed_replay(tmp_path: Path, **sections: str) -> Iterator[FollowedReplay]:
    """Start the replay, yield it, and make sure it is gone afterwards."""
    log, out, port = tmp_path / "audit.log", tmp_path / "out.jsonl", free_port()
    write_log(log, EVENTS)
    config = _pipeline_config(tmp_path / "c.toml", port, **sections)
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "auditstream",
                "replay",
                "--follow",
                str(log),
                "-c",
                str(config),
                "--sink",
                f"jsonl:{out}",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    replay = FollowedReplay(proc, log, out, port, stderr)
    try:
        yield replay
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, fail: bool = True) -> None:
    """Poll ``check`` until true; at the timeout fail naming ``what`` (or just return)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            if fail:
                pytest.fail(f"timed out waiting for {what}")
            return
        time.sleep(0.2)


def test_metrics_endpoint_during_a_replay_matches_the_sink_file(tmp_path: Path) -> None:
    """/metrics while replay --follow runs: strict format, counters agree with the file, latency."""
    with followed_replay(tmp_path) as replay:
        sink = f"jsonl:{replay.out}"
        scraped: dict[str, Family] = {}

        def audit_events() -> int:
            """Events made from records: each carries a receive stamp (lifecycle events do not)."""
            return sum(1 for e in read_events(replay.out) if is_audit_event(e))

        def settled() -> bool:
            nonlocal scraped
            try:
                content_type, body = scrape(replay.port)
            except (urllib.error.URLError, ConnectionError):
                return False  # not listening yet
            assert content_type == "text/plain; version=0.0.4; charset=utf-8"
            scraped = parse_exposition(body)
            sent = values(scraped, "component_sent_events_total", component_id=sink)
            # Each stage writes its status about once a second: wait until all have.
            return (
                sent == [len(read_events(replay.out))]
                and sent[0] >= EVENTS
                and values(scraped, "component_received_events_total", component_id="assembler-0")
                == [2 * EVENTS]
                and values(scraped, "auditstream_event_latency_seconds_count", component_id=sink)
                == [audit_events()]  # observed after the flush
            )

        # On a timeout the assertions below say which counter disagrees.
        wait_for(settled, 30, "the counters to reach the file's line count", fail=False)
        lines = len(read_events(replay.out))
        assert values(scraped, "component_received_events_total", component_id="assembler-0") == [
            2 * EVENTS
        ]
        assert values(scraped, "component_sent_events_total", component_id="assembler-0") == [
            EVENTS
        ]
        assert values(scraped, "component_sent_events_total", component_id="treekeeper") == [lines]
        assert values(scraped, "component_received_events_total", component_id=sink) == [lines]
        assert values(
            scraped, "component_discarded_events_total", component_id=sink, reason="queue_full"
        ) == [0]
        assert values(scraped, "auditstream_events_lost_total", component_id="assembler-0") == [0]
        # The reorder window holds the newest event until event time moves on.
        assert EVENTS - 1 <= audit_events() <= EVENTS
        assert (
            check_histogram(scraped, "auditstream_event_latency_seconds", component_id=sink)
            == audit_events()
        )
        p99 = values(
            scraped, "auditstream_event_latency_recent_seconds", component_id=sink, quantile="0.99"
        )
        assert len(p99) == 1 and 0 < p99[0] < 60
        assert scraped["auditstream_queue_events"].type == "gauge"
        assert values(scraped, "auditstream_queue_max_events", component_id=sink) == [10_000]
        assert replay.stop() == 0, replay.stderr.read_text()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(replay.port)  # the endpoint went with the pipeline


def test_a_followed_log_shows_the_receiver_and_a_malformed_line(tmp_path: Path) -> None:
    """replay --follow: the receiver's counters move as lines are appended; a line that is no record is an error counted and a parse-error event."""
    with followed_replay(tmp_path) as replay:
        scraped: dict[str, Family] = {}

        def receiver_read(lines: int) -> bool:
            nonlocal scraped
            try:
                scraped = parse_exposition(scrape(replay.port)[1])
            except (urllib.error.URLError, ConnectionError):
                return False  # not listening yet
            got = values(scraped, "component_received_events_total", component_id="receiver")
            return got == [lines]

        wait_for(lambda: receiver_read(2 * EVENTS), 30, "the receiver's first count")
        with replay.log.open("ab") as fh:
            fh.write(b"this is not an audit record\n")
        wait_for(lambda: receiver_read(2 * EVENTS + 1), 30, "the receiver to count the new line")
        labels = {"component_id": "receiver", "component_kind": "source", "component_type": "file"}
        assert values(
            scraped,
            "component_errors_total",
            error_type="not_a_record",
            stage="receiving",
            **labels,
        ) == [1]
        assert values(scraped, "component_sent_events_total", **labels) == [2 * EVENTS + 1]
        assert values(scraped, "auditstream_status_age_seconds", component_id="receiver")
        assert replay.stop() == 0, replay.stderr.read_text()
        markers = [
            e for e in read_events(replay.out) if e.get("event", {}).get("action") == "parse-error"
        ]
        assert [m["auditstream"]["marker"]["record"] for m in markers] == [
            "this is not an audit record"
        ]


def test_cpu_affinity_pins_each_stage(tmp_path: Path) -> None:
    """Cpus_allowed_list of receiver, both assemblers (round-robin) and tree keeper, threads too."""
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1 available to this process")
    sections = {
        "receiver": "cpu_affinity = [0]\n",
        "treekeeper": "cpu_affinity = [1]\n",
        "assembler": "instances = 2\ncpu_affinity = [1, 0]\n",
    }
    with followed_replay(tmp_path, **sections) as replay:
        expected = {"receiver": "0", "assembler-0": "1", "assembler-1": "0", "treekeeper": "1"}
        wait_for(lambda: set(expected) <= set(replay.stage_pids()), 30, "the stages to start")
        wait_for(lambda: len(read_events(replay.out)) >= EVENTS, 30, "the events")
        for name, pid in replay.stage_pids().items():
            if name not in expected:
                continue
            for task in Path(f"/proc/{pid}/task").iterdir():
                status = (task / "status").read_text()
                allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
                assert allowed and allowed.group(1) == expected[name], (name, task.name, status)
        assert replay.stop() == 0, replay.stderr.read_text()


def test_metrics_stage_exits_78_when_the_port_is_in_use(tmp_path: Path) -> None:
    """`python -m auditstream.metrics` on a taken port: exit 78 (not restarted) with a clear message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[runtime]\ndir = "{tmp_path}"\nmetrics_listen = "127.0.0.1:{port}"\n')
        result = subprocess.run(
            [sys.executable, "-m", "auditstream.metrics", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 78, result.stderr
    assert "[runtime].metrics_listen" in result.stderr
    assert "Address already in use" in result.stderr


def test_replay_with_metrics_ends_on_its_own(tmp_path: Path) -> None:
    """A finite replay with metrics_listen exits 0 with its summary; the endpoint stops with it."""
    log, out, port = tmp_path / "audit.log", tmp_path / "out.jsonl", free_port()
    write_log(log, 50)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditstream",
            "replay",
            str(log),
            "-c",
            str(_pipeline_config(tmp_path / "c.toml", port)),
            "--sink",
            f"jsonl:{out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "100 records read, " in result.stderr and " 0 events lost" in result.stderr
    assert "metrics failed" not in result.stderr, result.stderr
    assert "metrics cannot run" not in result.stderr, result.stderr
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(port)


FORGED = 3


def audit_netlink_ports(pid: int) -> list[int]:
    """The netlink port ids of process ``pid``'s NETLINK_AUDIT sockets (/proc/net/netlink)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    rows = Path("/proc/net/netlink").read_text().splitlines()[1:]
    fields = [row.split() for row in rows]
    return [int(f[2]) for f in fields if f[1] == "9" and int(f[9]) in inodes]


def forge_records(pid: int, count: int) -> list[int]:
    """Send ``count`` record-shaped datagrams from a user socket to each of ``pid``'s audit
    sockets; returns their port ids (each send queued its whole datagram, or raised)."""
    forger = AuditNetlink()
    forger.open()
    ports = audit_netlink_ports(pid)
    try:
        for port in ports:
            for serial in range(count):
                payload = b"audit(1.000:%d): forged record" % serial
                header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(payload), 1300, 0, 0, 0)
                datagram = header + payload
                assert forger.sock.sendto(datagram, (port, 0)) == len(datagram)
    finally:
        forger.close()
    return ports


def written_after(scraped: dict[str, Family], component_id: str, scrape_started: float) -> float:
    """When (wall clock, at the earliest) the stage wrote the status this scrape shows.

    The metrics process computes the age at its own ``now``, which is not before
    ``scrape_started``; the age is rounded to 1 ms and the file's mtime (a coarse clock)
    is never later than the write: so the status was written at or after the returned time.
    """
    ages = values(scraped, "auditstream_status_age_seconds", component_id=component_id)
    return scrape_started - ages[0] - 0.001 if ages else -math.inf


@pytest.mark.kernel
@pytest.mark.slow
def test_live_run_exposes_kernel_and_receiver_metrics(
    kernel_clean: KernelState, tmp_path: Path
) -> None:
    """Live `run` with metrics_listen: kernel lost/backlog, receiver counters, live latency."""
    port = free_port()
    out = tmp_path / "events.jsonl"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[runtime]\ndir = "{tmp_path / "run"}"\nmetrics_listen = "127.0.0.1:{port}"\n'
    )
    run = LiveRun(["run", "-c", str(config), "--sink", f"jsonl:{out}"], tmp_path).start()
    try:
        # Into the records socket and the control socket (status polls) of the receiver.
        ports = forge_records(run.wait_registered(), FORGED)
        assert len(ports) == 2, ports
        for _ in range(5):
            subprocess.run(["/bin/true"], check=True)

        def ours(event: Event) -> bool:
            """One of the execs above (other processes on the machine may run `true` too)."""
            process = event.get("process", {})
            parent = process.get("parent", {}).get("pid")
            return bool(process.get("name") == "true" and parent == os.getpid())

        assert len(wait_for_events(out, ours, count=5)) >= 5  # execve, exit_group, ...
        events_out = time.time()
        sink = f"jsonl:{out}"
        scraped: dict[str, Family] = {}

        def observed() -> bool:
            nonlocal scraped
            started = time.time()
            try:
                scraped = parse_exposition(scrape(port)[1])
            except urllib.error.URLError:
                # Not listening yet: the supervisor spawns the metrics process once it sees
                # the tree keeper ready, which the receiver (and our events) can pass first.
                return False
            # Statuses are written about once a second, and the receiver's first one, written
            # as it starts reading, may already hold 10 records (it read 0 forged datagrams in
            # 4 of 20 runs when this waited for received >= 10): wait for statuses written
            # after our events reached the sink. By then the receiver has read the forged
            # datagrams on its records socket (queued ahead of the execs' records). The ones
            # on its control socket are dropped by the kernel status poll, which runs on a
            # clock of its own (status_poll_ms): a status written after the events may still
            # predate it (3 of 6 counted once in CI), so wait for them too.
            foreign = values(
                scraped, "component_errors_total", component_id="receiver",
                error_type="foreign_datagram",
            )  # fmt: skip
            return (
                bool(foreign)
                and foreign[0] >= FORGED * len(ports)
                and all(
                    written_after(scraped, stage, started) > events_out
                    for stage in ("receiver", "treekeeper")
                )
            )

        wait_for(
            observed,
            20,
            "receiver and tree keeper statuses written after the events, the forged datagrams "
            "of both sockets counted",
        )
        assert values(scraped, "auditstream_kernel_backlog_limit") == [8192]
        assert len(values(scraped, "auditstream_kernel_lost_total")) == 1
        assert len(values(scraped, "auditstream_kernel_lost_since_boot")) == 1
        (received,) = values(
            scraped,
            "component_received_events_total",
            component_id="receiver",
            component_kind="source",
            component_type="netlink",
        )
        (sent,) = values(scraped, "component_sent_events_total", component_id="receiver")
        assert received >= 10 and sent <= received  # each /bin/true: SYSCALL, EXECVE, ... EOE
        assert check_histogram(scraped, "auditstream_event_latency_seconds", component_id=sink) > 0
        assert values(
            scraped, "component_errors_total", component_id="receiver", error_type="socket_overrun"
        ) == [0]
        # Records forged by another socket (not the kernel) never become events, and each is
        # counted: FORGED to each of the two sockets.
        assert values(
            scraped,
            "component_errors_total",
            component_id="receiver",
            error_type="foreign_datagram",
        ) == [FORGED * len(ports)]
        assert not any(b"forged" in line for line in out.read_bytes().splitlines())
        assert run.stop(signal.SIGINT) == 0, run.stderr_text
    finally:
        if run.returncode is None:
            run.stop(signal.SIGINT)  # stops in order: the receiver puts the kernel back
