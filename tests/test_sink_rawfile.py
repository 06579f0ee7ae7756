"""The raw ``file`` sink: audit.log text that the real ausearch reads back."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from auditstream.logline import LineError, split_log_line
from sinks.config import FileOutputConfig
from sinks.rawfile import RawFileSink

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CORPUS_LOGS = [
    "go-libaudit/auparse/testdata/audit-rhel6.log",
    "go-libaudit/auparse/testdata/audit-rhel7.log",
    "go-libaudit/auparse/testdata/audit-ubuntu16.log",
    "go-libaudit/auparse/testdata/audit-ubuntu17.log",
    "go-libaudit/testdata/normal.log",
    "go-libaudit/testdata/out_of_order.log",
    "laurel/src/testdata/shell-proc-trace.txt",
    "laurel/src/testdata/shell-proc-trace-reordered.txt",
    "laurel/src/testdata/record-execve-long.txt",
    "laurel/src/testdata/record-syscall-nullkey.txt",
]
_AUDIT_ID = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\)")


def corpus_file(relative: str) -> Path:
    """The corpus file, or a skip when the corpus is not checked out next to the repo."""
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"conformance corpus not found at {CORPUS}")
    return path


def events_from_log(path: Path) -> list[dict[str, Any]]:
    """Group a log's records into events by their audit(...) id, in first-seen order."""
    grouped: dict[tuple[str, bytes], dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        try:
            number, data, node = split_log_line(line)
        except LineError:
            continue  # comments, blank lines and the corpus's deliberate msg=? line
        found = _AUDIT_ID.search(data)
        if found is None:
            continue
        sec, msec, serial = (int(part) for part in found.groups())
        event = grouped.setdefault(
            (node, found.group(0)),
            {"key": [node, sec, msec, serial], "raw": [], "doc": {}},
        )
        event["raw"].append([number, data, node])
    return list(grouped.values())


def events_are_contiguous(path: Path) -> bool:
    """True when no event's records are interleaved with another event's in the log."""
    ids = [
        found.group(0)
        for line in path.read_bytes().splitlines()
        if line.startswith((b"type=", b"node=")) and (found := _AUDIT_ID.search(line))
    ]
    closed: set[bytes] = set()
    for previous, current in zip([b"", *ids], ids, strict=False):
        if current != previous:
            if current in closed:
                return False
            closed.add(previous)
    return True


def write_events(path: Path, events: list[Any], **options: Any) -> RawFileSink:
    """Write events through a file sink at PATH and close it."""
    sink = RawFileSink("raw", FileOutputConfig(str(path), **options))
    sink.write_batch(events)
    sink.close()
    return sink


def ausearch_event_count(path: Path) -> int:
    """How many events ``ausearch -if PATH -i`` prints (one ``----`` separator each)."""
    result = subprocess.run(
        ["ausearch", "-if", str(path), "-i"], capture_output=True, timeout=60, check=False
    )
    return result.stdout.count(b"\n----\n") + result.stdout.startswith(b"----\n")


def ausearch_raw_records(path: Path) -> list[bytes]:
    """The records ``ausearch -if PATH --raw`` finds, as lines."""
    result = subprocess.run(
        ["ausearch", "-if", str(path), "--raw"], capture_output=True, timeout=60, check=False
    )
    return result.stdout.splitlines()


@pytest.mark.parametrize("relative", CORPUS_LOGS)
def test_written_records_read_back_identical(relative: str, tmp_path: Path) -> None:
    """Every record comes back through split_log_line exactly as it went in, event by event."""
    events = events_from_log(corpus_file(relative))
    out = tmp_path / "audit.log"
    sink = write_events(out, events)
    read_back = [split_log_line(line) for line in out.read_bytes().splitlines()]
    expected = [tuple(record) for event in events for record in event["raw"]]
    assert read_back == expected
    assert sink.stats.sent_events == len(events) and sink.stats.errors == {}


@pytest.mark.skipif(shutil.which("ausearch") is None, reason="ausearch (auditd) not installed")
@pytest.mark.parametrize("relative", CORPUS_LOGS)
def test_ausearch_finds_the_same_events(relative: str, tmp_path: Path) -> None:
    """The real ausearch finds the same events and records in the sink's file as in the input."""
    source = corpus_file(relative)
    events = events_from_log(source)
    out = tmp_path / "audit.log"
    write_events(out, events)
    if events_are_contiguous(source):
        assert ausearch_event_count(out) == ausearch_event_count(source) > 0
    else:
        # A record arriving after other events (out_of_order.log) makes ausearch report
        # its event twice in the input; the sink writes each event's records together.
        assert ausearch_event_count(out) == len(events) > 0
    assert sorted(ausearch_raw_records(out)) == sorted(ausearch_raw_records(source))


def test_newline_in_a_record_cannot_forge_a_second_record(tmp_path: Path) -> None:
    """CR, LF and NUL inside a record become spaces, are counted, and add no line."""
    forged = (
        b"audit(1700000000.001:7): pid=1 msg='x\ntype=SYSCALL msg=audit(1700000000.001:99): \r\x00'"
    )
    eoe = b"audit(1700000000.001:7): "
    events = [{"key": ["", 1700000000, 1, 7], "raw": [[1112, forged, ""], [1320, eoe, ""]]}]
    out = tmp_path / "audit.log"
    sink = write_events(out, events)
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(b"type=USER_LOGIN msg=audit(1700000000.001:7)")
    assert b"\r" not in lines[0] and b"\x00" not in lines[0]
    assert sink.stats.errors == {"newline_escaped": 2, "nul_escaped": 1}
    if shutil.which("ausearch"):
        assert ausearch_event_count(out) == 1


def test_markers_are_not_written_and_node_is_sanitised(tmp_path: Path) -> None:
    """A marker (raw == []) writes nothing and is skipped, not sent; a node with spaces cannot shift the type field."""
    data = b"audit(1700000000.002:8): arch=c000003e syscall=2 success=yes exit=3"
    events: list[Any] = [
        {"key": ["", 1, 0, 0], "raw": [], "doc": {"event": {"action": "events-lost"}}},
        {"key": ["a b", 1700000000, 2, 8], "raw": [[1300, data, "a b\n"]], "doc": {}},
    ]
    out = tmp_path / "audit.log"
    sink = write_events(out, events)
    assert out.read_bytes() == b"node=a_b_ type=SYSCALL msg=" + data + b"\n"
    assert split_log_line(out.read_bytes()) == (1300, data, "a_b_")
    assert (sink.stats.sent_events, sink.stats.skipped_events) == (1, 1)
    assert sink.stats.errors == {"node_escaped": 1}


def test_malformed_records_are_counted_and_skipped(tmp_path: Path) -> None:
    """Records of the wrong shape or types are skipped with a count; good ones are kept."""
    good = b"audit(1700000000.003:9): "
    events: list[Any] = [
        {
            "key": [],
            "raw": [[1320, "text not bytes", ""], "junk", [True, good, ""], [1320, good, ""]],
        },
        {"key": [], "raw": "not a list"},
        "not an event",
    ]
    out = tmp_path / "audit.log"
    sink = write_events(out, events)
    assert out.read_bytes() == b"type=EOE msg=" + good + b"\n"
    assert sink.stats.errors == {"malformed_record": 5}
    assert sink.stats.received_events == 3
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (1, 2)  # no silent drop


def test_type_zero_record_is_written_as_its_original_line(tmp_path: Path) -> None:
    """A line the receiver could not split is archived verbatim, as it was read."""
    original = b"type=UNKNOWN[1329] msg=?"
    out = tmp_path / "audit.log"
    write_events(out, [{"key": [], "raw": [[0, original, ""]], "doc": {}}])
    assert out.read_bytes() == original + b"\n"


def test_rotation_never_splits_an_event(tmp_path: Path) -> None:
    """With a tiny max_bytes each event's records stay together in one rotated file."""
    events = events_from_log(corpus_file("laurel/src/testdata/shell-proc-trace.txt"))
    out = tmp_path / "audit.log"
    write_events(out, events, max_bytes=1500, keep_files=100, buffer_bytes=0)
    files = sorted(tmp_path.glob("audit.log*"))
    assert len(files) > 3
    seen: dict[bytes, str] = {}
    total = 0
    for path in files:
        for line in path.read_bytes().splitlines():
            total += 1
            found = _AUDIT_ID.search(line)
            assert found is not None
            assert seen.setdefault(found.group(0), path.name) == path.name
    assert total == sum(len(event["raw"]) for event in events)
    assert len(seen) == len(events)
