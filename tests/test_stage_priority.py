"""In replay the tree keeper goes first: the assemblers run with a higher nice value."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from live_helpers import stage_pids, start_follow_replay

from assembler.stage import REPLAY_NICE


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of a process's autogroup; None without autogroup scheduling."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    return int(text.split("nice")[1])


def test_replay_assemblers_yield_to_the_tree_keeper(tmp_path: Path) -> None:
    """Assemblers of a replay run at nice 10, process and autogroup; the tree keeper and receiver keep theirs."""
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    if own_nice >= REPLAY_NICE:
        pytest.skip(f"this test runs at nice {own_nice} already: nothing to tell apart")
    proc, _log, out = start_follow_replay(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:  # the stages are running
            time.sleep(0.1)
        assert out.exists(), (tmp_path / "stderr").read_text()
        stages = stage_pids(proc.pid)
        assert os.getpriority(os.PRIO_PROCESS, stages["assembler-0"]) == REPLAY_NICE
        assert os.getpriority(os.PRIO_PROCESS, stages["treekeeper"]) == own_nice
        assert os.getpriority(os.PRIO_PROCESS, stages["receiver"]) == own_nice
        grouped = _autogroup_nice(stages["assembler-0"])
        if grouped is not None:  # each stage is a session, so an autogroup, of its own
            assert grouped == REPLAY_NICE
            assert _autogroup_nice(stages["treekeeper"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
