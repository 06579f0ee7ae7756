"""In replay the tree keeper goes first: the assemblers run with a higher nice value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import ONE_EVENT_LOG, stage_pids, start_follow_replay

from assembler.stage import REPLAY_NICE

REPO = Path(__file__).resolve().parents[1]


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of a process's autogroup; None without autogroup scheduling."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    return int(text.split("nice")[1])


def _settled_nice(supervisor: int, want_assembler: int) -> tuple[dict[str, int], dict[str, int]]:
    """The stages' nice values and pids once all three run and the assembler's nice value is
    ``want_assembler`` (or after 30 s: the test then sees what it is)."""
    deadline = time.monotonic() + 30
    while True:
        stages = stage_pids(supervisor)
        try:
            nice = {name: os.getpriority(os.PRIO_PROCESS, pid) for name, pid in stages.items()}
        except OSError:  # a stage between fork and exec, or gone
            nice = {}
        done = len(nice) >= 3 and nice.get("assembler-0") == want_assembler
        if done or time.monotonic() > deadline:
            return nice, stages
        time.sleep(0.1)


@pytest.fixture
def own_nice() -> int:
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= REPLAY_NICE:
        pytest.skip(f"this test runs at nice {nice} already: nothing to tell apart")
    return nice


def test_replay_assemblers_yield_to_the_tree_keeper(tmp_path: Path, own_nice: int) -> None:
    """Assemblers of a replay run at nice 10, process and autogroup; the tree keeper and receiver keep theirs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "replay", "-", "--sink", f"jsonl:{tmp_path / 'o'}"],
        stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        proc.stdin.write(ONE_EVENT_LOG)  # stdin stays open: the replay runs until we close it
        proc.stdin.flush()
        nice, pids = _settled_nice(proc.pid, REPLAY_NICE)
        assert nice.get("assembler-0") == REPLAY_NICE, nice
        assert nice["treekeeper"] == own_nice and nice["receiver"] == own_nice
        grouped = _autogroup_nice(pids["assembler-0"])
        if grouped is not None:  # each stage is a session, so an autogroup, of its own
            assert grouped == REPLAY_NICE
            assert _autogroup_nice(pids["treekeeper"]) == 0
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def test_a_followed_log_keeps_the_assemblers_at_their_nice(tmp_path: Path, own_nice: int) -> None:
    """`replay --follow` runs like live: its assemblers do not yield to the host's load."""
    proc, _log, out = start_follow_replay(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:  # the stages are running
            time.sleep(0.1)
        nice, _ = _settled_nice(proc.pid, own_nice)
        assert nice.get("assembler-0") == own_nice, nice
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
