"""assembler.native_ecs.write_doc (C, assembler/csrc/ecs_write.h) against the dict path.

The reference is Python's build_doc with ``completed_by`` added, encoded by Python's
``doc_text.encode_docs``. For every event of the corpus logs, the generated logs (RAW and
ENRICHED), the local corpus, hostile records and hypothesis-mutated real records, write_doc
returns None or a WrittenDoc whose text is ``orjson.dumps`` of that doc, whose process
span is ``orjson.dumps`` of its ``process`` and whose head is the one encode_docs makes;
and the events packed for the wire (both encode_docs, C and Python) are the same bytes.
The assembler with written docs ships frames byte for byte equal to those with dicts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from generated_logs import write_generated_log
from hostile_audit import RawRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import assert_mostly_taken, native_module, rss_kib, tally
from test_ecs_golden_docs import _events, _inputs
from test_native_doc_text import c_encode
from test_native_ecs import _HEAD, BASE_EVENTS, FUZZ, events_of, mutated_events
from test_sink_fuzz import hostile_batches

from assembler.coalesce import coalesce
from assembler.ecs import build_doc
from assembler.parse import Record, parse_record
from assembler.stage import Assembly
from auditstream import wire
from auditstream.config import Config
from auditstream.doc_text import WrittenDoc, encode_docs
from auditstream.logline import split_log_line

REPO = Path(__file__).resolve().parents[1]
LOCAL_CORPUS = REPO / "tests" / "corpus"

native_ecs: Any = native_module("assembler.native_ecs")


def compare(records: list[Record], completed_by: str | None = None) -> bool | None:
    """Check write_doc against the dict path for one event: True written, False declined,
    None when Python itself raises (nothing to compare)."""
    try:
        doc = build_doc(records, coalesce(records))
    except Exception:
        return None
    if completed_by is not None:
        doc.setdefault("auditstream", {})["completed_by"] = completed_by
    coalesced = coalesce(records)
    before = repr(coalesced)
    written = native_ecs.write_doc(records, coalesced, completed_by)
    assert repr(coalesced) == before, records  # the event is read, never changed
    if written is None:
        return False
    assert type(written) is WrittenDoc
    assert written.text == orjson.dumps(doc), records
    assert written.text[written.at : written.until] == orjson.dumps(doc["process"]), records
    for with_heads in (True, False):
        want = encode_docs([{"key": [], "raw": 1, "doc": doc}], with_heads)
        event = {"key": [], "raw": 1, "doc": written}
        for got in (encode_docs([event], with_heads), c_encode()([event], with_heads)):
            assert got.docs_json == want.docs_json, records
            assert orjson.dumps(got.heads) == orjson.dumps(want.heads), records
            assert got.slim == want.slim and not got.refused, records
    return True


def compare_all(groups: Iterable[list[Record]]) -> tuple[int, int]:
    """(written, declined) over the events Python builds."""
    return tally(compare, groups)


def test_corpus_logs() -> None:
    """Every event of every corpus input the ECS golden test reads: written equal, or declined."""
    groups = (records for text in _inputs().values() for records in _events(text))
    written, declined = compare_all(groups)
    print(f"corpus: {written} written by C, {declined} declined")
    assert written > 0


@pytest.mark.parametrize("enriched", [False, True], ids=["raw", "enriched"])
def test_generated_log_events_are_written(tmp_path: Path, enriched: bool) -> None:
    """The generated log's events: written equal, and at least 95 % of them written."""
    log = write_generated_log(tmp_path / "gen.log", 20000, *(["--enriched"] if enriched else []))
    assert_mostly_taken(compare_all(_events(log.read_bytes())), "wrote")


def test_local_corpus_logs() -> None:
    """tests/corpus logs (containers, go-libaudit copies): written equal, or declined."""
    paths = sorted(LOCAL_CORPUS.rglob("*.log"))
    assert paths
    assert sum(compare_all(_events(path.read_bytes()))[0] for path in paths) > 0


@settings(FUZZ, max_examples=150)
@given(hostile_batches())
def test_hostile_events(batch: tuple[list[RawRecord], list[Any]]) -> None:
    """Hostile exec, user-message and wide events (tests/hostile_audit.py): equal, or declined."""
    pushed, _plans = batch
    compare_all(events_of(pushed))


@settings(FUZZ)
@given(mutated_events())
def test_mutated_real_events(records: list[Record]) -> None:
    """Real events with hostile values, unknown keys, odd types and nodes: equal, or declined."""
    compare(records)


@pytest.mark.parametrize("completed_by", [None, "timeout", "evicted", "closed", "late"])
def test_base_events_are_written(completed_by: str | None) -> None:
    """The base kernel events (execve, connect with sockets, ENRICHED open) are written, with
    completed_by as the dict path adds it."""
    written = [compare(base_records(event), completed_by) for event in BASE_EVENTS]
    assert written.count(True) >= 3, written


def base_records(event: list[tuple[int, bytes]]) -> list[Record]:
    """The records of one of test_native_ecs's base events."""
    return [parse_record(type_, _HEAD + body) for type_, body in event]


@pytest.mark.parametrize(
    "ids",
    [
        b"auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000",
        b"auid=1000 uid=1000 gid=1000 euid=0 suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000",
        b"auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0",
        b"auid=1 uid=2 gid=3 euid=4 suid=5 fsuid=6 egid=7 sgid=8 fsgid=9",
        b"uid=2 auid=1 gid=3 euid=4 suid=5 fsuid=6 egid=7 sgid=8 fsgid=9",
        b"auid=1 uid=2 gid=3 euid=2 suid=5 fsuid=6 egid=7 sgid=8",
    ],
    ids=[
        "effective-repeats",
        "effective-differs",
        "audit-unset",
        "all-differ",
        "odd-order",
        "one-missing",
    ],
)
@pytest.mark.parametrize("subj", [b" subj=unconfined", b" subj=u:r:t:s0", b""])
@pytest.mark.parametrize("enriched", [False, True], ids=["raw", "enriched"])
def test_user_objects_of_every_id_layout(ids: bytes, subj: bytes, enriched: bool) -> None:
    """The user object, whether the ids are the kernel's layout (written directly) or not,
    with or without SELinux parts and ENRICHED names, is the dict path's."""
    body = (
        b"arch=c000003e syscall=59 success=yes exit=0 a0=55d a1=55e a2=55f a3=0 items=0"
        b" ppid=1999 pid=20001 " + ids + b' tty=pts0 ses=3 comm="sh" exe="/bin/sh"' + subj
    )
    if enriched:
        body += b'\x1dAUID="alice" UID="root" EUID="root" FSGID="root"'
    records = [parse_record(1300, _HEAD + body), parse_record(1320, _HEAD)]
    assert compare(records) is True


_ID_NAMES = ("auid", "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid")


@pytest.mark.parametrize("seed", range(8))
def test_user_objects_of_any_ids_present_unset_and_ordered(seed: int) -> None:
    """Ids missing, set to "unset" (an unset auid, or the text itself), repeating the user's
    id or not, in any order, with or without SELinux parts: the user object is the dict path's."""
    rng = random.Random(seed)
    for case in range(60):
        names = [name for name in _ID_NAMES if rng.random() < (0.8 if case % 10 else 0.1)]
        if rng.random() < 0.5:
            rng.shuffle(names)
        values = {name: rng.choice([b"0", b"0", b"1000", b"7", b"unset", b""]) for name in names}
        if "auid" in values and rng.random() < 0.5:
            values["auid"] = b"4294967295"
        ids = b" ".join(name.encode() + b"=" + values[name] for name in names)
        subj = rng.choice([b"", b" subj=unconfined", b" subj=u:r:t:s0"])
        body = (
            b"arch=c000003e syscall=59 success=yes exit=0 a0=55d a1=55e a2=55f a3=0 items=0"
            b" ppid=1999 pid=20001 " + ids + b' tty=pts0 ses=3 comm="sh" exe="/bin/sh"' + subj
        )
        records = [parse_record(1300, _HEAD + body), parse_record(1320, _HEAD)]
        assert compare(records) is True, body


def test_declines_what_it_does_not_write() -> None:
    """An event without process fields, with a float or a surrogate in a value, or odd
    arguments: None (the dict path and orjson decide), never a wrong text."""
    records = base_records(BASE_EVENTS[0])
    no_process = coalesce(records)
    no_process.pid = no_process.ppid = no_process.title = ""
    no_process.name = no_process.exe = no_process.cwd = ""
    no_process.args = ()
    assert native_ecs.write_doc(records, no_process, None) is None
    for value in (1.5, "\udcff"):
        odd = coalesce(records)
        odd.data = {**odd.data, "odd": value}  # type: ignore[dict-item]
        assert native_ecs.write_doc(records, odd, None) is None
    big = coalesce(records)
    big.data = {**big.data, "big": 2**64}  # type: ignore[dict-item]
    assert native_ecs.write_doc(records, big, None) is None
    assert native_ecs.write_doc([], coalesce(records), None) is None
    assert native_ecs.write_doc(records, object(), None) is None
    with pytest.raises(TypeError):
        native_ecs.write_doc(records, coalesce(records), 5)


@settings(FUZZ)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_strings_are_escaped_as_orjson_does(text: str) -> None:
    """Any text in a value (quotes, backslashes, control and non-ASCII characters, which the
    interpreter's escape never lets through) is written as orjson writes it."""
    records = base_records(BASE_EVENTS[0])
    every_ascii = "".join(map(chr, range(128))) + "\u00e9\u2028\U0001f600"
    values = {"text": text, "every": every_ascii, text or "empty": "key"}
    reference, mine = coalesce(records), coalesce(records)
    for coalesced in (reference, mine):
        coalesced.data = {**coalesced.data, **values}
        coalesced.name = text
    written = native_ecs.write_doc(records, mine, None)
    assert written is not None
    assert written.text == orjson.dumps(build_doc(records, reference))


def test_escapes_at_every_position_of_short_and_word_sized_strings() -> None:
    """A character that needs an escape is found at every position of strings up to three
    words long, in the word-at-a-time checks and in the overlapping last word alike."""
    records = base_records(BASE_EVENTS[0])
    texts = [
        "a" * at + special + "b" * (length - at - 1)
        for length in range(1, 25)
        for at in range(length)
        for special in ('"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u00e9")
    ]
    texts += ["", *("c" * length for length in range(1, 25))]
    reference, mine = coalesce(records), coalesce(records)
    for coalesced in (reference, mine):
        coalesced.data = {**coalesced.data, **{f"t{i}": text for i, text in enumerate(texts)}}
    written = native_ecs.write_doc(records, mine, None)
    assert written is not None
    assert written.text == orjson.dumps(build_doc(records, reference))


def shipped_frames(log: Path, written: bool) -> list[tuple[bytes, bytes]]:
    """The events frames (body, docs_json) an assembler ships for the log, batch by batch."""
    assembly = Assembly(Config(), event_time=True, written_docs=written)
    assembly.raw_records = False
    lines = log.read_bytes().splitlines()
    frames = []
    for start in range(0, len(lines), 512):
        assembly.push_batch([list(split_log_line(line)) for line in lines[start : start + 512]])
        assembly.maintain()
        if start == 0 and written:
            assert any(type(event["doc"]) is WrittenDoc for event in assembly.out)
        packed = wire.pack_events_body(assembly.out, {}, heads=True)
        frames.append((packed.body, packed.docs_json))
        assembly.out = []
    assembly.close()
    packed = wire.pack_events_body(assembly.out, {}, heads=True)
    return [*frames, (packed.body, packed.docs_json)]


@pytest.mark.parametrize("enriched", [False, True], ids=["raw", "enriched"])
def test_assembler_ships_the_same_frames(tmp_path: Path, enriched: bool) -> None:
    """An assembler with written docs ships byte for byte the frames it ships with dicts."""
    log = write_generated_log(tmp_path / "gen.log", 20000, *(["--enriched"] if enriched else []))
    assert shipped_frames(log, written=True) == shipped_frames(log, written=False)


def test_no_leak_over_many_calls() -> None:
    """200k calls on written and declined events leave RSS within 20 MB."""
    events = [base_records(event) for event in BASE_EVENTS]
    pairs = [(records, coalesce(records)) for records in events]
    for records, c in pairs:
        native_ecs.write_doc(records, c, "timeout")
    before = rss_kib()
    for _ in range(200_000 // len(pairs)):
        for records, c in pairs:
            native_ecs.write_doc(records, c, None)
    growth_kib = rss_kib() - before
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
