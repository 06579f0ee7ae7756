"""`auditstream status` on a runtime dir: running (a `replay --follow` found through its
config's `[runtime] dir`), stopped (stale counters said to be stale), absent, and a closed
stdout. The kernel's audit status is only read (AUDIT_GET), never changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import ONE_EVENT_LOG, REPO

EXIT_NOT_RUNNING = 3
EXIT_OUTPUT_CLOSED = 141


def status(*args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``auditstream status ARGS``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "status", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, check=False, cwd=REPO, timeout=60,
    )  # fmt: skip


def start_replay_with_runtime_dir(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`replay --follow -c CONF` whose config puts the runtime dir in tmp_path/run; returns
    the process, the config and the runtime dir once the tree keeper wrote its status."""
    run_dir, conf, log = tmp_path / "run", tmp_path / "c.toml", tmp_path / "audit.log"
    conf.write_text(f'[runtime]\ndir = "{run_dir}"\n')
    log.write_bytes(ONE_EVENT_LOG)
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditstream", "replay", "--follow", "-c", str(conf), str(log),
             "--sink", f"jsonl:{tmp_path / 'out.jsonl'}"],
            stderr=err, cwd=REPO,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (run_dir / "status-treekeeper.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (run_dir / "status-treekeeper.json").exists(), (tmp_path / "stderr").read_text()
    return proc, conf, run_dir


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_running_replay_then_stopped(tmp_path: Path, stop: signal.Signals) -> None:
    """`status -c CONF` finds a running replay through `[runtime] dir` (exit 0), and after
    a stop or a SIGKILL says it stopped and its counters are stale (exit 3)."""
    proc, conf, run_dir = start_replay_with_runtime_dir(tmp_path)
    try:
        running = status("-c", str(conf))
        assert running.returncode == 0, running.stdout + running.stderr
        assert f"pipeline ({run_dir}): running, supervisor pid {proc.pid}\n" in running.stdout
        assert "  treekeeper: {" in running.stdout
    finally:
        proc.send_signal(stop)
        proc.wait(timeout=30)
    stopped = status("--runtime-dir", str(run_dir), "--json")
    assert stopped.returncode == EXIT_NOT_RUNNING, stopped.stderr
    state = json.loads(stopped.stdout)["pipeline_state"]
    assert (state["state"], state["supervisor_pid"]) == ("stopped", proc.pid)
    assert state["message"].startswith(
        f"stopped (supervisor pid {proc.pid} has exited): the counters below are its last, "
        "stale since "
    ), state
    assert "treekeeper" in json.loads(stopped.stdout)["pipeline"]


def test_no_pipeline_says_so_and_exits_3(tmp_path: Path) -> None:
    """No runtime dir: a clear sentence naming it and exit 3, as `systemctl status`."""
    missing = tmp_path / "nothing-here"
    result = status("--runtime-dir", str(missing))
    assert result.returncode == EXIT_NOT_RUNNING, result.stdout
    assert f"pipeline: no auditstream pipeline running in {missing}\n" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_reused_pid_is_not_taken_for_the_supervisor(tmp_path: Path) -> None:
    """Status files beside a pid file whose pid now belongs to a process started after the
    file was written: stopped, not running."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status-treekeeper.json").write_text('{"received_events": 7}')
    newcomer = subprocess.Popen(["sleep", "30"])
    try:
        mark = run_dir / "treekeeper.started"
        mark.write_text(f"{newcomer.pid}")
        an_hour_ago = time.time() - 3600
        os.utime(mark, (an_hour_ago, an_hour_ago))
        result = status("--runtime-dir", str(run_dir))
    finally:
        newcomer.kill()
        newcomer.wait()
    assert result.returncode == EXIT_NOT_RUNNING, result.stdout
    assert f"stopped (supervisor pid {newcomer.pid} has exited)" in result.stdout
    assert '  treekeeper: {"age_s": ' in result.stdout


def test_closed_stdout_exits_quietly(tmp_path: Path) -> None:
    """`status | head` with the reader gone: exit 141 (SIGPIPE's), no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write fails with EPIPE
    try:
        result = status("--runtime-dir", str(tmp_path), stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_OUTPUT_CLOSED, result.stderr
    assert result.stderr == ""
