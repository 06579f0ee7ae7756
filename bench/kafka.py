"""Kafka sink throughput against the jsonl sink, in one run, on the same events.

Starts librdkafka's mock cluster (3 brokers, 3 partitions; see tests/kafka_mock_cluster.py),
writes the same N exec-like ECS events through sinks.jsonl.JsonlSink into a temporary file
and through sinks.kafka.KafkaSink into the cluster, each timed from the first write_batch to
the end of close() (so Kafka is timed until every delivery report is in), and prints both
rates and their ratio. Goal: Kafka >= 90 % of the jsonl rate.

    python bench/kafka.py [--events 200000] [--batch 500] [--key host]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from kafka_mock_cluster import mock_kafka_cluster  # noqa: E402

from sinks.base import Event, Sink  # noqa: E402
from sinks.config import SinkConfig  # noqa: E402
from sinks.jsonl import JsonlSink  # noqa: E402
from sinks.kafka import KafkaSink  # noqa: E402


def exec_event(sequence: int) -> dict[str, Any]:
    """An execve event shaped like the treekeeper's output (about 1.5 KB of JSON)."""
    pid = 20_000 + sequence % 5_000
    host = f"web{sequence % 4}"
    argv = ["grep", "-r", "needle", f"/srv/data/{sequence % 97}"]
    doc = {
        "@timestamp": "2026-01-01T00:00:00.404Z",
        "event": {
            "kind": "event",
            "action": "executed",
            "category": ["process"],
            "type": ["start"],
            "outcome": "success",
            "sequence": sequence,
        },
        "host": {"name": host},
        "process": {
            "pid": pid,
            "name": "grep",
            "executable": "/usr/bin/grep",
            "args": argv,
            "title": " ".join(argv),
            "working_directory": "/home/alice",
            "entity_id": f"{host}-{pid}-1767225600",
            "parent": {"pid": pid - 1, "name": "bash", "executable": "/usr/bin/bash"},
            "ancestry": [
                {"pid": pid - 1, "executable": "/usr/bin/bash", "entity_id": f"{host}-{pid - 1}"},
                {"pid": 1, "executable": "/sbin/init", "entity_id": f"{host}-1"},
            ],
        },
        "user": {"id": "1000", "name": "alice", "effective": {"id": "1000", "name": "alice"}},
        "auditd": {
            "message_type": "syscall",
            "sequence": sequence,
            "result": "success",
            "session": "3",
            "data": {"syscall": "execve", "arch": "x86_64", "exit": "0", "a0": "55d1c9f0"},
            "records": [
                f"type=SYSCALL msg=audit(1767225600.404:{sequence}): arch=c000003e syscall=59 "
                f"success=yes exit=0 a0=55d1c9f0 ppid={pid - 1} pid={pid} auid=1000 uid=1000 "
                'comm="grep" exe="/usr/bin/grep" key="exec"',
                f"type=EXECVE msg=audit(1767225600.404:{sequence}): argc=4 "
                + " ".join(f'a{i}="{arg}"' for i, arg in enumerate(argv)),
                f"type=CWD msg=audit(1767225600.404:{sequence}): cwd=/home/alice",
                f"type=PROCTITLE msg=audit(1767225600.404:{sequence}): proctitle=6772657000",
            ],
        },
        "tags": ["exec"],
    }
    return {"key": [host, 1767225600, 404, sequence], "raw": [], "doc": doc}


def timed_run(sink: Sink, events: list[Event], batch: int) -> float:
    """Events per second through `sink`, from the first write to the end of close()."""
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        sink.write_batch(events[start : start + batch])
    sink.close()
    elapsed = time.perf_counter() - started
    stats = sink.stats
    if stats.sent_events != len(events) or stats.discarded_events:
        raise SystemExit(f"{sink.name}: sent {stats.sent_events} of {len(events)}: {stats}")
    return len(events) / elapsed


def replay_rates(log: Path, bootstrap: str) -> tuple[float, float]:
    """Lines/s of `auditstream replay LOG` into jsonl, then into Kafka (the whole pipeline)."""
    lines = sum(1 for _ in log.open("rb"))

    def run(sink: str) -> float:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", sink],
            check=True, cwd=REPO, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return lines / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as scratch:
        return run(f"jsonl:{Path(scratch) / 'e.jsonl'}"), run(f"kafka:{bootstrap}/replay")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="LOG",
        help="also time `auditstream replay LOG` into jsonl vs into Kafka",
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--key", default="host", choices=["host", "container", "process_tree_root"])
    args = parser.parse_args()
    events: list[Event] = [exec_event(seq) for seq in range(args.events)]

    with tempfile.TemporaryDirectory() as scratch:
        jsonl_path = Path(scratch) / "events.jsonl"
        jsonl = JsonlSink.from_config(
            SinkConfig(type="jsonl", name="jsonl", options={"path": str(jsonl_path)})
        )
        jsonl_rate = timed_run(jsonl, events, args.batch)
        jsonl_bytes = jsonl_path.stat().st_size

    with mock_kafka_cluster(3) as cluster:
        cluster.create_topic("bench", partitions=3, replication=3)
        kafka = KafkaSink.from_options(
            {"brokers": cluster.bootstrap, "topic": "bench", "key": args.key}
        )
        kafka_rate = timed_run(kafka, events, args.batch)
        if args.replay:
            cluster.create_topic("replay", partitions=3, replication=3)
            replay_jsonl, replay_kafka = replay_rates(args.replay, cluster.bootstrap)

    print(f"events: {args.events}, batch {args.batch}, {jsonl_bytes / args.events:.0f} B/event")
    print(f"jsonl: {jsonl_rate:,.0f} events/s")
    print(f"kafka: {kafka_rate:,.0f} events/s (mock cluster, 3 brokers, acks=all, zstd)")
    print(f"kafka/jsonl (sink alone): {kafka_rate / jsonl_rate:.0%}")
    if args.replay:
        print(
            f"replay into jsonl: {replay_jsonl:,.0f} lines/s, into kafka: {replay_kafka:,.0f} lines/s"
        )
        print(f"kafka/jsonl (whole pipeline): {replay_kafka / replay_jsonl:.0%} (goal >= 90%)")


if __name__ == "__main__":
    main()
