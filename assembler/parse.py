"""Parse one raw audit record: header, body, ENRICHED trailer, key=value fields.

Pure functions, bytes in, values out. ``parse_record`` runs for every record:
a well-formed header ``audit(SEC.MSEC:SERIAL): `` is read with one anchored
regex match; anything else takes the step-by-step path that says what is wrong.
The field syntax is go-libaudit's (auparse):

* a field is ``key=value`` with ``key`` in ``[a-z0-9_-]+``; the value is an
  unquoted run without quotes or whitespace, a ``'…'`` string (a backslash-quote does
  not end it) or a ``"…"`` string, which ends at the next ``"``. Upper-case ENRICHED
  keys never match, and
  text that is not ``key=value`` (``a1[0]=…``, ``avc:  denied``) is skipped.
* "whitespace" is Go's ``\\s``: space, tab, LF, CR and FF (not VT, not 0x1d).

Deliberate differences from go-libaudit's header parser: the data must begin
with ``audit(`` (after leading whitespace) and SEC/MSEC/SERIAL must be plain
decimal digits (Go also accepts a sign and finds the first ``(`` anywhere).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER_PREFIX = b"audit("
_ENRICHED_SEPARATOR = b"\x1d"
_MAX_SERIAL = 2**32 - 1
# Go parses SEC and MSEC as int64; anything longer cannot be a real timestamp.
_MAX_DIGITS = 18
_GO_SPACE = b" \t\n\r\f"

# go-libaudit's field regex, with Go's \s spelled out (Python's \s adds \v), except that
# a "…" value ends at the next '"' (go-libaudit skips backslash-quote): the kernel quotes
# untrusted text without escaping '\', so a comm ending in '\' (any user can set one)
# would swallow the exe= field after it, and a binary named /tmp/exe=/bin/ls then forged
# exe=/bin/ls. auparse (C) and ausearch read it this way too. The look-behind changes
# no match (a key preceded by a key character would have matched one position earlier)
# but stops Python's backtracking from going quadratic on a long run of key characters
# without '=' (RE2, which Go uses, is linear anyway).
FIELD_REGEX = (
    r"""(?<![a-z0-9_-])([a-z0-9_-]+)="""
    r"""((?:[^"'\t\n\f\r ]+)|'(?:\\'|[^'])*'|"[^"]*")"""
)
FIELD_PATTERN = re.compile(FIELD_REGEX.encode("ascii"))
# An ENRICHED key starts after a space (or at the start); its value runs to the next key.
_ENRICHED_KEY = re.compile(rb"(?:^|(?<=[ \t]))([A-Z][A-Z0-9_-]*)=")


# The usual header, anchored: Go-space, audit(SEC.MSEC:SERIAL), then ": ".
_FAST_HEADER = re.compile(rb"[ \t\n\r\f]*audit\(([0-9]{1,18})\.([0-9]{1,18}):([0-9]{1,18})\): ")


# What may follow "audit(" in a header cut short: SEC, ".", MSEC, ":", SERIAL, each cut.
_CUT_HEADER_REST = re.compile(rb"[0-9]*(?:\.[0-9]*(?::([0-9]*))?)?")


class ParseError(ValueError):
    """The record's header cannot be parsed; the message says what is wrong."""


@dataclass(slots=True)
class Record:
    """One audit record with its header parsed (see docs/internals.md)."""

    type: int
    node: str
    sec: int  # seconds of audit(SEC.MSEC:SERIAL)
    msec: int  # milliseconds as an integer (".03" is 3 ms, as go-libaudit reads it)
    serial: int  # 0 .. 2**32-1
    body: bytes  # text after the header, without the ENRICHED trailer
    enriched: bytes  # after 0x1d, b"" when absent
    data: bytes  # the original data bytes, untouched


def _decimal(token: bytes, what: str) -> int:
    # bytes.isdigit() is ASCII-only, so int() cannot see '+', '_' or spaces.
    if not token.isdigit() or len(token) > _MAX_DIGITS:
        raise ParseError(f"bad {what} in audit header: {token[:24]!r}")
    return int(token)


def parse_record(type: int, data: bytes, node: str = "", *, trailer: bool = True) -> Record:
    """Parse ``audit(SEC.MSEC:SERIAL): body`` into a :class:`Record`; raise :class:`ParseError`.

    ``trailer=False``: a 0x1d byte is part of the body, not the start of an ENRICHED
    trailer. For records read from the kernel, which never appends one: there a 0x1d can
    only come from user text (an AUDIT_USER message), and must not name fields.
    """
    match = _FAST_HEADER.match(data)
    if match is None:
        return _parse_record_checked(type, data, node, trailer)
    sec, msec, serial = int(match[1]), int(match[2]), int(match[3])
    if serial > _MAX_SERIAL:
        raise ParseError(f"serial {serial} does not fit in 32 bits")
    if msec >= 1000:  # Go's time.Unix carries excess milliseconds into seconds
        sec += msec // 1000
        msec %= 1000
    body_start = match.end()
    separator = trailer_start(data, body_start) if trailer else -1
    if separator < 0:
        return Record(type, node, sec, msec, serial, data[body_start:].strip(_GO_SPACE), b"", data)
    return Record(
        type,
        node,
        sec,
        msec,
        serial,
        data[body_start:separator].strip(_GO_SPACE),
        data[separator + 1 :].strip(_GO_SPACE),
        data,
    )


def trailer_start(data: bytes, body_start: int) -> int:
    """Where the ENRICHED trailer starts: the first 0x1d after ``body_start`` outside a
    ``"…"`` value (an even number of ``"`` between them); -1: no trailer.

    auditd appends its 0x1d after the whole record, and the kernel hex-encodes a value
    with a control character or a ``"``, so a 0x1d inside a ``"…"`` value is a forged or
    corrupted line's: it stays value text (as go-libaudit and laurel read the value) rather
    than cut off the fields after it (auparse cuts at the first 0x1d anywhere). A 0x1d in
    other text (an AUDIT_USER message's ``msg='…'``, which the kernel does not escape)
    still starts the trailer. ``assembler/csrc/parse.c`` does the same."""
    separator = data.find(_ENRICHED_SEPARATOR, body_start)
    quotes, counted_to = 0, body_start
    while separator >= 0:
        quotes += data.count(b'"', counted_to, separator)
        if not quotes & 1:
            return separator
        counted_to = separator
        separator = data.find(_ENRICHED_SEPARATOR, separator + 1)
    return -1


def _parse_record_checked(type: int, data: bytes, node: str, trailer: bool = True) -> Record:
    """The general header path: odd separators after ``)``, and precise errors."""
    start = data.find(_HEADER_PREFIX)
    if start < 0 or (start and data[:start].strip(_GO_SPACE)):
        raise ParseError(f"record does not start with audit(: {data[:40]!r}")
    start += len(_HEADER_PREFIX)
    dot = data.find(b".", start)
    colon = data.find(b":", dot + 1) if dot >= 0 else -1
    close = data.find(b")", colon + 1) if colon >= 0 else -1
    if close < 0:
        raise ParseError(f"truncated audit header: {data[:60]!r}")
    sec = _decimal(data[start:dot], "seconds")
    msec = _decimal(data[dot + 1 : colon], "milliseconds")
    serial = _decimal(data[colon + 1 : close], "serial")
    if serial > _MAX_SERIAL:
        raise ParseError(f"serial {serial} does not fit in 32 bits")
    if msec >= 1000:  # Go's time.Unix carries excess milliseconds into seconds
        sec += msec // 1000
        msec %= 1000

    # Body: after "): ", else (go-libaudit) after the first ':' or ' ' following ')'.
    if data[close + 1 : close + 3] == b": ":
        body_start = close + 3
    else:
        colon_after = data.find(b":", close + 1)
        space_after = data.find(b" ", close + 1)
        found = [i for i in (colon_after, space_after) if i >= 0]
        body_start = min(found) + 1 if found else len(data)
    separator = trailer_start(data, body_start) if trailer else -1
    if separator < 0:
        body, enriched = data[body_start:], b""
    else:
        body, enriched = data[body_start:separator], data[separator + 1 :]
    return Record(
        type=type,
        node=node,
        sec=sec,
        msec=msec,
        serial=serial,
        body=body.strip(_GO_SPACE),
        enriched=enriched.strip(_GO_SPACE),
        data=data,
    )


def cut_header_serial(data: bytes) -> bytes | None:
    """The serial digits of a header cut short (a torn line): ``b"4"`` for
    ``audit(1700000000.123:4``, which begins the serial; ``b""`` when cut before them
    (``aud``, ``audit(1700000000.123:``). None when ``data`` is not the beginning of a
    header ``audit(SEC.MSEC:SERIAL)`` (a malformed header, not a cut one)."""
    text = data.strip(_GO_SPACE)
    head = text[: len(_HEADER_PREFIX)]
    if not _HEADER_PREFIX.startswith(head):
        return None
    match = _CUT_HEADER_REST.fullmatch(text, len(head))
    if match is None:
        return None
    return match[1] or b""


def fields(body: bytes) -> list[tuple[bytes, bytes, bool]]:
    """Return ``(key, value, was_quoted)`` for each field, in order, duplicates kept.

    A quoted value loses its enclosing quotes; nothing else is changed (no trimming,
    no dropping of ``?`` or ``(null)``, no decoding: that is :mod:`assembler.interpret`).
    """
    out: list[tuple[bytes, bytes, bool]] = []
    for key, value in FIELD_PATTERN.findall(body):
        if value[:1] in (b'"', b"'"):
            out.append((key, value[1:-1], True))
        else:
            out.append((key, value, False))
    return out


def enriched_fields(enriched: bytes) -> dict[str, bytes]:
    """Parse the ENRICHED trailer (``ARCH=x86_64 AUID="root" SADDR={ … }``).

    A value runs from its ``KEY=`` to the next `` KEY=`` (upper-case key), so
    values with spaces such as ``SADDR=unknown family(0)`` stay whole; one pair of
    enclosing double quotes is removed. The first occurrence of a key wins.
    """
    out: dict[str, bytes] = {}
    keys = list(_ENRICHED_KEY.finditer(enriched))
    for index, match in enumerate(keys):
        end = keys[index + 1].start() if index + 1 < len(keys) else len(enriched)
        value = enriched[match.end() : end].strip(_GO_SPACE)
        if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
            value = value[1:-1]
        out.setdefault(match.group(1).decode("ascii"), value)
    return out
