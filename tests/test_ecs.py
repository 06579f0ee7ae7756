"""The ECS document: layout, number types, and hostile strings that must survive exactly."""

from __future__ import annotations

import re
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from assembler.coalesce import coalesce
from assembler.ecs import MARKER_TAG, build_doc, marker_doc
from assembler.parse import Record, parse_record
from auditstream.escape import unescape
from auditstream.logline import split_log_line

HEADER = b"audit(1700000000.042:777): "
# The kernel hex-encodes values holding spaces, quotes, controls or non-ASCII.
HOSTILE = b'evil\nline "quoted" \xff\xfe%41 caf\xc3\xa9 \x1b[31m'


def _records(*lines: bytes, node: bytes = b"") -> list[Record]:
    prefix = b"node=" + node + b" " if node else b""
    return [parse_record(*split_log_line(prefix + line)) for line in lines]


def _exec_event(payload: bytes, node: bytes = b"") -> list[Record]:
    hexed = payload.hex().upper().encode()
    return _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2"
        b" a2=3 a3=4 items=1 ppid=10 pid=11 auid=1000 uid=1000 gid=0 euid=0 suid=0 fsuid=0"
        b' egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 comm="sh" exe=' + hexed + b' key="k1"',
        b"type=EXECVE msg=" + HEADER + b'argc=2 a0="sh" a1=' + hexed,
        b"type=CWD msg=" + HEADER + b"cwd=" + hexed,
        b"type=PATH msg=" + HEADER + b"item=0 name=" + hexed + b" inode=5 dev=08:01"
        b" mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL",
        b"type=PROCTITLE msg=" + HEADER + b"proctitle=" + hexed,
        b"type=EOE msg=" + HEADER,
        node=node,
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    assert isinstance(value, int | float | bool) or value is None, type(value)
    return []


def _assert_json_safe(doc: dict[str, Any]) -> None:
    for text in _strings(doc):
        assert not re.search("[\x00-\x1f\x7f]", text), text
        text.encode("utf-8")  # no lone surrogates
    encoded = orjson.dumps(doc)
    assert b"\n" not in encoded
    assert orjson.loads(encoded) == doc


def test_hostile_hex_fields_survive_exactly() -> None:
    """Newlines, quotes, invalid UTF-8 and '%' in exe/cwd/path/argv/title round-trip exactly."""
    records = _exec_event(HOSTILE)
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    process = doc["process"]
    assert unescape(process["executable"]) == HOSTILE
    assert unescape(process["working_directory"]) == HOSTILE
    assert unescape(process["title"]) == HOSTILE
    assert unescape(process["args"][1]) == HOSTILE
    assert unescape(doc["file"]["path"]) == HOSTILE
    assert unescape(doc["auditd"]["paths"][0]["name"]) == HOSTILE


def test_nul_ends_an_argument_and_separates_title_words() -> None:
    """A NUL ends an EXECVE argument and becomes a space in the process title, as go-libaudit."""
    records = _exec_event(b"first\x00second%")
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    assert unescape(doc["process"]["args"][1]) == b"first"
    assert unescape(doc["process"]["title"]) == b"first second%"


def test_raw_records_are_kept_exactly() -> None:
    """auditd.records unescapes to exactly each raw record, even with NUL and bytes >= 0x80."""
    records = _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=2 success=no exit=-13 pid=5"
        b' ppid=1 auid=0 uid=0 comm="a\x00b%\xff" exe="/x" key=(null)',
        b"type=EOE msg=" + HEADER,
    )
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    raw = [unescape(text) for text in doc["auditd"]["records"]]
    assert raw == [
        b"type=SYSCALL msg=" + records[0].data,
        b"type=EOE msg=" + records[1].data,
    ]


def test_layout_and_number_types() -> None:
    """Timestamp has 3-digit milliseconds; pid, ppid, sequence are ints; node and keys land."""
    records = _exec_event(b"/bin/sh", node=b"web-1")
    doc = build_doc(records, coalesce(records))
    assert doc["@timestamp"] == "2023-11-14T22:13:20.042Z"
    assert doc["event"]["sequence"] == 777 and doc["auditd"]["sequence"] == 777
    assert doc["event"]["kind"] == "event" and doc["event"]["module"] == "auditd"
    assert doc["event"]["outcome"] == "success"
    assert doc["process"]["pid"] == 11 and doc["process"]["parent"] == {"pid": 10}
    assert doc["process"]["args"] == ["sh", "/bin/sh"] and doc["process"]["args_count"] == 2
    assert doc["process"]["name"] == "sh"
    assert doc["host"] == {"name": "web-1"}
    assert doc["tags"] == ["k1"]
    assert doc["auditd"]["message_type"] == "syscall"
    assert doc["auditd"]["session"] == "3"
    assert doc["auditd"]["data"]["syscall"] == "execve"
    assert doc["user"]["audit"] == {"id": "1000"}
    assert doc["user"]["id"] == "1000"
    assert doc["user"]["effective"]["id"] == "0"  # a setuid exec: euid differs from uid


def test_connect_gives_destination_with_int_port() -> None:
    """A connect with an IPv4 SOCKADDR gives destination ip/port (int) and egress."""
    sockaddr = b"0200" + (8080).to_bytes(2, "big").hex().encode() + b"0A000001" + b"00" * 8
    records = _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=42 success=no exit=-115 a0=3"
        b' a1=4 a2=10 a3=0 items=0 ppid=1 pid=2 auid=0 uid=0 ses=1 comm="curl" exe="/usr/bin/curl"'
        b" key=(null)",
        b"type=SOCKADDR msg=" + HEADER + b"saddr=" + sockaddr.upper(),
        b"type=EOE msg=" + HEADER,
    )
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    assert doc["destination"] == {"ip": "10.0.0.1", "port": 8080}
    assert doc["network"] == {"direction": "egress"}
    assert doc["auditd"]["data"]["socket"]["family"] == "ipv4"
    assert doc["event"]["action"] == "connected-to"


def test_split_execve_argument_is_joined() -> None:
    """An argument the kernel split (a1_len, a1[0], a1[1] over two records) comes back whole."""
    records = _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=59 success=yes exit=0 ppid=1"
        b' pid=2 auid=0 uid=0 ses=1 comm="echo" exe="/bin/echo" key=(null)',
        b"type=EXECVE msg=" + HEADER + b'argc=3 a0="echo" a1_len=6 a1[0]=616263',
        b"type=EXECVE msg=" + HEADER + b'a1[1]=646566 a2="end"',
        b"type=EOE msg=" + HEADER,
    )
    doc = build_doc(records, coalesce(records))
    assert doc["process"]["args"] == ["echo", "abcdef", "end"]


def test_marker_doc_layout_and_bytes_in_details() -> None:
    """Markers carry action, tag and details; bytes in details are escaped, never raw."""
    doc = marker_doc("events-lost", "", 1700000000, 5, {"count": 3, "record": b"a\nb\xff"})
    _assert_json_safe(doc)
    assert doc["event"] == {"kind": "event", "module": "auditd", "action": "events-lost"}
    assert doc["tags"] == [MARKER_TAG]
    assert doc["@timestamp"] == "2023-11-14T22:13:20.005Z"
    assert doc["auditstream"]["marker"]["count"] == 3
    assert unescape(doc["auditstream"]["marker"]["record"]) == b"a\nb\xff"
    assert "host" not in doc


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"\x00" not in b))
def test_any_exe_bytes_round_trip(payload: bytes) -> None:
    """Arbitrary NUL-free bytes as exe/cwd give a one-line JSON doc that unescapes exactly."""
    records = _exec_event(payload)
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    assert unescape(doc["process"]["executable"]) == payload
    assert unescape(doc["process"]["working_directory"]) == payload


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_body_never_breaks_the_doc(body: bytes) -> None:
    """Garbage after a valid header still yields a JSON-safe doc with the record kept."""
    records = [parse_record(1300, HEADER + body, "")]
    doc = build_doc(records, coalesce(records))
    _assert_json_safe(doc)
    assert unescape(doc["auditd"]["records"][0]) == b"type=SYSCALL msg=" + HEADER + body


def _enriched_exec() -> list[Record]:
    return _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2"
        b" a2=3 a3=4 items=0 ppid=10 pid=11 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0"
        b' sgid=0 fsgid=0 tty=pts0 ses=3 comm="50%" exe="/bin/a%b" key=(null)'
        b'\x1dARCH=x86_64 SYSCALL=execve AUID="alice" UID="root" GID="wheel" EUID="root"'
        b' SUID="root" FSUID="root" EGID="wheel" SGID="wheel" FSGID="wheel"',
        b"type=EOE msg=" + HEADER,
    )


def test_enriched_trailer_names_reach_user_fields() -> None:
    """The ENRICHED trailer's AUID/UID/GID names land in user.audit.name, user.name, group."""
    records = _enriched_exec()
    doc = build_doc(records, coalesce(records))
    user = doc["user"]
    assert user["audit"] == {"id": "1000", "name": "alice"}
    assert (user["id"], user["name"]) == ("0", "root")
    assert user["group"] == {"id": "0", "name": "wheel"}


def test_percent_in_plain_ascii_values_round_trips() -> None:
    """'%' in quoted ASCII comm/exe is escaped to %25, so unescape gives the exact bytes."""
    records = _enriched_exec()
    doc = build_doc(records, coalesce(records))
    assert doc["process"]["name"] == "50%25"
    assert unescape(doc["process"]["name"]) == b"50%"
    assert unescape(doc["process"]["executable"]) == b"/bin/a%b"
    assert unescape(doc["auditd"]["summary"]["how"]) == b"/bin/a%b"


def test_numbers_beyond_64_bits_are_left_out_so_the_document_stays_json() -> None:
    """A hostile pid of 20 digits above 2**64 is not made a number, so orjson can still write the doc."""
    records = _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=59 success=yes exit=0 ppid=18446744073709551615"
        b" pid=99999999999999999999 auid=0 uid=0 comm=\"sh\" exe=\"/bin/sh\"",
        b"type=EOE msg=" + HEADER,
    )
    doc = build_doc(records, coalesce(records))
    assert "pid" not in doc["process"]
    assert doc["process"]["parent"]["pid"] == 2**64 - 1
    orjson.loads(orjson.dumps(doc))


def test_a_huge_exit_value_loses_only_its_errno_name() -> None:
    """An exit= of 5,000 digits is left unnamed; the record's other fields stay (int() would have raised)."""
    records = _records(
        b"type=SYSCALL msg=" + HEADER + b"arch=c000003e syscall=59 success=no exit=-" + b"9" * 5000
        + b" ppid=1 pid=2 auid=0 uid=0 comm=\"sh\" exe=\"/bin/sh\"",
        b"type=EOE msg=" + HEADER,
    )
    coalesced = coalesce(records)
    assert coalesced.warnings == []
    assert coalesced.data["syscall"] == "execve"
    assert coalesced.data["exit"] == "-" + "9" * 5000
    assert coalesced.exe == "/bin/sh"
