"""A stage's exit code once its run has returned (auditstream/stage.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The child: a stage whose run fails (78), then Python's finalization as CPython does it
# (_PySignal_Fini puts SIG_DFL back where a Python function handled a signal), slow enough
# for the supervisor's late SIGTERM to arrive in it.
CHILD = """
import signal, sys, time
from auditstream.stage import stage_main

code = stage_main("standin", lambda cfg, ctx: 78, ["--config", sys.argv[1]])
for number in (signal.SIGTERM, signal.SIGINT):
    if callable(signal.getsignal(number)):
        signal.signal(number, signal.SIG_DFL)
print("finalizing", flush=True)
time.sleep(1.0)
sys.exit(code)
"""


def test_a_stop_signal_after_the_run_keeps_the_stage_exit_code(tmp_path: Path) -> None:
    """A SIGTERM that reaches a stage after its run returned (the supervisor stopping what
    still runs once the tree keeper exited) leaves the run's exit code, not a signal death."""
    config = tmp_path / "c.toml"
    config.write_text("")
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "finalizing\n"
            time.sleep(0.1)
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=30) == 78
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate()


# A stage whose run waits for a stop, then says which signals stopped it.
WAITER = """
import sys, time
from auditstream.stage import stage_main

def run(cfg, ctx):
    print("running", flush=True)
    while not ctx.stop_requested:
        time.sleep(0.01)
    print("stopped by", ctx.signals, flush=True)
    return 0

sys.exit(stage_main("standin", run, ["--config", sys.argv[1], *sys.argv[2:]]))
"""


def _waiter(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The WAITER stage started, once its run is running."""
    config = tmp_path / "c.toml"
    config.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(config), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    return proc


def _signalled(proc: subprocess.Popen[str], *signals: int) -> str:
    """Send ``signals`` (0.5 s apart, the stage still running after each but the last),
    then wait: the stage's stdout, once it exited 0 (killed if it hangs)."""
    try:
        for index, number in enumerate(signals):
            if index:
                time.sleep(0.5)
                assert proc.poll() is None, "the stage ended on a signal it should leave"
            proc.send_signal(number)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out


def test_a_supervised_stage_leaves_sighup_to_its_supervisor(tmp_path: Path) -> None:
    """With a supervisor, SIGHUP neither kills the stage nor stops it (the supervisor stops
    the pipeline in order); SIGTERM still does."""
    proc = _waiter(tmp_path, "--supervisor-pid", str(os.getpid()))
    out = _signalled(proc, signal.SIGHUP, signal.SIGTERM)
    assert f"stopped by [{int(signal.SIGTERM)}]" in out


def test_a_stage_run_alone_stops_on_sighup(tmp_path: Path) -> None:
    """Without a supervisor, SIGHUP stops the stage as SIGTERM does: its run ends, exit 0."""
    out = _signalled(_waiter(tmp_path), signal.SIGHUP)
    assert f"stopped by [{int(signal.SIGHUP)}]" in out
