"""The Kafka key and ``host`` header follow the doc's host.name: a replayed log without
``node=`` (an unknown host) is not keyed or headed with the replaying host's name
(README "Sinks", docs/design.md ``kafka``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka_mock_cluster import mock_kafka_cluster
from test_sink_kafka import KCAT, needs_cluster, new_topic

from auditstream.hostnode import local_host_name
from sinks.kafka import KafkaOptions, producer_settings

REPO = Path(__file__).resolve().parents[1]


def event_lines(serial: int, node: str = "") -> str:
    """One execve event (SYSCALL, EOE) with ``serial``, prefixed ``node=NODE`` if given."""
    prefix = f"node={node} " if node else ""
    stamp = f"msg=audit(1700000000.{serial:03d}:{serial}):"
    return (
        f"{prefix}type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1 items=0"
        f' ppid=1 pid={100 + serial} auid=0 uid=0 ses=1 comm="ls" exe="/bin/ls" key=(null)\n'
        f"{prefix}type=EOE {stamp} \n"
    )


def replay_into_kafka(tmp_path: Path, text: str) -> list[tuple[int, str, dict[str, str], Any]]:
    """`auditstream replay` of ``text`` into a fresh 3-partition topic: (partition, key,
    headers, doc) of each message, as kcat reads them back."""
    log = tmp_path / "in.log"
    log.write_text(text)
    assert KCAT is not None
    with mock_kafka_cluster() as cluster:
        topic = new_topic(cluster)
        done = subprocess.run(
            [sys.executable, "-m", "auditstream", "replay", str(log),
             "--sink", f"kafka:{cluster.bootstrap}/{topic}"],
            cwd=REPO, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        out = subprocess.run(
            [KCAT, "-C", "-b", cluster.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
             "-f", "%p\t%k\t%h\t%s\n"],
            capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    messages = []
    for line in out.decode().splitlines():
        partition, key, headers, value = line.split("\t", 3)
        pairs = dict(h.split("=", 1) for h in headers.split(",") if h)
        messages.append((int(partition), key, pairs, json.loads(value)))
    return messages


@needs_cluster
def test_node_less_replay_names_no_host(tmp_path: Path) -> None:
    """A replayed log without node=: no host header, the empty key, one partition, in order."""
    assert local_host_name()  # else the test could not tell the difference
    messages = replay_into_kafka(tmp_path, "".join(event_lines(s) for s in range(1, 13)))
    assert len(messages) == 24  # each event and its tree keeper's process-exec doc
    assert {key for _, key, _, _ in messages} == {""}
    assert all("host" not in headers for _, _, headers, _ in messages)
    assert all("host" not in doc for _, _, _, doc in messages)
    assert len({partition for partition, _, _, _ in messages}) == 1
    sequences = [doc["auditd"]["sequence"] for _, _, _, doc in messages if "auditd" in doc]
    assert sequences == list(range(1, 13))


@needs_cluster
def test_replay_with_node_is_keyed_and_headed_by_it(tmp_path: Path) -> None:
    """A replayed log of node=web1: its audit docs keyed and headed web1, not the replaying host."""
    messages = replay_into_kafka(tmp_path, "".join(event_lines(s, "web1") for s in (1, 2, 3)))
    audit = [(key, headers) for _, key, headers, doc in messages if "auditd" in doc]
    assert (
        audit == [("web1", {"schema_version": "1", "host": "web1", "event_kind": "executed"})] * 3
    )


def test_partitioner_keeps_the_empty_key_on_one_partition_unless_set() -> None:
    """The producer uses librdkafka's "consistent" partitioner; a `librdkafka` partitioner wins."""
    opts = KafkaOptions.from_mapping({"brokers": "b:1", "topic": "t"})
    assert producer_settings(opts)["partitioner"] == "consistent"
    mine = KafkaOptions.from_mapping(
        {"brokers": "b:1", "topic": "t", "librdkafka": {"partitioner": "murmur2_random"}}
    )
    assert producer_settings(mine)["partitioner"] == "murmur2_random"


@pytest.mark.parametrize("mode", ["host", "container", "process_tree_root"])
def test_every_key_mode_falls_back_to_the_empty_key(mode: str) -> None:
    """A doc without host.name, container or ancestry gets the empty key in every key mode, no host header."""
    from hostile_audit import kafka_encoder

    sink = kafka_encoder()
    object.__setattr__(sink.options, "key", mode)
    doc = {"event": {"kind": "event", "action": "executed"}}
    _, key, headers = sink._encode({"key": ["", 1, 0, 1], "raw": [], "doc": doc})
    assert key == b""
    assert headers == [("schema_version", b"1"), ("event_kind", b"executed")]
