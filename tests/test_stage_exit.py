"""A stage's exit code once its run has returned (auditstream/stage.py)."""

from __future__ import annotations

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
