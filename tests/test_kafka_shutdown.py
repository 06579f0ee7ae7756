"""A Kafka sink whose brokers stay down: the stop is bounded and every event is accounted for.

Real `python -m auditstream replay` runs into librdkafka's mock cluster (real protocol over
TCP) beside a jsonl sink; the brokers go down once the first events are out. Whatever the
stop (end of input, SIGINT), each sink's sent + discarded equals what it was given, and
every drop of the Kafka sink reaches the jsonl as an `events-dropped` marker.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from generated_logs import write_generated_log
from kafka_mock_cluster import MockKafkaCluster, bundled_librdkafka, mock_kafka_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        bundled_librdkafka() is None, reason="confluent-kafka has no bundled librdkafka"
    ),
]

SHUTDOWN_TIMEOUT_S = 5.0  # [treekeeper] sinks_shutdown_timeout_ms's default
FEED_SECONDS = 8.0  # the input flows this long: the brokers are down before it ends
LOG_LINES = 60_000  # ~21,000 events: more than the queues hold
SMALL_LOG_LINES = 20_000  # ~7,000 events: the default queues (10,000) take them all


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short runtime directory kept after the run (its summary.json): ipc paths are short."""
    path = Path(tempfile.mkdtemp(prefix="askfk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(run_dir: Path, cluster: MockKafkaCluster, **kafka: Any) -> Path:
    """A config with a kafka sink `k` (options `kafka`) and a jsonl sink `j`, runtime dir kept."""
    topic = f"audit.{run_dir.name}"
    cluster.create_topic(topic, partitions=3, replication=3)
    options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in kafka.items())
    config = run_dir / "c.toml"
    config.write_text(
        f'[runtime]\ndir = "{run_dir / "rt"}"\n'
        f'[[sinks]]\ntype = "kafka"\nname = "k"\nbrokers = "{cluster.bootstrap}"\n'
        f'topic = "{topic}"\n{options}'
        f'[[sinks]]\ntype = "jsonl"\nname = "j"\npath = "{run_dir / "out.jsonl"}"\n'
    )
    return config


def feed(pipe: IO[bytes], log: Path) -> None:
    """Write the log's lines to ``pipe`` in 40 chunks over FEED_SECONDS, then close it; a
    replay stopped by a signal closes its end first, which ends the feed."""
    lines = log.read_bytes().splitlines(keepends=True)
    step = -(-len(lines) // 40)
    try:
        with pipe:
            for start in range(0, len(lines), step):
                pipe.write(b"".join(lines[start : start + step]))
                pipe.flush()
                time.sleep(FEED_SECONDS / 40)
    except BrokenPipeError:
        pass


def start_replay(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`replay -c config -` fed `log` from a pipe over FEED_SECONDS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "replay", "-c", str(config), "-"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    pipe, proc.stdin = proc.stdin, None  # the feeder owns it; communicate() must not
    threading.Thread(target=feed, args=(pipe, log), daemon=True).start()
    return proc


def take_brokers_down_after_first_events(cluster: MockKafkaCluster, out: Path) -> None:
    """Wait until the jsonl has events (the pipeline runs), then stop every broker."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)
    assert out.exists() and out.stat().st_size > 0, "no event came out"
    for broker in (1, 2, 3):
        cluster.broker_down(broker)


def summary_of(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run_dir / "rt" / "summary.json").read_text())
    return summary


def assert_every_event_accounted(summary: dict[str, Any]) -> dict[str, Any]:
    """Each sink's sent + discarded equals what it got; the jsonl got every event out
    (plus the Kafka sink's drop markers). Returns the kafka sink's counters."""
    events_out = summary["treekeeper"]["events_out"]
    sinks = summary["sinks"]
    for name, sink in sinks.items():
        received = sink["component_received_events_total"]
        accounted = sink["component_sent_events_total"] + sink["component_discarded_events_total"]
        assert accounted == received, f"sink {name}: {accounted} accounted of {received}"
        assert sum(sink["discarded_by_reason"].values()) == sink["component_discarded_events_total"]
    assert sinks["k"]["component_received_events_total"] == events_out
    assert sinks["j"]["component_discarded_events_total"] == 0
    assert sinks["j"]["component_received_events_total"] >= events_out > 1000
    kafka: dict[str, Any] = sinks["k"]
    return kafka


def jsonl_docs(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "out.jsonl").read_bytes().splitlines()]


def test_sigint_ends_a_submit_blocked_on_dead_brokers(tmp_path: Path, run_dir: Path) -> None:
    """when_full=block, brokers down, SIGINT: exit 130 within the shutdown timeout, a summary, the jsonl whole, the backlog counted."""
    log = write_generated_log(tmp_path / "in.log", LOG_LINES)
    with mock_kafka_cluster() as cluster:
        config = write_config(run_dir, cluster, queue_max_events=2000)
        proc = start_replay(config, log)
        take_brokers_down_after_first_events(cluster, run_dir / "out.jsonl")
        time.sleep(2.0)  # the kafka lane fills and the tree keeper blocks on it
        assert proc.poll() is None, "the replay ended although its kafka sink was blocked"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=90)[1].decode(errors="replace")
        stop_s = time.monotonic() - signalled
    assert proc.returncode == 130, stderr
    assert stop_s < SHUTDOWN_TIMEOUT_S + 10, stderr  # was 60 s, then SIGKILL
    assert "did not drain" not in stderr and "no summary" not in stderr
    summary = summary_of(run_dir)
    kafka = assert_every_event_accounted(summary)
    reasons = kafka["discarded_by_reason"]
    assert set(reasons) <= {"shutdown_timeout", "undelivered_at_exit"}, reasons
    assert reasons.get("shutdown_timeout", 0) > 0
    assert len(jsonl_docs(run_dir)) == summary["treekeeper"]["events_out"]


def test_dead_brokers_at_the_end_are_counted_within_the_shutdown_timeout(
    tmp_path: Path, run_dir: Path
) -> None:
    """Default options (flush_timeout_ms 30 s): the input ends with the brokers down; the stop takes the 5 s shutdown timeout, what librdkafka holds is counted, FAIL lines are few."""
    log = write_generated_log(tmp_path / "in.log", SMALL_LOG_LINES)
    with mock_kafka_cluster() as cluster:
        config = write_config(run_dir, cluster)
        started = time.monotonic()
        proc = start_replay(config, log)
        take_brokers_down_after_first_events(cluster, run_dir / "out.jsonl")
        stderr = proc.communicate(timeout=120)[1].decode(errors="replace")
        elapsed = time.monotonic() - started
    assert proc.returncode == 3, stderr  # events discarded
    assert elapsed < FEED_SECONDS + SHUTDOWN_TIMEOUT_S + 10, stderr  # not the 30 s flush
    kafka = assert_every_event_accounted(summary_of(run_dir))
    undelivered = kafka["discarded_by_reason"]["undelivered_at_exit"]
    assert undelivered > 0
    assert f"kafka sink k: {undelivered} events undelivered at exit" in stderr
    # librdkafka's connection failures: a few lines per facility, not one per retry.
    assert stderr.count("FAIL [") <= 6, stderr


def test_every_kafka_drop_reaches_the_jsonl_as_a_marker(tmp_path: Path, run_dir: Path) -> None:
    """when_full=drop_newest, brokers down to the end: the kafka sink's markers in the jsonl add up to all it dropped, none arrives too late."""
    log = write_generated_log(tmp_path / "in.log", LOG_LINES)
    with mock_kafka_cluster() as cluster:
        config = write_config(
            run_dir, cluster, queue_max_events=2000, when_full="drop_newest", flush_timeout_ms=2000
        )
        proc = start_replay(config, log)
        take_brokers_down_after_first_events(cluster, run_dir / "out.jsonl")
        stderr = proc.communicate(timeout=120)[1].decode(errors="replace")
    assert proc.returncode == 3, stderr
    kafka = assert_every_event_accounted(summary_of(run_dir))
    dropped = kafka["discarded_by_reason"]["queue_full"]
    markers = [
        doc["auditstream"]["marker"]
        for doc in jsonl_docs(run_dir)
        if doc.get("event", {}).get("action") == "events-dropped"
    ]
    assert dropped > 0 and markers
    assert {marker["sink"] for marker in markers} == {"k"}
    assert sum(marker["count"] for marker in markers) == dropped
    assert "drop_marker_lost" not in kafka["component_errors_total"]
    assert "could not reach" not in stderr
