"""Dedupe tells the nodes of an aggregated log apart, and still drops a node's real duplicates.

An aggregated log (auditd's remote logging, audisp-remote) holds ``node=`` records of
many hosts; two hosts can write the very same record text (same timestamp, serial and
body). The event's identity is its (node, timestamp, serial) key refined to the records
(treekeeper/dedupe.py), so such events are all written, in the C filter and in Python,
live and when a restarted tree keeper reads its sinks back.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from live_helpers import replay_to_jsonl
from test_native_fingerprints import c_dedupe, python_dedupe

from auditstream.config import Config
from auditstream.doc_text import DOC_TEXT, RECORD_HASHES
from auditstream.hostnode import host_name
from treekeeper.dedupe import Dedupe, doc_fingerprints, head_fingerprints, recover_sink_tails

REPO = Path(__file__).resolve().parents[1]
RECOVERY = re.compile(rb"recovery: \d+ stage restarts, \d+ batches redelivered, (\d+) duplicates")
EVENTS_OUT = re.compile(rb"(\d+) events out")
Event = dict[str, Any]
MakeDedupe = Callable[[int], Dedupe]
BOTH_PATHS = pytest.mark.parametrize("make", [c_dedupe, python_dedupe], ids=["c", "python"])


def event_lines(node: str, serial: int) -> list[str]:
    """The log lines of one execve event of ``node``; its text but the prefix is the same on every node."""
    stamp = f"msg=audit(1700000000.{serial:03d}:{serial}):"
    return [
        f"node={node} type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1"
        f' items=1 ppid=100 pid={1000 + serial} auid=1000 uid=1000 ses=3 comm="cat"'
        ' exe="/usr/bin/cat" key="k"',
        f'node={node} type=EXECVE {stamp} argc=1 a0="x{serial}"',
        f'node={node} type=CWD {stamp} cwd="/tmp"',
        f"node={node} type=PROCTITLE {stamp} proctitle=6361740078",
        f"node={node} type=EOE {stamp} ",
    ]


def two_node_log(*, repeat_first_of: str | None = None) -> bytes:
    """Three events of host1, then the same three of host2; optionally one event sent twice."""
    lines = [
        line for node in ("host1", "host2") for s in (1, 2, 3) for line in event_lines(node, s)
    ]
    if repeat_first_of is not None:  # as a restarted stage sends it again (docs/recovery.md)
        lines += event_lines(repeat_first_of, 1)
    return "".join(line + "\n" for line in lines).encode()


def replay(log: Path, out: Path, native: str) -> tuple[list[Event], int, int]:
    """`auditstream replay LOG` into a jsonl sink: its audit docs, events out, duplicates dropped."""
    docs, stderr = replay_to_jsonl(log, out, native)
    events_out, dropped = EVENTS_OUT.search(stderr), RECOVERY.search(stderr)
    assert events_out and dropped, stderr.decode(errors="replace")
    audit = [d for d in docs if d.get("auditd", {}).get("records")]
    return audit, int(events_out.group(1)), int(dropped.group(1))


@pytest.mark.parametrize("native", ["", "0"], ids=["c-where-built", "python"])
def test_replay_keeps_identical_events_of_two_nodes(tmp_path: Path, native: str) -> None:
    """A two-node log whose nodes wrote the same records: every event of both is written, none dropped."""
    log = tmp_path / "aggregated.log"
    log.write_bytes(two_node_log())
    audit, _, dropped = replay(log, tmp_path / "out.jsonl", native)
    got = sorted((d["host"]["name"], d["auditd"]["sequence"]) for d in audit)
    assert got == [(node, s) for node in ("host1", "host2") for s in (1, 2, 3)]
    assert dropped == 0


@pytest.mark.parametrize("native", ["", "0"], ids=["c-where-built", "python"])
def test_replay_drops_a_nodes_event_sent_twice(tmp_path: Path, native: str) -> None:
    """host2's event sent again is dropped as a duplicate; the output is that of the log without it."""
    once, twice = tmp_path / "once.log", tmp_path / "twice.log"
    once.write_bytes(two_node_log())
    twice.write_bytes(two_node_log(repeat_first_of="host2"))
    expected, expected_out, _ = replay(once, tmp_path / "once.jsonl", native)
    audit, events_out, dropped = replay(twice, tmp_path / "twice.jsonl", native)
    assert dropped > 0
    assert (audit, events_out) == (expected, expected_out)


def records_of(serial: int) -> list[str]:
    """The records' text of event ``serial``: the same on every node (the node= prefix is not in it)."""
    stamp = f"msg=audit(1700000000.{serial:03d}:{serial}):"
    return [f"type=SYSCALL {stamp} syscall=59 pid={serial}", f"type=EOE {stamp} "]


def whole_event(node: str, serial: int) -> Event:
    """An event with its whole doc, ``host.name`` as the assembler writes it for ``node``."""
    doc: Event = {"auditd": {"records": records_of(serial)}}
    if node:
        doc["host"] = {"name": host_name(node)}
    return {"key": [node, 1700000000, serial, serial], "raw": [], "doc": doc}


def head_event(node: str, serial: int) -> Event:
    """The same event as the tree keeper gets it as a head: the assembler's record hashes, the key."""
    head = {"auditd": {RECORD_HASHES: [hash(r) for r in records_of(serial)]}, "process": {}}
    return {
        "key": [node, 1700000000, serial, serial],
        "raw": 2,
        "doc": head,
        DOC_TEXT: (b"{", b"}"),
    }


NODES = ["", "host1", "host2", "h%st\x01é"]  # the last escaped in host.name (assembler/ecs.py)


def test_a_doc_and_its_head_have_one_identity_per_node() -> None:
    """A head salted by its key's node equals its whole doc's fingerprints; other nodes' differ."""
    identities = set()
    for node in NODES:
        head, whole = head_event(node, 4), whole_event(node, 4)
        found = head_fingerprints(head["doc"], node)
        assert found == doc_fingerprints(whole["doc"]) and found is not None
        identities.add(found)
    assert len(identities) == len(NODES)
    assert head_fingerprints(head_event("", 4)["doc"]) == tuple(hash(r) for r in records_of(4))


@pytest.mark.parametrize("capacity", [5, 100_000])
def test_c_and_python_keep_each_nodes_first_copy_and_drop_the_rest(capacity: int) -> None:
    """Events of many nodes with equal records, resent as heads or whole docs: C and Python keep the same."""
    rng = random.Random(capacity)
    stream, first_seen = [], set()
    for _ in range(3_000):
        node, serial = rng.choice(NODES), rng.randint(1, 40)
        stream.append(rng.choice([whole_event, head_event])(node, serial))
        first_seen.add((node, serial))
    ours, reference = c_dedupe(capacity), python_dedupe(capacity)
    start = 0
    while start < len(stream):
        batch = stream[start : start + rng.randint(0, 70)]
        start += len(batch)
        assert [id(e) for e in ours.filter(batch)] == [id(e) for e in reference.filter(batch)]
        assert ours.dropped == reference.dropped
    if capacity > len(stream) * 2:  # nothing forgotten: exactly each node's first copy kept
        assert len(stream) - ours.dropped == len(first_seen)


@BOTH_PATHS
def test_a_head_without_a_keyed_node_is_never_dropped(make: MakeDedupe) -> None:
    """A head whose key names no node has no identity: it passes every time, in C as in Python."""
    dedupe = make(100)
    for key in (None, [], [5, 1, 2, 3], "host1"):
        event = head_event("host1", 7)
        if key is None:
            del event["key"]
        else:
            event["key"] = key
        assert dedupe.filter([event, event]) == [event, event]
    assert dedupe.dropped == 0


@BOTH_PATHS
def test_a_restarted_tree_keeper_reads_back_each_nodes_events(
    tmp_path: Path, make: MakeDedupe
) -> None:
    """After the sinks are read back, a node's written events are dropped, the other node's pass."""
    jsonl, raw = tmp_path / "events.jsonl", tmp_path / "copy.log"
    written = [whole_event("host1", 1)["doc"], whole_event("h%st\x01é", 2)["doc"]]
    jsonl.write_text("".join(json.dumps(doc) + "\n" for doc in written))
    raw.write_text("".join(f"node=host1 {record}\n" for record in records_of(3)))
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": str(jsonl)}, {"type": "file", "path": str(raw)}]
    dedupe = make(100)
    assert recover_sink_tails(cfg, dedupe) == 6
    again = [head_event("host1", 1), head_event("h%st\x01é", 2), head_event("host1", 3)]
    other = [head_event("host2", 1), head_event("h%st\x01", 2), head_event("host2", 3)]
    assert dedupe.filter(again + other) == other
    assert dedupe.dropped == 3
