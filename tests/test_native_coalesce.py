"""The C coalescer (assembler/csrc/coalesce.c) against the Python reference, event by event.

For every event of the conformance corpus, the benchmark logs (RAW and ENRICHED), the local
corpus, the hostile records of tests/hostile_audit.py and hypothesis mutations of real
records, ``native_coalesce.coalesce`` returns None or a Coalesced equal to
``assembler.coalesce.coalesce`` in every field (with dict key order) and giving the same
ECS document bytes. Skipped when the module is not built, except under
``AUDITSTREAM_NATIVE=1`` (CI), where a missing module fails.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hostile_audit import (
    EOE,
    HOSTILE_PIECES,
    PATH,
    SYSCALL,
    RawRecord,
    exec_event,
    header,
    user_event,
    wide_event,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib
from test_ecs_golden_docs import _events, _inputs

from assembler.coalesce import coalesce
from assembler.coalesced import Coalesced
from assembler.ecs import build_doc
from assembler.parse import ParseError, Record, parse_record

REPO = Path(__file__).resolve().parents[1]
LOCAL_CORPUS = REPO / "tests" / "corpus"


native = native_module("assembler.native_coalesce")


def _default(value: Any) -> Any:
    """orjson fallback for the odd value types a Coalesced can hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(type(value).__name__)


def _field_view(event: Coalesced) -> dict[str, tuple[str, bytes]]:
    """Each field's type name and JSON bytes (dicts keep their key order in the bytes)."""
    return {
        field.name: (
            type(getattr(event, field.name)).__name__,
            orjson.dumps(getattr(event, field.name), default=_default),
        )
        for field in dataclasses.fields(Coalesced)
    }


def compare(records: list[Record]) -> bool:
    """Assert C == Python for one event; True when C handled it, False when it declined."""
    try:
        expected: Coalesced | Exception = coalesce(records)
    except Exception as err:  # the reference raises (e.g. only EOE): C must decline
        expected = err
    got = native.coalesce(records)
    if got is None:
        return False
    bodies = [(record.type, record.body) for record in records]
    assert not isinstance(expected, Exception), f"C handled what Python rejects: {bodies}"
    assert type(got) is Coalesced
    want_fields, got_fields = _field_view(expected), _field_view(got)
    for name, want in want_fields.items():
        assert got_fields[name] == want, f"field {name} differs for {bodies}"
    # build_doc takes over the event's containers: compare the documents last.
    assert _doc_json(records, got) == _doc_json(records, expected), f"documents differ for {bodies}"
    return True


def _doc_json(records: list[Record], event: Coalesced) -> bytes | str:
    """The event's ECS document as JSON bytes, or the error orjson gives for it (a pid
    beyond 64 bits is an int orjson refuses: then both sides must refuse alike)."""
    try:
        return orjson.dumps(build_doc(records, event))
    except orjson.JSONEncodeError as err:
        return repr(err)


def compare_all(events: Iterable[list[Record]]) -> tuple[int, int]:
    """(events compared, events the C code handled)."""
    total = handled = 0
    for records in events:
        total += 1
        handled += compare(records)
    return total, handled


def _log_events(path: Path) -> list[list[Record]]:
    """A log file's events, grouped as the golden-doc test groups them."""
    return _events(path.read_bytes())


def _raw_events(groups: Iterable[list[RawRecord]]) -> list[list[Record]]:
    """Parsed events from (type, data, node) records; unparsable records left out."""
    events: list[list[Record]] = []
    for group in groups:
        records: list[Record] = []
        for record_type, data, node in group:
            try:
                records.append(parse_record(record_type, data, node))
            except ParseError:
                continue
        if records:
            events.append(records)
    return events


@pytest.fixture(scope="module")
def bench_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bench/gen_log.py logs of 20,000 lines, RAW and ENRICHED."""
    out = tmp_path_factory.mktemp("gen_log")
    logs = {"raw": out / "raw.log", "enriched": out / "enriched.log"}
    for kind, path in logs.items():
        extra = ["--enriched"] if kind == "enriched" else []
        subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "gen_log.py"),
                "--lines",
                "20000",
                "--out",
                str(path),
                *extra,
            ],
            check=True,
            capture_output=True,
        )
    return logs


@pytest.mark.parametrize("kind", ["raw", "enriched"])
def test_bench_log_events_equal_and_mostly_handled(bench_logs: dict[str, Path], kind: str) -> None:
    """Every gen_log event is equal or declined, and C handles at least 95 % of them."""
    total, handled = compare_all(_log_events(bench_logs[kind]))
    assert total > 4000
    assert handled >= 0.95 * total, f"{kind}: C handled {handled} of {total} events"
    print(f"gen_log {kind}: {total} events, C handled {handled}, declined {total - handled}")


def test_conformance_corpus_events_equal(corpus: Path) -> None:
    """Every event of the corpus inputs the golden-doc test reads is equal or declined."""
    total = handled = 0
    for name, text in _inputs().items():
        count, done = compare_all(_events(text))
        total, handled = total + count, handled + done
        print(f"{name}: {count} events, C handled {done}")
    assert total > 400
    assert handled > 0.3 * total, f"C handled {handled} of {total} corpus events"
    print(f"corpus: {total} events, C handled {handled} ({100 * handled / total:.0f} %)")


def test_local_corpus_events_equal() -> None:
    """Every event of the logs under tests/corpus is equal or declined."""
    paths = sorted(LOCAL_CORPUS.rglob("*.log"))
    assert paths, f"no logs under {LOCAL_CORPUS}"
    total = handled = 0
    for path in paths:
        count, done = compare_all(_log_events(path))
        total, handled = total + count, handled + done
    assert total > 100
    print(f"tests/corpus: {total} events, C handled {handled}")


def _hostile_groups() -> list[list[RawRecord]]:
    """Execve, user and wide events carrying every hostile piece, as tests/hostile_audit.py builds them."""
    groups: list[list[RawRecord]] = []
    serial = 100
    for piece in HOSTILE_PIECES:
        for text in (piece, b"a" + piece + b"z", piece * 3):
            serial += 1
            planned = exec_event(
                serial, comm=text, exe=b"/x" + text, cwd=text, path=b"/p/" + text,
                argv=[b"x", text, text + text], title=text + b"\x00-c", chunk=3,
            )  # fmt: skip
            groups.append(planned.records)
            serial += 1
            groups.append(user_event(serial, text).records)
    for fields in (1, 70, 300):
        serial += 1
        groups.append(wide_event(serial, fields).records)
    return groups


def test_hostile_events_equal() -> None:
    """The hostile events are equal or declined, and the kernel-encoded ones are handled."""
    total, handled = compare_all(_raw_events(_hostile_groups()))
    assert total > 200
    # Hex-encoded hostile bytes are the common path: most execve events stay in C.
    assert handled > 0.25 * total, f"C handled {handled} of {total} hostile events"
    print(f"hostile: {total} events, C handled {handled}")


def test_declines_what_it_does_not_handle() -> None:
    """Only-EOE events, non-SYSCALL leads, other record types and odd bodies give None."""
    head = header(7)
    syscall = parse_record(
        SYSCALL,
        head + b"arch=c000003e syscall=42 success=no exit=-111 items=0 ppid=1 pid=2 auid=0"
        b' uid=0 gid=0 ses=1 comm="nc" exe="/usr/bin/nc" key=(null)',
    )
    eoe = parse_record(EOE, head)
    sockaddr = parse_record(1306, head + b"saddr=02000050C0A800010000000000000000")
    path_with_space = parse_record(PATH, head + b'item=0 name="/a b" nametype=NORMAL')
    assert native.coalesce([syscall, eoe]) is not None
    for records in (
        [],
        [eoe],
        [eoe, syscall],
        [syscall, sockaddr, eoe],
        [syscall, path_with_space],
    ):
        assert native.coalesce(records) is None, [r.body for r in records]
    assert native.coalesce((syscall, eoe)) is None  # not a list: the Python code decides


# -- hypothesis: real records with mutated values ---------------------------------------------

_SEED_LINES = (
    b"type=SYSCALL msg=audit(1790000000.008:1007): arch=c000003e syscall=59 success=yes exit=0 a0=0"
    b" a1=7ffd2a4c a2=0 a3=0 items=2 ppid=1999 pid=20002 auid=1000 uid=1000 gid=1000 euid=1000"
    b' suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=3 comm="ls"'
    b' exe="/usr/bin/ls" subj=unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023 key="exec"',
    b'type=EXECVE msg=audit(1790000000.008:1007): argc=3 a0="ls" a1="-la" a2_len=8 a2[0]=2F766172'
    b" a2[1]=2F6C6F67",
    b'type=CWD msg=audit(1790000000.008:1007): cwd="/home/user"',
    b'type=PATH msg=audit(1790000000.008:1007): item=0 name="/usr/bin/ls" inode=96119 dev=fd:01'
    b" mode=0100755 ouid=0 ogid=0 rdev=00:00 obj=system_u:object_r:bin_t:s0 nametype=NORMAL"
    b" cap_fp=0",
    b"type=PATH msg=audit(1790000000.008:1007): item=1 name=2F6C696236342F6C64 inode=683554"
    b" dev=fd:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL",
    b"type=PROCTITLE msg=audit(1790000000.008:1007): proctitle=6C73002D6C61",
    b"type=EOE msg=audit(1790000000.008:1007): ",
)


def _seed_event() -> list[Record]:
    """A full execve event whose every record the C code handles."""
    records: list[Record] = []
    for line in _SEED_LINES:
        kind, _, data = line.partition(b" msg=")
        number = {b"SYSCALL": 1300, b"EXECVE": 1309, b"CWD": 1307, b"PATH": 1302}.get(kind[5:], 0)
        number = number or {b"PROCTITLE": 1327, b"EOE": 1320}[kind[5:]]
        records.append(parse_record(number, data))
    return records


# Keys some step reads, moves or routes, and EXECVE token names.
_SPECIAL_KEYS = [
    b"subj_user", b"obj_role", b"result", b"msg", b"key", b"success", b"res", b"exit",
    b"arch", b"syscall", b"items", b"pid", b"ppid", b"comm", b"exe", b"cwd", b"name",
    b"proctitle", b"obj", b"subj", b"auid", b"old-auid", b"ses", b"uid", b"fsgid", b"argc",
    b"a0", b"a1", b"a3", b"a1[0]", b"a1[1]", b"a01", b"a1_len", b"a2[0]", b"nametype", b"x-y_z",
]  # fmt: skip
_KEYS = st.sampled_from(_SPECIAL_KEYS) | st.binary(min_size=1, max_size=6)

# Values each step of the interpreter treats specially (dropped, unset, numbers, arches,
# contexts, results, hex with NUL/0x01/BOM/invalid UTF-8, quotes, escapes).
_SPECIAL_VALUES = [
    b"", b"?", b"?,", b"(null)", b"-1", b"4294967295", b"-13", b"-0013", b"-0", b"+59",
    b"59", b"99999999999999999999", b"-" + b"1" * 700, b"c000003e", b"-c000003e", b"+40000003",
    b"C000003E", b"ffffffffffffffffff", b"8000000000000000", b"-8000000000000000", b"unconfined",
    b"u:r:t:s0:c1,c2:extra", b"a::b", b":", b"yes", b"no", b"SUCCESS", b"Suck", b"1", b"0",
    b"%", b"%25", b'"', b"'", b"=", b" ", b"\t", b"2F746D70", b"2f746d70", b"41004200",
    b"6578656301626974", b"65786563010162", b"EFBBBF41", b"C3", b"EDA080", b"F4908080", b"00",
    b"25", b"7F1B", b'"quoted"', b'"ABCD"', b'"?"', b'"(null)"', b'""', b"0x10",
]  # fmt: skip

_VALUES = (
    st.sampled_from(_SPECIAL_VALUES)
    | st.binary(max_size=12)
    | st.binary(max_size=40).map(lambda raw: raw.hex().upper().encode())
    | st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode())
    | st.sampled_from([b"A" * 5000, b"41" * 3000, b"a" * 200])
)


@st.composite
def mutated_events(draw: st.DrawFn) -> list[Record]:
    """The seed event with one to three token- or record-level mutations."""
    records = _seed_event()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(records) - 1))
        record = records[index]
        tokens = record.body.split(b" ") if record.body else []
        action = draw(
            st.sampled_from(
                ["value", "quoted", "insert", "duplicate", "delete", "byte", "type", "drop"]
            )
        )
        position = draw(st.integers(min_value=0, max_value=max(len(tokens) - 1, 0)))
        key = tokens[position].partition(b"=")[0] if tokens else b"k"
        if action == "value" and tokens:
            tokens[position] = key + b"=" + draw(_VALUES)
        elif action == "quoted" and tokens:
            tokens[position] = key + b'="' + draw(_VALUES) + b'"'
        elif action == "insert":
            tokens.insert(position, draw(_KEYS) + b"=" + draw(_VALUES))
        elif action == "duplicate" and tokens:
            tokens.insert(draw(st.integers(min_value=0, max_value=len(tokens))), tokens[position])
        elif action == "delete" and tokens:
            del tokens[position]
        elif action == "byte" and tokens:
            token = tokens[position]
            at = draw(st.integers(min_value=0, max_value=len(token)))
            tokens[position] = (
                token[:at] + draw(st.binary(min_size=1, max_size=2)) + token[at + 1 :]
            )
        elif action == "type":
            kinds = st.sampled_from([1300, 1302, 1306, 1307, 1309, 1320, 1327, 1400, 1112, 1326])
            record = dataclasses.replace(record, type=draw(kinds))
        elif action == "drop" and len(records) > 1:
            del records[index]
            continue
        records[index] = dataclasses.replace(record, body=b" ".join(tokens))
    return records


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_events())
def test_mutated_real_records_equal(records: list[Record]) -> None:
    """Mutated values (quotes, %, controls, non-ASCII, hex, ?, (null), duplicates, huge values,
    unknown keys, odd types) give the Python result or None."""
    compare(records)
    compare(records)  # again: the Python side's memos (SYSCALL tails, records) now hit


def _with_field(body: bytes, key: bytes, value: bytes) -> bytes:
    """``body`` with ``key``'s value replaced (or the field appended)."""
    tokens = body.split(b" ") if body else []
    for index, token in enumerate(tokens):
        if token.partition(b"=")[0] == key:
            tokens[index] = key + b"=" + value
            return b" ".join(tokens)
    return b" ".join([*tokens, key + b"=" + value])


def test_every_special_key_and_value() -> None:
    """Each special key set to each special value (bare and quoted), in each record of the
    seed event, gives the Python result or None; C handles a good share of them."""
    seed = _seed_event()
    total = handled = 0
    for index in (0, 1, 2, 3, 5):  # SYSCALL, EXECVE, CWD, PATH, PROCTITLE (not the 2nd PATH, EOE)
        for key in _SPECIAL_KEYS:
            for value in _SPECIAL_VALUES:
                for raw in (value, b'"' + value + b'"'):
                    records = list(seed)
                    body = _with_field(records[index].body, key, raw)
                    records[index] = dataclasses.replace(records[index], body=body)
                    total += 1
                    handled += compare(records)
    assert handled > 0.3 * total, f"C handled {handled} of {total} key/value variants"
    print(f"special keys and values: {total} events, C handled {handled}")


# EXECVE record bodies of one event: split, duplicated, reordered, missing and odd arguments.
_EXECVE_VARIANTS: list[list[bytes]] = [
    [b'argc=2 a0="x" a1="y"'],
    [b'argc=2 a0="x" a1_len=4 a1[0]=4142 a1[1]=4344'],
    [b'argc=2 a0="x" a1[1]=4344 a1[0]=4142'],
    [b'argc=2 a0="x" a1[0]="p" a1[0]="q" a1[1]="r"'],
    [b'argc=2 a0="x" a1[0]="p"', b'a1[0]="dup" a1[1]="q"'],
    [b'argc=2 a0="x"', b"a1_len=3 a1[0]=41", b'a1[1]="b" a1[2]=43'],
    [b'argc=2 a0="x" a1="whole" a1[0]="piece"'],
    [b'argc=1 a0="first" a0="second"'],
    [b'argc=2 a0="x" a1[0]=41 a1[2]=43'],
    [b'argc=2 a0="x" a1[1]="only-second"'],
    [b'argc=2 a0="x" a01="y"'],
    [b'argc=2 a0="x" a1[00]="y"'],
    [b'argc="2" a0="x" a1="y"'],
    [b"argc=02 a0=x a1=y"],
    [b"argc=99999999999 a0=x"],
    [b"argc=0"],
    [b'a0="x"'],
    [b'argc=2 argc=1 a0="x" a1="y"'],
    [b"argc=1 a0=41004243"],
    [b"argc=1 a0=4142434"],
    [b"argc=1 a0=6162"],
    [b"argc=1 a0=abcd"],
    [b"argc=1 a0=%41"],
    [b'argc=1 a0=""'],
    [b"argc=1 a0="],
    [b"argc=1  a0=x"],
    [b'argc=1 a0="x y"'],
    [b'argc=1 a0="x"y"'],
    [b"argc=1 a0=E282AC"],
    [b"argc=1 a0=FF25"],
    [b"argc=1 a0=EFBBBF"],
    [b"argc=1 a0=x", b""],
    [b"argc=1 a0=x junk"],
]


@pytest.mark.parametrize("bodies", _EXECVE_VARIANTS, ids=lambda bodies: repr(bodies)[:40])
def test_execve_variants(bodies: list[bytes]) -> None:
    """EXECVE argument lists, alone and in the seed event, give the Python result or None."""
    seed = _seed_event()
    execve = [dataclasses.replace(seed[1], body=body) for body in bodies]
    compare([seed[0], *execve, seed[-1]])
    compare([*seed[:1], *execve, *seed[2:]])


def test_seed_event_is_handled() -> None:
    """The unmutated seed event (split EXECVE argument, contexts, hex name) is handled by C."""
    assert compare(_seed_event())


def test_records_of_a_subclass_are_read_through_getattr() -> None:
    """Records that are not exactly Record (a subclass) are read with getattr and give the Python event."""
    reads: list[str] = []

    class Watched(Record):
        __slots__ = ()

        def __getattribute__(self, name: str) -> Any:
            reads.append(name)
            return super().__getattribute__(name)

    seed = _seed_event()
    watched = [Watched(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}) for r in seed]
    reads.clear()
    assert native.coalesce(watched) is not None
    assert {"type", "body", "sec", "msec", "serial", "node"} <= set(reads)
    assert compare(watched) and compare(seed)


def test_keys_and_values_past_the_caches_stay_right() -> None:
    """Thousands of distinct keys and short values, more than the key and value caches
    hold, come out equal to Python's: an evicted or colliding entry is never reused."""
    seed = _seed_event()
    syscall, rest = seed[0], seed[1:]
    for i in range(3000):
        extra = b" x%d=v%d y=%x z%d=%d" % (i, i * 7, i * 104729, i % 1500, i)
        event = [dataclasses.replace(syscall, body=syscall.body + extra), *rest]
        assert compare(event), f"declined event {i}"


# -- no leaks -----------------------------------------------------------------------------------


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc/self/status (Linux)"
)
def test_no_leak_over_200k_calls() -> None:
    """200,000 calls on handled and declined events grow RSS by less than 20 MB."""
    seed = _seed_event()
    declined = [seed[0], dataclasses.replace(seed[1], body=b"argc=9 a0=x"), seed[-1]]
    hostile = _raw_events(_hostile_groups()[:40])
    events = [seed, seed[:1], declined, *hostile]
    assert native.coalesce(seed) is not None and native.coalesce(declined) is None
    for records in events:  # warm up caches and the allocator
        native.coalesce(records)
    before = rss_kib()
    for call in range(200_000):
        native.coalesce(events[call % len(events)])
    grown = rss_kib() - before
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 200,000 calls"
    print(f"RSS growth over 200,000 calls: {grown} KiB")
