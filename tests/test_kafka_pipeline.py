"""Replay into Kafka (librdkafka's mock cluster, real protocol) and read it back with kcat."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from generated_logs import write_generated_log
from kafka_mock_cluster import bundled_librdkafka, mock_kafka_cluster
from live_helpers import feed_slowly
from test_sink_kafka import KCAT, new_topic, read_topic

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        bundled_librdkafka() is None, reason="confluent-kafka has no bundled librdkafka"
    ),
    pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)"),
]


OUTAGE_SECONDS = 5.0
FEED_SECONDS = OUTAGE_SECONDS + 4.0


def replay_cmd(log: Path, bootstrap: str, topic: str, jsonl: Path) -> list[str]:
    return [
        sys.executable, "-m", "auditstream", "replay", str(log),
        "--sink", f"kafka:{bootstrap}/{topic}", "--sink", f"jsonl:{jsonl}",
    ]  # fmt: skip


def audit_sequences(docs: list[dict]) -> Counter[int]:
    return Counter(d["event"]["sequence"] for d in docs if d.get("auditd", {}).get("records"))


def test_replay_into_kafka_every_event_exactly_once(tmp_path: Path) -> None:
    """Every event of a replayed log reaches the topic once, as valid JSON, same as the jsonl sink."""
    log = write_generated_log(tmp_path / "in.log", 3000)
    out = tmp_path / "events.jsonl"
    with mock_kafka_cluster() as cluster:
        topic = new_topic(cluster)
        result = subprocess.run(
            replay_cmd(log, cluster.bootstrap, topic, out),
            capture_output=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        messages = read_topic(cluster.bootstrap, topic)
    archived = [json.loads(line) for line in out.read_bytes().splitlines()]
    got = audit_sequences([m.doc for m in messages])
    assert got == audit_sequences(archived)
    assert set(got.values()) == {1} and len(got) > 500
    assert len(messages) == len(archived)  # lifecycle events and markers too
    assert {m.headers.get("schema_version") for m in messages} == {"1"}


@pytest.mark.slow
def test_broker_outage_during_replay_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """All brokers down for several seconds mid-replay: after they return, every event arrives once."""
    log = write_generated_log(tmp_path / "in.log", 40000)
    out = tmp_path / "events.jsonl"
    with mock_kafka_cluster() as cluster:
        topic = new_topic(cluster)
        # From a pipe that flows for FEED_SECONDS, so that the replay outlasts the outage
        # however fast the machine (a file was read to the end before the brokers came back).
        command = replay_cmd(Path("-"), cluster.bootstrap, topic, out)
        proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        pipe, proc.stdin = proc.stdin, None  # the feeder owns it; communicate() must not
        feeder = threading.Thread(target=feed_slowly, args=(pipe, log, FEED_SECONDS), daemon=True)
        feeder.start()
        # Wait for the first events to land, then take every broker down for 5 s.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
            time.sleep(0.1)
        for broker in (1, 2, 3):
            cluster.broker_down(broker)
        still_running_during_outage = proc.poll() is None
        time.sleep(OUTAGE_SECONDS)
        for broker in (1, 2, 3):
            cluster.broker_up(broker)
        feeder.join(timeout=60)
        stderr = proc.communicate(timeout=180)[1]
        assert proc.returncode == 0, stderr.decode(errors="replace")
        messages = read_topic(cluster.bootstrap, topic)
    archived = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert still_running_during_outage, "the replay ended before the outage began"
    got = audit_sequences([m.doc for m in messages])
    assert got == audit_sequences(archived)
    assert set(got.values()) == {1}


def test_unreachable_broker_fails_the_start_clearly(tmp_path: Path) -> None:
    """A broker nobody answers on stops `replay` at start with the broker named, not a hang."""
    conf = tmp_path / "kafka.toml"
    conf.write_text(
        '[[sinks]]\ntype = "kafka"\nbrokers = "127.0.0.1:1"\ntopic = "audit"\nconnect_timeout_ms = 2000\n'
    )
    log = REPO / "tests" / "corpus" / "go-libaudit" / "testdata" / "normal.log"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "-c", str(conf)],
        capture_output=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert b"127.0.0.1:1" in result.stderr
    assert time.monotonic() - started < 20
