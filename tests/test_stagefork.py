"""A replay's stages forked from the supervisor (auditstream/stagefork.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stagefork_stage
from live_helpers import stage_pids

from auditstream import privilege, stagefork

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "tests" / "corpus" / "go-libaudit" / "auparse" / "testdata" / "test3.log"


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """tests/stagefork_stage.py as a forkable stage; yields its arguments."""
    monkeypatch.setitem(stagefork.STAGE_RUNNERS, "standin", "stagefork_stage")
    config = tmp_path / "c.toml"
    config.write_text("")
    stagefork_stage.REPORT["path"] = tmp_path / "report.json"
    yield ["--config", str(config)]
    stagefork_stage.BEHAVIOUR["mode"] = "report"


def fork(args: list[str]) -> stagefork.ForkedStage:
    forked = stagefork.fork_stage("standin", args, stdin_inherit=False, setup=privilege.no_setup)
    assert forked is not None
    return forked


def test_a_forked_stage_runs_alone_and_exits_with_its_code(
    stand_in: list[str], tmp_path: Path
) -> None:
    """The child leads its own session, names itself, reads /dev/null, holds none of our descriptors and exits with run()'s code."""
    ours = os.open(tmp_path / "held", os.O_WRONLY | os.O_CREAT)
    try:
        forked = fork(stand_in)
    finally:
        os.close(ours)
    assert forked.wait(timeout=30) == 7
    seen = json.loads((tmp_path / "report.json").read_text())
    assert seen["pid"] == forked.pid != os.getpid()
    assert seen["sid"] == forked.pid
    assert seen["comm"] == "standin"
    assert seen["stdin"] == os.devnull
    assert ours not in seen["fds"]
    assert forked.poll() == 7  # reaped once, remembered


def test_a_forked_stage_that_raises_says_why_and_exits_1(
    stand_in: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    """An exception in the child is printed and ends it with 1; it never returns into our code."""
    stagefork_stage.BEHAVIOUR["mode"] = "raise"
    parent = os.getpid()
    forked = fork(stand_in)
    assert os.getpid() == parent
    assert forked.wait(timeout=30) == 1
    assert "the stand-in stage failed on purpose" in capfd.readouterr().err


def test_a_stop_signal_at_once_after_the_fork_reaches_the_stages_handler(
    stand_in: list[str],
) -> None:
    """SIGTERM sent the moment the stage is forked waits, blocked, for its handler: it drains
    (exit 0) instead of dying of the default action (-15) while it starts."""
    stagefork_stage.BEHAVIOUR["mode"] = "wait"
    for _ in range(5):
        forked = fork(stand_in)
        forked.terminate()
        assert forked.wait(timeout=30) == 0


def test_a_forked_stage_waits_with_a_timeout_and_stops_on_sigterm(stand_in: list[str]) -> None:
    """wait() times out like Popen's; SIGTERM reaches the stage's own handler; after the exit signals go nowhere."""
    stagefork_stage.BEHAVIOUR["mode"] = "wait"
    forked = fork(stand_in)
    with pytest.raises(subprocess.TimeoutExpired):
        forked.wait(timeout=0.3)
    forked.terminate()
    assert forked.wait(timeout=30) == 0  # the stage's handler, not the default (-15)
    forked.kill()  # exited and reaped: no signal to a pid that may be reused


def test_no_fork_while_another_thread_runs(stand_in: list[str]) -> None:
    """With a second thread running (it could hold a lock the child would inherit held) nothing is forked."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert (
            stagefork.fork_stage("standin", stand_in, stdin_inherit=False, setup=privilege.no_setup)
            is None
        )
    finally:
        stop.set()
        thread.join()
    assert not stagefork.forkable("auditstream.metrics")  # exec'd always


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the receiver's capabilities")
def test_a_replay_forks_its_stages_and_limits_the_receiver(tmp_path: Path) -> None:
    """As root, a replay's stages are forked (the supervisor's command line, their own comm) and the receiver holds only CAP_DAC_READ_SEARCH, as exec'd."""
    log = tmp_path / "audit.log"
    log.write_bytes(SAMPLE_LOG.read_bytes())
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "replay", "--follow", str(log),
         "--sink", f"jsonl:{out}"],
        cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (
            not {"receiver", "assembler-0", "treekeeper"} <= (stages := stage_pids(proc.pid)).keys()
        ):
            assert proc.poll() is None and time.monotonic() < deadline, stages
            time.sleep(0.05)
        supervisor_argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for name, pid in stages.items():
            assert Path(f"/proc/{pid}/comm").read_text().strip() == name
            assert Path(f"/proc/{pid}/cmdline").read_bytes() == supervisor_argv, name
        receiver = privilege.thread_caps(stages["receiver"])
        keep = 1 << privilege.CAP_DAC_READ_SEARCH
        assert receiver.effective == receiver.permitted == receiver.bounding == keep, receiver
        assert receiver.inheritable == receiver.ambient == 0, receiver
        assert receiver.no_new_privs
        # the tree keeper holds what the supervisor holds, as it did exec'd
        assert privilege.thread_caps(stages["treekeeper"]).effective == (
            privilege.thread_caps(proc.pid).effective
        )
        # Stopped before the tree keeper is ready, a replay reads nothing (by design): the
        # stop goes once the log's events are out.
        while not out.exists() or out.read_bytes().count(b"\n") == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "no output"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            for pid in stage_pids(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    assert out.read_bytes().count(b"\n") > 0
