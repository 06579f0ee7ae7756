"""Tree keeper throughput and memory: python bench/tree.py [--processes N].

An exec-heavy synthetic stream (shell forks a child; the child execs, opens a
file and exits) goes through ProcessTable.observe + enrich; maintain runs every
1000 events in event time. Prints events/s of observe+enrich alone (building
the docs is not counted) and RSS after the churn of N short-lived processes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treekeeper.tree import ProcessTable, TableConfig

BASE_S = 1_700_000_000
SHELL = 1000


def rss_mb() -> float:
    """Current resident set size in MiB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stamp(ms: int) -> str:
    """``@timestamp`` text for ``ms``."""
    head = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{ms % 1000:03d}Z"


def doc(ms: int, seq: int, syscall: str, pid: int, ppid: int, **extra: Any) -> dict[str, Any]:
    """One ECS-shaped event doc with the fields the tree keeper reads."""
    process: dict[str, Any] = {"pid": pid, "parent": {"pid": ppid}, "name": extra.pop("comm")}
    process["executable"] = extra.pop("exe")
    if "args" in extra:
        process["args"] = extra.pop("args")
        process["working_directory"] = "/home/user"
    data = {"syscall": syscall, **extra}
    return {
        "@timestamp": stamp(ms),
        "event": {"sequence": seq},
        "auditd": {"data": data, "result": "success"},
        "process": process,
    }


def stream(processes: int) -> Any:
    """Yield (ms, doc) for ``processes`` fork/exec/open/exit lifecycles under one shell."""
    seq = 0
    for i in range(processes):
        ms = BASE_S * 1000 + i // 4  # ~4000 processes per second of event time
        child = 2000 + i % 4_000_000
        seq += 4
        yield ms, doc(ms, seq, "clone", SHELL, 1, exit=str(child), a0="1200011",
                      comm="bash", exe="/usr/bin/bash")  # fmt: skip
        yield ms, doc(ms, seq + 1, "execve", child, SHELL, exit="0", comm="grep",
                      exe="/usr/bin/grep", args=["grep", "-r", f"pattern{i}", "."])  # fmt: skip
        yield ms, doc(ms, seq + 2, "openat", child, SHELL, exit="3", comm="grep",
                      exe="/usr/bin/grep")  # fmt: skip
        yield ms, doc(ms, seq + 3, "exit_group", child, SHELL, a0="0", comm="grep",
                      exe="/usr/bin/grep")  # fmt: skip


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=1_000_000)
    opts = parser.parse_args()
    table = ProcessTable(TableConfig(host="bench"))
    rss_start = rss_mb()
    spent = 0.0
    events = 0
    lifecycle = 0
    clock = time.perf_counter
    for ms, event in stream(opts.processes):
        began = clock()
        lifecycle += len(table.observe(event))
        table.enrich(event)
        events += 1
        if events % 1000 == 0:
            lifecycle += len(table.maintain(ms))
        spent += clock() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"processes            {opts.processes}")
    print(f"events               {events}")
    print(f"lifecycle docs       {lifecycle}")
    print(f"observe+enrich       {events / spent:,.0f} events/s ({spent:.1f} s)")
    print(f"table size at end    {len(table)}")
    print(f"rss start / end      {rss_start:.1f} MiB / {rss_mb():.1f} MiB (peak {peak:.1f} MiB)")


if __name__ == "__main__":
    main()
