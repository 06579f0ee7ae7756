"""A 0x1d inside a ``"…"`` value is value text; the ENRICHED trailer starts at the first 0x1d
outside one (assembler/parse.py ``trailer_start``, assembler/csrc/parse.c the same)."""

from __future__ import annotations

from pathlib import Path

from hostile_audit import EOE, EXECVE, SYSCALL, assemble, header, log_text
from hypothesis import given, settings
from hypothesis import strategies as st
from live_helpers import replay_to_jsonl
from test_native_parse import c_parser, outcome

from assembler.parse import parse_record

# The kernel hex-encodes an argument holding a control character: this line is forged.
FORGED_ARGS = b'argc=3 a0="x\x1dy" a1="second" a2="third"'
TRAILER = b'\x1dARCH=x86_64 SYSCALL=execve AUID="root" UID="root"'
SYSCALL_BODY = (
    b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=0 ppid=1 pid=100"
    b' auid=0 uid=0 ses=1 comm="ls" exe="/bin/ls" key=(null)'
)


def test_forged_quoted_separator_keeps_every_argument() -> None:
    """An EXECVE record with a 0x1d inside a0="…" keeps a1 and a2, and reports no error."""
    head = header(7)
    events, counts = assemble(
        [(SYSCALL, head + SYSCALL_BODY + TRAILER, ""), (EXECVE, head + FORGED_ARGS, ""),
         (EOE, head, "")]
    )  # fmt: skip
    (doc,) = [event["doc"] for event in events]
    assert doc["process"]["args"] == ["x%1dy", "second", "third"]
    assert "error" not in doc
    syscall = parse_record(SYSCALL, head + SYSCALL_BODY + TRAILER)
    assert (syscall.body, syscall.enriched) == (SYSCALL_BODY, TRAILER[1:])  # a real trailer
    assert counts["parse_errors"] == counts["interpret_errors"] == 0


def test_separator_after_quoted_one_starts_the_trailer() -> None:
    """A record with a 0x1d in a quoted value and auditd's trailer after it: the trailer is the part after the second."""
    record = parse_record(EXECVE, header(7) + FORGED_ARGS + b' \x1dA0="x"')
    assert record.body == FORGED_ARGS
    assert record.enriched == b'A0="x"'


def test_separator_in_single_quoted_user_text_still_starts_the_trailer() -> None:
    """A 0x1d in msg='…' (user text, not a "…" value) starts the trailer, as auparse reads it."""
    record = parse_record(1123, header(7) + b"pid=1 msg='op=x \x1dUID=\"root\"'")
    assert record.body == b"pid=1 msg='op=x"
    assert record.enriched == b'UID="root"\''


_PIECES = st.lists(
    st.sampled_from([b'"', b"\x1d", b"a=", b" ", b"x", b"'", b'UID="root"', b"\\"]), max_size=16
).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(body=_PIECES)
def test_c_and_python_split_alike(body: bytes) -> None:
    """Bodies of quotes, 0x1d bytes and text split into body and trailer alike in C and Python."""
    data = b"audit(1700000000.123:7): " + body
    assert outcome(c_parser(), EXECVE, data, "") == outcome(parse_record, EXECVE, data, "")


def test_replay_of_forged_line_keeps_its_args(tmp_path: Path) -> None:
    """`auditstream replay` of a log with the forged EXECVE line: every argument in the doc, C and Python."""
    head = header(7)
    log = tmp_path / "forged.log"
    log.write_bytes(
        log_text([(SYSCALL, head + SYSCALL_BODY + TRAILER, ""), (EXECVE, head + FORGED_ARGS, ""),
                  (EOE, head, "")])
    )  # fmt: skip
    for native in ("", "0"):
        docs, _ = replay_to_jsonl(log, tmp_path / f"out{native}.jsonl", native)
        (doc,) = [d for d in docs if "auditd" in d]
        assert doc["process"]["args"] == ["x%1dy", "second", "third"], native
        assert "error" not in doc, native
