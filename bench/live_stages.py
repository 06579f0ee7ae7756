"""Per-stage CPU and wakeups of `auditstream run` during a live load, start-up excluded.

    python bench/live_stages.py --rate 5000 --seconds 5 [--rounds 2]

Starts `auditstream run` with bench/live.py's single load rule, samples each stage's CPU
time and context switches (voluntary: it slept and woke; involuntary: preempted) once
the receiver has registered, runs ../shared/bench/loadgen.c, waits 1 s, samples again and
prints the differences per stage, in CPU µs per generated event. Needs root and a clean
kernel (put back as found). Read several rounds: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import live


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process's main thread."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )  # fmt: skip
    return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])


def sample(pids: dict[str, int]) -> dict[str, tuple[float, int, int]]:
    return {name: (live.cpu_seconds(pid), *switches(pid)) for name, pid in pids.items()}


def one_round(work: Path, loadgen: Path, rate: int, seconds: float) -> None:
    rules = work / "load.rules"
    rules.write_text(f"-a always,exit -F arch=b64 -S open,openat -F exe={loadgen} -k load\n")
    config = work / "c.toml"
    config.write_text(f'[runtime]\ndir = "{work}/run"\n[receiver]\nrules_files = ["{rules}"]\n')
    proc = live.start_run(work, config, work / "events.jsonl")
    try:
        live.wait_until(
            lambda: live.kernel_status()["pid"] == live.stage_pids(proc.pid).get("receiver", -1),
            20,
            "the receiver to register",
        )
        pids = live.stage_pids(proc.pid)
        before = sample(pids)
        generated = live.run_loadgen(loadgen, rate, seconds)
        time.sleep(1.0)
        after = sample(pids)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    total = 0.0
    print(f"rate {rate}/s for {seconds} s: {generated} events generated")
    for name in sorted(after):
        cpu = after[name][0] - before[name][0]
        total += cpu
        vol = after[name][1] - before[name][1]
        invol = after[name][2] - before[name][2]
        per_event = cpu / max(generated, 1) * 1e6
        print(f"  {name:12s} CPU {cpu:5.2f} s {per_event:6.1f} µs/event  switches {vol} / {invol}")
    print(f"  {'total':12s} CPU {total:5.2f} s {total / max(generated, 1) * 1e6:6.1f} µs/event")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=5000, help="open() calls per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    live.compile_packages()
    with tempfile.TemporaryDirectory(prefix="auditstream-bench-") as tmp, live.kernel_lock():
        loadgen = live.build_loadgen(Path(tmp))
        for number in range(args.rounds):
            work = Path(tmp) / f"round-{number}"
            work.mkdir()
            one_round(work, loadgen, args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
