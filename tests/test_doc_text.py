"""A tree keeper that decodes only the docs' heads writes the same jsonl bytes.

``auditstream.wire.pack_events_body`` marks where each audit doc's ``process`` is in
its JSON text and sends a head (the fields the tree keeper reads);
``wire.events_with_heads`` gives the tree the heads and the jsonl sink writes the text
with the enriched ``process`` spliced in (``auditstream.doc_text``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_event_transport import old_frame, sharded_frames

from auditstream import wire
from auditstream.config import Config
from auditstream.doc_text import DOC_TEXT, doc_line, encode_docs, hashes_of_text, hashes_text
from sinks import sinks_take_ancestry_text, sinks_take_doc_text
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from treekeeper.dedupe import Dedupe
from treekeeper.pipeline import TreeStep
from treekeeper.stage import TransportErrors, frames_events

REPO = Path(__file__).resolve().parents[1]
CONTAINER_LOGS = sorted((REPO / "tests" / "corpus" / "containers").glob("*.log"))
Event = dict[str, Any]
RECORD = "type=SYSCALL msg=audit(1700000000.001:7): syscall=59"


def audit_doc(**extra: Any) -> dict[str, Any]:
    """An audit event doc with a process section, records and ``extra`` top-level keys."""
    doc: dict[str, Any] = {
        "@timestamp": "2023-11-14T22:13:20.001Z",
        "event": {"action": "executed"},
        "auditd": {
            "result": "success",
            "data": {"syscall": "execve", "exit": "0", "a0": "1", "tty": "pts0"},
            "records": [RECORD],
        },
        "process": {"pid": 10, "parent": {"pid": 1}, "name": "sh"},
        "tags": ["k"],
    }
    doc.update(extra)
    return doc


def audit_event(serial: int, doc: Any) -> Event:
    """An assembler event with raw records and ``doc``."""
    return {"key": ["", 1700000000, 1, serial], "raw": [[1300, b"x", ""]], "doc": doc}


def with_heads(events: list[Event]) -> tuple[list[Event], Event]:
    """The events after the hop, with heads (as a jsonl-only tree keeper reads them), and the body."""
    body: Event = wire.pack_events_body(events, {}).unpacked()
    return wire.events_with_heads(dict(body, events=[dict(e) for e in body["events"]])), body


def test_audit_doc_arrives_as_head_and_its_line_is_the_whole_doc() -> None:
    """The tree sees only the head; the line written is orjson.dumps of the whole enriched doc."""
    doc = audit_doc()
    (got,), body = with_heads([audit_event(1, doc)])
    assert orjson.loads(body[wire.DOCS_JSON]) == [doc]  # docs_json itself is unchanged
    head = got["doc"]
    assert set(head) == {"@timestamp", "auditd", "process"}
    assert head["auditd"] == {
        "result": "success",
        "record_hashes": hashes_text([hash(RECORD)]),  # dedupe's fingerprints, for the text
        "data": {"syscall": "execve", "exit": "0", "a0": "1"},
    }
    head["process"]["entity_id"] = "abc"  # what enrichment does
    head["container"] = {"id": "c1"}
    whole = dict(doc, process=dict(doc["process"], entity_id="abc"), container={"id": "c1"})
    assert doc_line(head, got[DOC_TEXT]) == orjson.dumps(whole) + b"\n"


@pytest.mark.parametrize(
    "doc",
    [
        {"process": {"pid": 1}, "auditd": {"records": [RECORD]}},  # process is the first key
        {"auditd": {"records": [RECORD]}, "process": {"pid": 1}},  # ... and the last one
        {"auditd": {"records": [RECORD], "data": "not a dict"}, "process": {}, "x": 1},
        # the same "process":{...} text nested before the top-level key
        {"a": {"process": {"pid": 1}}, "auditd": {"records": [RECORD]}, "process": {"pid": 1}},
    ],
)
def test_split_at_either_end_of_the_doc(doc: dict[str, Any]) -> None:
    """Wherever process is, and whatever looks like it, the text around it and the head
    rebuild the doc."""
    encoded = encode_docs([audit_event(1, doc)], with_heads=True)
    assert encoded.heads is not None
    start, end, at, until, head = encoded.heads[0]
    text = encoded.docs_json[start:end]
    assert text == orjson.dumps(doc)
    assert orjson.loads(encoded.docs_json[at:until]) == doc["process"]
    head = orjson.loads(orjson.dumps(head))  # as the tree keeper decodes it
    assert head["process"] is None  # the tree keeper decodes it from the doc's text
    head["process"] = orjson.loads(encoded.docs_json[at:until])
    assert doc_line(head, (text[: at - start], text[until - start :])) == text + b"\n"


@pytest.mark.parametrize(
    ("why", "doc"),
    [
        ("no process", {"auditd": {"records": [RECORD]}}),
        ("process not an object", audit_doc(process=[1, 2])),
        ("a container already", audit_doc(container={"id": "c0"})),
        ("no records", {"process": {"pid": 1}, "auditd": {"result": "success"}}),
        ("empty records", audit_doc(auditd={"records": []})),
    ],
)
def test_docs_that_cannot_be_split_travel_whole(why: str, doc: dict[str, Any]) -> None:
    """A doc the splice could get wrong is not split: the tree keeper decodes it whole."""
    heads = encode_docs([audit_event(1, doc)], with_heads=True).heads
    assert heads is not None and len(heads[0]) == 2
    (got,), _ = with_heads([audit_event(1, doc)])
    assert got["doc"] == doc and list(got["doc"]) == list(doc)
    assert DOC_TEXT not in got


def test_markers_and_msgpack_docs_are_not_split() -> None:
    """Events without raw records, and docs orjson refuses, arrive as they left."""
    marker = {"key": ["", 1, 0, 5], "raw": [], "doc": audit_doc()}
    refused = audit_event(2, audit_doc(bad=b"bytes"))
    got, _ = with_heads([marker, refused, audit_event(3, audit_doc())])
    assert got[0]["doc"] == marker["doc"] and DOC_TEXT not in got[0]
    assert got[1]["doc"] == refused["doc"] and DOC_TEXT not in got[1]
    assert DOC_TEXT in got[2]


def shifted_process(heads: list[Any]) -> list[Any]:
    """The first head's process offsets moved off the value."""
    heads[0][2] -= 1
    return heads


def head_without_process(heads: list[Any]) -> list[Any]:
    """The first head's process (null) replaced by a list."""
    heads[0][4]["process"] = [1]
    return heads


def head_with_process(heads: list[Any]) -> list[Any]:
    """The first head's process given as an object, as the heads once carried it."""
    heads[0][4]["process"] = {"pid": 10}
    return heads


def truncated_process(heads: list[Any]) -> list[Any]:
    """The first head's process text cut short of its closing brace."""
    heads[0][3] -= 1
    return heads


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (lambda heads: b"[[", "does not decode"),
        (lambda heads: b"[]", "0 heads for 2 events"),
        (lambda heads: [heads[0], [2]], "does not fit"),
        (lambda heads: [[1, 99999], None], "no doc at"),
        (lambda heads: [[2, heads[0][1]], None], "no doc at"),
        (lambda heads: [heads[0], {"a": 1}], "does not fit"),
        (shifted_process, "no process value"),
        (head_without_process, "without process's place"),
        (head_with_process, "without process's place"),
        (truncated_process, "does not fit"),
    ],
)
def test_heads_that_do_not_fit_become_transport_error_markers(broken: Any, message: str) -> None:
    """A broken heads_json: DocsError, then a counted transport-error marker per event."""
    events = [audit_event(1, audit_doc()), audit_event(2, audit_doc())]
    body: Event = wire.pack_events_body(events, {}).unpacked()
    heads = broken(orjson.loads(body[wire.HEADS_JSON]))
    body[wire.HEADS_JSON] = heads if isinstance(heads, bytes) else orjson.dumps(heads)
    with pytest.raises(wire.DocsError, match=message):
        wire.events_with_heads(dict(body, events=[dict(e) for e in body["events"]]))
    errors = TransportErrors()
    got = frames_events(wire.Frame(wire.EVENTS, 0, 0, body), errors, doc_text=True)
    assert errors.frames == 1
    assert [e["doc"]["event"]["action"] for e in got] == ["transport-error"] * 2
    assert all(DOC_TEXT not in e for e in got)


def test_every_sink_takes_heads_kafka_not_ancestry_text() -> None:
    """jsonl, file and kafka sinks take heads; with a kafka sink ancestry entries stay dicts."""
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": "/tmp/x.jsonl"}, {"type": "file", "path": "/tmp/x"}]
    assert sinks_take_doc_text(cfg.sinks) and sinks_take_ancestry_text(cfg.sinks)
    cfg.sinks = [*cfg.sinks, {"type": "kafka", "brokers": "localhost:9092", "topic": "t"}]
    assert sinks_take_doc_text(cfg.sinks) and not sinks_take_ancestry_text(cfg.sinks)


def tree_keeper_jsonl(bodies: list[Event], path: Path, *, doc_text: bool, shards: int) -> bytes:
    """Dedupe, tree and jsonl sink over the frames, as the tree keeper runs them."""
    cfg = Config()
    cfg.receiver.source = "file"
    cfg.assembler.instances = shards
    dedupe = Dedupe(65_536)
    step = TreeStep(cfg)
    sink = JsonlSink("out", FileOutputConfig(str(path)))
    errors = TransportErrors()
    for sender, body in enumerate(bodies):
        frame = wire.Frame(wire.EVENTS, sender % shards, 0, body)
        events = dedupe.filter(frames_events(frame, errors, doc_text=doc_text))
        sink.write_batch(step.process(events, sender % shards))
    for source in range(shards):
        sink.write_batch(step.source_done(source))
    sink.write_batch(step.close())
    sink.close()
    assert errors.frames == 0
    return path.read_bytes()


def logs_to_compare(tmp_path: Path) -> list[Path]:
    """A generated exec-heavy log and the container corpus logs."""
    log = tmp_path / "audit.log"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "6000", "--out", str(log)],
        check=True,
    )
    logs = [log]
    for corpus_log in CONTAINER_LOGS:  # without their comment lines
        lines = corpus_log.read_bytes().splitlines(keepends=True)
        logs.append(tmp_path / corpus_log.name)
        logs[-1].write_bytes(b"".join(ln for ln in lines if not ln.startswith(b"#")))
    return logs


@pytest.mark.parametrize("shards", [1, 2])
def test_heads_give_the_bytes_of_whole_docs(tmp_path: Path, shards: int) -> None:
    """The exec-heavy log and the container logs: same jsonl bytes from heads as from
    msgpack docs, with container fields added to split docs."""
    assert CONTAINER_LOGS, "tests/corpus/containers has no logs"
    for log in logs_to_compare(tmp_path):
        frames = sharded_frames(log, shards)
        old = tree_keeper_jsonl(
            [old_frame(f, {}) for f in frames], tmp_path / "old", doc_text=False, shards=shards
        )
        new_bodies = [wire.pack_events_body(f, {}).unpacked() for f in frames]
        split = sum(1 for b in new_bodies for h in orjson.loads(b[wire.HEADS_JSON]) if len(h) == 5)
        assert split > 0.5 * sum(len(f) for f in frames), f"{log.name}: few docs split"
        new = tree_keeper_jsonl(new_bodies, tmp_path / "new", doc_text=True, shards=shards)
        assert new == old, log.name
        if log.name != "audit.log":  # a container log
            assert b'"container":{"id":' in new


def test_an_assembler_feeding_a_kafka_tree_keeper_sends_no_heads() -> None:
    """With heads=False (a Kafka sink: the tree keeper decodes whole docs) the frame has no heads_json, and reads the same."""
    events = [
        {"key": ["", 1, 2, 3], "raw": [[1300, b"audit(1.002:3): x=1", ""]],
         "doc": {"@timestamp": "t", "process": {"pid": 1}, "auditd": {"records": ["r"]}}},
    ]  # fmt: skip
    with_heads = wire.pack_events_body([dict(e) for e in events], {}).unpacked()
    without = wire.pack_events_body([dict(e) for e in events], {}, heads=False).unpacked()
    assert wire.HEADS_JSON in with_heads
    assert wire.HEADS_JSON not in without
    assert wire.events_of(without) == wire.events_of(with_heads)


def test_record_hashes_travel_as_hex_text_and_come_back_whole() -> None:
    """hash() values of both signs and the int64 extremes make 16 hex digits each and read back the same; text that is not such digits reads as None, the empty text as no hashes."""
    hashes = [0, 1, -1, 2**63 - 1, -(2**63), hash("type=EOE msg=audit(1.2:3): ")]
    text = hashes_text(hashes)
    assert len(text) == 16 * len(hashes) and text == text.lower()
    assert hashes_of_text(text) == hashes
    assert hashes_of_text("") == []
    for bad in ("x", text[:-1], text.upper(), "g" * 16, "é" * 16, " " * 16, "+" + "0" * 15):
        assert hashes_of_text(bad) is None, bad
