"""The jsonl sink, the rotation it shares with the file sink, and the sink registry."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import sinks
from auditstream.escape import escape
from sinks.config import FileOutputConfig, SinkConfig, file_output_config, sink_configs_from_tables
from sinks.jsonl import JsonlSink
from sinks.rotation import SinkWriteError

REPO = Path(__file__).resolve().parents[1]


def make_event(serial: int, text: str = "") -> dict[str, Any]:
    """An event as the treekeeper hands it over, with a doc carrying ``text``."""
    return {
        "key": ["", 1700000000, serial % 1000, serial],
        "raw": [],
        "doc": {"event": {"sequence": serial}, "message": text},
    }


def read_all_lines(path: Path) -> dict[str, list[bytes]]:
    """Every line of PATH and its rotated siblings (plain and gzip), by file name."""
    found: dict[str, list[bytes]] = {}
    for candidate in sorted(path.parent.glob(path.name + "*")):
        data = candidate.read_bytes()
        if candidate.name.endswith(".gz"):
            data = gzip.decompress(data)
        found[candidate.name] = data.splitlines(keepends=True)
    return found


def serials_of(lines: list[bytes]) -> list[int]:
    """The event.sequence of each JSON line (every line must be complete JSON)."""
    return [json.loads(line)["event"]["sequence"] for line in lines]


def test_rotation_keeps_every_line_whole_across_gzip_files(tmp_path: Path) -> None:
    """After many compressed rotations, every event is exactly one complete line somewhere."""
    path = tmp_path / "events.jsonl"
    output = FileOutputConfig(
        str(path), max_bytes=3000, keep_files=1000, compress=True, buffer_bytes=700
    )
    sink = JsonlSink("archive", output)
    count = 600
    for start in range(0, count, 37):
        batch = [make_event(n, "x" * (n * 7 % 400)) for n in range(start, min(start + 37, count))]
        sink.write_batch(batch)
    sink.close()
    files = read_all_lines(path)
    assert len(files) > 10
    assert any(name.endswith(".gz") for name in files)
    for name, lines in files.items():
        assert all(line.endswith(b"\n") for line in lines), name
        assert sum(len(line) for line in lines) <= 3000, name
    everything = [serial for lines in files.values() for serial in serials_of(lines)]
    assert sorted(everything) == list(range(count))
    assert sink.stats.sent_events == count and sink.stats.discarded_events == 0


def test_keep_files_drops_only_the_oldest_files(tmp_path: Path) -> None:
    """With keep_files = 2 only PATH, PATH.1 and PATH.2 remain, holding the newest events."""
    path = tmp_path / "events.jsonl"
    (tmp_path / "events.jsonl.7").write_bytes(b"left over from a larger keep_files\n")
    sink = JsonlSink("archive", FileOutputConfig(str(path), max_bytes=1000, keep_files=2))
    count = 400
    sink.write_batch([make_event(n, "y" * 50) for n in range(count)])
    sink.close()
    files = read_all_lines(path)
    assert sorted(files) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    newest_first = [serials_of(files[name]) for name in ("events.jsonl.2", "events.jsonl.1")]
    kept = [*newest_first[0], *newest_first[1], *serials_of(files["events.jsonl"])]
    assert kept == list(range(count - len(kept), count))


def test_dash_writes_to_stdout() -> None:
    """``jsonl:-`` writes one line per event to the process's stdout."""
    script = textwrap.dedent(
        """
        import sinks
        sink = sinks.build_sink(sinks.parse_sink_arg("jsonl:-"))
        sink.write_batch([{"key": ["", 1, 0, n], "raw": [], "doc": {"n": n}} for n in range(250)])
        sink.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60, check=True
    )
    assert [json.loads(line)["n"] for line in result.stdout.splitlines()] == list(range(250))


def test_stdout_closed_by_reader_is_a_counted_epipe() -> None:
    """A stdout pipe whose reader went away gives EPIPE, counted, and no crash."""
    script = textwrap.dedent(
        """
        import json, sys
        import sinks
        from sinks.rotation import SinkWriteError
        sink = sinks.build_sink(sinks.parse_sink_arg("jsonl:-"))
        sys.stdin.readline()  # wait until the parent closed its read end
        try:
            sink.write_batch([{"key": [], "raw": [], "doc": {"n": n}} for n in range(10)])
            sink.flush()
            outcome = "no error"
        except SinkWriteError as err:
            outcome = str(err)
        stats = sink.stats
        print(json.dumps([outcome, stats.errors, stats.discarded_events]), file=sys.stderr)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    child.stdout.close()
    _, err = child.communicate(b"go\n", timeout=60)
    assert child.returncode == 0, err
    outcome, errors, discarded = json.loads(err.splitlines()[-1])
    assert "EPIPE" in outcome
    assert errors == {"EPIPE": 1} and discarded == 10


def test_hostile_docs_stay_one_line_each(tmp_path: Path) -> None:
    """Control characters, invalid UTF-8 and unencodable values never add or lose a line."""
    nasty_bytes = b'evil\n{"forged": 1}\r\x00\xff\xfe\x1b[31m'
    hostile_texts = [
        "line\nbreak",
        "carriage\rreturn",
        "nul\x00byte",
        "sep\u2028\u2029",
        escape(nasty_bytes),
        "z" * 1_000_000,
    ]
    events: list[Any] = [make_event(n, text) for n, text in enumerate(hostile_texts)]
    unencodable = [
        {"key": ["", 1, 0, 100], "doc": {"raw": b"bytes are not JSON"}},
        {"key": ["", 1, 0, 101], "doc": {"bad": "\ud800 lone surrogate"}},
        {"key": ["", 1, 0, 102], "doc": {"huge": 2**70}},
        {"key": ["", 1, 0, 103], "doc": ["not", "an", "object"]},
        {"key": ["", 1, 0, 104]},
        "not even a mapping",
    ]
    events += unencodable
    path = tmp_path / "events.jsonl"
    sink = JsonlSink("archive", FileOutputConfig(str(path)))
    sink.write_batch(events)
    sink.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(events)
    docs = [json.loads(line) for line in lines]
    assert [doc["message"] for doc in docs[: len(hostile_texts)]] == hostile_texts
    markers = docs[len(hostile_texts) :]
    assert {doc["event"]["action"] for doc in markers} == {"encode-error"}
    assert [m["auditstream"]["marker"]["key"] for m in markers[:5]] == [
        ["", 1, 0, serial] for serial in range(100, 105)
    ]
    assert sink.stats.errors == {"encode": len(unencodable)}
    assert sink.stats.sent_events == len(hostile_texts)
    assert sink.stats.discarded_events == len(unencodable)


def test_fifo_whose_reader_left_gives_epipe(tmp_path: Path) -> None:
    """Writing to a FIFO after its reader closed raises SinkWriteError and counts EPIPE."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = JsonlSink("pipe", FileOutputConfig(str(fifo), max_bytes=10, buffer_bytes=0))
    sink.write_batch([make_event(1)])
    assert os.read(reader, 65536).count(b"\n") == 1
    os.close(reader)
    with pytest.raises(SinkWriteError, match="EPIPE"):
        sink.write_batch([make_event(2), make_event(3), make_event(4)])
    assert sink.stats.errors == {"EPIPE": 1}
    assert (sink.stats.received_events, sink.stats.sent_events) == (4, 1)
    assert sink.stats.discarded_events == 3
    assert not list(tmp_path.glob("events.fifo.*")), "a FIFO must never be rotated"
    sink.close()


def test_full_disk_is_counted_not_crashed() -> None:
    """ENOSPC (``/dev/full``) discards the buffered events with a count and a clear error."""
    sink = JsonlSink("full", FileOutputConfig("/dev/full", fsync=True))
    sink.write_batch([make_event(n) for n in range(5)])
    with pytest.raises(SinkWriteError, match="ENOSPC"):
        sink.flush()
    assert sink.stats.errors == {"ENOSPC": 1}
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (0, 5)
    sink.close()


def test_a_batch_that_fills_the_buffer_alone_is_written_in_order(tmp_path: Path) -> None:
    """Chunks of a buffer's size or more (written without the buffer) keep line order and counts."""
    path = tmp_path / "events.jsonl"
    sink = JsonlSink("direct", FileOutputConfig(str(path), buffer_bytes=4096))
    sink.write_batch([make_event(0)])  # buffered: the next chunk goes behind it
    sink.write_batch([make_event(n, "x" * 200) for n in range(1, 200)])  # a buffer's worth
    assert sink.stats.sent_events >= 199  # written at once, not held back
    sink.write_batch([make_event(200)])
    sink.close()
    assert serials_of(read_all_lines(path)["events.jsonl"]) == list(range(201))
    assert (sink.stats.sent_events, sink.stats.discarded_events) == (201, 0)


def test_a_chunk_written_without_the_buffer_counts_its_loss() -> None:
    """ENOSPC on a chunk written without the buffer: its events counted discarded, a clear error."""
    sink = JsonlSink("full", FileOutputConfig("/dev/full", buffer_bytes=4096))
    with pytest.raises(SinkWriteError, match="ENOSPC"):
        sink.write_batch([make_event(n, "x" * 200) for n in range(100)])
    assert sink.stats.errors == {"ENOSPC": 1}
    stats = sink.stats
    assert stats.sent_events == 0
    assert stats.discarded_events == 100, stats
    sink.close()


def _write(sink: JsonlSink, events: list[dict[str, Any]], ahead: bool) -> None:
    """write_batch, or (``ahead``) write_encoded of what encode() made of the events."""
    encoded = sink.encode(events) if ahead else None
    if encoded is None:
        sink.write_batch(events)
    else:
        sink.write_encoded(encoded, len(events))


@pytest.mark.parametrize("ahead", [False, True], ids=["write-batch", "encoded-ahead"])
def test_a_write_failing_at_a_rotation_accounts_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: bool
) -> None:
    """A write(2) failing where the file would rotate: every event is sent or discarded,
    none lost, whether the lines were encoded by write_batch or ahead."""
    path = tmp_path / "events.jsonl"
    line_bytes = len(json.dumps(make_event(0)["doc"], separators=(",", ":"))) + 1
    output = FileOutputConfig(str(path), max_bytes=line_bytes * 4, buffer_bytes=1 << 20)
    sink = JsonlSink("rotating", output)
    _write(sink, [make_event(n) for n in range(3)], ahead)
    sink.flush()  # on disk: three lines; the fifth line rotates, draining the fourth first

    def no_space(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(SinkWriteError, match="ENOSPC"):
        _write(sink, [make_event(n) for n in range(3, 10)], ahead)
    stats = sink.stats
    assert stats.received_events == 10
    assert stats.sent_events + stats.discarded_events == 10, stats
    monkeypatch.undo()
    sink.close()
    assert serials_of(read_all_lines(path)["events.jsonl"]) == [0, 1, 2]


def _write_both_ways(
    tmp_path: Path, output: dict[str, Any], batches: list[list[dict[str, Any]]]
) -> tuple[dict[str, list[bytes]], dict[str, list[bytes]], JsonlSink, JsonlSink]:
    """The files and sinks of the same batches written by write_batch and, encoded ahead,
    by write_encoded (each batch that encode() takes)."""
    sinks_by_way = []
    for way in ("batch", "ahead"):
        path = tmp_path / way / "events.jsonl"
        path.parent.mkdir()
        sink = JsonlSink(way, FileOutputConfig(str(path), **output))
        for batch in batches:
            _write(sink, batch, way == "ahead")
        sink.close()
        sinks_by_way.append((read_all_lines(path), sink))
    (batch_files, batch_sink), (ahead_files, ahead_sink) = sinks_by_way
    return batch_files, ahead_files, batch_sink, ahead_sink


@pytest.mark.parametrize(
    "output",
    [
        {},
        {"max_bytes": 3000, "keep_files": 1000, "buffer_bytes": 700},
        {"max_bytes": 300, "keep_files": 1000, "buffer_bytes": 100},  # lines past max_bytes
        {"max_bytes": 5000, "keep_files": 1000, "compress": True, "buffer_bytes": 1 << 20},
    ],
    ids=["plain", "rotating", "lines-past-max-bytes", "gzip"],
)
def test_lines_encoded_ahead_make_the_files_write_batch_makes(
    tmp_path: Path, output: dict[str, Any]
) -> None:
    """Encoded ahead (the fan-out's submitting thread) and written later, the batches give
    the same files, cut at the same lines where they rotate, and the same counts."""
    batches = [
        [make_event(n, "x" * (n * 37 % 900)) for n in range(start, start + 41)]
        for start in range(0, 600, 41)
    ]
    batch_files, ahead_files, batch_sink, ahead_sink = _write_both_ways(tmp_path, output, batches)
    assert len(ahead_files) == len(batch_files) and ahead_files == batch_files
    assert ahead_sink.stats == batch_sink.stats
    assert ahead_sink.stats.sent_events == 41 * len(batches)


def test_a_batch_with_an_event_that_does_not_encode_is_left_to_write_batch(
    tmp_path: Path,
) -> None:
    """encode() takes a batch only whole: one doc orjson refuses leaves it to write_batch,
    whose encode-error marker then stands in that event's place."""
    sink = JsonlSink("odd", FileOutputConfig(str(tmp_path / "events.jsonl")))
    good = [make_event(n) for n in range(3)]
    bad = {"key": ["", 1, 2, 3], "raw": [], "doc": {"bytes": b"\xff"}}
    assert sink.encode(good) is not None
    assert sink.encode([*good, bad]) is None and sink.encode([]) is None
    sink.close()


def test_parse_sink_arg_and_build() -> None:
    """``TYPE:TARGET`` arguments become configs, and bad ones say what is wrong."""
    cfg = sinks.parse_sink_arg("jsonl:/tmp/x.jsonl")
    assert (cfg.type, cfg.name, dict(cfg.options)) == (
        "jsonl",
        "jsonl:/tmp/x.jsonl",
        {"path": "/tmp/x.jsonl"},
    )
    assert sinks.parse_sink_arg("file:-").options == {"path": "-"}
    assert sinks.parse_sink_arg("kafka:b1:9092/audit").options == {"target": "b1:9092/audit"}
    with pytest.raises(sinks.SinkError, match="TYPE:TARGET"):
        sinks.parse_sink_arg("events.jsonl")
    with pytest.raises(sinks.SinkError, match="unknown type 'csv'"):
        sinks.parse_sink_arg("csv:out.csv")
    with pytest.raises(sinks.SinkError, match=r"sinks\[x\]\.type: unknown sink type"):
        sinks.build_sink(SinkConfig(type="csv", name="x"))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "jsonl", "path": "a", "max_bytes": "10M"}, r"sinks\[jsonl\]\.max_bytes"),
        ({"type": "jsonl", "path": "a", "keep_files": -1}, r"keep_files: must be at least 0"),
        ({"type": "jsonl", "path": "a", "compress": 1}, r"compress: expected true or false"),
        ({"type": "jsonl", "path": "a", "when_full": "later"}, r"when_full: must be one of"),
        ({"type": "jsonl", "path": "a", "queue_max_events": 0}, r"queue_max_events: must be"),
        ({"type": "jsonl", "path": "a", "max_byte": 5}, r"unknown key 'max_byte'"),
        ({"type": "jsonl"}, r"sinks\[jsonl\]\.path: required"),
        ({"path": "a"}, r"sinks\[0\]\.type: required"),
    ],
)
def test_bad_sink_tables_name_the_key(table: dict[str, object], message: str) -> None:
    """Every invalid option is reported with the sink and the key it concerns."""
    with pytest.raises(sinks.SinkError, match=message):
        file_output_config(sink_configs_from_tables([table])[0])


def test_duplicate_sink_names_are_rejected() -> None:
    """Two sinks with one name would share metrics labels, so the config is refused."""
    tables = [{"type": "jsonl", "path": "a"}, {"type": "jsonl", "path": "b"}]
    with pytest.raises(sinks.SinkError, match="duplicate sink name"):
        sink_configs_from_tables(tables)


def test_unopenable_path_is_a_sink_error(tmp_path: Path) -> None:
    """A path in a missing directory fails at build time with the path in the message."""
    cfg = sinks.parse_sink_arg(f"jsonl:{tmp_path}/missing/events.jsonl")
    with pytest.raises(sinks.SinkError, match=r"cannot open .*missing/events\.jsonl"):
        sinks.build_sink(cfg)


def test_registry_does_not_import_kafka_until_needed() -> None:
    """Importing sinks and building a jsonl sink leaves confluent_kafka unimported."""
    script = (
        "import sys, sinks\n"
        "sinks.build_sink(sinks.parse_sink_arg('jsonl:-')).close()\n"
        "print('confluent_kafka' in sys.modules, 'sinks.kafka' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60, check=True
    )
    assert result.stdout.split() == [b"False", b"False"]
