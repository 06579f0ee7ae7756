"""Events frames carry their docs as one JSON text; the tree keeper must see the same events.

``auditstream.wire.pack_events_body`` (assembler) and ``wire.events_of`` (tree keeper):
docs travel as one JSON list, a doc orjson refuses stays in the msgpack part of its
event, and everything after the hop (dedupe, tree, sinks) sees exactly what the old
all-msgpack frame gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
from generated_logs import write_generated_log

from assembler.events import lost_event, parse_error_event
from assembler.reassembler import LostRange
from assembler.stage import Assembly
from auditstream import wire
from auditstream.config import Config
from auditstream.logline import split_log_line
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from treekeeper.dedupe import Dedupe
from treekeeper.pipeline import TreeStep
from treekeeper.stage import TransportErrors, frames_events

Event = dict[str, Any]


def nested(depth: int) -> dict[str, Any]:
    """A dict ``depth`` levels deep."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def json_encodable(doc: Any) -> bool:
    """Whether orjson encodes ``doc`` (its depth limit differs between versions)."""
    try:
        orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return False
    return True


def event(serial: int, doc: Any) -> Event:
    """An event as the assembler ships it, with ``doc`` as given."""
    return {"key": ["", 1700000000, 1, serial], "raw": [[1300, b"x\xff", ""]], "doc": doc}


def old_frame(events: list[Event], fields: dict[str, Any]) -> Event:
    """The events body as it travelled before the JSON transport, unpacked."""
    body: Event = wire.unpack_body(wire.pack_body({"events": events, **fields}))
    return body


def new_frame(events: list[Event], fields: dict[str, Any]) -> tuple[Event, wire.PackedEvents]:
    """The events body with JSON docs, unpacked as the tree keeper's inlet does."""
    packed = wire.pack_events_body(events, fields)
    body: Event = packed.unpacked()
    return body, packed


HOSTILE_DOCS: list[tuple[str, Any]] = [
    ("bytes", {"raw": b"bytes are not JSON"}),
    ("lone surrogate", {"bad": "\ud800 lone surrogate"}),
    ("int beyond 64 bits", {"huge": 2**70}),
    ("non-str key", {"event": {1: "one"}}),
    ("too deep", nested(300)),
    ("a list, not an object", ["not", "an", "object"]),
    ("None", None),
]
# Neither orjson nor msgpack can hold these: they arrive as bytes naming them (not JSON).
OPAQUE_DOCS: list[tuple[str, Any]] = [
    ("an object", {"obj": object()}),
    ("deeper than msgpack unpacks in a frame", nested(1022)),
]


def test_docs_round_trip_in_one_json_text() -> None:
    """Docs of every JSON type come back equal, in key order, and travel as one JSON list."""
    docs: list[dict[str, Any]] = [
        {"@timestamp": "2017-03-31T21:29:12.404Z", "n": 2**64 - 1, "neg": -(2**63), "f": 0.1},
        {"s": "nul\x00 line\n \u2028 é 😀", "l": [1, [2, {"x": None}]], "t": True, "e": {}},
        {"z": 1, "a": 2, "m": 3},  # insertion order, not sorted
    ]
    events = [event(n, doc) for n, doc in enumerate(docs)]
    events[1]["recv_ns"] = 123
    body, packed = new_frame(events, {"epoch": 7, "durable_below": 3})
    assert packed.msgpack_docs == 0 and packed.first_error == ""
    assert orjson.loads(body[wire.DOCS_JSON]) == docs
    assert all(e["doc"] is None for e in body["events"])  # no doc twice on the wire
    got = wire.events_of(body)
    assert got == events
    assert [list(e) for e in got] == [list(e) for e in events]
    assert [list(e["doc"]) for e in got] == [list(d) for d in docs]  # key order kept
    assert (body["epoch"], body["durable_below"]) == (7, 3)
    assert all(e["doc"] is d for e, d in zip(events, docs, strict=True)), "input left unchanged"


def test_hostile_docs_fall_back_per_event() -> None:
    """Each doc orjson refuses stays in msgpack, its neighbours go as JSON, nothing is lost."""
    events = [event(0, {"good": 0})]
    for n, (_, doc) in enumerate(HOSTILE_DOCS, start=1):
        events.append(event(n, doc))
        events.append(event(100 + n, {"good": n}))
    events.append({"key": ["", 1, 0, 999], "raw": []})  # no doc at all
    body, packed = new_frame(events, {})
    assert packed.msgpack_docs == len(HOSTILE_DOCS) + 1
    assert "bytes" in packed.first_error  # the first refusal names what orjson refused
    json_docs = orjson.loads(body[wire.DOCS_JSON])
    assert [d is not None for d in json_docs] == [
        isinstance(e.get("doc"), dict) and "good" in e["doc"] for e in events
    ]
    got = wire.events_of(body)
    assert got == events  # lone surrogates and 2**70 too, which plain msgpack refuses
    assert "doc" not in got[-1]
    with pytest.raises(UnicodeEncodeError):
        wire.pack_body({"events": events})  # the old frame broke on them


def test_docs_no_encoder_holds_arrive_as_bytes_naming_them() -> None:
    """An object and a doc too deep for msgpack: the event arrives, its doc as bytes (not JSON)."""
    events = [event(n, doc) for n, (_, doc) in enumerate(OPAQUE_DOCS)] + [event(9, {"ok": 1})]
    body, packed = new_frame(events, {})
    assert packed.msgpack_docs == len(OPAQUE_DOCS)
    got = wire.events_of(body)
    assert got[0]["doc"]["obj"].startswith(b"<object object at ")
    assert got[1]["doc"] == b"doc not transportable: StackError: nested too deep"
    assert got[2] == events[2]
    assert [e["key"] for e in got] == [e["key"] for e in events]


def test_doc_at_orjson_depth_limit_still_travels_as_json() -> None:
    """A doc exactly as deep as orjson allows fails only inside the list: it still goes as JSON."""
    deepest = next(doc for doc in map(nested, range(300, 0, -1)) if json_encodable(doc))
    assert json_encodable(deepest) and not json_encodable({"a": deepest})  # at orjson's limit
    events = [event(1, deepest), event(2, {"ok": True})]
    body, packed = new_frame(events, {})
    assert packed.msgpack_docs == 0
    assert wire.events_of(body) == old_frame(events, {})["events"]


def test_empty_batch_carries_only_the_watermark() -> None:
    """A watermark-only frame (no events) packs and unpacks to an empty list."""
    body, packed = new_frame([], {"epoch": 1, "durable_below": 9, "token": 5})
    assert packed.msgpack_docs == 0
    assert wire.events_of(body) == []
    assert body["durable_below"] == 9


def test_markers_travel_unchanged() -> None:
    """Serial-gap and parse-error markers (raw bytes, raw == []) come back as they left."""
    markers = [
        lost_event(LostRange("node1", 10, 19, 10)),
        parse_error_event(0, b"garbage \xff\x00 line", "", "not an audit record line"),
        parse_error_event(1300, b"audit(bad", "n", "bad header"),
    ]
    body, packed = new_frame(markers, {})
    assert packed.msgpack_docs == 0
    assert wire.events_of(body) == old_frame(markers, {})["events"]


def test_body_without_docs_json_passes_as_it_is() -> None:
    """A frame of an assembler that still sends docs in msgpack is taken unchanged."""
    events = [event(1, {"a": 1})]
    body = old_frame(events, {})
    assert wire.events_of(body) == events


@pytest.mark.parametrize(
    ("docs_json", "message"),
    [
        (b"[{", "does not decode"),
        (b'{"a": 1}', "holds dict"),
        (b"[{}, {}, {}]", "holds 3 docs for 2 events"),
        (123, "does not decode"),
    ],
)
def test_undecodable_docs_become_transport_error_markers(docs_json: Any, message: str) -> None:
    """Broken docs_json: a counted transport-error marker per doc-less event, raw kept."""
    events = [event(1, {"a": 1}), event(2, {"b": 2})]
    body, _ = new_frame(events, {})
    body[wire.DOCS_JSON] = docs_json
    with pytest.raises(wire.DocsError, match=message):
        wire.events_of(dict(body, events=[dict(e) for e in body["events"]]))
    errors = TransportErrors()
    frame = wire.Frame(wire.EVENTS, 0, 0, body)
    got = frames_events(frame, errors)
    assert errors.frames == 1
    assert [e["doc"]["event"]["action"] for e in got] == ["transport-error"] * 2
    assert [e["doc"]["auditstream"]["marker"]["key"] for e in got] == [e["key"] for e in events]
    assert [e["raw"] for e in got] == [e["raw"] for e in events]


def jsonl_lines(events: list[Event], path: Path) -> list[bytes]:
    """What the jsonl sink writes for these events; wall-clock marker stamps blanked."""
    sink = JsonlSink("out", FileOutputConfig(str(path)))
    sink.write_batch(events)
    sink.close()
    lines = []
    for line in path.read_bytes().splitlines():
        doc = orjson.loads(line)
        if doc.get("tags") == ["auditstream-marker"]:
            doc["@timestamp"] = "-"  # encode-error markers are stamped when written
            line = orjson.dumps(doc)
        lines.append(line)
    return lines


def test_hostile_frame_through_zeromq_and_jsonl_sink(tmp_path: Path) -> None:
    """A real frame over ZeroMQ: the sink writes the lines and encode-error markers it writes
    for the same events handed over in-process."""
    events = [event(0, {"message": "fine"})]
    for n, (_, doc) in enumerate(HOSTILE_DOCS, start=1):
        events += [event(n, doc), event(100 + n, {"message": f"fine {n}"})]
    events.append({"key": ["", 1, 0, 999], "raw": []})  # no doc at all
    events.append(event(1000, {"nan": float("nan"), "inf": float("inf")}))  # JSON: null
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    endpoint = f"ipc://{tmp_path}/tk.sock"
    inlet = wire.Inlet(ctx, endpoint)
    outlet = wire.Outlet(ctx, endpoint, sender=3)
    try:
        packed = wire.pack_events_body(events, {"epoch": 1})
        assert outlet.send_packed(wire.EVENTS, packed.body, tail=packed.docs_json)
        frame = inlet.recv(5000)
    finally:
        outlet.close(0)
        inlet.close()
        ctx.term()
    assert frame is not None and frame.sender == 3 and frame.body["epoch"] == 1
    errors = TransportErrors()
    got = frames_events(frame, errors)
    assert errors.frames == 0
    lines = jsonl_lines(got, tmp_path / "new.jsonl")
    assert lines == jsonl_lines(events, tmp_path / "in-process.jsonl")
    assert len(lines) == len(events)
    markers = [orjson.loads(line)["auditstream"]["marker"] for line in lines if b"encode-" in line]
    assert len(markers) == len(HOSTILE_DOCS) + 1
    assert [m["key"][3] for m in markers] == [*range(1, len(HOSTILE_DOCS) + 1), 999]
    assert "surrogates not allowed" in markers[1]["error"]


def sharded_frames(
    log: Path, shards: int, sinks: list[dict[str, Any]] | None = None
) -> list[list[Event]]:
    """The events batches two sharded assemblers ship for ``log``, interleaved in a fixed order."""
    cfg = Config()
    cfg.receiver.source = "file"
    cfg.assembler.instances = shards
    cfg.sinks = sinks or []
    records: list[list[list[Any]]] = [[] for _ in range(shards)]
    for line in log.read_bytes().splitlines():
        type_, data, node = split_log_line(line)
        serial = int(data[data.index(b":") + 1 : data.index(b")")])
        records[serial % shards].append([type_, data, node])
    per_shard: list[list[list[Event]]] = []
    for index in range(shards):
        assembly = Assembly(cfg, event_time=True, index=index)
        batches = []
        recs = records[index]
        for start in range(0, len(recs), 512):
            assembly.push_batch(recs[start : start + 512])
            assembly.maintain()
            batches.append(assembly.out)
            assembly.out = []
        assembly.close()
        batches.append(assembly.out)
        per_shard.append(batches)
    frames = []
    for round_ in range(max(len(b) for b in per_shard)):
        frames += [batches[round_] for batches in per_shard if round_ < len(batches)]
    return frames


def tree_keeper_output(bodies: list[Event], tmp_path: Path, name: str) -> bytes:
    """Dedupe, tree and jsonl sink over the frames' events, as the tree keeper runs them."""
    cfg = Config()
    cfg.receiver.source = "file"
    dedupe = Dedupe(65_536)
    step = TreeStep(cfg)
    sink = JsonlSink(name, FileOutputConfig(str(tmp_path / name)))
    errors = TransportErrors()
    for body in bodies:
        events = dedupe.filter(frames_events(wire.Frame(wire.EVENTS, 0, 0, body), errors))
        sink.write_batch(step.process(events))
    sink.write_batch(step.close())
    sink.close()
    assert errors.frames == 0
    return (tmp_path / name).read_bytes()


def test_tree_keeper_writes_the_same_bytes_as_with_msgpack_docs(tmp_path: Path) -> None:
    """A generated exec-heavy log over two assemblers: identical jsonl output either way."""
    log = write_generated_log(tmp_path / "audit.log", 6000)
    frames = sharded_frames(log, 2)
    assert sum(len(f) for f in frames) == log.read_bytes().count(b"type=EOE ")
    old_bodies = [old_frame(f, {}) for f in frames]
    new_bodies = []
    for f in frames:
        body, packed = new_frame(f, {})
        assert packed.msgpack_docs == 0
        new_bodies.append(body)
    old = tree_keeper_output(old_bodies, tmp_path, "old.jsonl")
    new = tree_keeper_output(new_bodies, tmp_path, "new.jsonl")
    assert old.count(b"\n") > sum(len(f) for f in frames)  # with the tree's lifecycle events
    assert new == old


def test_events_carry_their_raw_records_only_for_a_file_sink(tmp_path: Path) -> None:
    """Without a file sink events travel with their record count in place of the records; the jsonl output is the same bytes."""
    log = write_generated_log(tmp_path / "audit.log", 3000)
    counted = sharded_frames(log, 2)
    with_file = sharded_frames(log, 2, [{"type": "file", "path": str(tmp_path / "copy.log")}])
    counted_events = [e for f in counted for e in f]
    listed_events = [e for f in with_file for e in f]
    assert [e["key"] for e in counted_events] == [e["key"] for e in listed_events]
    for slim, full in zip(counted_events, listed_events, strict=True):
        assert type(full["raw"]) is list
        assert slim["raw"] == len(full["raw"]) > 0
    bodies = {name: [new_frame(f, {})[0] for f in frames] for name, frames in (
        ("counted", counted), ("listed", with_file))}  # fmt: skip
    counted_out = tree_keeper_output(bodies["counted"], tmp_path, "counted.jsonl")
    assert counted_out == tree_keeper_output(bodies["listed"], tmp_path, "listed.jsonl")


def test_peer_watch_counts_real_joins_and_leaves(tmp_path: Path) -> None:
    """PeerWatch reads ZeroMQ's own monitor messages: a peer that binds, goes and binds again
    is two joins and one leave on the connecting socket."""
    import time

    ctx = zmq.Context()
    address = f"ipc://{tmp_path / 'peer.sock'}"
    push = ctx.socket(zmq.PUSH)
    push.connect(address)
    watch = wire.PeerWatch(push)

    def settle(until: Any) -> None:
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.01)

    try:
        for round_ in range(2):
            pull = ctx.socket(zmq.PULL)
            pull.bind(address)
            settle(lambda: watch.connected)
            assert watch.connected and watch.joins == round_ + 1
            pull.close(linger=0)
            if round_ == 0:
                settle(lambda: not watch.connected)
                assert watch.leaves == 1 and not watch.connected
    finally:
        watch.close()
        ctx.destroy(linger=0)  # closes a PULL an assertion left open, too
