"""go-libaudit's auparse goldens: every test log line through parse_record + interpret.

The goldens are go-libaudit's own (tests/corpus/go-libaudit, Apache-2.0): one JSON
object per log line, or null where the line must fail to parse. We compare field by
field after json.loads, as the Go test compares Go values.

Every golden string goes through ``escape(golden.encode("utf-8"))`` before the
comparison: Go writes decoded bytes into Go strings as they are (control
characters and ``%`` included), while we percent-escape them, laurel-style, so that
every string maps back to its exact bytes with ``unescape``. For plain ASCII
without ``%`` the transform is the identity, so the goldens still pin the values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from assembler.interpret import interpret
from assembler.parse import ParseError, Record, parse_record
from auditstream.escape import escape
from auditstream.logline import LineError, split_log_line, type_name

TESTDATA = Path(__file__).resolve().parent / "corpus" / "go-libaudit" / "auparse" / "testdata"
LOG_FILES = sorted(TESTDATA.glob("*.log"))

# (file name, line number from 1) -> why we differ from go-libaudit on purpose. Empty.
ALLOWED_DIFFERENCES: dict[tuple[str, int], str] = {}


def go_rfc3339nano(sec: int, msec: int) -> str:
    """Format like Go's time.Time JSON: UTC, 'Z', fraction without trailing zeros."""
    stamp = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{msec:03d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def escaped(golden: str) -> str:
    """The golden string as we write it: its UTF-8 bytes through escape()."""
    return escape(golden.encode("utf-8"))


def log_lines(path: Path) -> list[bytes]:
    """Split like Go's bufio.Scanner: on LF, dropping one trailing CR and a final empty line."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def cases() -> list[Any]:
    """One pytest param per (file, line)."""
    out = []
    for path in LOG_FILES:
        golden = json.loads(path.with_name(path.name + ".golden").read_text())
        lines = log_lines(path)
        assert len(golden) == len(lines), f"{path.name}: {len(lines)} lines, {len(golden)} goldens"
        for number, (line, expected) in enumerate(zip(lines, golden, strict=True), start=1):
            out.append(pytest.param(path.name, number, line, expected, id=f"{path.name}:{number}"))
    return out


def parse_line(line: bytes) -> Record:
    """Split the log line and parse its record."""
    record_type, data, node = split_log_line(line)
    return parse_record(record_type, data, node)


def test_corpus_present() -> None:
    """The copied go-libaudit test data is there (7 logs), so the parametrized test is not empty."""
    assert len(LOG_FILES) == 7


@pytest.mark.parametrize(("name", "number", "line", "expected"), cases())
def test_line_matches_golden(name: str, number: int, line: bytes, expected: Any) -> None:
    """parse_record + interpret give go-libaudit's timestamp, type, serial, raw_msg, keys, data."""
    if (name, number) in ALLOWED_DIFFERENCES:
        pytest.skip(ALLOWED_DIFFERENCES[(name, number)])
    if expected is None:
        with pytest.raises((ParseError, LineError)):
            parse_line(line)
        return
    rec = parse_line(line)
    got = interpret(rec)
    assert go_rfc3339nano(rec.sec, rec.msec) == expected["@timestamp"]
    assert type_name(rec.type).lower() == expected["record_type"].lower()
    assert rec.serial == expected["sequence"]
    assert rec.data.strip().decode() == expected["raw_msg"]
    assert got.keys == [escaped(key) for key in expected.get("keys", [])]
    assert "error" not in expected
    assert got.data == {key: escaped(value) for key, value in expected["data"].items()}
