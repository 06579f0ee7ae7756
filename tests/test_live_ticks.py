"""The live reader at a low rate wakes once per `batch_max_ms`, not after every datagram;
idle, a few times a second.

kauditd sends one datagram per record; a reader that woke for each (or every few ms) spent
most of a quiet host's CPU on wakeups, and an idle one woke every `batch_max_ms`. All
real: the kernel, `auditstream run`, a process opening a watched file at a paced rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import (
    KernelState,
    LiveRun,
    kernel_clean,
    main_thread_sleeps,
    read_events,
    start_run,
    write_config,
)

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
    assert 0 < receiver["source_reads"] <= bound, (receiver["source_reads"], seconds)


def test_an_idle_reader_wakes_a_few_times_a_second(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """With a rule nothing matches, the receiver's main thread sleeps at most ~6 times a
    second (its status write, a 500 ms wait, the odd ack); it woke every batch_max_ms (50)."""
    rules = tmp_path / "quiet.rules"
    rules.write_text(f"-w {tmp_path / 'nothing'} -p r -k quiet\n")
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [rules])
    run = start_run(runs, tmp_path, "-c", str(config), "--sink", f"jsonl:{tmp_path / 'out'}")
    receiver = run.wait_registered()
    time.sleep(1.0)  # past the start's own traffic
    before, started = main_thread_sleeps(receiver), time.monotonic()
    time.sleep(3.0)
    woke = main_thread_sleeps(receiver) - before
    seconds = time.monotonic() - started
    assert run.stop() == 0, run.stderr_text
    assert woke <= 6 * seconds, (woke, seconds)
