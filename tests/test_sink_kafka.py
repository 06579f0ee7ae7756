"""The Kafka sink against librdkafka's mock cluster, read back with kcat (an independent client)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

from kafka_mock_cluster import MockKafkaCluster, bundled_librdkafka, mock_kafka_cluster

from sinks.base import SinkError
from sinks.kafka import KafkaOptions, KafkaSink, parse_kafka_target
from sinks.rotation import SinkWriteError

KCAT = shutil.which("kcat")
FORMAT = "%k\t%h\t%s\n"  # key, headers, value: one message per line
CLUSTER_MARKS = (
    pytest.mark.kafka,
    pytest.mark.skipif(
        bundled_librdkafka() is None, reason="confluent-kafka wheel has no bundled librdkafka"
    ),
    pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)"),
)
BROKERS = (1, 2, 3)
TestFunction = TypeVar("TestFunction", bound=Callable[..., None])


def needs_cluster(test: TestFunction) -> TestFunction:
    """Mark a test `kafka` and skip it when the mock cluster or kcat is unavailable."""
    for mark in CLUSTER_MARKS:
        test = mark(test)
    return test


SECRET = "hunter2-do-not-log"


@dataclass(frozen=True)
class ReadBack:
    """One message as kcat printed it."""

    key: str
    headers: dict[str, str]
    doc: dict[str, Any]


def make_event(sequence: int, host: str = "web1", **doc_extra: Any) -> dict[str, Any]:
    """An event as the treekeeper hands it over, with a small ECS doc."""
    doc = {
        "@timestamp": "2026-01-01T00:00:00.000Z",
        "host": {"name": host},
        "event": {"kind": "event", "action": "executed", "sequence": sequence},
        **doc_extra,
    }
    return {"key": [host, 1767225600, 0, sequence], "raw": [], "doc": doc}


def read_topic(bootstrap: str, topic: str) -> list[ReadBack]:
    """Everything in `topic`, from the beginning, read by kcat."""
    assert KCAT is not None
    out = subprocess.run(
        [KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", FORMAT],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    messages = []
    for line in out.decode().splitlines():
        key, headers, value = line.split("\t", 2)
        pairs = (h.split("=", 1) for h in headers.split(",") if h)
        messages.append(ReadBack(key, dict(pairs), json.loads(value)))
    return messages


def sequences(messages: list[ReadBack]) -> Counter[int]:
    """How often each event.sequence arrived."""
    return Counter(m.doc["event"]["sequence"] for m in messages)


def new_topic(cluster: MockKafkaCluster) -> str:
    """A fresh 3-partition, 3-replica topic on `cluster`."""
    topic = f"audit.{uuid.uuid4().hex[:8]}"
    cluster.create_topic(topic, partitions=3, replication=3)
    return topic


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[MockKafkaCluster]:
    """A 3-broker mock cluster shared by the tests that keep all brokers up."""
    with mock_kafka_cluster(3) as cluster:
        yield cluster


@pytest.fixture()
def cluster() -> Iterator[MockKafkaCluster]:
    """A private 3-broker mock cluster for tests that take brokers down."""
    with mock_kafka_cluster(3) as cluster:
        yield cluster


# -- options --------------------------------------------------------------------------------


def test_parse_kafka_target_splits_brokers_and_topic() -> None:
    """The CLI form gives the broker list and the topic."""
    assert parse_kafka_target("b1:9092,b2:9093/audit.events") == (
        ["b1:9092", "b2:9093"],
        "audit.events",
    )


@pytest.mark.parametrize("target", ["b1:9092", "/audit", "b1:9092,,b2/audit", "b1:9092/bad topic"])
def test_parse_kafka_target_rejects_malformed(target: str) -> None:
    """A target without brokers, without a topic or with an illegal topic is refused."""
    with pytest.raises(SinkError, match="kafka target"):
        parse_kafka_target(target)


@pytest.mark.parametrize(
    ("options", "bad_key"),
    [
        ({"brokers": "b:1", "topic": "t", "linger": 5}, "linger"),
        ({"topic": "t"}, "brokers"),
        ({"brokers": "b:1", "topic": "t", "key": "pid"}, "key"),
        ({"brokers": "b:1", "topic": "t", "compression": "brotli"}, "compression"),
        ({"brokers": "b:1", "topic": "t", "linger_ms": -1}, "linger_ms"),
        ({"brokers": "b:1", "topic": "t", "queue_max_events": "10"}, "queue_max_events"),
        ({"brokers": "b:1", "topic": "t", "when_full": "drop_oldest"}, "when_full"),
        ({"brokers": "b:1", "topic": "t", "librdkafka": {"linger.ms": 1}}, "linger.ms"),
        ({"brokers": "b:1", "topic": "t", "librdkafka": {"x": [1]}}, "'x'"),
        ({"brokers": [], "topic": "t"}, "brokers"),
    ],
)
def test_options_name_the_bad_key(options: dict[str, Any], bad_key: str) -> None:
    """Each invalid option is refused with a SinkError that names it."""
    with pytest.raises(SinkError, match=bad_key):
        KafkaOptions.from_mapping(options)


def test_options_defaults_favour_no_loss() -> None:
    """Defaults are acks=all, zstd, no message timeout and blocking when full."""
    opts = KafkaOptions.from_mapping({"brokers": ["b1:9092", "b2:9092"], "topic": "t", "acks": -1})
    assert (opts.brokers, opts.acks, opts.compression) == (("b1:9092", "b2:9092"), "-1", "zstd")
    assert (opts.message_timeout_ms, opts.when_full, opts.key) == (0, "block", "host")


def test_options_repr_masks_secrets() -> None:
    """Passwords and secrets in the librdkafka table never show in repr."""
    opts = KafkaOptions.from_mapping(
        {
            "brokers": "b:1",
            "topic": "t",
            "librdkafka": {
                "sasl.password": SECRET,
                "sasl.oauthbearer.client.secret": SECRET,
                "sasl.username": "alice",
            },
        }
    )
    assert SECRET not in repr(opts) and SECRET not in str(opts)
    assert "alice" in repr(opts)


# -- against the mock cluster ---------------------------------------------------------------


@needs_cluster
def test_every_event_arrives_once_keyed_by_host(shared_cluster: MockKafkaCluster) -> None:
    """N events written are read back exactly once, as the same JSON, keyed and headed by host."""
    topic = new_topic(shared_cluster)
    sink = KafkaSink.from_options({"brokers": shared_cluster.bootstrap, "topic": topic})
    events = [make_event(seq, host=f"host{seq % 5}") for seq in range(3000)]
    for start in range(0, len(events), 250):
        sink.write_batch(events[start : start + 250])
    sink.close()
    assert (sink.stats.sent_events, sink.stats.discarded_events, sink.stats.errors) == (3000, 0, {})

    messages = read_topic(shared_cluster.bootstrap, topic)
    assert sequences(messages) == Counter(range(3000))
    by_sequence = {e["doc"]["event"]["sequence"]: e["doc"] for e in events}
    for message in messages:
        host = message.doc["host"]["name"]
        assert message.doc == by_sequence[message.doc["event"]["sequence"]]
        assert message.key == host
        assert message.headers == {"schema_version": "1", "host": host, "event_kind": "executed"}
    # One key lives in one partition, so each host's events come back in write order.
    for host in {m.key for m in messages}:
        seqs = [m.doc["event"]["sequence"] for m in messages if m.key == host]
        assert seqs == sorted(seqs)


def tree_event(sequence: int) -> dict[str, Any]:
    """An event whose container and ancestry vary with `sequence`, for the key options."""
    extra: dict[str, Any] = {}
    if sequence % 3 == 0:
        extra["container"] = {"id": f"c{sequence % 2}"}
    if sequence % 4 != 0:
        extra["process"] = {
            "pid": 100 + sequence,
            "ancestry": [
                {"pid": 50, "entity_id": f"shell{sequence % 2}"},
                {"pid": 1, "entity_id": "init"},
            ][: 1 + sequence % 2],
        }
    return make_event(sequence, host="node7", **extra)


def expected_key(doc: dict[str, Any], mode: str) -> str:
    """The key a doc should get under each key option, derived independently of the sink."""
    if mode == "container" and "container" in doc:
        return str(doc["container"]["id"])
    if mode == "process_tree_root" and "process" in doc:
        return str(doc["process"]["ancestry"][-1]["entity_id"])
    return str(doc["host"]["name"])


@pytest.mark.parametrize("mode", ["container", "process_tree_root"])
@needs_cluster
def test_key_option_picks_container_or_tree_root(
    shared_cluster: MockKafkaCluster, mode: str
) -> None:
    """key=container uses container.id, key=process_tree_root the top ancestor, else the host."""
    topic = new_topic(shared_cluster)
    sink = KafkaSink.from_config(
        {
            "type": "kafka",
            "name": "siem",
            "target": f"{shared_cluster.bootstrap}/{topic}",
            "key": mode,
        }
    )
    assert sink.name == "siem"
    sink.write_batch([tree_event(seq) for seq in range(200)])
    sink.close()
    messages = read_topic(shared_cluster.bootstrap, topic)
    assert sequences(messages) == Counter(range(200))
    keys = {m.key for m in messages}
    assert all(m.key == expected_key(m.doc, mode) for m in messages)
    assert len(keys) >= 3  # the option really spreads events over more than the host key


@needs_cluster
def test_unsendable_events_are_counted_not_fatal(shared_cluster: MockKafkaCluster) -> None:
    """A doc orjson cannot encode and an event without a doc are discarded and counted."""
    topic = new_topic(shared_cluster)
    sink = KafkaSink.from_options({"brokers": shared_cluster.bootstrap, "topic": topic})
    bad_doc = make_event(1)
    bad_doc["doc"]["auditd"] = {"raw": b"\xff bytes are not JSON"}
    sink.write_batch([make_event(0), bad_doc, {"key": ["", 0, 0, 2]}, make_event(3)])
    sink.close()
    stats = sink.stats
    assert (stats.received_events, stats.sent_events, stats.discarded_events) == (4, 2, 2)
    assert stats.errors == {"serialize": 1, "bad_event": 1}
    assert sequences(read_topic(shared_cluster.bootstrap, topic)) == Counter([0, 3])


@needs_cluster
def test_unreachable_broker_fails_fast() -> None:
    """A broker address nobody listens on gives a SinkError within connect_timeout_ms."""
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"no answer from brokers 127\.0\.0\.1:1 "):
        KafkaSink.from_options({"brokers": "127.0.0.1:1", "topic": "t", "connect_timeout_ms": 1500})
    assert time.monotonic() - started < 5


@needs_cluster
def test_unknown_topic_fails_at_start(shared_cluster: MockKafkaCluster) -> None:
    """A topic the brokers report as unknown gives a SinkError naming it."""
    shared_cluster.set_topic_error("no.such.topic", 3)  # 3 = UNKNOWN_TOPIC_OR_PARTITION
    with pytest.raises(SinkError, match=r"'no\.such\.topic' is not usable"):
        KafkaSink.from_options(
            {
                "brokers": shared_cluster.bootstrap,
                "topic": "no.such.topic",
                "connect_timeout_ms": 3000,
            }
        )


@needs_cluster
def test_secrets_stay_out_of_repr_logs_and_errors(
    shared_cluster: MockKafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Credential values appear in no repr, log record or SinkError message."""
    caplog.set_level(logging.DEBUG)
    topic = new_topic(shared_cluster)
    secrets = {"sasl.password": SECRET, "ssl.key.password": SECRET + "2"}
    sink = KafkaSink.from_options(
        {"brokers": shared_cluster.bootstrap, "topic": topic, "librdkafka": secrets}
    )
    sink.write_batch([make_event(1)])
    sink.close()
    with pytest.raises(SinkError) as failed:
        KafkaSink.from_options(
            {"brokers": "b:1", "topic": "t", "librdkafka": {**secrets, "security.protocol": SECRET}}
        )
    assert sink.stats.sent_events == 1
    assert "security.protocol" in str(failed.value)
    for text in (repr(sink), str(sink), caplog.text, str(failed.value)):
        assert SECRET not in text


def all_brokers(cluster: MockKafkaCluster, up: bool) -> None:
    """Take every broker of the cluster down, or bring every one back."""
    for broker in BROKERS:
        (cluster.broker_up if up else cluster.broker_down)(broker)


@pytest.mark.slow
@needs_cluster
def test_outage_loses_and_duplicates_nothing(cluster: MockKafkaCluster) -> None:
    """Steady stream, every broker down for ~5 s, then up: each event arrives exactly once."""
    topic = new_topic(cluster)
    sink = KafkaSink.from_options(
        {
            "brokers": cluster.bootstrap,
            "topic": topic,
            "flush_timeout_ms": 60_000,
            # Reconnect within a second of the brokers' return instead of librdkafka's 10 s.
            "librdkafka": {"reconnect.backoff.max.ms": 1000},
        }
    )
    sequence, held_back, started, down_at, up_at = 0, 0, time.monotonic(), 1.0, 6.0
    state = "before"
    while (elapsed := time.monotonic() - started) < 8.0:
        if state == "before" and elapsed >= down_at:
            all_brokers(cluster, up=False)
            state = "down"
        elif state == "down" and elapsed >= up_at:
            held_back = sequence - sink.stats.sent_events
            all_brokers(cluster, up=True)
            state = "after"
        sink.write_batch(
            [make_event(seq, host=f"h{seq % 7}") for seq in range(sequence, sequence + 50)]
        )
        sequence += 50
        time.sleep(0.01)
    sink.flush()
    sink.close()
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (sequence, 0)
    assert held_back > 1000  # the outage really held events back
    assert sequences(read_topic(cluster.bootstrap, topic)) == Counter(range(sequence))


@needs_cluster
def test_drop_newest_counts_and_reports_drops(
    cluster: MockKafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """With brokers down and a 10-event queue, the newest events are dropped, counted and
    reported as one span; what was queued is counted undelivered at close."""
    topic = new_topic(cluster)
    sink = KafkaSink.from_options(
        {
            "brokers": cluster.bootstrap,
            "topic": topic,
            "queue_max_events": 10,
            "when_full": "drop_newest",
            "flush_timeout_ms": 500,
        }
    )
    all_brokers(cluster, up=False)
    sink.write_batch([make_event(seq) for seq in range(100)])
    assert sink.stats.discarded_events == 90
    assert sink.take_drops() == [(90, ["web1", 1767225600, 0, 10], ["web1", 1767225600, 0, 99])]
    assert sink.take_drops() == []
    sink.close()
    stats = sink.stats
    assert stats.errors["queue_full"] == 90
    assert stats.errors["undelivered_at_exit"] == 10
    assert stats.received_events == stats.sent_events + stats.discarded_events == 100
    assert "10 events undelivered at exit" in caplog.text


@needs_cluster
def test_block_waits_for_room_then_delivers_everything(cluster: MockKafkaCluster) -> None:
    """With when_full=block, write_batch stalls while brokers are down and resumes after."""
    topic = new_topic(cluster)
    sink = KafkaSink.from_options(
        {"brokers": cluster.bootstrap, "topic": topic, "queue_max_events": 10}
    )
    all_brokers(cluster, up=False)
    restore = threading.Timer(1.5, all_brokers, args=(cluster, True))
    restore.start()
    started = time.monotonic()
    try:
        sink.write_batch([make_event(seq) for seq in range(40)])
    finally:
        restore.join()
    assert time.monotonic() - started >= 1.0  # it really waited for the brokers
    sink.close()
    assert (sink.stats.sent_events, sink.stats.discarded_events, sink.take_drops()) == (40, 0, [])
    assert sequences(read_topic(cluster.bootstrap, topic)) == Counter(range(40))


@needs_cluster
def test_fatal_producer_error_raises_after_counting(cluster: MockKafkaCluster) -> None:
    """A fatal idempotence error makes write_batch/flush raise SinkWriteError, events counted."""
    cluster.command("push_errors 22 31")  # InitProducerId -> CLUSTER_AUTHORIZATION_FAILED
    topic = new_topic(cluster)
    sink = KafkaSink.from_options(
        {"brokers": cluster.bootstrap, "topic": topic, "flush_timeout_ms": 2000}
    )
    with pytest.raises(SinkWriteError, match="Cluster authorization failed"):
        for start in range(0, 500, 10):
            sink.write_batch([make_event(seq) for seq in range(start, start + 10)])
            sink.flush()
    sink.close()
    stats = sink.stats
    assert stats.sent_events == 0
    assert stats.received_events == stats.discarded_events > 0


@needs_cluster
def test_undelivered_counts_what_librdkafka_still_holds(cluster: MockKafkaCluster) -> None:
    """With every broker down, written events stay undelivered (not durable) until they arrive."""
    topic = new_topic(cluster)
    sink = KafkaSink.from_options(
        {
            "brokers": cluster.bootstrap,
            "topic": topic,
            "flush_timeout_ms": 200,
            "librdkafka": {"reconnect.backoff.max.ms": 500},
        }
    )
    try:
        assert sink.undelivered() == 0
        all_brokers(cluster, up=False)
        sink.write_batch([make_event(seq) for seq in range(20)])
        sink.flush()  # times out: the brokers are away
        assert sink.undelivered() == 20
        all_brokers(cluster, up=True)
        deadline = time.monotonic() + 30
        while sink.undelivered() and time.monotonic() < deadline:
            sink.flush()
        assert sink.undelivered() == 0
        assert sink.stats.sent_events == 20
    finally:
        sink.close()
