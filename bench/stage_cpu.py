"""CPU seconds per stage process of one whole-pipeline replay: where the pipeline's CPU goes.

    python bench/stage_cpu.py --log /tmp/big.log --assemblers 2

Samples utime+stime and minor page faults of the supervisor and each stage from /proc
every 0.1 s while `auditstream replay` runs (the last sample before a stage exits counts)
and prints seconds, microseconds per input line and page faults for each. On 2 cores
the single-instance stages (receiver, tree keeper) set the ceiling that more assemblers
cannot lift.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# A stage's name from its comm or command line: the tests' own (one definition).
from bytecode import compile_packages  # noqa: E402  (bench/ is on the path)
from live_helpers import stage_name  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds and minor page faults of ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[7])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, required=True, help="audit.log to replay")
    parser.add_argument("--assemblers", type=int, default=2)
    parser.add_argument("--config", type=Path, help="a config file for the replay (-c)")
    args = parser.parse_args()
    compile_packages()  # the stages start as an installed copy does (bench/bytecode.py)
    lines = sum(1 for _ in args.log.open("rb"))
    seen: dict[str, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="auditstream-stage-cpu-") as tmp:
        cmd = [sys.executable, "-m", "auditstream", "replay", str(args.log),
               "--sink", f"jsonl:{Path(tmp) / 'out.jsonl'}", "--assemblers", str(args.assemblers)]  # fmt: skip
        if args.config is not None:
            cmd += ["-c", str(args.config.resolve())]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            for pid in _children(proc.pid):
                name, usage = stage_name(pid), _usage(pid)
                if name is not None and usage is not None:  # a zombie has no cmdline
                    seen[name] = max(seen.get(name, (0.0, 0)), usage)
            if (usage := _usage(proc.pid)) is not None:
                seen["supervisor"] = usage
            time.sleep(0.1)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"replay failed with exit code {proc.returncode}")
    print(
        f"{args.log}: {lines} lines in {wall:.2f} s ({lines / wall:,.0f} lines/s), {os.cpu_count()} cores"
    )
    print(f"{'process':14} {'CPU s':>7} {'us/line':>8} {'page faults':>12}")
    for name in sorted(seen):
        cpu, faults = seen[name]
        print(f"{name:14} {cpu:7.2f} {cpu / lines * 1e6:8.1f} {faults:12,}")
    total = sum(cpu for cpu, _ in seen.values())
    print(f"{'total':14} {total:7.2f} {total / lines * 1e6:8.1f}")


if __name__ == "__main__":
    main()
