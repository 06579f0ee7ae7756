"""CPU seconds per stage process of one whole-pipeline replay: where the pipeline's CPU goes.

    python bench/stage_cpu.py --log /tmp/big.log --assemblers 2

Samples utime+stime of the supervisor and each stage from /proc every 0.1 s while
`auditstream replay` runs (the last sample before a stage exits counts) and prints
seconds and microseconds per input line for each. On 2 cores the single-instance
stages (receiver, tree keeper) set the ceiling that more assemblers cannot lift.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bytecode import compile_packages  # bench/ is on the path

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def _stage_name(pid: int) -> str | None:
    """`receiver`, `assembler-1`, … from `python -m NAME --config … [--index N]`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "-m" not in argv:
        return None
    name = argv[argv.index("-m") + 1]
    if name == "assembler":
        index = argv[argv.index("--index") + 1] if "--index" in argv else "0"
        return f"assembler-{index}"
    return name


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
    args = parser.parse_args()
    compile_packages()  # the stages start as an installed copy does (bench/bytecode.py)
    lines = sum(1 for _ in args.log.open("rb"))
    seen: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="auditstream-stage-cpu-") as tmp:
        cmd = [sys.executable, "-m", "auditstream", "replay", str(args.log),
               "--sink", f"jsonl:{Path(tmp) / 'out.jsonl'}", "--assemblers", str(args.assemblers)]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            for pid in _children(proc.pid):
                name, cpu = _stage_name(pid), _cpu_seconds(pid)
                if name is not None and cpu is not None:  # a zombie has no cmdline
                    seen[name] = max(seen.get(name, 0.0), cpu)
            if (cpu := _cpu_seconds(proc.pid)) is not None:
                seen["supervisor"] = cpu
            time.sleep(0.1)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"replay failed with exit code {proc.returncode}")
    print(
        f"{args.log}: {lines} lines in {wall:.2f} s ({lines / wall:,.0f} lines/s), {os.cpu_count()} cores"
    )
    print(f"{'process':14} {'CPU s':>7} {'us/line':>8}")
    for name in sorted(seen):
        print(f"{name:14} {seen[name]:7.2f} {seen[name] / lines * 1e6:8.1f}")
    total = sum(seen.values())
    print(f"{'total':14} {total:7.2f} {total / lines * 1e6:8.1f}")


if __name__ == "__main__":
    main()
