"""The raw ``file`` sink counts as sent only the events whose records it wrote."""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from generated_logs import write_generated_log
from live_helpers import replay, replay_into_head

from sinks.config import FileOutputConfig
from sinks.rawfile import RawFileSink
from sinks.rotation import SinkWriteError

SUMMARY = re.compile(r"(\d+) events out, .*; sent: ([^;\n]*)")
SINK_SENT = re.compile(r"(\S+) (\d+)(?: \((\d+) without raw records\))?(?:, |$)")
_AUDIT_ID = re.compile(rb"audit\((\d+\.\d+:\d+)\)")
F_SETPIPE_SZ = 1031  # <linux/fcntl.h>


def summary_of(stderr: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Events out and, per sink, (sent, without raw records) from a replay's summary line."""
    match = SUMMARY.search(stderr)
    assert match, stderr
    sinks = {
        name: (int(sent), int(skipped or 0))
        for name, sent, skipped in SINK_SENT.findall(match.group(2))
    }
    return int(match.group(1)), sinks


def discarded_of(stderr: str, sink: str) -> int:
    """The ``NOT WRITTEN`` count of one sink, 0 when it has none."""
    found = re.search(rf"NOT WRITTEN: .*{re.escape(sink)} discarded (\d+) events", stderr)
    return int(found.group(1)) if found else 0


def raw_events(path: Path) -> int:
    """How many events (distinct audit ids) a file sink's output holds."""
    return len(set(_AUDIT_ID.findall(path.read_bytes())))


def record_event(serial: int, size: int = 100) -> dict[str, Any]:
    """An event of one SYSCALL record whose audit.log line is ``size`` bytes long."""
    head = f"audit(1700000000.000:{serial}): ".encode()
    data = head + b"x" * (size - len(b"type=SYSCALL msg=") - len(head) - 1)
    return {"key": ["", 1700000000, 0, serial], "raw": [[1300, data, ""]], "doc": {}}


MARKER: dict[str, Any] = {"key": ["", 1, 0, 0], "raw": [], "doc": {"event": {"action": "x"}}}


def test_events_without_records_are_skipped_neither_sent_nor_discarded(tmp_path: Path) -> None:
    """Markers count as skipped, written events as sent, an event with only bad records as discarded."""
    malformed = {"key": [], "raw": [["junk"]], "doc": {}}
    sink = RawFileSink("raw", FileOutputConfig(str(tmp_path / "a.log")))
    sink.write_batch([MARKER, record_event(1), malformed, MARKER, record_event(2)])
    sink.close()
    stats = sink.stats
    assert (stats.received_events, stats.sent_events) == (5, 2)
    assert (stats.discarded_events, stats.skipped_events) == (1, 2)
    assert stats.errors == {"malformed_record": 1}
    assert raw_events(tmp_path / "a.log") == 2


def test_a_failed_write_discards_the_events_with_records_and_skips_the_markers() -> None:
    """On /dev/full (ENOSPC) nothing counts as sent; the rest of the batch splits into discarded and skipped."""
    sink = RawFileSink("raw", FileOutputConfig("/dev/full", buffer_bytes=0))
    with pytest.raises(SinkWriteError, match="ENOSPC"):
        sink.write_batch([record_event(1), MARKER, record_event(2), MARKER, MARKER])
    stats = sink.stats
    assert (stats.received_events, stats.sent_events) == (5, 0)
    assert (stats.discarded_events, stats.skipped_events) == (2, 3)
    assert stats.errors == {"ENOSPC": 1}


def test_a_pipe_whose_reader_left_counts_the_whole_events_it_took(tmp_path: Path) -> None:
    """A FIFO of 4096 bytes filled then closed by its reader: the 4 whole 1000-byte events in it are sent, the other 6 discarded."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    failure: list[BaseException] = []

    def write_all() -> None:
        try:
            sink.write_batch([record_event(n, size=1000) for n in range(10)])
            sink.flush()  # one write(2) of 10,000 bytes: 4096 go in, then it waits
        except SinkWriteError as err:
            failure.append(err)

    try:
        assert fcntl.fcntl(reader, F_SETPIPE_SZ, 4096) == 4096
        sink = RawFileSink("raw", FileOutputConfig(str(fifo), buffer_bytes=1 << 20))
        writer = threading.Thread(target=write_all)
        writer.start()
        deadline = time.monotonic() + 10
        buffered = bytearray(4)
        while int.from_bytes(buffered, sys.byteorder) < 4096:
            assert time.monotonic() < deadline, "the pipe never filled"
            time.sleep(0.01)
            fcntl.ioctl(reader, termios.FIONREAD, buffered)
    finally:
        os.close(reader)  # the reader leaves with the pipe full: the rest gets EPIPE
    writer.join(10)
    assert failure and "EPIPE" in str(failure[0])
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (4, 6)


def test_replay_file_sink_sent_is_the_events_in_the_file(tmp_path: Path) -> None:
    """`replay --sink jsonl --sink file`: the file sink's sent is the events in its file, and the summary names the rest as without raw records."""
    log = write_generated_log(tmp_path / "in.log", 6000)
    jsonl, raw = tmp_path / "o.jsonl", tmp_path / "o.raw"
    result = replay(str(log), "--sink", f"jsonl:{jsonl}", "--sink", f"file:{raw}")
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    events_out, sent = summary_of(stderr)
    docs = [json.loads(line) for line in jsonl.read_bytes().splitlines()]
    with_records = sum(1 for doc in docs if doc.get("auditd", {}).get("records"))
    assert 0 < with_records < events_out == len(docs)
    assert sent[f"jsonl:{jsonl}"] == (events_out, 0)
    assert sent[f"file:{raw}"] == (raw_events(raw), events_out - with_records)
    assert raw_events(raw) == with_records
    assert "NOT WRITTEN" not in stderr


def test_replay_file_sink_on_a_full_disk_counts_only_what_it_wrote(
    tiny_fs: Path, tmp_path: Path
) -> None:
    """ENOSPC: sent is the events on disk, and sent + discarded are the events with records, exit 3."""
    log = write_generated_log(tmp_path / "in.log", 20000)
    out, jsonl = tiny_fs / "o.raw", tmp_path / "o.jsonl"
    result = replay(str(log), "--sink", f"file:{out}", "--sink", f"jsonl:{jsonl}", timeout=120)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 3, stderr
    assert "No space left on device" in stderr
    _events_out, sent = summary_of(stderr)
    file_sent, without_records = sent[f"file:{out}"]
    docs = [json.loads(line) for line in jsonl.read_bytes().splitlines()]
    with_records = sum(1 for doc in docs if doc.get("auditd", {}).get("records"))
    assert 0 < file_sent == raw_events(out) < with_records
    assert file_sent + discarded_of(stderr, f"file:{out}") == with_records
    assert without_records == len(docs) - with_records


def test_file_sink_on_stdout_into_head_stops_early_with_141(tmp_path: Path) -> None:
    """`replay BIG --sink file:- | head -2` stops early with exit 141, one line about the reader, no flush errors, and counts that add up."""
    log = write_generated_log(tmp_path / "big.log", 300_000)
    code, stderr, printed, _took = replay_into_head(log, "file:-", lines=2)
    assert code == 141, stderr
    assert len(printed.splitlines()) == 2 and printed.startswith(b"type=")
    assert "stopped early: every output is closed" in stderr
    assert int(stderr.split(" records read")[0].rsplit(" ", 1)[1]) < 300_000
    events_out, sent = summary_of(stderr)
    file_sent, without_records = sent["file:-"]
    discarded = discarded_of(stderr, "file:-")
    assert file_sent >= 1 and file_sent + without_records + discarded == events_out
    assert len([line for line in stderr.splitlines() if "sink file:-" in line]) == 1, stderr
    assert "flush failed" not in stderr and "Traceback" not in stderr
