"""A replay whose buffer spans less event time than the reorder window grows it, not waits.

The tree keeper acknowledges a replay batch only once later records moved event time past
its reorder window. A buffer of tiny batches, or a log dense in event time, held less than
that: each batch then waited 10 s for an acknowledgement that could not come yet
(receiver/redelivery.py), and the assemblers, which keep a quarter of the buffer's batches
open, cut events at batch ends.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from generated_logs import write_generated_log
from live_helpers import replay

from auditstream import wire
from receiver.replaybuffer import ShardBuffer

_HEADER = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\)")
REPLAY_TIMEOUT_S = 60  # the old code took ~10 s per batch here: minutes


def _record(ms: int, serial: int) -> list[object]:
    return [1300, b"audit(%d.%03d:%d): arch=c000003e" % (ms // 1000, ms % 1000, serial), ""]


def test_the_buffer_knows_the_event_time_and_records_it_keeps() -> None:
    """Kept records and the event time from the oldest kept batch to the newest follow
    adds, acknowledgements and evictions."""
    buf = ShardBuffer(0, capacity=3)
    assert buf.event_ms_kept() is None
    for number, ms in enumerate((1_000, 1_040, 1_020)):  # event time may step back
        buf.add({"recs": [_record(ms - 5, number * 2), _record(ms, number * 2 + 1)]}, 2)
    assert buf.kept_records == 6
    assert buf.event_ms_kept() == 40  # newest 1040, oldest batch's last record 1000
    for batch in list(buf.unsent()):
        buf.mark_sent(batch)
    buf.ack(1)
    assert (buf.kept_records, buf.event_ms_kept()) == (4, 0)
    buf.evict_oldest()
    assert (buf.kept_records, buf.event_ms_kept()) == (2, 20)


def test_a_batch_of_markers_only_spans_no_known_time() -> None:
    """A batch without an audit header of the usual shape gives no event time (no growth)."""
    buf = ShardBuffer(0, capacity=2)
    buf.add({"recs": [[-1, b"lost=3", ""]]}, 1)
    assert buf.event_ms_kept() is None
    body = {"recs": [_record(5_000, 1)]}
    buf.add(body, 1)
    assert wire.unpack_body(buf._kept[-1].body)["batch"] == 1
    assert buf.event_ms_kept() is None  # the oldest kept batch has no time


def _dense(source: Path, out: Path, events_per_ms: int) -> Path:
    """``source`` with event times squeezed: ``events_per_ms`` serials per millisecond."""

    def squeeze(m: re.Match[bytes]) -> bytes:
        serial = int(m[3])
        ms = serial // events_per_ms
        return b"audit(%d.%03d:%d)" % (1_700_000_000 + ms // 1000, ms % 1000, serial)

    out.write_bytes(_HEADER.sub(squeeze, source.read_bytes()))
    return out


def _replay_with(log: Path, tmp_path: Path, name: str, receiver: str) -> tuple[bytes, str]:
    config = tmp_path / f"{name}.toml"
    config.write_text(f"[receiver]\n{receiver}\n")
    out = tmp_path / f"{name}.jsonl"
    done = replay(str(log), "-c", str(config), "--sink", f"jsonl:{out}", timeout=REPLAY_TIMEOUT_S)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr
    return out.read_bytes(), stderr


@pytest.mark.parametrize(
    ("receiver", "dense"),
    [
        ("batch_max_records = 1\nreplay_buffer_batches = 4", False),
        ("batch_max_records = 7\nreplay_buffer_batches = 4", False),
        ("replay_buffer_batches = 4", True),
        ("batch_max_records = 1", True),
    ],
)
def test_small_buffers_replay_promptly_to_the_same_documents(
    tmp_path: Path, receiver: str, dense: bool
) -> None:
    """Tiny batches, or a log with ~600 records per ms of event time in a 4-batch buffer,
    replay without waiting for acknowledgements, byte for byte as with the defaults."""
    log = write_generated_log(tmp_path / "g.log", 3_000 if not dense else 12_000)
    if dense:
        log = _dense(log, tmp_path / "dense.log", events_per_ms=200)
    expected, _ = _replay_with(log, tmp_path, "defaults", "")
    got, stderr = _replay_with(log, tmp_path, "small", receiver)
    assert got == expected
    assert "replay buffer" not in stderr  # no wait, no batch left unprotected
    assert "reorder window full" not in stderr  # no event let go before its time
