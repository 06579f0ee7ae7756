"""Laurel's and linux-audit-parser-rs's record lines through our parser.

Every record line must split, parse (header, fields, ENRICHED trailer) and interpret
without error. The typed expectations transcribed from linux-audit-parser-rs's tests
(derived/linux-audit-parser-rs.expected.json) are checked where their meaning is the
same as ours: event id, message type, raw field values (their typed numbers compared
as numbers), ENRICHED fields, the fields of ``msg='…'`` and SELinux AVC permissions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from assembler.interpret import decode_hex, interpret
from assembler.parse import Record, enriched_fields, fields, parse_record
from auditstream.logline import split_log_line, type_name

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PARSER_DATA = CORPUS / "linux-audit-parser-rs" / "src" / "testdata"
LAUREL_DATA = CORPUS / "laurel" / "src" / "testdata"
EXPECTED = CORPUS / "derived" / "linux-audit-parser-rs.expected.json"

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"conformance corpus not found at {CORPUS}"
)

# (file, key) -> why go-libaudit's field syntax, which we follow, reads it differently.
DIFFERENT_MEANING: dict[tuple[str, str], str] = {
    ("line-broken-subj2.txt", "subj"): (
        "subj==/usr/sbin/ntpd (enforce): the go-libaudit value ends at the space "
        "('=/usr/sbin/ntpd'); linux-audit-parser keeps '(enforce)'"
    ),
}


def record_lines(path: Path) -> list[bytes]:
    """Record lines of a file, skipping blank and '#' lines as Laurel's test harness does."""
    return [
        line
        for line in path.read_bytes().split(b"\n")
        if line.strip() and not line.startswith(b"#")
    ]


def corpus_lines() -> list[Any]:
    """One pytest param per record line of both corpora."""
    files = sorted(PARSER_DATA.glob("line-*.txt")) + sorted(LAUREL_DATA.rglob("*.txt"))
    out = []
    for path in files:
        if path.name == "README.txt":
            continue
        for number, line in enumerate(record_lines(path), start=1):
            rel = path.relative_to(CORPUS)
            out.append(pytest.param(line, id=f"{rel}:{number}"))
    return out


def parse_file(name: str) -> Record:
    """Parse the single record of a linux-audit-parser-rs line file."""
    (line,) = record_lines(PARSER_DATA / name)
    return parse_record(*split_log_line(line))


def test_corpus_sizes() -> None:
    """Both corpora are complete: 56 parser lines and 525 laurel record lines."""
    assert len(list(PARSER_DATA.glob("line-*.txt"))) == 56
    laurel = [p for p in LAUREL_DATA.rglob("*.txt") if p.name != "README.txt"]
    assert sum(len(record_lines(p)) for p in laurel) == 525


@pytest.mark.parametrize("line", corpus_lines() if CORPUS.is_dir() else [])
def test_line_parses(line: bytes) -> None:
    """The line splits, its header parses, and fields/trailer/interpretation do not fail."""
    rec = parse_record(*split_log_line(line))
    assert 0 <= rec.serial < 2**32 and 0 <= rec.msec < 1000 and rec.sec > 10**9
    assert b"\x1d" not in rec.body
    assert (rec.enriched != b"") == (b"\x1d" in line)
    body_fields = fields(rec.body)
    assert all(re.fullmatch(rb"[a-z0-9_-]+", key) for key, _, _ in body_fields)
    if rec.enriched:
        assert enriched_fields(rec.enriched)
    interpret(rec)


def _split_debug_map(text: str) -> list[tuple[str, str]]:
    """Split 'k=Str:<v> k2=Empty' (Rust Debug of a Map) into (key, rendered value) pairs."""
    out: list[tuple[str, str]] = []
    index = 0
    while index < len(text):
        eq = text.index("=", index)
        key, index = text[index:eq].strip(), eq + 1
        if text.startswith("Empty", index):
            out.append((key, "Empty"))
            index += len("Empty")
        else:
            depth, end = 0, index
            while True:
                depth += {"<": 1, ">": -1}.get(text[end], 0)
                end += 1
                if depth == 0 and text[end - 1] == ">":
                    break
            out.append((key, text[index:end]))
            index = end
        while index < len(text) and text[index] == " ":
            index += 1
    return out


def _check_value(raw: bytes | None, rendered: str, where: str) -> None:
    """Compare one raw field value with a Rust Debug rendering of the typed value."""
    kind, _, inner = rendered.partition(":<")
    inner = inner[:-1] if inner.endswith(">") else inner
    if rendered == "Empty":
        assert raw in (None, b"", b"?", b"(null)"), where
        return
    assert raw is not None, f"{where}: field missing"
    if kind == "Num":
        if inner.startswith("0x"):
            assert int(raw, 16) == int(inner, 16), where
        elif inner.startswith("0o"):
            assert int(raw, 8) == int(inner, 8), where
        else:
            assert int(raw) == int(inner), where
    elif kind == "Str":
        assert inner.encode() in (raw, decode_hex(raw)), where
    elif kind == "Map":
        inner_fields = {k.decode(): v for k, v, _ in fields(raw)}
        for key, value in _split_debug_map(inner):
            _check_value(inner_fields.get(key), value, f"{where}.{key}")
    else:
        raise AssertionError(f"{where}: unexpected kind {kind}")


def asserted_lines() -> list[Any]:
    """The linux-audit-parser-rs expectations that use its default (enriched, split msg) options."""
    if not EXPECTED.is_file():
        return []
    entries = json.loads(EXPECTED.read_text())["asserted_lines"]
    return [
        pytest.param(entry, id=f"{Path(entry['file']).name}")
        for entry in entries
        if entry["parser_options"] == {"enriched": True, "split_msg": True}
    ]


@pytest.mark.parametrize("entry", asserted_lines())
def test_linux_audit_parser_expectations(entry: dict[str, Any]) -> None:
    """Event id, message type and each typed field value agree with linux-audit-parser-rs."""
    name = Path(entry["file"]).name
    rec = parse_file(name)
    if "id" in entry:
        assert rec.sec * 1000 + rec.msec == entry["id"]["timestamp_ms"]
        assert rec.serial == entry["id"]["sequence"]
    if "type" in entry:
        # linux-audit-parser names UNKNOWN[1334] BPF; both mean record type 1334.
        assert type_name(rec.type) == entry["type"] or (rec.type, entry["type"]) == (1334, "BPF")
    body: dict[str, bytes] = {}
    for key, value, _ in fields(rec.body):
        body.setdefault(key.decode(), value)
    trailer = enriched_fields(rec.enriched)
    checked = 0
    for item in entry.get("body_debug", []):
        key, _, rendered = item.partition(": ")
        if (name, key) in DIFFERENT_MEANING:
            continue
        if rendered.startswith("List:<"):  # SELinux AVC permission set: our seresult/seperms
            data = interpret(rec).data
            assert data["seresult"] == key
            assert data["seperms"].split(",") == rendered[6:-1].split()
        elif key.isupper():
            _check_value(trailer.get(key), rendered, f"{name}:{key}")
        else:
            _check_value(body.get(key), rendered, f"{name}:{key}")
        checked += 1
    assert checked == len(entry.get("body_debug", [])) - sum(
        1 for n, _ in DIFFERENT_MEANING if n == name
    )


def test_other_assertions() -> None:
    """uring_op and prog-id values, the empty EOE body and the argc=0 EXECVE keep their a0."""
    uringop = {k: v for k, v, _ in fields(parse_file("line-uringop.txt").body)}
    assert uringop[b"uring_op"] == b"18"
    bpf = {k: v for k, v, _ in fields(parse_file("line-bpf.txt").body)}
    assert bpf[b"prog-id"] == b"75"
    assert fields(parse_file("line-eoe.txt").body) == []
    execve = parse_file("line-execve.txt")
    assert fields(execve.body) == [(b"argc", b"0", False), (b"a0", b"whoami", True)]
    assert interpret(execve).data == {"argc": "0", "a0": "whoami"}


@pytest.mark.parametrize("number", [1, 2, 3])
def test_sockaddr_unknown_family(number: int) -> None:
    """SADDR=unknown family(0) and variants stay one ENRICHED value; family 0 keeps saddr."""
    rec = parse_file(f"line-sockaddr-unknown-{number}.txt")
    assert enriched_fields(rec.enriched)["SADDR"].startswith(b"unknown")
    data = interpret(rec).data
    assert data["family"] == "0" and "saddr" in data
