"""The assembler's shortcuts give what the general code gives (third speed pass).

Each fast path is checked against the slow path it skips: the one-scan check of an
event's raw records, the literal user dict for the kernel's id layout, the values that
stand in for their tokens, the millisecond table; and the shared memo entries must
never leak from one document into another.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from assembler.coalesce import coalesce
from assembler.coalesced import Coalesced
from assembler.ecs import (
    _KERNEL_ID_LAYOUT,
    _timestamp,
    _user_fields,
    _user_ids,
    build_doc,
    raw_record_text,
    raw_records_text,
)
from assembler.interpret import interpret
from assembler.parse import Record, parse_record
from auditstream.logline import split_log_line

HEADER = b"audit(1700000000.042:99): "
_SYSCALL_HEAD = (
    b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=1 ppid=10 pid=11"
    b" auid=1000 uid=1000 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3"
)


def _records(*lines: bytes) -> list[Record]:
    return [parse_record(*split_log_line(line)) for line in lines]


# Mostly printable ASCII (the fast path), with the bytes that force escaping mixed in.
_DATA = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
        str.encode
    ),
    st.binary(max_size=30),
    st.sampled_from([b"a\nb", b"100%", b"\x7f", b"caf\xc3\xa9", b"\x1d", b""]),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([1300, 1302, 1320, 9999]), _DATA), min_size=1, max_size=6)
)
def test_raw_records_one_check_equals_escaping_each_record(items: list[tuple[int, bytes]]) -> None:
    """auditd.records from the whole-event check equal type=NAME msg=escape(data) per record."""
    records = [Record(rtype, "", 1, 2, 3, data, b"", data) for rtype, data in items]
    assert raw_records_text(records) == [raw_record_text(rec) for rec in records]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["0", "1000", "65534", "unset", "x"]), min_size=9, max_size=9))
def test_kernel_id_layout_literal_equals_the_general_placement(values: list[str]) -> None:
    """The one-literal user dict for the kernel's nine ids equals the per-id loop, key order too."""
    event = Coalesced(1, 2, 3, "", "audit-rule", "syscall")
    event.user_ids = dict(zip(_KERNEL_ID_LAYOUT, values, strict=True))
    expected = _user_ids(event.user_ids)
    assert orjson.dumps(_user_fields([], event)) == orjson.dumps(expected)


def _clear_all(value: Any) -> None:
    """Empty every dict and list inside ``value`` (a document someone downstream rewrites)."""
    children = list(value.values()) if isinstance(value, dict) else list(value)
    for child in children:
        if isinstance(child, dict | list):
            _clear_all(child)
    value.clear()


def test_documents_share_nothing_through_the_interpreter_memo() -> None:
    """Rewriting one event's document leaves the next event with the same records intact."""
    lines = (
        b"type=SYSCALL msg=" + HEADER + _SYSCALL_HEAD + b' comm="cat" exe="/usr/bin/cat" key="k"',
        b"type=EXECVE msg=" + HEADER + b'argc=2 a0="cat" a1="/etc/hostname"',
        b"type=CWD msg=" + HEADER + b'cwd="/home/user"',
        b"type=PATH msg=" + HEADER + b'item=0 name="/usr/bin/cat" inode=5 dev=08:01 mode=0100755'
        b" ouid=0 ogid=0 rdev=00:00 nametype=NORMAL",
        b"type=PROCTITLE msg=" + HEADER + b"proctitle=636174002F6574632F686F73746E616D65",
        b"type=EOE msg=" + HEADER,
    )
    first = build_doc(_records(*lines), coalesce(_records(*lines)))
    before = orjson.dumps(first)
    path_record = _records(lines[3])[0]
    interpreted_before = interpret(path_record).data
    _clear_all(first)
    second = build_doc(_records(*lines), coalesce(_records(*lines)))
    assert orjson.dumps(second) == before
    assert second["auditd"]["paths"][0]["name"] == "/usr/bin/cat"
    assert second["process"]["args"] == ["cat", "/etc/hostname"]
    assert interpret(path_record).data == interpreted_before


def test_remembered_execve_failure_warns_in_every_event() -> None:
    """An EXECVE whose result is memoised still gives each event its argc and its warning."""
    lines = (
        b"type=SYSCALL msg=" + HEADER + _SYSCALL_HEAD + b' comm="sh" exe="/bin/sh"',
        b"type=EXECVE msg=" + HEADER + b'argc=3 a0="sh" a2="x"',
        b"type=EOE msg=" + HEADER,
    )
    for _ in range(2):
        doc = build_doc(_records(*lines), coalesce(_records(*lines)))
        assert doc["auditd"]["data"]["argc"] == "3"
        assert "failed to find arg a1" in doc["error"]["message"]
        assert "args" not in doc["process"]


def test_exact_fields_and_rule_keys_read_the_token_only_when_the_value_looks_hex() -> None:
    """A quoted hex-looking comm or key stays text; the same value unquoted is decoded."""
    quoted = _records(
        b"type=SYSCALL msg=" + HEADER + _SYSCALL_HEAD + b' comm="414243" exe="/bin/x" key="6B6579"'
    )[0]
    bare = _records(
        b"type=SYSCALL msg=" + HEADER + _SYSCALL_HEAD + b' comm=414243 exe="/bin/x" key=6B6579'
    )[0]
    exact = ("comm", "exe")
    assert interpret(quoted, exact).data["comm"] == "414243"
    assert interpret(quoted, exact).keys == ["6B6579"]
    assert interpret(bare, exact).data["comm"] == "ABC"
    assert interpret(bare, exact).keys == ["key"]


@given(st.integers(min_value=0, max_value=2**33), st.integers(min_value=0, max_value=10**6))
def test_timestamp_table_equals_formatting(sec: int, msec: int) -> None:
    """The millisecond suffix table gives what formatting with carry-over gives."""
    extra, rest = divmod(msec, 1000)
    second = datetime.fromtimestamp(sec + extra, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert _timestamp(sec, msec) == f"{second}.{rest:03d}Z"


# Head and tail pieces of SYSCALL bodies: the kernel's usual tokens, mixed with a few that
# must send the record down the whole-record path (duplicates across the cut, quotes
# spanning it, dropped values, fields two steps share, nested msg, bytes to escape).
_USUAL_HEAD = [
    "arch=c000003e", "syscall=59", "syscall=257", "success=yes", "success=no", "exit=0",
    "exit=-13", "exit=-1", "a0=ffffff9c", "a1=7ffd2a4c", "items=2", "ppid=1", "pid=20001",
]  # fmt: skip
_ODD_HEAD = [
    'comm="a', 'b"', "x=1", "x=2", "res=1", "result=ok", "key=k", 'key="k"', "subj=a:b",
    "subj_user=u", "exit=?", "a1=(null)", 'a2=""', "msg='x=1'", "a3=%41", "a3=caf\xe9",
    "arch=?", "tty=(none)", "ses=4294967295", "a0='q r'", "uid=5", 'a2="x"', "", "pid=5",
    "a1=x\ty", "a2=\x01", "exit=-99999999999999999999",
]  # fmt: skip
_USUAL_TAIL = [
    "uid=0", "gid=0", "euid=0", "tty=pts0", "ses=3", 'comm="grep"', 'exe="/usr/bin/grep"',
    "subj=unconfined", 'key="k1"',
]  # fmt: skip
_ODD_TAIL = [
    "ses=4294967295", "comm=414243", "exe=(null)", 'exe="?"', "subj=u:r:t:s0", "key=(null)",
    "key=6B6579016B6579", "success=yes", "success=no", "res=1", "arch=c000003e", "arch=40000028",
    "syscall=2", "pid=5", "x=1", 'comm="a b"', "result=z", "msg='uid=3'", "auid=9", "a3=%41",
    "subj_role=r", 'comm="caf\xe9"', "", "exit=-2", "items=0", 'b"', "a0=1",
    'exe="\x7f"', "tty=x\ty", 'comm="?"', 'comm=""',
]  # fmt: skip


def _pieces(usual: list[str], odd: list[str]) -> st.SearchStrategy[list[str]]:
    """Some usual tokens and at most two odd ones, in any order."""
    return st.tuples(
        st.lists(st.sampled_from(usual), max_size=8), st.lists(st.sampled_from(odd), max_size=2)
    ).flatmap(lambda parts: st.permutations(parts[0] + parts[1]))


@settings(max_examples=3000, deadline=None)
@given(
    _pieces(_USUAL_HEAD, _ODD_HEAD),
    st.sampled_from([" auid=1000", " auid=1000", " auid=4294967295", " auid=", "auid=1", ""]),
    _pieces(_USUAL_TAIL, _ODD_TAIL),
)
def test_syscall_head_and_memoised_tail_equal_the_whole_record(
    head: list[str], cut: str, tail: list[str]
) -> None:
    """Interpreting a SYSCALL record as head + remembered tail gives interpret()'s data and keys."""
    from assembler.syscall_tail import interpret_syscall

    body = (" ".join(head) + cut + (" " if tail else "") + " ".join(tail)).encode("latin-1")
    rec = Record(1300, "", 1, 2, 3, body.strip(b" "), b"", body)
    for exact in (("comm", "exe"), ()):
        whole = interpret(rec, exact)
        for _ in range(3):  # seen once (whole record), remembered, then from the memo
            split = interpret_syscall(rec, exact)
            assert list(split.data.items()) == list(whole.data.items())
            assert split.keys == whole.keys


def test_the_usual_syscall_record_takes_the_split_path() -> None:
    """A kernel SYSCALL record's head is interpreted alone; a repeated tail is remembered."""
    from assembler import syscall_tail
    from assembler.interpret import interpret_call_head

    head = b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=1 ppid=10 pid=11"
    tail = b'auid=1000 uid=1000 gid=0 tty=pts0 ses=3 comm="sh" exe="/bin/sh" subj=unconfined'
    rec = Record(1300, "", 1, 2, 3, head + b" " + tail, b"", b"")
    assert interpret_call_head(head) is not None
    for _ in range(2):  # a tail is remembered the second time it is seen
        syscall_tail.interpret_syscall(rec, ("comm", "exe"))
    remembered = syscall_tail._TAILS[(tail, ("comm", "exe"))]
    assert remembered.interpreted is not None
    assert remembered.interpreted.data["exe"] == "/bin/sh"
