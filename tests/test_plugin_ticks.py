"""The auditd plugin source (stdin) at a low rate reads about once per `batch_max_ms`.

auditd writes each record to its plugin on its own; a reader that woke for each took ~16 %
of a core at 1,000 events/s. Real `auditstream run --source stdin` fed one line per write
at a paced rate, as auditd feeds it; no kernel needed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from live_helpers import stdin_run

BATCH_MAX_MS = 20
EVENTS, LINES_PER_S = 1000, 1000.0


def event_lines(serial: int) -> list[bytes]:
    """One execve event (SYSCALL, EOE) as auditd hands it to its plugin, a line per record."""
    stamp = f"msg=audit(1700000000.{serial % 1000:03d}:{serial}):"
    return [
        f"type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1 items=0 "
        f'ppid=100 pid={serial} auid=1000 uid=1000 ses=3 comm="cat" exe="/usr/bin/cat"\n'.encode(),
        f"type=EOE {stamp} \n".encode(),
    ]


def exec_pids(tmp_path: Path) -> list[int]:
    """The pids of the execve docs written (not the lifecycle docs), sorted."""
    docs = [json.loads(line) for line in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    return sorted(d["process"]["pid"] for d in docs if d.get("auditd", {}).get("records"))


def test_a_paced_plugin_stream_is_read_about_once_per_batch_interval_and_arrives_whole(
    tmp_path: Path,
) -> None:
    """1,000 lines/s, one write each, for 2 s: every event arrives, and the receiver read the
    stream at most twice per batch_max_ms (it read after nearly every line before)."""
    with stdin_run(tmp_path, f"batch_max_ms = {BATCH_MAX_MS}\n") as run:
        assert run.stdin is not None
        lines = [line for serial in range(1, EVENTS + 1) for line in event_lines(serial)]
        start = time.monotonic()
        for n, line in enumerate(lines):
            if (delay := start + n / LINES_PER_S - time.monotonic()) > 0:
                time.sleep(delay)
            os.write(run.stdin.fileno(), line)
        seconds = time.monotonic() - start
        _, stderr = run.communicate(timeout=60)  # closes stdin: auditd stopped us
    assert run.returncode == 0, stderr.decode(errors="replace")
    assert exec_pids(tmp_path) == list(range(1, EVENTS + 1))
    receiver = json.loads((tmp_path / "run" / "summary.json").read_text())["receiver"]
    bound = 2 * seconds * 1000 / BATCH_MAX_MS + 10
    assert 0 < receiver["source_reads"] <= bound, (receiver["source_reads"], seconds)


def test_a_stop_is_seen_soon_and_drains_whatever_batch_max_ms_is(tmp_path: Path) -> None:
    """batch_max_ms 20 s and a few lines in (the reader sleeps a tick): SIGTERM ends the run
    within a few seconds, not after the tick, and the lines' events are written."""
    with stdin_run(tmp_path, "batch_max_ms = 20000\n") as run:
        assert run.stdin is not None
        os.write(run.stdin.fileno(), b"".join(event_lines(1) + event_lines(2)))
        time.sleep(1.0)  # read, and asleep in its 20 s tick
        stopped_at = time.monotonic()
        run.terminate()
        _, stderr = run.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    assert run.returncode == 0, stderr.decode(errors="replace")
    assert took < 10, f"the stop took {took:.1f} s"
    assert exec_pids(tmp_path) == [1, 2]
