"""A stalled pipeline must not make the kernel drop records: the netlink reader never stalls.

Since Linux 5.15 kauditd waits only HZ/10 for room in the reader's socket; after that
the record goes the retry/hold way, where a kernel booted without `audit=1` drops it
without counting it as lost. Here the assembler is stopped (SIGSTOP) under an open()
load: the receiver must keep reading into its buffers, then trickle so the kernel's
backlog throttles the load, and every event must come out once the assembler resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from live_helpers import (
    KernelState,
    LiveRun,
    kernel_clean,
    kernel_status,
    read_events,
)

pytestmark = pytest.mark.kernel
__all__ = ["kernel_clean"]  # the fixture is used by name

OPENS = 40_000


def _is_load(event: dict[str, object]) -> bool:
    """One of the loop's opens (bash also opens its libraries at start)."""
    file = event.get("file")
    return "stall" in event.get("tags", []) and isinstance(file, dict) and (  # type: ignore[operator]
        file.get("path") == "/etc/hostname"
    )


def _load_events(out: Path) -> int:
    return sum(1 for e in read_events(out) if _is_load(e))


def test_stopped_assembler_loses_nothing(kernel_clean: KernelState, tmp_path: Path) -> None:
    """SIGSTOP the assembler for 3 s under load: no kernel loss, no serial gap, all events."""
    bash = shutil.which("bash")
    assert bash is not None
    loader = tmp_path / "loadbash"  # its own path: the rule matches this load only
    shutil.copy(bash, loader)
    rules = tmp_path / "load.rules"
    rules.write_text(f"-a always,exit -F arch=b64 -S open,openat -F exe={loader} -k stall\n")
    run_dir, out = tmp_path / "run", tmp_path / "events.jsonl"
    config = tmp_path / "c.toml"
    config.write_text(
        f"[runtime]\ndir = {json.dumps(str(run_dir))}\n"
        f"[receiver]\nrules_files = [{json.dumps(str(rules))}]\n"
    )
    run = LiveRun(["run", "-c", str(config), "--sink", f"jsonl:{out}"], tmp_path).start()
    load: subprocess.Popen[bytes] | None = None
    assembler = 0
    try:
        run.wait_registered()
        lost_before = kernel_status()["lost"]
        assembler = run.stage_pids()["assembler-0"]
        os.kill(assembler, signal.SIGSTOP)
        script = f"for ((i = 0; i < {OPENS}; i++)); do : < /etc/hostname; done"
        load = subprocess.Popen([str(loader), "-c", script])
        time.sleep(3.0)
        os.kill(assembler, signal.SIGCONT)
        assembler = 0
        load.wait(timeout=240)
        deadline = time.monotonic() + 180
        while _load_events(out) < OPENS and time.monotonic() < deadline:
            time.sleep(0.5)
        lost = kernel_status()["lost"] - lost_before
        code = run.stop(signal.SIGINT, timeout_s=120)
    finally:
        if assembler:
            os.kill(assembler, signal.SIGCONT)
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        run.kill()
    assert code == 0, run.stderr_text
    assert lost == 0, f"the kernel lost {lost} records"
    assert " 0 events lost" in run.stderr_text, run.stderr_text
    events = read_events(out)
    got = sum(1 for e in events if _is_load(e))
    markers = [e for e in events if "auditstream-marker" in e.get("tags", [])]
    assert markers == [], markers[:3]
    assert got == OPENS, f"{got} of {OPENS} open() events came out"
    summary = json.loads((run_dir / "summary.json").read_text())
    receiver = summary["receiver"]
    # The stop really made the receiver hold batches back instead of blocking on them.
    assert receiver["queued_sends"] > 0, receiver
