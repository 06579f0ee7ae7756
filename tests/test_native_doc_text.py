"""The C encode_docs (auditstream/csrc/doc_text.c) gives doc_text.encode_docs's result,
and the C place_heads places heads as wire.events_with_heads's Python loop does.

The reference is the Python function: hand-made events at the edges (refusals, docs
orjson refuses, nested look-alike ``process`` keys, a Fragment holding the mark's byte),
hypothesis-made docs, and every doc of a generated log go through both; docs_json, the
heads (as JSON), the slim events and the refusals must be equal, and the docs unchanged.
place_heads must give the events of a generated log what the Python loop gives them, and
decline, changing nothing, every entry the Python loop refuses or that is not of its shape.
encode_lines must write JsonlSink._encode's lines and stop before any event it leaves to
it; the jsonl sink must write the same files and counts with and without it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from generated_logs import write_generated_log
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib
from test_doc_text import RECORD, audit_doc, audit_event

from assembler.stage import Assembly
from auditstream import wire
from auditstream.config import Config
from auditstream.doc_text import DOC_TEXT, EncodedDocs, bind_native_encode, encode_docs
from auditstream.logline import split_log_line
from sinks import jsonl
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from treekeeper.pipeline import TreeStep

REPO = Path(__file__).resolve().parents[1]
Event = dict[str, Any]


def c_encode() -> Callable[[list[Event], bool], EncodedDocs]:
    """The C function with orjson's callables bound; skipped when not built."""
    return bind_native_encode(native_module("auditstream.native_doc_text").encode_docs)


def comparable(encoded: EncodedDocs) -> tuple[Any, ...]:
    """What must be equal: heads compared as the JSON they are sent as."""
    heads = None if encoded.heads is None else orjson.dumps(encoded.heads)
    return encoded.docs_json, heads, encoded.slim, encoded.refused


def assert_same(events: list[Event]) -> EncodedDocs:
    """C and Python encode the events the same way, with and without heads, and leave them as
    they were; the C result with heads."""
    before = repr(events)  # values and key order (a Fragment cannot be deep-copied)
    results = []
    for with_heads in (True, False):
        python = encode_docs(events, with_heads)
        results.append(c_encode()(events, with_heads))
        assert comparable(results[-1]) == comparable(python)
        assert repr(events) == before
    return results[0]


def test_hand_made_events_encode_the_same() -> None:
    """First and last key, refusals, docs orjson refuses, look-alike keys and strings."""
    nested = {"a": {"process": {"pid": 10}}, **audit_doc()}
    nested["process"] = {"pid": 10}
    docs: list[Any] = [
        audit_doc(),
        {"process": {"pid": 1}, "auditd": {"records": [RECORD]}},
        {"auditd": {"records": [RECORD]}, "process": {"pid": 1}},
        {"auditd": {"records": [RECORD], "data": "not a dict"}, "process": {}, "x": 1},
        {"auditd": {"records": [RECORD]}},
        audit_doc(process=[1, 2]),
        audit_doc(container={"id": "c0"}),
        {"process": {"pid": 1}, "auditd": {"result": "success"}},
        audit_doc(auditd={"records": []}),
        nested,
        audit_doc(note='"process":{"pid":10}', process={"title": '\\"process\\":{}}"', "pid": 3}),
        audit_doc(process={"args": ["}", "{", "]", "\\", '"', "\x00"]}),
        audit_doc(mark=orjson.Fragment(b'"\x00"')),  # the mark's byte in the doc's own text
        audit_doc(process={"bad": "\ud800"}),  # orjson refuses process
        audit_doc(bad="\ud800"),  # ... or the rest of the doc
        audit_doc(process={"huge": 2**70}),
        ["not", "a", "dict"],
        None,
    ]
    events = [audit_event(n, doc) for n, doc in enumerate(docs)]
    events.append({"key": ["", 1, 2, 3], "raw": 0, "doc": audit_doc()})  # a marker: not split
    events.append({"key": ["", 1, 2, 4], "raw": 1})  # no doc at all
    native = assert_same(events)
    assert native.heads is not None
    assert sum(1 for head in native.heads if head is not None and len(head) == 5) == 7
    assert set(native.refused) == {13, 14, 15, 16, 17, 19}
    assert assert_same([]).docs_json == b"[]"


_KEYISH = st.sampled_from(["process", "auditd", "records", "container", "a", "@timestamp", "data"])
_TEXTISH = st.lists(
    st.sampled_from(
        ['"process":', "process", '"', "\\", "{", "}", "[", "]", ":", "\x00", "é", "x"]
    ),
    max_size=6,
).map("".join)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), _TEXTISH),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_KEYISH, children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=1000, deadline=None)
@given(
    process=st.dictionaries(_KEYISH, _JSON, max_size=3),
    extra=st.dictionaries(
        _KEYISH.filter(lambda k: k not in ("process", "auditd")), _JSON, max_size=3
    ),
    records=st.lists(_TEXTISH, max_size=2),
    process_last=st.booleans(),
    raw=st.sampled_from([0, 1, [], [[1300, b"x", ""]]]),
)
def test_any_doc_encodes_the_same(
    process: dict[str, Any], extra: dict[str, Any], records: list[str], process_last: bool, raw: Any
) -> None:
    """Docs with look-alike keys and strings, at any position, encode the same in C and Python."""
    doc: dict[str, Any] = {"auditd": {"result": "success", "records": records}, **extra}
    doc = {**doc, "process": process} if process_last else {"process": process, **doc}
    event = {"key": ["", 1, 2, 3], "raw": raw, "doc": doc}
    assert_same([event, audit_event(4, audit_doc()), dict(event)])


def test_generated_log_docs_encode_the_same(tmp_path: Path) -> None:
    """Every event the assembler makes of a generated log encodes the same in C and Python."""
    native = assert_same(generated_events(tmp_path, 3000))
    assert native.heads is not None
    assert sum(1 for head in native.heads if head is not None and len(head) == 5) > 500


def test_many_calls_do_not_leak() -> None:
    """200k events (split, whole, refused by shape and by orjson) keep RSS within 20 MB."""
    events = [
        audit_event(1, audit_doc()),
        audit_event(2, audit_doc(container={})),
        audit_event(3, audit_doc(process={"bad": "\ud800"})),
        audit_event(4, audit_doc(bad="\ud800")),
        audit_event(5, None),
    ]
    encode = c_encode()
    for _ in range(1000):
        encode(events, True)
    before = rss_kib()
    for _ in range(40_000):
        encode(events, True)
        encode(events, False)
    assert rss_kib() - before < 20 * 1024


def generated_events(tmp_path: Path, lines: int) -> list[Event]:
    """The events the assembler makes of a generated log."""
    log = write_generated_log(tmp_path / "gen.log", lines)
    assembly = Assembly(Config(), event_time=True)
    assembly.push_batch([list(split_log_line(line)) for line in log.read_bytes().splitlines()])
    assembly.close()
    return assembly.out


def placed_by(body: Event, native: bool, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """wire.events_with_heads of a copy of ``body``, with C's placing or the Python loop."""
    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(wire, "_NATIVE_PLACE", None)
        return wire.events_with_heads(dict(body, events=[dict(e) for e in body["events"]]))


def test_the_c_module_writes_the_event_key_the_tree_keeper_reads() -> None:
    """The doc_text key compiled into the C module is auditstream.doc_text's."""
    assert native_module("auditstream.native_doc_text").DOC_TEXT == DOC_TEXT


def test_generated_log_heads_place_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event of a generated log gets the same head and text from C as from Python."""
    native_module("auditstream.native_doc_text")
    events = generated_events(tmp_path, 3000)
    calls: list[bool] = []
    place = wire._NATIVE_PLACE
    assert place is not None
    monkeypatch.setattr(
        wire, "_NATIVE_PLACE", lambda *args: calls.append(place(*args)) or calls[-1]
    )
    split = 0
    for start in range(0, len(events), 200):
        body = wire.pack_events_body(events[start : start + 200], {}).unpacked()
        ours = placed_by(body, True, monkeypatch)
        reference = placed_by(body, False, monkeypatch)
        assert ours == reference
        split += sum(DOC_TEXT in event for event in ours)
    assert split > 500
    assert calls and all(calls)  # C placed every frame: none was left to Python


def two_event_body() -> Event:
    """An events body of two split audit docs, as a tree keeper receives it."""
    events = [audit_event(1, audit_doc()), audit_event(2, audit_doc())]
    body: Event = wire.pack_events_body(events, {}).unpacked()
    return body


def broken_heads(change: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``change`` applied to the first head; the heads returned."""

    def broken(heads: list[Any]) -> Any:
        change(heads[0])
        return heads

    return broken


def _set(index: int, value: Any) -> Callable[[list[Any]], Any]:
    return lambda head: head.__setitem__(index, value)


@pytest.mark.parametrize(
    "broken",
    [
        broken_heads(lambda head: head.pop()),  # [start, end, at, until]
        broken_heads(lambda head: head.append(1)),
        broken_heads(lambda head: head.__delitem__(slice(2, None))),  # a whole doc: Python's
        broken_heads(_set(0, 0)),
        broken_heads(_set(0, -5)),
        broken_heads(_set(1, 1 << 70)),
        broken_heads(_set(1, 99_999)),
        broken_heads(_set(0, True)),  # bool and float: Python's comparisons decide
        broken_heads(_set(3, 2.5)),
        broken_heads(lambda head: head.__setitem__(2, head[2] - 1)),  # off the value
        broken_heads(lambda head: head.__setitem__(3, head[2] - 1)),  # until before at
        broken_heads(lambda head: head.__setitem__(2, head[0] + 3)),  # no "process": before
        broken_heads(_set(4, None)),
        broken_heads(_set(4, [1])),
        broken_heads(lambda head: head[4].__setitem__("process", "x")),
        broken_heads(lambda head: head[4].pop("process")),
        broken_heads(lambda head: head[4].__setitem__("process", {"pid": 10})),  # the old form
        broken_heads(lambda head: head.__setitem__(3, head[3] - 1)),  # process text cut short
        lambda heads: heads[:1],  # fewer heads than events
        lambda heads: [heads[0], {"a": 1}],
        lambda heads: [heads[0], 7],
    ],
)
def test_place_heads_declines_and_changes_nothing(broken: Callable[[list[Any]], Any]) -> None:
    """An entry Python refuses, or of another shape: False, and no event changed."""
    place = native_module("auditstream.native_doc_text").place_heads
    body = two_event_body()
    heads = broken(orjson.loads(body[wire.HEADS_JSON]))
    events = [dict(e) for e in body["events"]]
    before = [dict(e) for e in events]
    assert place(events, heads, body[wire.DOCS_JSON], orjson.loads) is False
    assert events == before


def test_place_heads_leaves_null_entries_and_declines_odd_events() -> None:
    """A null entry (a doc sent whole) is skipped; a non-dict event makes it decline."""
    place = native_module("auditstream.native_doc_text").place_heads
    body = two_event_body()
    heads = orjson.loads(body[wire.HEADS_JSON])
    events = [dict(e) for e in body["events"]]
    assert place(events, [heads[0], None], body[wire.DOCS_JSON], orjson.loads) is True
    assert DOC_TEXT in events[0] and DOC_TEXT not in events[1]
    assert events[0]["doc"] is not None and events[0]["doc"]["process"]
    assert place([events[0], ["x"]], heads, body[wire.DOCS_JSON], orjson.loads) is False
    with pytest.raises(TypeError):
        place(events, heads, bytearray(body[wire.DOCS_JSON]), orjson.loads)


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        (b'[{"process":12,"x":1}]', "is not an object"),
        (b'[{"process":[{}],"x":1}]', "is not an object"),
        (b'[{"process":{"a":},"x":1}]', "does not fit"),
    ],
)
def test_a_process_text_that_is_no_object_is_left_to_python(docs: bytes, message: str) -> None:
    """A head whose process text is no JSON object: C declines, Python says why."""
    place = native_module("auditstream.native_doc_text").place_heads
    body = two_event_body()
    head = orjson.loads(body[wire.HEADS_JSON])[0][4]
    entry = [1, len(docs) - 1, 12, docs.index(b',"x"'), head]
    events = [dict(body["events"][0])]
    known = [dict(body["events"][1])]  # one whose process is decoded with it
    second = orjson.loads(body[wire.HEADS_JSON])[1]
    heads = [entry, [at + len(docs) for at in second[:4]] + second[4:]]
    assert place(known, heads[1:], docs + body[wire.DOCS_JSON], orjson.loads) is True
    known = [dict(body["events"][1])]
    heads[1][4]["process"] = None
    assert place(events + known, heads, docs + body[wire.DOCS_JSON], orjson.loads) is False
    assert DOC_TEXT not in events[0] and DOC_TEXT not in known[0]
    bad = dict(body, events=events, docs_json=docs)
    bad[wire.HEADS_JSON] = orjson.dumps([entry])
    with pytest.raises(wire.DocsError, match=message):
        wire.events_with_heads(bad)


def test_events_of_one_process_get_copies_of_their_own() -> None:
    """Events whose process text repeats (copies of the first one's dict in C) each get
    their own dicts and lists: what the tree keeper adds to one is in no other, nor in a
    later one."""
    place = native_module("auditstream.native_doc_text").place_heads
    process = {"pid": 10, "parent": {"pid": 1}, "args": ["sh", "-c"], "x": [{"y": 1}]}
    events = [audit_event(serial, audit_doc(process=process)) for serial in range(1, 4)]
    body: Event = wire.pack_events_body(events, {}).unpacked()

    def placed() -> list[Event]:
        got = [dict(e) for e in body["events"]]
        assert place(got, orjson.loads(body[wire.HEADS_JSON]), body[wire.DOCS_JSON], orjson.loads)
        return got

    first = placed()
    docs = [event["doc"]["process"] for event in first]
    assert docs == [process] * 3
    for one, other in ((0, 1), (1, 2), (0, 2)):
        assert docs[one] is not docs[other]
        assert docs[one]["parent"] is not docs[other]["parent"]
        assert docs[one]["args"] is not docs[other]["args"]
    for index in range(3):  # what enrichment does, and more, to each in turn
        docs[index]["entity_id"] = "e"
        docs[index]["parent"]["entity_id"] = "p"
        docs[index]["args"].append("x")
        docs[index]["x"][0]["z"] = 2
        assert docs[index + 1 :] == [process] * (2 - index)
    assert [event["doc"]["process"] for event in placed()] == [process] * 3


def test_processes_in_runs_and_alone_place_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes whose events come in runs, alone, interleaved and seen again later: every
    event gets what the Python loop gives it."""
    pids = [n // 7 for n in range(1500)] + [n % 5 for n in range(1500)] + list(range(1500))
    events = [
        audit_event(n, audit_doc(process={"pid": pid, "title": f"t{pid}", "args": [pid]}))
        for n, pid in enumerate(pids)
    ]
    for start in range(0, len(events), 300):
        body = wire.pack_events_body(events[start : start + 300], {}).unpacked()
        ours = placed_by(body, True, monkeypatch)
        assert ours == placed_by(body, False, monkeypatch)
        assert all(DOC_TEXT in event for event in ours)


def test_placing_many_frames_does_not_leak() -> None:
    """100k placements (and as many declines) keep RSS within 20 MB."""
    place = native_module("auditstream.native_doc_text").place_heads
    body = two_event_body()
    docs = body[wire.DOCS_JSON]
    heads = orjson.loads(body[wire.HEADS_JSON])
    declined = [heads[0], heads[1][:4]]

    def run(times: int) -> None:
        for _ in range(times):
            events = [dict(e) for e in body["events"]]
            assert place(events, orjson.loads(body[wire.HEADS_JSON]), docs, orjson.loads)
            assert not place([dict(e) for e in body["events"]], declined, docs, orjson.loads)

    run(2_000)
    before = rss_kib()
    run(50_000)
    assert rss_kib() - before < 20 * 1024


def python_lines(events: list[Event]) -> list[bytes]:
    """Each event's line as JsonlSink._encode makes it (the reference)."""
    sink = JsonlSink("reference", FileOutputConfig("/dev/null"))
    return [sink._encode(event)[0] for event in events]


def c_lines(
    events: list[Event], start: int = 0, most: int = 1 << 40, enough: int = 1 << 40
) -> tuple[bytes, int]:
    """The C encode_lines over ``events[start:]``."""
    encode = native_module("auditstream.native_doc_text").encode_lines
    lines, upto = encode(orjson.dumps, orjson.OPT_APPEND_NEWLINE, events, start, most, enough)
    return lines, upto


def tree_keeper_output(tmp_path: Path) -> list[Event]:
    """What a tree keeper hands its jsonl sink for a generated log: heads with their text
    (some with a container added), whole docs and lifecycle docs."""
    events = generated_events(tmp_path, 3000)
    body = wire.pack_events_body(events, {}).unpacked()
    placed = wire.events_with_heads(body)
    config = Config()
    config.receiver.source = "file"
    step = TreeStep(config)
    out = step.process(placed) + step.close()
    for index, event in enumerate(out[:40]):
        if DOC_TEXT in event and index % 3 == 0:
            event["doc"]["container"] = {"id": f"c{index}", "runtime": "docker"}
    return out


def test_tree_keeper_lines_encode_the_same(tmp_path: Path) -> None:
    """Every line the tree keeper's jsonl sink writes for a generated log is _encode's."""
    events = tree_keeper_output(tmp_path)
    assert sum(DOC_TEXT in e for e in events) > 300 and sum(DOC_TEXT not in e for e in events) > 300
    assert c_lines(events) == (b"".join(python_lines(events)), len(events))


def test_a_shared_process_is_encoded_once_per_run() -> None:
    """Split events that share one `process` dict, as the tree keeper's enrichment gives a
    run of one process (treekeeper/csrc/enrich_memo.h): dumps runs once per run of it, and
    the lines are _encode's."""
    shared, other = {"pid": 7, "args": ["a", "b"]}, {"pid": 8}
    text = (b'{"a":1,"process":', b',"z":2}')
    events: list[Event] = [
        {"key": [], "raw": 1, "doc": {"process": process}, DOC_TEXT: text}
        for process in (shared, shared, shared, other, shared)
    ]
    events[1]["doc"]["container"] = {"id": "c1"}  # the doc's own, after the process
    encoded: list[Any] = []

    def dumps(value: Any, *args: Any, **kwargs: Any) -> bytes:
        encoded.append(value)
        return orjson.dumps(value, *args, **kwargs)

    encode = native_module("auditstream.native_doc_text").encode_lines
    lines, upto = encode(dumps, orjson.OPT_APPEND_NEWLINE, events, 0, 1 << 40, 1 << 40)
    assert (lines, upto) == (b"".join(python_lines(events)), len(events))
    processes = [value for value in encoded if value is not events[1]["doc"]["container"]]
    assert [id(value) for value in processes] == [id(shared), id(other), id(shared)]


def odd_line_events() -> list[tuple[str, Event]]:
    """Events C leaves to _encode: each makes an encode-error marker or needs Python's reading."""
    head = {"process": {"pid": 1}}
    text = (b'{"a":1,"process":', b"}")
    return [
        ("no doc", {"key": [], "raw": []}),
        ("doc not a dict", {"key": [], "raw": [], "doc": [1]}),
        ("a dict subclass", {"key": [], "raw": [], "doc": Counter(a=1)}),
        ("bytes in the doc", {"key": [], "raw": [], "doc": {"a": b"x"}}),
        ("lone surrogate", {"key": [], "raw": [], "doc": {"a": "\ud800"}}),
        ("int beyond 64 bits", {"key": [], "raw": [], "doc": {"a": 1 << 70}}),
        ("text a list", {"key": [], "raw": [], "doc": head, DOC_TEXT: list(text)}),
        ("text of three", {"key": [], "raw": [], "doc": head, DOC_TEXT: (*text, b"")}),
        ("text not bytes", {"key": [], "raw": [], "doc": head, DOC_TEXT: ("a", "b")}),
        ("no process", {"key": [], "raw": [], "doc": {"x": 1}, DOC_TEXT: text}),
        (
            "process refused",
            {"key": [], "raw": [], "doc": {"process": {"a": b"x"}}, DOC_TEXT: text},
        ),
        (
            "container refused",
            {"key": [], "raw": [], "doc": {**head, "container": {"a": b"x"}}, DOC_TEXT: text},
        ),
        (
            "container, empty after",
            {"key": [], "raw": [], "doc": {**head, "container": {}}, DOC_TEXT: (text[0], b"")},
        ),
        ("not a dict", ["an", "event"]),  # type: ignore[list-item]
    ]


@pytest.mark.parametrize(("why", "odd"), odd_line_events(), ids=[w for w, _ in odd_line_events()])
def test_encode_lines_stops_at_what_it_leaves_to_python(
    why: str, odd: Event, tmp_path: Path
) -> None:
    """The lines before an odd event are _encode's, and C stops there, before it."""
    good = [make_event(1), make_event(2)]
    lines, upto = c_lines([*good, odd, make_event(3)])
    assert (lines, upto) == (b"".join(python_lines(good)), 2)
    assert c_lines([odd]) == (b"", 0)


def make_event(serial: int) -> Event:
    """A plain event with a whole doc."""
    return {
        "key": ["", 1, 2, serial],
        "raw": [],
        "doc": {"event": {"sequence": serial}, "message": "m"},
    }


def test_encode_lines_keeps_within_most_and_stops_at_enough() -> None:
    """No line that would pass ``most`` goes in; the line that reaches ``enough`` is the last."""
    events = [make_event(n) for n in range(10)]
    sizes = [len(line) for line in python_lines(events)]
    assert c_lines(events, 3) == (b"".join(python_lines(events[3:])), 10)
    assert c_lines(events, 0, most=sum(sizes[:4]))[1] == 4
    assert c_lines(events, 0, most=sum(sizes[:4]) - 1)[1] == 3
    assert c_lines(events, 0, most=sizes[0] - 1) == (b"", 0)
    assert c_lines(events, 0, most=-5) == (b"", 0)
    assert c_lines(events, 0, enough=sizes[0] + 1)[1] == 2
    assert c_lines(events, 0, enough=1)[1] == 1
    assert c_lines(events, 10) == (b"", 10)


def test_encode_lines_buffer_survives_large_and_nested_calls() -> None:
    """A large call (~10 MiB), then small calls, and a call made from inside another
    (``dumps`` running Python code) each give _encode's lines."""
    encode = native_module("auditstream.native_doc_text").encode_lines
    big = [{**make_event(n), "doc": {"message": "x" * 4096, "n": n}} for n in range(2500)]
    assert c_lines(big) == (b"".join(python_lines(big)), len(big))  # ~10 MiB
    small = [make_event(n) for n in range(5)]
    assert c_lines(small) == (b"".join(python_lines(small)), 5)
    inner_results: list[tuple[bytes, int]] = []

    def nesting_dumps(value: Any, **options: Any) -> bytes:
        # Another encode_lines while the outer one is writing its lines.
        inner_results.append(
            encode(orjson.dumps, orjson.OPT_APPEND_NEWLINE, small, 0, 1 << 40, 1 << 40)
        )
        return orjson.dumps(value, **options)

    lines, upto = encode(nesting_dumps, orjson.OPT_APPEND_NEWLINE, big[:50], 0, 1 << 40, 1 << 40)
    assert (lines, upto) == (b"".join(python_lines(big[:50])), 50)
    assert inner_results == [(b"".join(python_lines(small)), 5)] * 50
    assert c_lines(small) == (b"".join(python_lines(small)), 5)


def test_encode_lines_grows_past_its_first_guess() -> None:
    """A call whose lines outgrow the size the call before suggested (short lines, then
    lines of 64 KiB) and one that stops at ``enough`` after a long call give _encode's lines."""
    short = [make_event(n) for n in range(200)]
    assert c_lines(short) == (b"".join(python_lines(short)), len(short))
    mixed = short[:50] + [
        {**make_event(n), "doc": {"message": "y" * (64 << 10), "n": n}} for n in range(60)
    ]
    assert c_lines(mixed) == (b"".join(python_lines(mixed)), len(mixed))
    sizes = [len(line) for line in python_lines(short)]
    assert c_lines(short, 0, enough=sum(sizes[:3])) == (b"".join(python_lines(short[:3])), 3)


_MARKER_TIME = re.compile(
    rb'"@timestamp":"[^"]*",(?="event":\{"kind":"event","action":"encode-error")'
)


def sink_output(
    tmp_path: Path, name: str, events: list[Event], native: bool, **options: Any
) -> tuple[Any, ...]:
    """Every file a JsonlSink writes of ``events`` (batches of 7) and its counters."""
    path = tmp_path / name / "events.jsonl"
    path.parent.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        if not native:
            patch.setattr(jsonl, "_NATIVE_LINES", None)
        sink = JsonlSink("out", FileOutputConfig(str(path), **options))
        for start in range(0, len(events), 7):
            sink.write_batch(events[start : start + 7])
        sink.close()
    # The markers' @timestamp is the wall clock's.
    files = {p.name: _MARKER_TIME.sub(b"", p.read_bytes()) for p in sorted(path.parent.iterdir())}
    stats = sink.stats
    return files, stats.received_events, stats.sent_events, stats.discarded_events, stats.errors


@pytest.mark.parametrize(
    "options",
    [{}, {"buffer_bytes": 0}, {"buffer_bytes": 3000}, {"max_bytes": 5000, "keep_files": 1000}],
)
def test_jsonl_sink_writes_the_same_with_and_without_c(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """The same files (rotated ones too), the same counts, odd events and all."""
    native_module("auditstream.native_doc_text")
    events = tree_keeper_output(tmp_path)[:400]
    for index, (_, odd) in enumerate(odd_line_events()):
        if isinstance(odd, dict):
            events.insert(index * 25 + 20, odd)  # a run of good lines first (a fresh file)
    ours = sink_output(tmp_path, "c", events, True, **options)
    reference = sink_output(tmp_path, "python", events, False, **options)
    assert ours == reference
    assert reference[4].get("encode", 0) >= 8  # the odd events became marker lines
    if "max_bytes" in options:
        assert len(reference[0]) > 10


def test_encoding_many_lines_does_not_leak() -> None:
    """100k runs over good and odd events keep RSS within 20 MB."""
    events = [make_event(1), *[odd for _, odd in odd_line_events()[4:7]], make_event(2)]
    head = {"key": [], "raw": [], "doc": {"process": {"pid": 1}, "container": {"id": "c"}}}
    events.append({**head, DOC_TEXT: (b'{"process":', b"}")})

    def run(times: int) -> None:
        for _ in range(times):
            for start in range(len(events)):
                c_lines(events, start)

    run(2_000)
    before = rss_kib()
    run(20_000)
    assert rss_kib() - before < 20 * 1024
