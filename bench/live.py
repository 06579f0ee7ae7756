"""Live benchmark: auditstream run vs Debian's auditd under an open() load of rising rates.

    python bench/live.py                         # 1k..50k events/s, 5 s each
    python bench/live.py --rates 5000,20000,50000 --seconds 3

For each rate and each reader: start it with one rule (`-a always,exit -F arch=b64 -S
open,openat -F exe=<loadgen> -k load`; auditstream loads only that rule, not its lifecycle
rules, so both readers see the same kernel traffic), run ../shared/bench/loadgen.c, stop the
reader, and count `load` events out, the kernel's `lost` delta and CPU seconds per process.
CPU is counted from the reader's registration with the kernel (its rule loaded) to 1 s
after the load, for both readers: start-up (our stages' imports, ~0.08 CPU s each) is not
a cost per event, and counted it made up a quarter of our CPU at 5,000/s.
Both readers run with the same kernel settings: backlog 8192 and backlog wait time 0 (DESIGN
§7's auditd figures). With a wait time, a full backlog makes the audited process (the load)
sleep instead of losing events: `lost` would stay 0 however slow the reader, so a wait time
would hide what this measures. The kernel's `backlog_wait_time_actual` delta is reported too.
Each run's files are deleted once its events are counted (unless --keep): kept, every run
wrote into new memory (3 GB of our lines over the six default rates) and, on a VM that
gives freed memory back to its host, paid ~9 µs per new 4 KiB page in the writer's system
time: a cost of the benchmark's leftovers that grew with each run (docs/performance.md,
twenty-eighth pass).
Holds /run/lock/auditstream-kernel.lock throughout; needs root and a clean kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# The kernel lock, settings and auditd config are the live tests' own (one definition).
from bytecode import compile_packages  # noqa: E402  (bench/ is on the path)
from live_helpers import (  # noqa: E402
    AUDITD_CONF,
    LOCK_PATH,
    SETTINGS,
    auditctl,
    kernel_status,
    stage_pids,
)

LOADGEN_C = Path(__file__).resolve().parents[2] / "shared" / "bench" / "loadgen.c"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKLOG_LIMIT = 8192
BACKLOG_WAIT_TIME = 0  # for both readers: see the docstring


@dataclass(frozen=True, slots=True)
class Result:
    """One reader at one rate."""

    reader: str
    rate: int
    generated: int
    events_out: int
    kernel_lost: int
    cpu_s: dict[str, float]
    kernel_waited: int  # backlog_wait_time_actual delta: 0 unless a wait time let the load sleep
    # The load's own CPU s (its open()s and the kernel's audit records, ~14 µs per open()
    # here): what is left of the 2 cores for the reader (docs/performance.md, 36th pass).
    load_cpu_s: float
    kauditd_cpu_s: float  # the kernel thread that hands the records to the reader

    @classmethod
    def of(
        cls, reader: str, rate: int, events_out: int, cpu_s: dict[str, float], load: LoadCounts
    ) -> Result:
        return cls(reader, rate, load.generated, events_out, load.lost, cpu_s, load.waited,
                   load.load_cpu_s, load.kauditd_cpu_s)  # fmt: skip


def build_loadgen(directory: Path) -> Path:
    """../shared/bench/loadgen.c compiled into ``directory``."""
    loadgen = directory / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(loadgen), str(LOADGEN_C)], check=True)
    return loadgen


def kernel_rules() -> str:
    """`auditctl -l`."""
    return auditctl("-l").strip()


@contextlib.contextmanager
def kernel_lock() -> Iterator[dict[str, int]]:
    """Hold the kernel lock, insist on a clean kernel, and check it is left as found."""
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = kernel_status()
        if found["pid"] or found["enabled"] == 2 or kernel_rules() != "No rules":
            raise SystemExit("kernel audit is in use (pid holder, rules or immutable): not clean")
        yield found
        now = kernel_status()
        if now["enabled"] != found["enabled"]:
            subprocess.run(
                ["auditctl", "-e", str(found["enabled"])], check=True, capture_output=True
            )
        changed = [n for n in SETTINGS if kernel_status()[n] != found[n]]
        if changed or kernel_rules() != "No rules":
            print(
                f"WARNING: kernel left changed: {changed} rules={kernel_rules()!r}", file=sys.stderr
            )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_loadgen(loadgen: Path, rate: int, seconds: float) -> int:
    """Run the load and return the achieved number of open() calls."""
    out = subprocess.run(
        [str(loadgen), str(rate), str(seconds)], check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[0])


def children_cpu_seconds() -> float:
    """utime + stime of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def kauditd_pid() -> int | None:
    """The pid of the kernel's kauditd thread, or None."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().split(" ", 2)[1] == "(kauditd)":
                return int(stat.parent.name)
    return None


@dataclass(frozen=True, slots=True)
class LoadCounts:
    """What one load did: calls made, the kernel's counters' deltas, the CPU it cost."""

    generated: int
    lost: int
    waited: int  # backlog_wait_time_actual delta
    load_cpu_s: float
    kauditd_cpu_s: float


def load_with_kernel_counts(loadgen: Path, rate: int, seconds: float) -> LoadCounts:
    """Run the load and give the reader 1 s to catch up (before its CPU is sampled). No
    other child ends while the load runs (the readers end after it): the children's CPU
    that rises meanwhile is the load's."""
    before = kernel_status()
    kauditd = kauditd_pid()
    kauditd_before = cpu_seconds(kauditd) if kauditd else 0.0
    children_before = children_cpu_seconds()
    generated = run_loadgen(loadgen, rate, seconds)
    load_cpu = children_cpu_seconds() - children_before
    time.sleep(1.0)
    after = kernel_status()
    return LoadCounts(
        generated,
        after["lost"] - before["lost"],
        after["backlog_wait_time_actual"] - before["backlog_wait_time_actual"],
        load_cpu,
        cpu_seconds(kauditd) - kauditd_before if kauditd else 0.0,
    )


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check()` until true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_run(work: Path, config: Path, out: Path) -> subprocess.Popen[bytes]:
    """`auditstream run -c CONFIG` with a jsonl sink; stderr in WORK/stderr, own session."""
    with (work / "stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", "run", "-c", str(config),
             "--sink", f"jsonl:{out}"],
            cwd=REPO, stderr=err, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def bench_auditstream(work: Path, loadgen: Path, rule: str, rate: int, seconds: float) -> Result:
    """`auditstream run` with only the load rule, JSONL sink."""
    rules = work / "load.rules"
    rules.write_text(rule + "\n")
    config = work / "c.toml"
    config.write_text(
        f'[runtime]\ndir = "{work}/run"\n[receiver]\nrules_files = ["{rules}"]\n'
        f"backlog_limit = {BACKLOG_LIMIT}\nbacklog_wait_time = {BACKLOG_WAIT_TIME}\n"
    )
    out = work / "events.jsonl"
    proc = start_run(work, config, out)
    try:
        wait_until(
            lambda: kernel_status()["pid"] == stage_pids(proc.pid).get("receiver", -1),
            20,
            "the receiver to register",
        )
        started = {pid: cpu_seconds(pid) for pid in stage_pids(proc.pid).values()}
        load = load_with_kernel_counts(loadgen, rate, seconds)
        cpu: dict[str, float] = {}
        for name, pid in stage_pids(proc.pid).items():  # assembler-N add up as "assembler"
            stage = name.split("-")[0]
            cpu[stage] = cpu.get(stage, 0.0) + cpu_seconds(pid) - started.get(pid, 0.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    count = sum(1 for line in out.open("rb") if b'"load"' in line and b'"tags"' in line)
    return Result.of("auditstream", rate, count, cpu, load)


def bench_auditd(work: Path, loadgen: Path, rule: str, rate: int, seconds: float) -> Result:
    """Debian's auditd, ENRICHED log in `work`, no plugins; stopped by pid."""
    log = work / "audit.log"
    (work / "plugins").mkdir(exist_ok=True)
    conf = work / "auditd.conf"
    conf.write_text(AUDITD_CONF.format(log_file=log, plugin_dir=work / "plugins"))
    conf.chmod(0o600)
    backlog0 = kernel_status()
    proc = subprocess.Popen(
        ["/usr/sbin/auditd", "-n", "-c", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    added = False
    try:
        wait_until(lambda: kernel_status()["pid"] == proc.pid, 10, "auditd to start")
        # Same kernel settings as auditstream uses (backlog 8192), as in DESIGN §7.
        subprocess.run(
            ["auditctl", "-b", str(BACKLOG_LIMIT), "--backlog_wait_time", str(BACKLOG_WAIT_TIME)],
            check=True,
            capture_output=True,
        )
        subprocess.run(["auditctl", *rule.split()], check=True, capture_output=True)
        added = True
        started = cpu_seconds(proc.pid)
        load = load_with_kernel_counts(loadgen, rate, seconds)
        cpu = {"auditd": cpu_seconds(proc.pid) - started}
    finally:
        if added:
            subprocess.run(["auditctl", "-d", *rule.split()[1:]], check=True, capture_output=True)
        subprocess.run(
            [
                "auditctl",
                "-b",
                str(backlog0["backlog_limit"]),
                "--backlog_wait_time",
                str(backlog0["backlog_wait_time"]),
            ],
            check=True,
            capture_output=True,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        subprocess.run(
            ["auditctl", "-e", str(backlog0["enabled"])], check=True, capture_output=True
        )
    count = sum(
        1 for line in log.open("rb") if line.startswith(b"type=SYSCALL") and b'key="load"' in line
    )
    return Result.of("auditd", rate, count, cpu, load)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        default="1000,5000,10000,20000,30000,40000,50000",
        help="events/s, comma separated",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per rate")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep each run's files (config, stderr, output) under DIR"
    )
    parser.add_argument(
        "--only", choices=("auditstream", "auditd"), help="run one reader (default: both)"
    )
    args = parser.parse_args()
    compile_packages()  # the stages start as an installed copy does (bench/bytecode.py)
    if os.geteuid() != 0:
        raise SystemExit("needs root (kernel audit)")
    rates = [int(r) for r in args.rates.split(",")]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="auditstream-bench-") as scratch, kernel_lock():
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        loadgen = build_loadgen(Path(tmp))
        rule = f"-a always,exit -F arch=b64 -S open,openat -F exe={loadgen} -k load"
        for rate in rates:
            for name, bench in (("auditstream", bench_auditstream), ("auditd", bench_auditd)):
                if args.only and name != args.only:
                    continue
                work = Path(tmp) / f"{name}-{rate}"
                work.mkdir()
                results.append(bench(work, loadgen, rule, rate, args.seconds))
                if not args.keep:
                    # Counted: its output goes, so the next run writes into page cache this
                    # one freed rather than into memory the guest has to fault in anew.
                    shutil.rmtree(work)
    print_table(results)
    if args.json:
        print(json.dumps([_as_dict(r) for r in results]))
    if args.json_out:
        args.json_out.write_text(json.dumps([_as_dict(r) for r in results]))
    return 0


def _as_dict(result: Result) -> dict[str, object]:
    return {name: getattr(result, name) for name in Result.__slots__}


def print_table(results: list[Result]) -> None:
    """One line per rate: auditstream and auditd side by side."""
    print(
        "| rate/s | generated | auditstream out | lost | waited | CPU s (receiver/assembler/"
        "treekeeper) | load / kauditd CPU s | auditd: generated | out | lost | waited | CPU s "
        "| load / kauditd CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_rate: dict[int, dict[str, Result]] = {}
    for r in results:
        by_rate.setdefault(r.rate, {})[r.reader] = r
    for rate, pair in by_rate.items():
        ours, theirs = pair.get("auditstream"), pair.get("auditd")
        mine = "- | - | - | - | - | -"
        if ours is not None:
            cpu = "/".join(
                f"{ours.cpu_s.get(n, 0.0):.2f}" for n in ("receiver", "assembler", "treekeeper")
            )
            mine = (
                f"{ours.generated} | {ours.events_out} | {ours.kernel_lost}"
                f" | {ours.kernel_waited} | {cpu} | {ours.load_cpu_s:.2f} / {ours.kauditd_cpu_s:.2f}"
            )
        peer = "- | - | - | - | - | -"
        if theirs is not None:
            peer = (
                f"{theirs.generated} | {theirs.events_out} | {theirs.kernel_lost}"
                f" | {theirs.kernel_waited} | {theirs.cpu_s['auditd']:.2f}"
                f" | {theirs.load_cpu_s:.2f} / {theirs.kauditd_cpu_s:.2f}"
            )
        print(f"| {rate} | {mine} | {peer} |")


if __name__ == "__main__":
    raise SystemExit(main())
