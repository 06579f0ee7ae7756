"""The Kafka sink writes split docs from their text (auditstream/doc_text.py), as the jsonl
sink does: every message's value is the jsonl line of the same event, byte for byte, and
its key and headers are what the whole doc gives (README "Sinks", docs/design.md ``kafka``).
Real replays into librdkafka's mock cluster, read back by kcat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from generated_logs import write_generated_log
from kafka_mock_cluster import mock_kafka_cluster
from test_sink_kafka import KCAT, needs_cluster, new_topic

from sinks.kafka import text_event

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "corpus" / "containers" / "docker-exec-runc-exits-first.log"
Message = tuple[str, dict[str, str], str]


def replay_both(tmp_path: Path, log: Path, key: str) -> tuple[list[Message], list[str]]:
    """`auditstream replay LOG` into a fresh topic (key mode ``key``) and a jsonl file in one
    run: (key, headers, value) of each message as kcat reads them, and the jsonl lines."""
    assert KCAT is not None
    config = tmp_path / f"{key}.toml"
    out = tmp_path / f"{key}.jsonl"
    with mock_kafka_cluster() as cluster:
        topic = new_topic(cluster)
        config.write_text(
            f'[[sinks]]\ntype = "kafka"\nbrokers = ["{cluster.bootstrap}"]\ntopic = "{topic}"\n'
            f'key = "{key}"\n\n[[sinks]]\ntype = "jsonl"\npath = "{out}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "auditstream", "replay", str(log), "-c", str(config)],
            cwd=REPO, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        read = subprocess.run(
            [KCAT, "-C", "-b", cluster.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
             "-J"],
            capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    messages = []
    for line in read.decode().splitlines():
        envelope = json.loads(line)
        pairs = envelope.get("headers") or []
        headers = dict(zip(pairs[::2], pairs[1::2], strict=True))
        messages.append((envelope["key"] or "", headers, envelope["payload"]))
    return messages, out.read_text().splitlines()


def expected_key(doc: dict[str, Any], mode: str) -> str:
    """The key the whole doc gives (sinks/kafka.py ``_partition_key``)."""
    host = doc.get("host", {}).get("name") or ""
    if mode == "container":
        return doc.get("container", {}).get("id") or host
    if mode == "process_tree_root":
        for ancestor in reversed(doc.get("process", {}).get("ancestry") or []):
            if ancestor.get("entity_id"):
                return str(ancestor["entity_id"])
    return host


def check_like_jsonl(messages: list[Message], lines: list[str], mode: str) -> None:
    """Each message is the jsonl line of its event, keyed and headed as that doc says."""
    by_value = sorted(messages, key=lambda m: m[2])
    assert sorted(m[2] for m in by_value) == sorted(lines)
    for key, headers, value in by_value:
        doc = json.loads(value)
        host = doc.get("host", {}).get("name")
        assert key == expected_key(doc, mode), value[:200]
        assert headers.get("host") == host
        event = doc["event"]
        assert headers["event_kind"] == (event.get("action") or event.get("kind") or "event")
        assert headers["schema_version"] == "1"


def test_text_event_reads_the_event_object_of_a_split_doc() -> None:
    """The event object is read from the text before process, escapes included."""
    before = b'{"@timestamp":"x","event":{"kind":"event","action":"a\\"},\\"b","n":1},"p":'
    assert text_event(before) == {"kind": "event", "action": 'a"},"b', "n": 1}
    cut = b'{"@timestamp":"x","event":{"kind":"event","action":"a},"},"p":'
    assert text_event(cut) is None  # not one object: the caller decodes the whole line
    assert text_event(b'{"@timestamp":"x","process":') is None


@needs_cluster
@pytest.mark.parametrize("mode", ["host", "container", "process_tree_root"])
def test_docker_capture_into_kafka_is_the_jsonl_archive(tmp_path: Path, mode: str) -> None:
    """A container capture's messages equal its jsonl lines, keys and headers per the doc."""
    messages, lines = replay_both(tmp_path, CAPTURE, mode)
    assert len(lines) > 30
    check_like_jsonl(messages, lines, mode)
    if mode == "container":
        assert any(len(key) == 64 for key, _, _ in messages)  # container ids as keys
    if mode == "process_tree_root":
        assert len({key for key, _, _ in messages}) > 1


@needs_cluster
def test_nodes_and_hostile_node_names_key_as_their_docs(tmp_path: Path) -> None:
    """Logs of several nodes (one named with % and non-ASCII bytes) key and head as host.name."""
    plain = write_generated_log(tmp_path / "plain.log", 600).read_bytes().splitlines(True)
    nodes = [b"web1", b"db%2", b"caf\xc3\xa9", b"raw\xff"]
    log = tmp_path / "nodes.log"
    log.write_bytes(b"".join(b"node=" + nodes[i % 4] + b" " + line for i, line in enumerate(plain)))
    messages, lines = replay_both(tmp_path, log, "host")
    check_like_jsonl(messages, lines, "host")
    assert len({headers.get("host") for _, headers, _ in messages}) >= 4
