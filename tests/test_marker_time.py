"""A replay dates its markers in the log's own time, so old logs keep them among their events."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOST = REPO / "tests" / "corpus" / "go-libaudit" / "testdata" / "lost_messages.log"


def _replay(log: Path, out: Path) -> list[dict[str, object]]:
    subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", f"jsonl:{out}"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def _seconds(stamp: object) -> float:
    assert isinstance(stamp, str)
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


def test_a_replayed_serial_gap_is_dated_among_the_logs_events(tmp_path: Path) -> None:
    """The events-lost marker of a replay has an event time of the log, not the time of the run."""
    docs = _replay(LOST, tmp_path / "out.jsonl")
    lost = [d for d in docs if d["event"]["action"] == "events-lost"]  # type: ignore[index]
    events = [_seconds(d["@timestamp"]) for d in docs if d not in lost]
    assert lost and events
    for marker in lost:
        assert min(events) - 1 <= _seconds(marker["@timestamp"]) <= max(events) + 1


def test_a_replayed_marker_is_the_same_every_run(tmp_path: Path) -> None:
    """Two replays of one log give the same markers, time included (no wall clock in them)."""
    first = _replay(LOST, tmp_path / "a.jsonl")
    time.sleep(1.1)
    second = _replay(LOST, tmp_path / "b.jsonl")

    def markers(docs: list[dict[str, object]]) -> list[dict[str, object]]:
        return [d for d in docs if "auditstream-marker" in d.get("tags", [])]  # type: ignore[operator]

    assert markers(first)
    assert markers(first) == markers(second)
