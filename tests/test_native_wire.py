"""auditstream.native_wire.pack_written_events (C, auditstream/csrc/wire.c) against
auditstream.wire.pack_events_body's Python path.

For batches whose docs the assembler's C writer wrote, the C function must give the frame
body and docs_json the Python path gives, byte for byte: real batches from the assembler
(the load generator's events, generated RAW and ENRICHED logs, the corpus), with and
without heads, raw records and receive stamps, and random extra values and fields at every
msgpack size boundary (hypothesis). Anything else it must decline (None), and then the
Python path packs the batch as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from generated_logs import write_generated_log
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module
from test_native_event_completer import assembly, batches_of, load_log

from auditstream import wire
from auditstream.doc_text import HASH_PROBE, WrittenDoc

native_wire: Any = native_module("auditstream.native_wire")


def python_packed(
    events: list[dict[str, Any]], fields: dict[str, Any], heads: bool
) -> wire.PackedEvents:
    """pack_events_body with its C step switched off: the reference."""
    saved = wire.PACK_WRITTEN
    wire.PACK_WRITTEN = None
    try:
        return wire.pack_events_body(events, fields, heads=heads)
    finally:
        wire.PACK_WRITTEN = saved


def assert_same(events: list[dict[str, Any]], fields: dict[str, Any], heads: bool) -> bool:
    """C equals the reference, or declines; True when C took the batch."""
    mine = native_wire.pack_written_events(events, fields, heads, HASH_PROBE)
    if mine is None:
        return False
    want = python_packed(events, fields, heads)
    assert want.msgpack_docs == 0
    assert mine == (want.body, want.docs_json)
    return True


def shipped_batches(text: bytes, raw: bool) -> list[list[dict[str, Any]]]:
    """The event batches an assembler with written docs ships for the log."""
    made = assembly(native=True, raw=raw)
    out = []
    for index, batch in enumerate(batches_of(text, 256)):
        made.push_batch(batch, 1_795_473_252_000_000_000 + index if index % 2 else None)
        made.maintain()
        out.append(made.out)
        made.out = []
    made.close()
    return [*out, made.out]


@pytest.mark.parametrize("heads", [True, False], ids=["heads", "no heads"])
@pytest.mark.parametrize("raw", [False, True], ids=["count", "raw records"])
def test_assembler_batches(tmp_path: Path, heads: bool, raw: bool) -> None:
    """The assembler's batches of load events and of generated RAW and ENRICHED logs pack to
    the reference's bytes, with the stage's fields; C takes the batches without markers."""
    logs = [load_log(3000)]
    for enriched in (False, True):
        options = ["--enriched"] if enriched else []
        logs.append(write_generated_log(tmp_path / f"g{enriched}.log", 4000, *options).read_bytes())
    taken = 0
    for text in logs:
        for batch in shipped_batches(text, raw):
            for fields in (
                {},
                {
                    "epoch": 3,
                    "durable_below": 17,
                    "token": "t" * 40,
                    wire.SENT_BELOW: [1795473252000, 99],
                },
            ):
                taken += assert_same(batch, fields, heads)
    assert taken > 20


def test_corpus_batches() -> None:
    """Batches of the corpus inputs (markers, declined events among them): equal, or declined."""
    from test_ecs_golden_docs import _inputs

    for text in _inputs().values():
        for batch in shipped_batches(text, raw=True):
            assert_same(batch, {"epoch": 1}, True)


def written(text: bytes = b'{"a":1,"process":{"pid":1}}') -> WrittenDoc:
    """A WrittenDoc whose process span and head are plausible."""
    at = text.find(b'{"pid"')
    return WrittenDoc(text, at, at + len(b'{"pid":1}'), b'{"process":{"pid":1}}')


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                       -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1])
    | st.text(max_size=40)
    | st.integers(0, 70000).map(lambda n: "é" * (n // 2))
    | st.binary(max_size=40)
    | st.sampled_from([0, 255, 256, 65535, 65536]).map(lambda n: b"x" * n),
    lambda inner: st.lists(inner, max_size=20)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=8), inner, max_size=18),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k not in ("doc", "raw")),
            MSGPACK_VALUES,
            max_size=4,
        ),
        max_size=20,
    ),
    st.dictionaries(st.text(max_size=10), MSGPACK_VALUES, max_size=4),
    st.booleans(),
)
def test_any_values_pack_as_msgpack_packs_them(
    extras: list[dict[str, Any]], fields: dict[str, Any], heads: bool
) -> None:
    """Events of written docs with any msgpack values beside them, and any fields: C gives the
    reference's bytes or declines."""
    events = [
        {"key": ["", 1, 2, index], "raw": index % 2, "doc": written(), **extra}
        for index, extra in enumerate(extras)
    ]
    if any(key in fields for key in ("events", wire.HEADS_JSON, wire.HASH_PROBE_FIELD)):
        assert native_wire.pack_written_events(events, fields, heads, HASH_PROBE) is None
        return
    assert assert_same(events, fields, heads)
    body = wire.events_body(*native_wire.pack_written_events(events, fields, heads, HASH_PROBE))
    assert len(body["events"]) == len(events)


@pytest.mark.parametrize(
    ("event", "fields"),
    [
        ({"key": [], "raw": 1, "doc": {"a": 1}}, {}),  # a dict doc: encode_docs's work
        ({"key": [], "raw": 1, "doc": None}, {}),
        ({"key": [], "raw": 1}, {}),
        ({"key": [], "raw": 1.5, "doc": written()}, {}),  # a float
        ({"key": [], "raw": {"n": 1}, "doc": written()}, {}),  # raw neither a count nor records
        ({"key": [2**64], "raw": 1, "doc": written()}, {}),  # beyond 64 bits
        ({"key": [-(2**63) - 1], "raw": 1, "doc": written()}, {}),
        ({"key": ["\udc80"], "raw": 1, "doc": written()}, {}),  # a lone surrogate
        ({"key": [bytearray(b"x")], "raw": 1, "doc": written()}, {}),
        ({"key": [], "raw": 1, "doc": written()}, {1: 2}),  # a field key that is not str
        ({"key": [], "raw": 1, "doc": written()}, {"events": 2}),
        ({"key": [], "raw": 1, "doc": written()}, {"hash_probe": 2}),
    ],
)
def test_declines_what_it_does_not_write(event: dict[str, Any], fields: dict[str, Any]) -> None:
    """Other docs, other types, ints and strings msgpack refuses, colliding fields: None, and
    pack_events_body still packs the batch (its Python path)."""
    assert native_wire.pack_written_events([event], fields, True, HASH_PROBE) is None
    packed = wire.pack_events_body([event], fields, heads=True)
    assert packed.body == python_packed([event], fields, True).body


def test_an_empty_batch() -> None:
    """No events: the reference's bytes."""
    assert assert_same([], {"epoch": 1}, True)
    assert msgpack.unpackb(native_wire.pack_written_events([], {}, False, HASH_PROBE)[0]) == {
        "events": []
    }


ANY_VALUES = st.recursive(
    MSGPACK_VALUES | st.floats() | st.integers() | st.binary().map(bytearray) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text() | st.integers() | st.binary() | st.none(), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(ANY_VALUES)
def test_pack_simple_is_msgpack_or_declines(value: Any) -> None:
    """Any value: pack_simple gives msgpack's bytes, or None for what it does not write."""
    mine = native_wire.pack_simple(value)
    if mine is not None:
        assert mine == msgpack.packb(value, use_bin_type=True)


def test_pack_body_packs_a_records_batch_in_c() -> None:
    """A receiver's records batch is one pack_simple takes, with msgpack's bytes."""
    body = {
        "recs": [(1300, b"audit(1.000:1): x=1", ""), (1320, b"audit(1.000:1): ", "n")] * 600,
        "recv_ns": 2**62,
        "batch": 70000,
    }
    assert native_wire.pack_simple(body) is not None
    assert wire.pack_body(body) == msgpack.packb(body, use_bin_type=True)
