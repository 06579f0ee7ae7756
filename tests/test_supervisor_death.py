"""Stages never outlive their supervisor: a SIGKILLed supervisor leaves no orphans."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from live_helpers import stage_pids, start_follow_replay


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def test_stages_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `auditstream replay --follow` makes every stage drain and exit."""
    proc, _log, out = start_follow_replay(tmp_path)
    stages: list[int] = []
    deadline = time.monotonic() + 30
    while len(stages) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        stages = list(stage_pids(proc.pid).values())
    assert len(stages) >= 3, f"stages did not start: {stages}"
    time.sleep(1.0)  # let them install their signal handlers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in stages) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in stages if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"stages outlived their supervisor: {left}"
    assert out.exists() and b'"sh"' in out.read_bytes()
