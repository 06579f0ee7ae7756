"""The live reader at a low rate wakes once per `batch_max_ms`, not after every datagram.

kauditd sends one datagram per record; a reader that woke for each (or every few ms) spent
most of a quiet host's CPU on wakeups. All real: the kernel, `auditstream run`, a process
opening a watched file at a paced rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import KernelState, LiveRun, kernel_clean, read_events, start_run, write_config

pytestmark = pytest.mark.kernel
__all__ = ["kernel_clean"]  # the fixture is used by name

BATCH_MAX_MS = 20
OPENS, RATE = 1000, 500.0
# The n-th open at start + n / rate; prints how long the opens took.
PACED_OPENS = """
import os, sys, time
path, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
for n in range(count):
    delay = start + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    os.close(os.open(path, os.O_RDONLY))
print(time.monotonic() - start)
"""


def test_a_low_rate_is_read_about_once_per_batch_interval_and_arrives_whole(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """500 reads/s of a watched file for 2 s: every event arrives, and the receiver read its
    socket at most twice per batch_max_ms of the load (it read ~5 times as often when it
    paused only 4 ms after a small read)."""
    watched = tmp_path / "watched"
    watched.mkdir()
    target = watched / "f"
    target.write_text("x")
    rules = tmp_path / "ticks.rules"
    rules.write_text(f"-w {watched} -p r -k ticks\n")
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir, [rules])
    config.write_text(config.read_text() + f"batch_max_ms = {BATCH_MAX_MS}\n")
    out = tmp_path / "events.jsonl"
    run = start_run(runs, tmp_path, "-c", str(config), "--sink", f"jsonl:{out}")
    run.wait_registered()
    load = subprocess.run(
        [sys.executable, "-c", PACED_OPENS, str(target), str(OPENS), str(RATE)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    seconds = float(load.stdout)
    assert run.stop() == 0, run.stderr_text
    opens = [e for e in read_events(out) if "ticks" in e.get("tags", [])]
    assert len(opens) == OPENS, run.stderr_text
    receiver = json.loads((run_dir / "summary.json").read_text())["receiver"]
    bound = 2 * seconds * 1000 / BATCH_MAX_MS + 10
    assert 0 < receiver["socket_reads"] <= bound, (receiver["socket_reads"], seconds)
