"""A record cut inside its header is reported once: as a parse error with its text, not also
as a serial gap, unless the gap covers other serials as well (docs/schema.md, "parse-error")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from live_helpers import replay_to_jsonl

from assembler.parse import cut_header_serial
from assembler.reassembler import CompletionReason, LostRange, Reassembler

Event = dict[str, Any]


def event_lines(serial: int) -> list[str]:
    """One execve event (SYSCALL, EOE) with ``serial``."""
    stamp = f"msg=audit(1700000000.123:{serial}):"
    return [
        f"type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1 items=0"
        f' ppid=1 pid={100 + serial} auid=0 uid=0 ses=1 comm="ls" exe="/bin/ls" key=(null)',
        f"type=EOE {stamp} ",
    ]


def markers(docs: list[Event]) -> list[tuple[str, Any]]:
    """(cause, first..last serial or record text) of each marker doc, in a stable order."""
    out: list[tuple[str, Any]] = []
    for doc in docs:
        marker = doc.get("auditstream", {}).get("marker")
        if marker is None:
            continue
        if marker["cause"] == "serial_gap":
            out.append(("serial_gap", (marker["first_serial"], marker["last_serial"])))
        else:
            out.append((marker["cause"], marker["record"]))
    return sorted(out)


CUTS = [
    "type=SYSCALL msg=audit(1700000000.123:4",  # inside the serial
    "type=SYSCALL msg=audit(1700000000.123:",  # after the colon
    "type=SYSCALL msg=audit(1700000000.123",  # before the serial
    "type=SYSCALL msg=aud",  # inside "audit("
]


@pytest.mark.parametrize("native", ["", "0"], ids=["c-where-built", "python"])
@pytest.mark.parametrize("cut", CUTS, ids=["in-serial", "after-colon", "before-serial", "in-audit"])
def test_cut_event_is_one_parse_error_and_no_gap(tmp_path: Path, cut: str, native: str) -> None:
    """A whole event reduced to a SYSCALL line cut in its header gives one parse-error marker, no serial gap."""
    log = tmp_path / "cut.log"
    log.write_text("\n".join([*event_lines(3), cut, *event_lines(5)]) + "\n")
    docs, stderr = replay_to_jsonl(log, tmp_path / "out.jsonl", native)
    assert markers(docs) == [("parse_error", cut)]
    assert b"0 events lost (serial gaps), 1 records failed to parse" in stderr
    assert sorted(d["auditd"]["sequence"] for d in docs if "auditd" in d) == [3, 5]


@pytest.mark.parametrize("native", ["", "0"], ids=["c-where-built", "python"])
def test_gap_beyond_the_cut_record_is_still_reported(tmp_path: Path, native: str) -> None:
    """Serials 4 (cut) and 5 (absent) before 6: the parse error stands for 4, a gap marker for 5."""
    log = tmp_path / "cut.log"
    cut = "type=SYSCALL msg=audit(1700000000.123:"
    log.write_text("\n".join([*event_lines(3), cut, *event_lines(6)]) + "\n")
    docs, stderr = replay_to_jsonl(log, tmp_path / "out.jsonl", native)
    assert markers(docs) == [("parse_error", cut), ("serial_gap", (5, 5))]
    assert b"1 events lost (serial gaps), 1 records failed to parse" in stderr


def test_cut_serial_of_another_event_claims_nothing(tmp_path: Path) -> None:
    """A cut record whose serial digits cannot be the next serial (``:9``) leaves the gap at 4 reported."""
    log = tmp_path / "cut.log"
    cut = "type=SYSCALL msg=audit(1700000000.123:9"
    log.write_text("\n".join([*event_lines(3), cut, *event_lines(5)]) + "\n")
    docs, _ = replay_to_jsonl(log, tmp_path / "out.jsonl")
    assert markers(docs) == [("parse_error", cut), ("serial_gap", (4, 4))]


def test_malformed_header_that_is_not_cut_claims_nothing() -> None:
    """Only a header cut short names a serial it may stand for; a malformed whole one does not."""
    assert cut_header_serial(b"audit(1700000000.123:4") == b"4"
    assert cut_header_serial(b"audit(1700000000.123:") == b""
    assert cut_header_serial(b"aud") == b""
    assert cut_header_serial(b"audit(17x.123:4): arch=1") is None
    assert cut_header_serial(b"audit(1.2:44 junk") is None


def test_sharded_reassembler_claims_only_a_serial_its_digits_name() -> None:
    """With two assemblers the cut record's digits must name this one's next serial; none: no claim."""
    lost: list[LostRange] = []

    def complete(records: list[Any], reason: CompletionReason) -> None:
        del records, reason

    reassembler: Reassembler[Any] = Reassembler(complete, lost.append, shard=(0, 2))

    class Rec:
        def __init__(self, serial: int, type_: int = 1300) -> None:
            self.type, self.node, self.sec, self.msec, self.serial = type_, "", 1, 0, serial

    reassembler.push(Rec(2), 0)
    reassembler.push(Rec(2, 1320), 0)
    assert not reassembler.note_cut_record("", b"")  # another assembler's serial, perhaps
    assert not reassembler.note_cut_record("", b"5")  # not 4, this one's next
    assert reassembler.note_cut_record("", b"4")
    reassembler.push(Rec(6), 0)
    reassembler.push(Rec(6, 1320), 0)
    reassembler.close()
    assert lost == []
