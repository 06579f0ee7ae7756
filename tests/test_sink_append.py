"""Appending to a file whose last line is unfinished: that line stays alone, ours stay whole."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
from live_helpers import ONE_EVENT_LOG, replay

from auditstream.logline import format_log_line, split_log_line
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from sinks.rawfile import RawFileSink
from sinks.rotation import SinkWriteError

TORN_JSON = b'{"partial": tr'
TORN_RAW = b"type=SYSCALL msg=audit(1700000000.000:1): arch=c000"
SINK_EVENT = {"key": ["", 1700000000, 0, 2], "raw": [], "doc": {"event": {"action": "x"}}}


def replay_into_torn(out: Path, torn: bytes, sink: str) -> list[bytes]:
    """Replay one event into ``out``, a file ending in the unfinished line ``torn``: the torn
    line must stay first and alone, the file end in a newline, and a warning name the file.
    Returns our lines."""
    out.write_bytes(torn)
    result = replay("-", "--sink", f"{sink}:{out}", stdin=ONE_EVENT_LOG)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    first, *ours, last = out.read_bytes().split(b"\n")
    assert first == torn and last == b""
    assert f"{out} ends in an unfinished line" in stderr
    return ours


def test_replay_into_a_torn_jsonl_file_keeps_the_torn_line_alone(tmp_path: Path) -> None:
    """The torn text keeps a line of its own, every new line is valid JSON, and a warning names the file."""
    ours = replay_into_torn(tmp_path / "events.jsonl", TORN_JSON, "jsonl")
    docs = [json.loads(line) for line in ours]
    assert docs and docs[0]["auditd"]["sequence"] == 1


def test_replay_into_a_torn_raw_file_cannot_glue_a_record(tmp_path: Path) -> None:
    """The raw file sink's first record starts its own line after a torn one, so it reads back whole."""
    ours = replay_into_torn(tmp_path / "audit.log", TORN_RAW, "file")
    assert [split_log_line(line)[0] for line in ours] == [1300, 1320]


@pytest.mark.parametrize("existing", [b"", b'{"whole": 1}\n'], ids=["empty", "whole-lines"])
def test_a_file_ending_in_a_whole_line_gets_nothing_added(tmp_path: Path, existing: bytes) -> None:
    """An empty file, or one whose last byte is a newline, is appended to as it is, without a warning."""
    out = tmp_path / "events.jsonl"
    out.write_bytes(existing)
    result = replay("-", "--sink", f"jsonl:{out}", stdin=ONE_EVENT_LOG)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    data = out.read_bytes()
    assert data.startswith(existing) and not data.startswith(existing + b"\n")
    assert all(json.loads(line) for line in data.splitlines())
    assert "unfinished line" not in stderr


def test_a_torn_file_rotated_away_at_once_ends_its_line_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the first write rotates the torn file, PATH.1 gets the newline and PATH holds only whole lines."""
    out = tmp_path / "events.jsonl"
    out.write_bytes(b'{"whole": 1}\n' * 10 + TORN_JSON)
    sink = JsonlSink("j", FileOutputConfig(str(out), max_bytes=100, keep_files=2))
    with caplog.at_level(logging.WARNING, logger="sinks.rotation"):
        sink.write_batch([SINK_EVENT])
        sink.close()
    assert (tmp_path / "events.jsonl.1").read_bytes().endswith(b"}\n" + TORN_JSON + b"\n")
    assert json.loads(out.read_bytes()) == SINK_EVENT["doc"]
    assert sink.stats.errors == {"unfinished_line": 1}
    assert [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()] == [
        f"sink j: {out} ends in an unfinished line (no final newline: a writer stopped "
        "mid-line?); ending it with a newline, so it stays alone on its line"
    ]


def test_a_torn_file_that_is_never_written_is_left_as_it_was(tmp_path: Path) -> None:
    """A sink opened on a torn file that writes nothing (only markers reach the file sink) adds no newline."""
    out = tmp_path / "audit.log"
    out.write_bytes(TORN_RAW)
    sink = RawFileSink("raw", FileOutputConfig(str(out)))
    sink.write_batch([SINK_EVENT])
    sink.close()
    assert out.read_bytes() == TORN_RAW
    assert sink.stats.skipped_events == 1


def test_a_write_failing_after_the_newline_keeps_it_and_adds_no_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the chunk after the newline: the file is cut back to the newline, and the retry writes the chunk with no second newline."""
    out = tmp_path / "events.jsonl"
    out.write_bytes(TORN_JSON)
    sink = JsonlSink("j", FileOutputConfig(str(out), buffer_bytes=0))
    real_write = os.write
    failed: list[bytes] = []

    def fail_first_chunk(fd: int, data: bytes) -> int:
        if not failed and bytes(data) != b"\n":
            failed.append(bytes(data))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fail_first_chunk)
    with pytest.raises(SinkWriteError, match="ENOSPC"):
        sink.write_batch([SINK_EVENT])
    assert failed and out.read_bytes() == TORN_JSON + b"\n"
    sink.write_batch([SINK_EVENT])
    sink.close()
    lines = out.read_bytes().split(b"\n")
    assert lines[0] == TORN_JSON and json.loads(lines[1]) == SINK_EVENT["doc"] and lines[2] == b""
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (1, 1)


RAW_DATA = b"audit(1700000000.000:7): arch=c000003e syscall=59"
RAW_EVENT = {
    "key": ["", 1700000000, 0, 7],
    "raw": [[1300, RAW_DATA, "n1"]],
    "doc": {"event": {"action": "x"}},
}


@pytest.mark.parametrize("kind", ["jsonl", "file", "jsonl-encoded-ahead"])
def test_the_newline_ending_a_torn_line_counts_against_max_bytes(tmp_path: Path, kind: str) -> None:
    """With max_bytes exactly the torn file plus one chunk, the newline before the chunk tips it over, so the file rotates first and no file exceeds max_bytes."""
    out = tmp_path / "events.out"
    torn = TORN_RAW if kind == "file" else TORN_JSON
    out.write_bytes(torn)
    event = RAW_EVENT if kind == "file" else SINK_EVENT
    chunk = (
        format_log_line(1300, RAW_DATA, "n1") + b"\n"
        if kind == "file"
        else json.dumps(event["doc"], separators=(",", ":")).encode() + b"\n"
    )
    output = FileOutputConfig(str(out), max_bytes=len(torn) + len(chunk), keep_files=3)
    sink = RawFileSink("s", output) if kind == "file" else JsonlSink("s", output)
    if kind == "jsonl-encoded-ahead":
        assert isinstance(sink, JsonlSink)
        encoded = sink.encode([event])
        if encoded is None:
            pytest.skip("the C line encoder is not built")
        sink.write_encoded(encoded, 1)
    else:
        sink.write_batch([event])
    sink.close()
    assert (tmp_path / "events.out.1").read_bytes() == torn + b"\n"
    assert out.read_bytes() == chunk
    sizes = {path.name: path.stat().st_size for path in tmp_path.glob("events.out*")}
    assert max(sizes.values()) <= output.max_bytes, sizes
