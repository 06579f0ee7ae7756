"""assembler.native_ecs (C) against assembler.ecs.build_doc (the Python reference).

For every event of the corpus logs, the gen_log benchmark logs (RAW and ENRICHED), the
local corpus, hostile records and hypothesis-mutated real records, the C build_doc
returns None or a document whose JSON bytes (key order included) equal Python's, sharing
and copying the Coalesced's containers as Python does. Each implementation gets its own
Coalesced, since build_doc takes over some of its containers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from generated_logs import write_generated_log
from hostile_audit import HOSTILE_PIECES, PLANNED_MSEC, PLANNED_SEC, RawRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_helpers import assert_mostly_taken, native_module, rss_kib, tally
from test_ecs_golden_docs import _events, _inputs
from test_sink_fuzz import hostile_batches

from assembler.coalesce import coalesce
from assembler.coalesced import Coalesced
from assembler.ecs import build_doc
from assembler.parse import ParseError, Record, parse_record
from auditstream.escape import escape

REPO = Path(__file__).resolve().parents[1]
LOCAL_CORPUS = REPO / "tests" / "corpus"
FUZZ = settings(
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


native_ecs: Any = native_module("assembler.native_ecs")


def _sharing(doc: dict[str, Any], c: Coalesced) -> tuple[bool, ...]:
    """Which of the Coalesced's containers the document holds as the same object."""
    auditd = doc["auditd"]
    return (
        auditd["data"] is c.data,
        doc.get("file") is c.file,
        doc.get("error", {}).get("message") is c.warnings,
        any(path is mine for path in auditd.get("paths", ()) for mine in c.paths),
        doc["user"].get("selinux") is c.user_selinux,
        doc.get("tags") is c.tags,
        doc.get("process", {}).get("args") is c.args,
    )


def as_json(doc: dict[str, Any]) -> bytes:
    """The document's JSON bytes (key order counts); the standard library's encoder for a
    document orjson refuses (a 20-digit pid beyond 64 bits, which _as_int lets through)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def compare(records: list[Record]) -> bool | None:
    """Check C against Python for one event: True handled by C, False declined, None when
    Python itself raises (a CoalesceError or similar: nothing to compare)."""
    try:
        py_coalesced = coalesce(records)
        py_doc = build_doc(records, py_coalesced)
    except Exception:
        return None
    c_coalesced = coalesce(records)
    c_doc = native_ecs.build_doc(records, c_coalesced)
    if c_doc is None:
        return False
    assert as_json(c_doc) == as_json(py_doc), records
    assert _sharing(c_doc, c_coalesced) == _sharing(py_doc, py_coalesced), records
    assert c_coalesced == py_coalesced, records  # neither changes the event
    return True


def compare_all(groups: Iterable[list[Record]]) -> tuple[int, int]:
    """(handled by C, declined) over events Python builds."""
    return tally(compare, groups)


def events_of(raw: Iterable[RawRecord]) -> list[list[Record]]:
    """Parsable records grouped by (node, serial) in order; unparsable ones skipped."""
    groups: dict[tuple[str, int], list[Record]] = {}
    for type_, data, node in raw:
        try:
            rec = parse_record(type_, data, node)
        except ParseError:
            continue
        groups.setdefault((rec.node, rec.serial), []).append(rec)
    return list(groups.values())


# -- escape --------------------------------------------------------------------------------


@given(
    st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.binary(max_size=8)), max_size=10).map(
        b"".join
    )
)
def test_escape_matches_python(raw: bytes) -> None:
    """The C escape() gives auditstream.escape.escape's text for any bytes."""
    assert native_ecs.escape(raw) == escape(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"plain text",
        b"%",
        b"\xef\xbb\xbf",  # U+FEFF
        b"\xed\xa0\x80",  # a surrogate: invalid in UTF-8
        b"\xc0\xaf",  # overlong
        b"\xe2\x82",  # truncated at the end
        b"\xe2\x82A",
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\xf0\x9f\x92\xa9\x7f\xc2\x85",
        bytes(range(256)),
    ],
)
def test_escape_edge_cases(raw: bytes) -> None:
    """UTF-8 edge cases (BOM, surrogates, overlongs, truncation) escape as in Python."""
    assert native_ecs.escape(raw) == escape(raw)


def test_escape_finds_a_byte_at_every_position_of_word_sized_text() -> None:
    """A byte that needs escaping (or the printable ones around those) is judged right at
    every position of texts up to three words long, as the word-at-a-time check reads them."""
    for byte in (0x00, 0x1F, 0x20, 0x25, 0x24, 0x26, 0x7E, 0x7F, 0x80, 0xC3, 0xFF):
        for length in range(1, 25):
            for at in range(length):
                raw = b"a" * at + bytes([byte]) + b"b" * (length - at - 1)
                assert native_ecs.escape(raw) == escape(raw), raw


# -- whole events ----------------------------------------------------------------------------


def test_corpus_logs() -> None:
    """Every event of every corpus input the ECS golden test reads: C equals Python or declines."""
    handled = declined = 0
    for text in _inputs().values():
        got = compare_all(_events(text))
        handled += got[0]
        declined += got[1]
    print(f"corpus: {handled} handled by C, {declined} declined")
    assert handled > 0


@pytest.mark.parametrize("enriched", [False, True], ids=["raw", "enriched"])
def test_gen_log_events_are_handled(tmp_path: Path, enriched: bool) -> None:
    """The benchmark log's events: C equals Python on each and handles at least 95 % of them."""
    log = write_generated_log(tmp_path / "gen.log", 20000, *(["--enriched"] if enriched else []))
    assert_mostly_taken(compare_all(_events(log.read_bytes())), "handled")


def test_local_corpus_logs() -> None:
    """tests/corpus logs (containers, go-libaudit copies): C equals Python or declines."""
    paths = sorted(LOCAL_CORPUS.rglob("*.log"))
    assert paths
    handled = sum(compare_all(_events(path.read_bytes()))[0] for path in paths)
    assert handled > 0


@settings(FUZZ, max_examples=150)
@given(hostile_batches())
def test_hostile_events(batch: tuple[list[RawRecord], list[Any]]) -> None:
    """Hostile exec, user-message and wide events (tests/hostile_audit.py): C equals Python or declines."""
    pushed, _plans = batch
    compare_all(events_of(pushed))


# -- hypothesis variants of real records -------------------------------------------------------

_HEAD = b"audit(%d.%03d:77): " % (PLANNED_SEC, PLANNED_MSEC)
# Real records of a few kinds of event (kernel syscalls with paths and sockets, a user
# message, an ENRICHED one), as lists of (type, body).
BASE_EVENTS: list[list[tuple[int, bytes]]] = [
    [
        (
            1300,
            b"arch=c000003e syscall=59 success=yes exit=0 a0=55d a1=55e a2=55f a3=0 items=2"
            b" ppid=1999 pid=20001 auid=1000 uid=1000 gid=1000 euid=0 suid=1000 fsuid=1000"
            b' egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=3 comm="python3"'
            b' exe="/usr/bin/python3.11" subj=unconfined key="exec"',
        ),
        (1309, b'argc=3 a0="python3" a1="-c" a2=7072696E74282768656C6C6F20776F726C642729'),
        (1307, b'cwd="/home/user"'),
        (
            1302,
            b'item=0 name="/usr/bin/python3" inode=131 dev=08:01 mode=0100755 ouid=0 ogid=0'
            b" rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0",
        ),
        (1327, b"proctitle=707974686F6E33002D63"),
        (1320, b""),
    ],
    [
        (
            1300,
            b"arch=c000003e syscall=42 success=no exit=-115 a0=3 a1=7ffc a2=10 a3=0 items=0"
            b" ppid=1 pid=812 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0"
            b' sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="curl" exe="/usr/bin/curl"'
            b" key=(null)",
        ),
        (1306, b"saddr=020000500A0000010000000000000000"),
        (1306, b"saddr=01002F746D702F736F636B00"),
        (1320, b""),
    ],
    [
        (
            1300,
            b"arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=7f a2=80000 a3=0"
            b" items=1 ppid=1 pid=7 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0"
            b' fsgid=0 tty=pts0 ses=3 comm="cat" exe="/usr/bin/cat"'
            b' subj=system_u:system_r:kernel_t:s0 key="files"\x1dARCH=x86_64 SYSCALL=openat'
            b' AUID="root" UID="root" GID="root" EUID="root" SUID="root" FSUID="root"'
            b' EGID="root" SGID="root" FSGID="root"',
        ),
        (1307, b'cwd="/"'),
        (
            1302,
            b'item=0 name="/etc/passwd" inode=5 dev=08:01 mode=0100644 ouid=0 ogid=0'
            b" rdev=00:00 obj=system_u:object_r:passwd_file_t:s0 nametype=NORMAL",
        ),
        (1320, b""),
    ],
    [
        (
            1112,
            b"pid=1 uid=0 auid=1000 ses=1 subj=unconfined msg='op=login id=1000"
            b' exe="/usr/sbin/sshd" hostname=10.0.0.9 addr=10.0.0.9 terminal=ssh'
            b' res=success\'\x1dUID="root" AUID="user" ID="user"',
        ),
    ],
]

NASTY_VALUES = st.one_of(
    st.sampled_from(
        [
            b'"',
            b'""',
            b"%",
            b"%25",
            b"?",
            b"?,",
            b"(null)",
            b"(none)",
            b"unset",
            b"4294967295",
            b"-1",
            b"0",
            b"00",
            b"99999999999999999999",
            b"999999999999999999999",
            b"\x00",
            b"\x1b[31m",
            b"\xff",
            b"\xc3\xa9",
            b"\xef\xbb\xbf",
            b'"a b"',
            b"'x'",
            b'"%41"',
            b"414243",
            b"2F746D70",
            b"0A0000",
            b"020000500A000001",
            b"0A000050000000002001DB8000000000000000000000000010000000",
            b"x=y",
            b"A" * 3000,
        ]
    ),
    st.binary(max_size=8),
)
NASTY_KEYS = st.sampled_from(
    b"uid auid euid ouid new-uid id saddr exe comm cwd socket socket_x name acct msg zz res"
    b" success key subj ses pid ppid items syscall arch a0 argc".split()
)
TRAILERS = st.sampled_from(
    [
        b'\x1dUID="root" AUID="user"',
        b'\x1dAUID="a b" UID=\x00 EUID="root" EUID="x" XUID="q" SUID="%"',
        b'\x1dUID="\xff\xfe" GID="root" FSGID="" ID="user" OUID="root"',
        b"\x1d",
    ]
)
RECORD_TYPES = st.sampled_from([1300, 1302, 1306, 1307, 1309, 1327, 1112, 1100, 1400, 9999, 1, -5])


@st.composite
def mutated_events(draw: st.DrawFn) -> list[Record]:
    """A real event with a few of its fields replaced, added or retyped."""
    event = [list(record) for record in draw(st.sampled_from(BASE_EVENTS))]
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(event) - 1))
        type_, body = event[index]
        assert isinstance(body, bytes)
        tokens = body.split(b" ") if body else []
        action = draw(st.sampled_from(["value", "value", "add", "drop", "trailer", "type"]))
        if action == "value" and tokens:
            at = draw(st.integers(0, len(tokens) - 1))
            key = tokens[at].split(b"=", 1)[0]
            tokens[at] = key + b"=" + draw(NASTY_VALUES)
        elif action == "add":
            tokens.append(draw(NASTY_KEYS) + b"=" + draw(NASTY_VALUES))
        elif action == "drop" and tokens:
            del tokens[draw(st.integers(0, len(tokens) - 1))]
        elif action == "trailer":
            tokens.append(draw(TRAILERS))
        elif action == "type":
            type_ = draw(RECORD_TYPES)
        event[index] = [type_, b" ".join(tokens)]
    node = draw(st.sampled_from(["", "host1", "h%st", "h\x1bst", "h\udcffst", "hé"]))
    stamp = draw(st.sampled_from([_HEAD, b"audit(0.000:77): ", b"audit(253402300799.999:77): "]))
    records = []
    for type_, body in event:
        assert isinstance(type_, int) and isinstance(body, bytes)
        try:
            records.append(parse_record(type_, stamp + body, node))
        except ParseError:
            continue
    return records


@settings(FUZZ)
@given(mutated_events())
def test_mutated_real_events(records: list[Record]) -> None:
    """Real events with hostile values, duplicates, unknown keys and odd types: C equals Python or declines."""
    compare(records)


def test_base_events_are_handled() -> None:
    """The unmutated base events (execve, connect with sockets, ENRICHED open, login) go through C."""
    for event in BASE_EVENTS:
        records = [parse_record(type_, _HEAD + body) for type_, body in event]
        assert compare(records) is True, records


@settings(FUZZ)
@given(
    st.one_of(st.integers(0, 253402300799), st.integers(-(2**70), 2**70)),
    st.one_of(st.integers(0, 999), st.integers(-(2**66), 2**66)),
)
def test_timestamps(sec: int, msec: int) -> None:
    """Any second and millisecond (carried over as Python's divmod does): C's @timestamp
    equals Python's, or C declines a second outside 1970 .. 9999."""
    records = [parse_record(type_, _HEAD + body) for type_, body in BASE_EVENTS[0]]
    py_coalesced, c_coalesced = coalesce(records), coalesce(records)
    for coalesced in (py_coalesced, c_coalesced):
        coalesced.sec, coalesced.msec = sec, msec
    py_doc = build_doc(records, py_coalesced)
    c_doc = native_ecs.build_doc(records, c_coalesced)
    if c_doc is None:  # declined only outside 1970 .. 9999 (Python may format or warn)
        assert not 0 <= sec + msec // 1000 <= 253402300799
    else:
        assert orjson.dumps(c_doc) == orjson.dumps(py_doc)


# -- odd calls and leaks ------------------------------------------------------------------------


def test_odd_arguments_are_declined() -> None:
    """Non-Record records, an empty list or a non-Coalesced event give None, not a crash."""
    records = [parse_record(type_, _HEAD + body) for type_, body in BASE_EVENTS[0]]
    c = coalesce(records)
    assert native_ecs.build_doc([], c) is None
    assert native_ecs.build_doc([*records, "x"], c) is None
    assert native_ecs.build_doc(records, object()) is None
    assert native_ecs.build_doc(tuple(records), c) is None
    c.pid = 5  # type: ignore[assignment]  # a wrong attribute type
    assert native_ecs.build_doc(records, c) is None
    with pytest.raises(TypeError):
        native_ecs.build_doc(records)


def test_no_leak_over_many_calls() -> None:
    """200k calls on handled and declined events leave RSS within 20 MB."""
    events = [[parse_record(type_, _HEAD + body) for type_, body in event] for event in BASE_EVENTS]
    late = [parse_record(1300, b"audit(99999999999999.048:9): " + BASE_EVENTS[2][0][1])]
    pairs = [(records, coalesce(records)) for records in [*events, late]]
    assert native_ecs.build_doc(*pairs[-1]) is None  # declined: the year is past 9999
    for records, c in pairs:
        native_ecs.build_doc(records, c)
    before = rss_kib()
    for _ in range(200_000 // len(pairs)):
        for records, c in pairs:
            native_ecs.build_doc(records, c)
    growth_kib = rss_kib() - before
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"
