"""Replays whose event time goes back: files given newest first, a log given twice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from generated_logs import write_generated_log
from live_helpers import replay

# Small replay buffers: an acknowledgement that stalls fills them within a few batches,
# and the receiver then gives up a batch's protection with a warning after 10 s.
CONFIG = """
[receiver]
replay_buffer_batches = 16
batch_max_records = 128
"""


def _replay(tmp_path: Path, name: str, *logs: Path) -> tuple[list[dict], str]:
    config = tmp_path / "auditstream.toml"
    config.write_text(CONFIG)
    out = tmp_path / f"{name}.jsonl"
    result = replay("-c", str(config), *map(str, logs), "--sink", f"jsonl:{out}", timeout=120)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    return [json.loads(line) for line in out.read_bytes().splitlines()], stderr


def _records(events: list[dict]) -> list[str]:
    """Each audit event's records, as one sortable string."""
    return sorted(
        json.dumps(e["auditd"]["records"]) for e in events if e.get("auditd", {}).get("records")
    )


def _event_id(line: bytes) -> bytes:
    match = re.search(rb"audit\(([^)]*)\)", line)
    assert match, line
    return match[1]


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A generated log, and its first and second half cut where no event spans the cut."""
    tmp = tmp_path_factory.mktemp("halves")
    whole = tmp / "whole.log"
    write_generated_log(whole, 12000)
    lines = whole.read_bytes().splitlines(keepends=True)
    last = {_event_id(line): i for i, line in enumerate(lines)}
    reach = 0  # the last line of any event begun so far: cut where no event spans the cut
    for i, line in enumerate(lines):
        reach = max(reach, last[_event_id(line)])
        if i >= len(lines) // 2 and reach == i:
            cut = i + 1
            break
    older, newer = tmp / "audit.log.1", tmp / "audit.log"
    older.write_bytes(b"".join(lines[:cut]))
    newer.write_bytes(b"".join(lines[cut:]))
    return whole, older, newer


def test_files_given_newest_first_replay_without_stalling(
    tmp_path: Path, halves: tuple[Path, Path, Path]
) -> None:
    """`replay audit.log audit.log.1` gives the events of the oldest-first order, names the step back, and no acknowledgement stalls."""
    whole, older, newer = halves
    expected, _ = _replay(tmp_path, "in-order", whole)
    events, stderr = _replay(tmp_path, "newest-first", newer, older)
    assert "replay buffer of" not in stderr  # a stalled ack: the receiver gave a batch up
    assert "went back" in stderr and "oldest first" in stderr
    assert _records(events) == _records(expected)


def test_a_log_given_twice_replays_once_without_stalling(
    tmp_path: Path, halves: tuple[Path, Path, Path]
) -> None:
    """The second copy's events are dropped as duplicates and still move the window on: the first copy's end is not held to the end of input."""
    whole, _, _ = halves
    expected, _ = _replay(tmp_path, "once", whole)
    events, stderr = _replay(tmp_path, "twice", whole, whole)
    assert "replay buffer of" not in stderr
    assert _records(events) == _records(expected)
    assert len(events) == len(expected)


def test_a_record_without_its_eoe_does_not_stop_a_dense_replay(
    tmp_path: Path, halves: tuple[Path, Path, Path]
) -> None:
    """A log that begins mid-event: its open event is completed when a quarter of a replay buffer old, not held until event time moves on."""
    whole, _, _ = halves
    log = tmp_path / "mid-event.log"
    # The buffers (16 x 128 records) span less event time than the 2 s event timeout here.
    log.write_bytes(b'type=CWD msg=audit(1790000000.000:999): cwd="/root"\n' + whole.read_bytes())
    events, stderr = _replay(tmp_path, "mid-event", log)
    assert "replay buffer of" not in stderr
    [orphan] = [e for e in events if e.get("auditd", {}).get("sequence") == 999]
    assert orphan["auditstream"]["completed_by"] == "evicted"
    assert orphan["auditd"]["records"] == ['type=CWD msg=audit(1790000000.000:999): cwd="/root"']
