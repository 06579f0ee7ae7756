"""Fan-out: per-sink queues and threads, drop_newest vs block, markers, errors, shutdown."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from auditstream.config import MAX_SINKS_SHUTDOWN_TIMEOUT_MS, ConfigError, load
from auditstream.hostnode import local_host_name, local_node
from auditstream.supervisor import STOP_GRACE_S
from sinks.base import Event, SinkStats
from sinks.config import FileOutputConfig, SinkConfig
from sinks.fanout import FanOut, drop_marker_event
from sinks.jsonl import JsonlSink
from treekeeper.pipeline import build_fanout

PAYLOAD = "p" * 1000  # ~1 KiB lines: a 64 KiB pipe holds only a few dozen


def make_batch(first: int, size: int) -> list[dict[str, Any]]:
    """``size`` events with consecutive serials from ``first``."""
    return [
        {"key": ["", 1700000000, 0, n], "raw": [], "doc": {"n": n, "pad": PAYLOAD}}
        for n in range(first, first + size)
    ]


class StalledFifo:
    """A FIFO whose reader reads nothing until start_draining(), then everything to EOF.

    The test holds a write end of its own: read() on a FIFO without any writer
    returns EOF at once, and the sink opens its end lazily in its worker thread,
    which a loaded machine may not schedule before the drainer's first read.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._writer_guard: int | None = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self._chunks: list[bytes] = []
        self._drainer: threading.Thread | None = None

    def capacity(self) -> int:
        """How many bytes the pipe buffers before a writer blocks."""
        return fcntl.fcntl(self.reader, fcntl.F_GETPIPE_SZ)

    def start_draining(self) -> None:
        """Read the FIFO to EOF in a thread."""
        os.set_blocking(self.reader, True)

        def drain() -> None:
            while chunk := os.read(self.reader, 1 << 16):
                self._chunks.append(chunk)

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()

    def drained(self, timeout: float = 60.0) -> bytes:
        """Everything read; the sink must have closed its end (EOF follows the guard's close)."""
        assert self._drainer is not None, "start_draining() first"
        self._close_writer_guard()
        self._drainer.join(timeout)
        assert not self._drainer.is_alive(), "the FIFO never reached EOF"
        return b"".join(self._chunks)

    def _close_writer_guard(self) -> None:
        guard, self._writer_guard = self._writer_guard, None
        if guard is not None:
            os.close(guard)

    def close(self) -> None:
        """Close the test's ends of the FIFO."""
        self._close_writer_guard()
        os.close(self.reader)


@contextmanager
def stalled_fifo(tmp_path: Path) -> Iterator[StalledFifo]:
    """A :class:`StalledFifo` in TMP_PATH, closed afterwards."""
    fifo = StalledFifo(tmp_path / "stalled.fifo")
    try:
        yield fifo
    finally:
        fifo.close()


def jsonl_sink(name: str, path: Path, **options: Any) -> JsonlSink:
    """A jsonl sink at PATH named NAME."""
    return JsonlSink(name, FileOutputConfig(str(path), **options))


def read_docs(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of PATH."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_stalled_fifo_with_drop_newest_does_not_stop_the_archive(tmp_path: Path) -> None:
    """A stuck FIFO sink drops exactly what it misses, the archive gets all plus markers."""
    archive_path = tmp_path / "archive.jsonl"
    batches, size = 200, 5
    with stalled_fifo(tmp_path) as fifo:
        assert fifo.capacity() < batches * size * len(PAYLOAD), "the pipe would never fill"
        archive = jsonl_sink("archive", archive_path)
        pipe = jsonl_sink("pipe", fifo.path, buffer_bytes=0)
        fan = FanOut(
            [archive, pipe],
            [
                SinkConfig("jsonl", "archive", when_full="block"),
                SinkConfig("jsonl", "pipe", when_full="drop_newest", queue_max_events=10),
            ],
            shutdown_timeout_ms=60_000,
        )

        def submit_all() -> None:
            for index in range(batches):
                fan.submit(make_batch(index * size, size))

        # Nothing reads the FIFO yet, so finishing at all proves submit() did not wait for it.
        submitter = threading.Thread(target=submit_all, daemon=True)
        submitter.start()
        submitter.join(60)
        assert not submitter.is_alive(), "the stalled sink held up submit()"
        fifo.start_draining()
        assert fan.close()
        pipe_bytes = fifo.drained()
    total = batches * size
    pipe_serials = [json.loads(line)["n"] for line in pipe_bytes.splitlines()]
    stats = fan.stats()
    dropped = stats["pipe"].discarded_by_reason.get("queue_full", 0)
    assert dropped > 0
    assert len(pipe_serials) + dropped == total
    assert pipe_serials == sorted(pipe_serials)
    assert stats["pipe"].component_received_events_total == total
    assert stats["pipe"].component_sent_events_total == len(pipe_serials)
    assert stats["pipe"].component_discarded_events_total == dropped
    docs = read_docs(archive_path)
    events = [doc["n"] for doc in docs if "n" in doc]
    markers = [doc for doc in docs if "n" not in doc]
    assert events == list(range(total))
    assert markers and all(m["event"]["action"] == "events-dropped" for m in markers)
    assert all(m["auditstream"]["marker"]["sink"] == "pipe" for m in markers)
    assert sum(m["auditstream"]["marker"]["count"] for m in markers) == dropped
    missing = sorted(set(range(total)) - set(pipe_serials))
    assert markers[0]["auditstream"]["marker"]["first_key"] == ["", 1700000000, 0, missing[0]]
    assert markers[-1]["auditstream"]["marker"]["last_key"] == ["", 1700000000, 0, missing[-1]]
    assert stats["archive"].component_sent_events_total == total + len(markers)
    assert stats["archive"].component_discarded_events_total == 0
    assert stats["pipe"].component_errors_total == {}


def test_block_mode_submit_waits_for_the_sink(tmp_path: Path) -> None:
    """With when_full = block, submit() blocks while the FIFO is stuck and loses nothing."""
    with stalled_fifo(tmp_path) as fifo:
        pipe = jsonl_sink("pipe", fifo.path, buffer_bytes=0)
        fan = FanOut([pipe], [SinkConfig("jsonl", "pipe", when_full="block", queue_max_events=10)])
        batches, size = 100, 5

        def submit_all() -> None:
            for index in range(batches):
                fan.submit(make_batch(index * size, size))

        submitter = threading.Thread(target=submit_all, daemon=True)
        submitter.start()
        submitter.join(0.5)
        assert submitter.is_alive(), "submit() should block while the sink cannot write"
        fifo.start_draining()
        submitter.join(60)
        assert not submitter.is_alive()
        assert fan.close()
        pipe_bytes = fifo.drained()
    serials = [json.loads(line)["n"] for line in pipe_bytes.splitlines()]
    assert serials == list(range(batches * size))
    assert fan.stats()["pipe"].component_discarded_events_total == 0


class FailingSink:
    """A test double whose writes raise, as a buggy third-party sink might."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = SinkStats()
        self.calls = 0

    def write_batch(self, events: Sequence[Event]) -> None:
        """Always fail."""
        self.calls += 1
        raise RuntimeError("broker on fire")

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


def test_a_raising_sink_is_retried_counted_and_isolated(tmp_path: Path) -> None:
    """A sink that raises is retried, then its batch is discarded; the other sink gets all."""
    archive_path = tmp_path / "archive.jsonl"
    failing = FailingSink("broken")
    fan = FanOut(
        [failing, jsonl_sink("archive", archive_path)],
        [SinkConfig("x", "broken"), SinkConfig("jsonl", "archive")],
        write_attempts=3,
        retry_backoff_ms=1,
    )
    for index in range(4):
        fan.submit(make_batch(index * 10, 10))
    assert fan.close()
    assert failing.calls == 12
    broken = fan.stats()["broken"]
    assert broken.component_errors_total == {"RuntimeError": 12}
    assert broken.discarded_by_reason == {"write_error": 40}
    assert broken.component_sent_events_total == 0
    assert [doc["n"] for doc in read_docs(archive_path)] == list(range(40))


class DroppingSink:
    """A test double that drops internally and reports it via take_drops(), like kafka."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = SinkStats()
        self._drops: list[tuple[int, list[Any], list[Any]]] = []

    def write_batch(self, events: Sequence[Event]) -> None:
        """Drop every batch, remembering the run."""
        self.stats.received_events += len(events)
        self.stats.discarded_events += len(events)
        self._drops.append((len(events), list(events[0]["key"]), list(events[-1]["key"])))

    def take_drops(self) -> list[tuple[int, list[Any], list[Any]]]:
        """Hand over and forget the recorded runs."""
        drops, self._drops = self._drops, []
        return drops

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


def test_drops_inside_a_sink_become_markers_for_the_others(tmp_path: Path) -> None:
    """Runs a sink reports through take_drops() reach the other sinks as markers."""
    archive_path = tmp_path / "archive.jsonl"
    fan = FanOut(
        [DroppingSink("kafka"), jsonl_sink("archive", archive_path)],
        [SinkConfig("kafka", "kafka"), SinkConfig("jsonl", "archive")],
    )
    fan.submit(make_batch(0, 3))
    deadline = time.monotonic() + 10  # the worker records the drop; the next submit posts it
    while fan.stats()["kafka"].component_discarded_events_total < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fan.submit(make_batch(3, 2))
    assert fan.close()
    docs = read_docs(archive_path)
    markers = [doc["auditstream"]["marker"] for doc in docs if "n" not in doc]
    assert markers[0] == {
        "cause": "sink-dropped",
        "sink": "kafka",
        "count": 3,
        "first_key": ["", 1700000000, 0, 0],
        "last_key": ["", 1700000000, 0, 2],
    }
    assert [doc["n"] for doc in docs if "n" in doc] == list(range(5))


def test_shutdown_timeout_bounds_close_and_counts_leftovers(tmp_path: Path) -> None:
    """close() returns after shutdown_timeout_ms and counts what is still queued."""
    with stalled_fifo(tmp_path) as fifo:
        pipe = jsonl_sink("pipe", fifo.path, buffer_bytes=0)
        fan = FanOut(
            [pipe],
            [SinkConfig("jsonl", "pipe", when_full="drop_newest", queue_max_events=200)],
            shutdown_timeout_ms=300,
        )
        for index in range(100):
            fan.submit(make_batch(index * 5, 5))
        started = time.monotonic()
        assert fan.close() is False
        elapsed = time.monotonic() - started
        stats = fan.stats()["pipe"]
        fifo.start_draining()  # unblock the stuck worker so it can finish
        fifo.drained()
    assert elapsed < 3
    assert stats.discarded_by_reason.get("shutdown_timeout", 0) > 0
    assert stats.component_received_events_total == 500
    assert stats.component_errors_total == {}


@pytest.mark.parametrize("value", [-1, 50_001, "5s"])
def test_a_sinks_shutdown_timeout_out_of_range_is_refused(tmp_path: Path, value: Any) -> None:
    """[treekeeper].sinks_shutdown_timeout_ms must be an int 0..50000: the key and the file are named."""
    conf = tmp_path / "bad.toml"
    conf.write_text(f"[treekeeper]\nsinks_shutdown_timeout_ms = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as caught:
        load(str(conf))
    assert "sinks_shutdown_timeout_ms" in str(caught.value) and str(conf) in str(caught.value)


def test_the_configured_sinks_shutdown_timeout_bounds_the_tree_keepers_close(
    tmp_path: Path,
) -> None:
    """build_fanout takes [treekeeper].sinks_shutdown_timeout_ms: a stuck sink costs that long at the stop, not 5 s."""
    conf = tmp_path / "fast-stop.toml"
    conf.write_text("[treekeeper]\nsinks_shutdown_timeout_ms = 300\n")
    cfg = load(str(conf))
    assert MAX_SINKS_SHUTDOWN_TIMEOUT_MS < STOP_GRACE_S * 1000  # counted before the kill
    with stalled_fifo(tmp_path) as fifo:
        cfg.sinks = [
            {"type": "jsonl", "path": str(fifo.path), "buffer_bytes": 0,
             "when_full": "drop_newest", "queue_max_events": 200},
        ]  # fmt: skip
        fan = build_fanout(cfg)
        for index in range(100):
            fan.submit(make_batch(index * 5, 5))
        started = time.monotonic()
        assert fan.close() is False
        elapsed = time.monotonic() - started
        stats = next(iter(fan.stats().values()))
        fifo.start_draining()
        fifo.drained()
    assert elapsed < 3
    assert stats.discarded_by_reason.get("shutdown_timeout", 0) > 0


class EncodingSpy:
    """A sink that encodes ahead: records which thread encodes and which writes, and how
    each batch arrived; ``encode_fails`` makes encode() raise, ``declines`` return None."""

    def __init__(self, encode_fails: bool = False, declines: bool = False) -> None:
        self.name = "spy"
        self.stats = SinkStats()
        self.encode_fails = encode_fails
        self.declines = declines
        self.encoding_threads: set[int] = set()
        self.writing_threads: set[int] = set()
        self.arrivals: list[tuple[str, list[int]]] = []

    def encode(self, events: Sequence[Event]) -> Any:
        self.encoding_threads.add(threading.get_ident())
        if self.encode_fails:
            raise RuntimeError("encoder broke")
        return None if self.declines else [e["key"][3] for e in events]

    def write_encoded(self, encoded: Any, events: int) -> None:
        self.writing_threads.add(threading.get_ident())
        assert len(encoded) == events
        self.arrivals.append(("encoded", encoded))
        self.stats.sent_events += events

    def write_batch(self, events: Sequence[Event]) -> None:
        self.writing_threads.add(threading.get_ident())
        self.arrivals.append(("batch", [e["key"][3] for e in events]))
        self.stats.sent_events += len(events)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("encode_fails", "declines", "way"),
    [(False, False, "encoded"), (False, True, "batch"), (True, False, "batch")],
    ids=["encoded-ahead", "declined", "encoder-raises"],
)
def test_a_sink_that_encodes_ahead_is_encoded_in_the_submitting_thread(
    encode_fails: bool, declines: bool, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fan-out encodes each batch in the thread that submits it and the sink's own
    thread writes it; a batch the sink declines, or whose encoding raises, is written
    by write_batch instead, in order and complete (the failure logged)."""
    spy = EncodingSpy(encode_fails=encode_fails, declines=declines)
    fanout = FanOut([spy], [SinkConfig("jsonl", "spy", when_full="block")])
    for first in range(0, 30, 10):
        fanout.submit(make_batch(first, 10))
    assert fanout.close()
    assert spy.encoding_threads == {threading.get_ident()}
    assert threading.get_ident() not in spy.writing_threads and len(spy.writing_threads) == 1
    assert spy.arrivals == [(way, list(range(n, n + 10))) for n in range(0, 30, 10)]
    assert fanout.stats()["spy"].component_sent_events_total == 30
    assert ("encoding ahead failed" in caplog.text) == encode_fails


def test_drop_markers_name_the_host_where_the_sink_dropped() -> None:
    """An events-dropped marker carries this host's host.name and node, as live docs do."""
    event = drop_marker_event("kafka", 3, ["", 1, 2, 3], ["", 1, 2, 5], "queue_full")
    assert event["key"][0] == local_node()
    if local_node():
        assert event["doc"]["host"] == {"name": local_host_name()}
    else:
        assert "host" not in event["doc"]
    assert event["doc"]["auditstream"]["marker"]["count"] == 3
