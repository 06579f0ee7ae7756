"""Hostile audit records and the invariants every sink must keep with them.

Shared by tests/test_sink_fuzz.py (hypothesis) and bench/fuzz.py (the long seeded run):
builders for records the way the kernel writes them (untrusted text quoted or hex-encoded,
long EXECVE arguments split as ``aN_len``/``aN[i]``) with hostile bytes inside, the
real in-process path records -> ``assembler.stage.Assembly`` (parse, reassemble,
``event_from_records``) -> the real sinks, and :func:`check_outputs`, which returns every
broken invariant as a sentence (an empty list means all held).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from assembler.parse import ParseError, parse_record
from assembler.stage import Assembly
from auditstream.config import Config
from auditstream.escape import unescape
from auditstream.logline import type_name
from receiver.logsource import LogSource
from receiver.stage import LineCounters, lines_to_records
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from sinks.rawfile import MAX_LINE_BYTES, RawFileSink

RawRecord = tuple[int, bytes, str]

# Hostile input makes the assembler warn about every bad record; the counts are checked.
logging.getLogger("auditstream.assembler").setLevel(logging.ERROR)

SYSCALL, PATH, CWD, EXECVE, EOE, PROCTITLE = 1300, 1302, 1307, 1309, 1320, 1327
USER_CMD, USER_LOGIN, USER_AVC = 1123, 1112, 1107
# Serials the hostile text claims; planned events never use them, so any event that
# carries one was forged by text inside another record.
FORGED_SERIALS = (4242, 4243)
FORGED_RECORD = (
    b"type=SYSCALL msg=audit(1700000000.001:4242): arch=c000003e syscall=59 success=yes"
    b' exit=0 pid=6666 ppid=1 comm="forged" exe="/forged"'
)
# A user-space record: ausearch shows it on its own (a lone SYSCALL it would not).
FORGED_LOGIN = b"type=USER_LOGIN msg=audit(1700000000.001:4243): pid=1 uid=0 res=success"
# Byte strings that have broken audit tooling: line and record separators, NUL, the
# ENRICHED separator 0x1d, quotes, '%' (our escape character, and escaped-looking text),
# invalid and tricky UTF-8, terminal escapes, JSON and key=value syntax, and whole
# forged records.
HOSTILE_PIECES: tuple[bytes, ...] = (
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\x1d",
    b'\x1dUID="root" AUID="root"',
    b"%",
    b"%25",
    b"%0a",
    b"%zz",
    b'"',
    b"'",
    b"\\",
    b'\\"',
    b" ",
    b"\t",
    b"\x0b\x0c",
    b"\x7f",
    b"\x1b[31m",
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x92\xa9",
    b"=",
    b"key=value",
    b"a1[0]=41",
    b"argc=9",
    b"msg='",
    b"): ",
    b"audit(",
    b"node=evil ",
    b'{"event":{"action":"forged"}}\n',
    FORGED_RECORD,
    b"\n" + FORGED_RECORD + b"\n",
    b"\r\n" + FORGED_LOGIN + b"\r\n",
)


def kernel_quote(value: bytes) -> bytes:
    """As the kernel's audit_log_n_untrustedstring: quoted if plain, else upper-case hex."""
    if any(b < 0x21 or b > 0x7E or b == 0x22 for b in value):
        return value.hex().upper().encode()
    return b'"' + value + b'"'


# Generated events (and the forged records) all carry this time; corpus records do not.
PLANNED_SEC, PLANNED_MSEC = 1700000000, 1


def header(serial: int, sec: int = PLANNED_SEC, msec: int = PLANNED_MSEC) -> bytes:
    return b"audit(%d.%03d:%d): " % (sec, msec, serial)


@dataclass(slots=True)
class PlannedEvent:
    """Records of one event and the exact bytes its document must give back."""

    serial: int
    records: list[RawRecord]
    # dotted doc path -> expected bytes (after unescape), or a list of them (argv)
    expect: dict[str, bytes | list[bytes]] = field(default_factory=dict)


def _host_expect(node: str) -> dict[str, bytes | list[bytes]]:
    return {"host.name": node.encode("utf-8", "surrogateescape")} if node else {}


def _plain(value: bytes) -> bool:
    """A value go-libaudit keeps (it drops "", "?" and "(null)")."""
    return value not in (b"", b"?", b"(null)")


def execve_bodies(argv: Sequence[bytes], chunk: int, record_max: int = 7500) -> list[bytes]:
    """EXECVE bodies as the kernel splits them: args longer than ``chunk`` become
    ``aN_len=L aN[0]=… aN[1]=…``; a record holds at most ~``record_max`` bytes."""
    tokens = [b"argc=%d" % len(argv)]
    for index, arg in enumerate(argv):
        if len(arg) <= chunk:
            tokens.append(b"a%d=%s" % (index, kernel_quote(arg)))
            continue
        tokens.append(b"a%d_len=%d" % (index, len(arg)))
        for part, start in enumerate(range(0, len(arg), chunk)):
            tokens.append(b"a%d[%d]=%s" % (index, part, kernel_quote(arg[start : start + chunk])))
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for token in tokens:
        if current and size + len(token) > record_max:
            bodies.append(b" ".join(current))
            current, size = [], 0
        current.append(token)
        size += len(token) + 1
    bodies.append(b" ".join(current))
    return bodies


def exec_event(
    serial: int,
    *,
    comm: bytes,
    exe: bytes,
    cwd: bytes,
    path: bytes,
    argv: Sequence[bytes],
    title: bytes,
    node: str = "",
    chunk: int = 7000,
) -> PlannedEvent:
    """An execve event (SYSCALL, EXECVE…, CWD, PATH, PROCTITLE, EOE) with hostile strings
    encoded as the kernel encodes them."""
    head = header(serial)
    syscall = (
        head + b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=1"
        b" ppid=10 pid=11 auid=1000 uid=1000 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0"
        b" fsgid=0 tty=pts0 ses=3 comm=" + kernel_quote(comm) + b" exe=" + kernel_quote(exe)
        + b' key="fuzz"'
    )  # fmt: skip
    records: list[RawRecord] = [(SYSCALL, syscall, node)]
    records += [(EXECVE, head + body, node) for body in execve_bodies(argv, chunk)]
    records += [
        (CWD, head + b"cwd=" + kernel_quote(cwd), node),
        (
            PATH,
            head + b"item=0 name=" + kernel_quote(path) + b" inode=5 dev=08:01 mode=0100755"
            b" ouid=0 ogid=0 rdev=00:00 nametype=NORMAL",
            node,
        ),
        (PROCTITLE, head + b"proctitle=" + kernel_quote(title), node),
        (EOE, head, node),
    ]
    expect: dict[str, bytes | list[bytes]] = {
        "process.args": [arg.split(b"\x00", 1)[0] for arg in argv]
    }
    if node:
        expect["host.name"] = node.encode()
    # Hex-decoded untrusted text turns NUL into a space (go-libaudit's proctitle rule).
    for key, value in (
        ("process.name", comm),
        ("process.executable", exe),
        ("process.working_directory", cwd),
        ("auditd.paths.0.name", path),
        ("process.title", title),
    ):
        if _plain(value):
            expect[key] = value.replace(b"\x00", b" ")
    return PlannedEvent(serial, records, expect)


def user_event(
    serial: int, text: bytes, record_type: int = USER_CMD, node: str = ""
) -> PlannedEvent:
    """A user-space message: the kernel copies its text raw (no hex), so anything but
    NUL can appear inside ``msg='…'``; hostile files can hold NUL too."""
    data = (
        header(serial) + b"pid=1 uid=0 auid=1000 ses=1 msg='op=fuzz acct=" + text + b" res=success'"
    )
    return PlannedEvent(serial, [(record_type, data, node)], _host_expect(node))


# A whole open() SYSCALL record: ausearch skips SYSCALL records that lack these fields.
_OPEN_FIELDS = (
    b"arch=c000003e syscall=2 success=yes exit=3 a0=1 a1=2 a2=3 a3=4 items=0 ppid=1 pid=7"
    b" auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3"
    b' comm="w" exe="/w" key=(null) '
)


def wide_event(serial: int, fields: int, node: str = "") -> PlannedEvent:
    """One SYSCALL record with ``fields`` extra key=value fields, then EOE."""
    extra = b" ".join(b"f%d=%d" % (i, i) for i in range(fields))
    data = header(serial) + _OPEN_FIELDS + extra
    expect = {**_host_expect(node), f"auditd.data.f{fields - 1}": b"%d" % (fields - 1)}
    return PlannedEvent(serial, [(SYSCALL, data, node), (EOE, header(serial), node)], expect)


def garbage_record(payload: bytes, record_type: int = SYSCALL, node: str = "") -> RawRecord:
    """A record whose header can never parse (it does not start with ``audit(``)."""
    return (record_type, b"x" + payload, node)


# -- the real in-process path ----------------------------------------------------------------


def assemble(records: Iterable[RawRecord]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Push records through the assembler stage's own Assembly (file mode) and close it.

    The events go to a ``file`` sink too (:func:`write_sinks`): configured as such, so that
    they carry their raw records (sinks.sinks_write_raw)."""
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": "events.jsonl"}, {"type": "file", "path": "raw.log"}]
    assembly = Assembly(cfg, event_time=True)
    assembly.push_batch([list(record) for record in records])
    assembly.close()
    return assembly.out, dict(assembly.counts)


@dataclass(slots=True)
class SinkOutputs:
    """What the file sinks wrote for a batch of events, and their counters."""

    jsonl: bytes
    raw_path: Path
    raw: bytes
    jsonl_errors: dict[str, int]
    raw_errors: dict[str, int]
    raw_sent: int
    raw_skipped: int  # events without raw records: nothing to write, neither sent nor lost


def write_sinks(events: Sequence[dict[str, Any]], directory: Path) -> SinkOutputs:
    """Write the events through a real jsonl sink and a real raw ``file`` sink."""
    jsonl_path, raw_path = directory / "events.jsonl", directory / "audit.log"
    jsonl = JsonlSink("jsonl", FileOutputConfig(str(jsonl_path)))
    raw = RawFileSink("file", FileOutputConfig(str(raw_path)))
    for sink in (jsonl, raw):
        sink.write_batch(events)
        sink.close()
    return SinkOutputs(
        jsonl_path.read_bytes(),
        raw_path,
        raw_path.read_bytes(),
        dict(jsonl.stats.errors),
        dict(raw.stats.errors),
        raw.stats.sent_events,
        raw.stats.skipped_events,
    )


def read_raw_file(path: Path) -> tuple[list[RawRecord], LineCounters]:
    """Read an audit.log back with the receiver's own reader and line splitter."""
    counters = LineCounters()
    records: list[RawRecord] = []
    for lines in LogSource([str(path)]).chunks():
        records += lines_to_records(lines, counters)
    return records, counters


# -- invariants ----------------------------------------------------------------------------------

_TO_SPACE = bytes.maketrans(b"\n\r\x00", b"   ")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def doc_strings(value: Any) -> Iterable[str]:
    """Every key and string value in a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from doc_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from doc_strings(item)


def doc_path(doc: dict[str, Any], dotted: str) -> Any:
    """``doc["a"]["b"][0]`` for ``"a.b.0"``; None when absent."""
    node: Any = doc
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def expected_raw_line(record: Sequence[Any]) -> bytes:
    """What the file sink must write for one raw record: one line, CR/LF/NUL as spaces,
    cut to what ausearch reads in one piece."""
    number, data, node = record
    text = bytes(data).translate(_TO_SPACE)
    if number == 0:
        line = text
    else:
        clean = "".join(c if c.isprintable() and not c.isspace() else "_" for c in node)
        prefix = f"node={clean} " if clean else ""
        line = f"{prefix}type={type_name(number)} msg=".encode() + text
    return line[:MAX_LINE_BYTES]


def _audit_id(data: bytes) -> tuple[int, int, int] | None:
    try:
        rec = parse_record(1, data)
    except ParseError:
        return None
    return rec.sec, rec.msec, rec.serial


def check_jsonl(events: Sequence[dict[str, Any]], jsonl: bytes) -> list[str]:
    """One valid JSON line per event, equal to its doc; strings free of control bytes."""
    problems: list[str] = []
    if jsonl and not jsonl.endswith(b"\n"):
        problems.append("jsonl output does not end with a newline")
    lines = jsonl.split(b"\n")[:-1] if jsonl else []
    if len(lines) != len(events):
        problems.append(f"jsonl: {len(lines)} lines for {len(events)} events")
    for index, (line, event) in enumerate(zip(lines, events, strict=False)):
        try:
            doc = json.loads(line)  # bytes: json insists on valid UTF-8 here
        except ValueError as err:
            problems.append(f"jsonl line {index} is not valid JSON: {err}")
            continue
        if doc != event["doc"]:
            problems.append(f"jsonl line {index} differs from its event's doc")
        bad = [s for s in doc_strings(doc) if _CONTROL.search(s)]
        if bad:
            problems.append(f"jsonl line {index}: unescaped control bytes in {bad[0][:80]!r}")
    return problems


def check_docs(
    events: Sequence[dict[str, Any]], plans: Sequence[PlannedEvent], forged_ok: bool = False
) -> list[str]:
    """auditd.records and parse-error markers map back to the exact record bytes; planned
    strings come back exactly; no event carries a forged serial (unless ``forged_ok``: in
    a log file a forged line is a line, and so a record)."""
    problems: list[str] = []
    by_serial = {plan.serial: plan for plan in plans}
    for event in events:
        doc, raw = event["doc"], event["raw"]
        marker = doc_path(doc, "auditstream.marker")
        if isinstance(marker, dict) and marker.get("cause") == "parse_error":
            text = unescape(marker["record"])
            if raw and not text.endswith(bytes(raw[0][1])[:4096]):
                problems.append(
                    f"parse-error marker text does not end with the record: {text[:80]!r}"
                )
            continue
        if not raw:
            continue
        texts = doc_path(doc, "auditd.records") or []
        want = [b"type=%s msg=%s" % (type_name(r[0]).encode(), bytes(r[1])) for r in raw]
        if [unescape(t) for t in texts] != want:
            problems.append(
                f"auditd.records of event {event['key']} do not unescape to its records"
            )
        ids = {_audit_id(bytes(r[1])) for r in raw}
        if len(ids) != 1:
            problems.append(f"event {event['key']} mixes records of several events: {ids}")
        _node, sec, msec, serial = event["key"]
        if (sec, msec) != (PLANNED_SEC, PLANNED_MSEC):
            continue  # a (mutated) corpus record: nothing planned to compare with
        if serial in FORGED_SERIALS and not forged_ok:
            problems.append(f"an event with forged serial {serial} came out")
        plan = by_serial.get(serial)
        if plan is None:
            continue
        for dotted, expected in plan.expect.items():
            got = doc_path(doc, dotted)
            if isinstance(expected, list):
                back = [unescape(v) for v in got] if isinstance(got, list) else got
            else:
                back = unescape(got) if isinstance(got, str) else got
            if back != expected:
                problems.append(
                    f"event {serial}: {dotted} is {got!r:.120}, expected {expected!r:.120}"
                )
    return problems


def check_raw(events: Sequence[dict[str, Any]], outputs: SinkOutputs) -> list[str]:
    """The file sink wrote one line per raw record, in order, and reading it back with our
    own splitter gives exactly those records: nothing forged, nothing lost."""
    problems: list[str] = []
    records = [record for event in events for record in event["raw"]]
    expected = [expected_raw_line(record) + b"\n" for record in records]
    if outputs.raw != b"".join(expected):
        problems.append("file sink output differs from one sanitised line per raw record")
    lines = outputs.raw.split(b"\n")[:-1]
    if len(lines) != len(records):
        problems.append(f"file sink: {len(lines)} lines for {len(records)} raw records")
    long_lines = [len(line) for line in lines if len(line) > MAX_LINE_BYTES]
    if long_lines:
        problems.append(f"file sink lines longer than ausearch reads: {long_lines[:3]}")
    back, counters = read_raw_file(outputs.raw_path)
    if len(back) != len(records):
        problems.append(
            f"read back {len(back)} records from {len(records)} written "
            f"(blank {counters.blank_lines}, comment {counters.comment_lines})"
        )
    for written, read in zip(records, back, strict=False):
        if written[0] != 0 and read[0] != written[0]:
            problems.append(f"record type {written[0]} read back as {read[0]}")
        if written[0] != 0 and _audit_id(bytes(written[1])) != _audit_id(read[1]):
            problems.append(f"record {bytes(written[1])[:60]!r} read back with another audit id")
    with_records = sum(1 for event in events if event["raw"])
    if (outputs.raw_sent, outputs.raw_skipped) != (with_records, len(events) - with_records):
        problems.append(
            f"file sink sent {outputs.raw_sent} and skipped {outputs.raw_skipped} of "
            f"{len(events)} events, {with_records} of them with records"
        )
    return problems


def check_accounting(
    pushed: Sequence[RawRecord], events: Sequence[dict[str, Any]], counts: dict[str, int]
) -> list[str]:
    """Every record pushed comes out once, in an event or a parse-error marker."""
    problems: list[str] = []
    went_in = Counter((t, bytes(d), n) for t, d, n in pushed if t != 0)
    came_out = Counter(
        (int(r[0]), bytes(r[1]), str(r[2])) for event in events for r in event["raw"]
    )
    if went_in != came_out:
        lost = sum((went_in - came_out).values())
        extra = sum((came_out - went_in).values())
        problems.append(f"records in != records out: {lost} missing, {extra} extra")
    markers = sum(
        1 for e in events if doc_path(e["doc"], "auditstream.marker.cause") == "parse_error"
    )
    if markers != counts["parse_errors"] + counts["interpret_errors"]:
        problems.append(
            f"{markers} parse-error markers for {counts['parse_errors']} parse errors "
            f"and {counts['interpret_errors']} interpret errors"
        )
    crashes = interpret_crashes(events)
    if crashes:
        problems.append(f"{len(crashes)} events failed to interpret (a crash): {crashes[0]}")
    return problems


def interpret_crashes(events: Sequence[dict[str, Any]]) -> list[str]:
    """Errors of events that failed to interpret for another reason than CoalesceError
    (records that do not form an event, e.g. a lone EOE: refused on purpose)."""
    errors = (doc_path(e["doc"], "auditstream.marker.error") for e in events)
    return [
        error
        for error in errors
        if isinstance(error, str)
        and error.startswith("interpret:")
        and not error.startswith("interpret: CoalesceError(")
    ]


def check_outputs(
    pushed: Sequence[RawRecord],
    events: Sequence[dict[str, Any]],
    counts: dict[str, int],
    outputs: SinkOutputs,
    plans: Sequence[PlannedEvent] = (),
    forged_ok: bool = False,
) -> list[str]:
    """Every invariant, as a list of what broke."""
    return [
        *check_accounting(pushed, events, counts),
        *check_jsonl(events, outputs.jsonl),
        *check_docs(events, plans, forged_ok),
        *check_raw(events, outputs),
    ]


def run_through_sinks(
    pushed: Sequence[RawRecord], plans: Sequence[PlannedEvent] = (), forged_ok: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int], SinkOutputs, list[str]]:
    """Assemble, write both file sinks in a scratch directory, check everything."""
    events, counts = assemble(pushed)
    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch:
        outputs = write_sinks(events, Path(scratch))
        problems = check_outputs(pushed, events, counts, outputs, plans, forged_ok)
    return events, counts, outputs, problems


def kafka_encoder() -> Any:
    """The real KafkaSink with no producer (no broker): only its message encoding runs."""
    from sinks.kafka import KafkaSink

    class NoProducer(KafkaSink):
        def _start_producer(self) -> Any:
            return None

    return NoProducer.from_options({"brokers": ["127.0.0.1:9"], "topic": "audit"})


def check_kafka(sink: Any, events: Sequence[dict[str, Any]]) -> list[str]:
    """Each message value is the doc's JSON on one line; key and host header are host.name
    (a doc without one: the empty key and no host header)."""
    problems = []
    for event in events:
        encoded = sink._encode(event)
        if encoded is None:
            problems.append(f"kafka refused event {event['key']}")
            continue
        value, key, headers = encoded
        host = (event["doc"].get("host") or {}).get("name") or ""
        if b"\n" in value or orjson.loads(value) != event["doc"]:
            problems.append(f"kafka value of {event['key']} is not its doc on one line")
        if key != host.encode() or dict(headers).get("host") != (host.encode() or None):
            problems.append(f"kafka key/host header {key!r} is not host.name {host!r}")
    return problems


def log_text(records: Iterable[RawRecord]) -> bytes:
    """Records as audit.log lines, exactly as given (a newline inside data splits the line)."""
    out = io.BytesIO()
    for number, data, node in records:
        prefix = f"node={node} ".encode("utf-8", "surrogateescape") if node else b""
        out.write(prefix + b"type=" + type_name(number).encode() + b" msg=" + data + b"\n")
    return out.getvalue()


__all__ = [
    "FORGED_LOGIN",
    "FORGED_RECORD",
    "FORGED_SERIALS",
    "HOSTILE_PIECES",
    "PlannedEvent",
    "RawRecord",
    "SinkOutputs",
    "assemble",
    "check_kafka",
    "check_outputs",
    "exec_event",
    "garbage_record",
    "interpret_crashes",
    "kafka_encoder",
    "kernel_quote",
    "log_text",
    "run_through_sinks",
    "user_event",
    "wide_event",
    "write_sinks",
]
