"""Stages never outlive their supervisor: a SIGKILLed supervisor leaves no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from generated_logs import write_generated_log
from live_helpers import process_alive, stage_pids, start_follow_replay

REPO = Path(__file__).resolve().parents[1]
AUDITSTREAM = (sys.executable, "-m", "auditstream")


def _wait_for_stages(supervisor: int) -> list[int]:
    """The pids of a supervisor's three stages once they run and handle signals."""
    stages: list[int] = []
    deadline = time.monotonic() + 30
    while len(stages) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        stages = list(stage_pids(supervisor).values())
    assert len(stages) >= 3, f"stages did not start: {stages}"
    time.sleep(1.0)  # let them install their signal handlers
    return stages


def test_stages_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `auditstream replay --follow` makes every stage drain and exit."""
    proc, _log, out = start_follow_replay(tmp_path)
    stages = _wait_for_stages(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(process_alive(pid) for pid in stages) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in stages if process_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"stages outlived their supervisor: {left}"
    assert out.exists() and b'"sh"' in out.read_bytes()


def test_no_orphan_when_the_tree_keeper_dies_with_the_supervisor(tmp_path: Path) -> None:
    """With the tree keeper killed first (no acknowledgement ever comes), a killed supervisor still leaves no receiver waiting for one."""
    # Long enough that the replay is still reading when its tree keeper is killed (~1 s).
    log = write_generated_log(tmp_path / "in.log", 300_000)
    config = tmp_path / "auditstream.toml"
    config.write_text("[receiver]\nreplay_buffer_batches = 4\nbatch_max_records = 64\n")
    out = tmp_path / "out.jsonl"
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [*AUDITSTREAM, "replay", "-c", str(config), str(log), "--sink", f"jsonl:{out}"],
            cwd=REPO,
            stderr=stderr,
            start_new_session=True,
        )
    stages: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while not {"receiver", "assembler-0", "treekeeper"} <= stages.keys():
        assert time.monotonic() < deadline, f"stages did not start: {stages}"
        time.sleep(0.05)
        stages = stage_pids(proc.pid)
    time.sleep(0.2)
    os.kill(stages["treekeeper"], signal.SIGKILL)
    time.sleep(0.5)  # the receiver's small buffer fills: it waits for acknowledgements
    pids = {pid: name for name, pid in stages.items() if name != "treekeeper"}
    pids.update({pid: name for name, pid in stage_pids(proc.pid).items()})  # a restart
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [
        f"{name} {Path(f'/proc/{pid}/cmdline').read_bytes()!r}"
        for pid, name in pids.items()
        if process_alive(pid)
    ]
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"stages outlived their supervisor: {left}"


def test_stop_while_starting_is_a_stop_not_a_failure(tmp_path: Path) -> None:
    """SIGTERM while the tree keeper still checks its sinks stops every stage and exits 0, saying nothing was read."""
    pytest.importorskip("confluent_kafka", reason="needs confluent-kafka (the [kafka] extra)")
    config = tmp_path / "kafka.toml"
    # Nobody listens on port 1: the start-up check of the broker waits its whole timeout.
    config.write_text(
        '[[sinks]]\ntype = "kafka"\nbrokers = "127.0.0.1:1"\ntopic = "audit"\n'
        "connect_timeout_ms = 60000\n"
    )
    log = write_generated_log(tmp_path / "in.log", 100)
    proc = subprocess.Popen(
        [*AUDITSTREAM, "replay", "-c", str(config), str(log)],
        cwd=REPO, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        stages = _wait_for_stages(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    assert b"stopped while starting; nothing was read" in stderr
    assert b"did not become ready" not in stderr and b"could not start" not in stderr
    assert not [pid for pid in stages if process_alive(pid)]
