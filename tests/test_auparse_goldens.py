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
from hypothesis import given, settings
from hypothesis import strategies as st

from assembler.interpret import _FIELDS, _parse_fields, interpret
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


def _regex_fields(text: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """The regex reading of a body without duplicates or msg=, None otherwise."""
    pairs = _FIELDS.findall(text)
    origs = dict(pairs)
    if len(origs) != len(pairs) or "msg" in origs:
        return None
    values = {key: orig.strip("'\" ") for key, orig in origs.items()}
    dropped = [key for key, value in values.items() if value in ("", "?", "?,", "(null)")]
    for key in dropped:
        del values[key], origs[key]
    return values, origs


_BODY_PIECES = st.sampled_from(
    [
        "a",
        "b",
        "-",
        "_",
        "1",
        "=",
        '"',
        "'",
        " ",
        "x=",
        '="',
        '" ',
        "?",
        "(null)",
        "\t",
        "\v",
        "A",
        "msg=",
        "\x85",
        "%",
        "\\",
        "k=v",
        'n="p q"',
        ' c="bash"',
        ' e=""',
        " d=?",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_BODY_PIECES, min_size=1, max_size=16).map("".join))
def test_plain_split_equals_regex_fields(text: str) -> None:
    """The str-method split of plain bodies gives exactly the regex's fields, in order."""
    expected = _regex_fields(text)
    if expected is None:
        return
    values, origs = _parse_fields(text)
    assert (values, origs) == expected
    assert list(values) == list(expected[0]) and list(origs) == list(expected[1])


def test_interpret_results_are_fresh_copies() -> None:
    """Memoised records still give the caller its own dict: mutating one leaves the next intact."""
    rec = parse_record(1307, b'audit(1700000000.001:5): cwd="/home/user"')
    first = interpret(rec)
    first.data["cwd"] = "changed"
    first.keys.append("x")
    second = interpret(rec)
    assert second.data == {"cwd": "/home/user"} and second.keys == []
