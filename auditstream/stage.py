"""What every stage process shares: argument parsing, logging, signals as loop flags."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from auditstream import config as config_mod
from auditstream import logs, privilege

# A stage exits with this when its configuration or source cannot work (EX_CONFIG):
# restarting it would fail the same way, so the supervisor stops instead.
EXIT_FATAL = 78
# After a stop signal a downstream stage keeps draining until its input has been quiet
# this long (or its upstream's eof arrives): signals can reach every stage at once.
STOP_IDLE_S = 2.0
GC_THRESHOLD_ALLOCATIONS = 200_000


@dataclass(slots=True)
class StageContext:
    """Per-process state a stage loop reads: its index and the stop flag set by signals."""

    name: str
    index: int = 0
    stop_requested: bool = False
    signals: list[int] = field(default_factory=list)
    quiet_since: float | None = None
    supervisor_pid: int = 0

    def orphaned(self) -> bool:
        """The supervisor is gone (killed): nothing will restart a stage or end the run."""
        return bool(self.supervisor_pid) and os.getppid() != self.supervisor_pid

    def should_stop_when_idle(self, now: float) -> bool:
        """True once a stop was asked and the input has been quiet for STOP_IDLE_S."""
        if not self.stop_requested:
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        return now - self.quiet_since >= STOP_IDLE_S

    def input_arrived(self) -> None:
        self.quiet_since = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        self.signals.append(signum)


def merge_stats(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Add counters from ``more`` into ``into`` (nested dicts of ints)."""
    for key, value in more.items():
        if isinstance(value, dict):
            merge_stats(into.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            into[key] = value
    return into


def ms_until(deadline: float) -> int:
    """Whole milliseconds from now (time.monotonic()) to ``deadline``, rounded up, at least 0:
    a wait that long ends at or after it."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Atomically replace a small JSON status file (read by `auditstream status`)."""
    tmp = path.with_suffix(".tmp")
    # Group-readable, in the directory's group: with [runtime] user the metrics process
    # (that user) reads root's receiver file through the runtime dir's group (a setgid dir
    # would need CAP_FSETID, which the systemd unit does not grant). Without `user` the dir
    # is 0700 root. The owner may give a file any group it is in: no capability needed.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with contextlib.suppress(OSError):  # not in that group: stays ours; metrics says so
        os.fchown(fd, -1, os.stat(path.parent).st_gid)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(status, fh)
    os.replace(tmp, path)


def cpu_affinity_for(cfg: config_mod.Config, name: str, index: int) -> set[int]:
    """CPUs the stage is pinned to (empty: not pinned); assemblers round-robin the list."""
    if name == "assembler":
        cpus = cfg.assembler.cpu_affinity
        return {cpus[index % len(cpus)]} if cpus else set()
    if name == "receiver":
        return set(cfg.receiver.cpu_affinity)
    if name == "treekeeper":
        return set(cfg.treekeeper.cpu_affinity)
    return set()


AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> None:
    """Raise this process's nice value, and its autogroup's, to ``nice`` (no privilege needed).

    Each stage runs in a session of its own, and with the kernel's autogroup scheduling
    (sched_autogroup_enabled, processes in the root CPU cgroup) the scheduler shares the
    CPUs fairly among sessions first: a process's own nice value then only ranks it
    within its session, i.e. against nothing. The autogroup's nice value ranks the
    session. The autogroup goes first: once the process's own value shows, both are set."""
    with contextlib.suppress(OSError):  # no autogroup support
        AUTOGROUP.write_text(str(nice))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as err:
        logging.getLogger("auditstream.stage").debug("nice value unchanged: %s", err)


def tune_gc() -> None:
    """Run the cyclic garbage collector rarely (the stages, and the benchmarks that time them).

    Events are trees of small dicts without cycles: reference counting frees them. The
    collector's default thresholds make it rescan them constantly."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_ALLOCATIONS, 50, 100)


# glibc's mallopt() parameters (malloc.h) and what the stages ask for.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
HEAP_TRIM_THRESHOLD_BYTES = 32 << 20
HEAP_TOP_PAD_BYTES = 4 << 20
# Setting the others turns off glibc's own raising of this one: frames of ~1 MB would
# each get (and fault in) a fresh mmap.
HEAP_MMAP_THRESHOLD_BYTES = 8 << 20


def keep_freed_heap() -> bool:
    """Have glibc keep up to 32 MiB of freed heap for reuse; False where it cannot (not glibc).

    Every batch allocates and frees megabytes (the docs' JSON text, orjson's and msgpack's
    buffers): with glibc's defaults the top of the heap went back to the kernel and was
    faulted in again each time, 148k page faults and ~15 % of an assembler's time
    (docs/performance.md). A user's own GLIBC_TUNABLES for malloc win."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)
        and mallopt(M_TOP_PAD, HEAP_TOP_PAD_BYTES)
        and mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
    )


StageRun = Callable[[config_mod.Config, StageContext], int]
COMM_PATH = Path("/proc/self/comm")
# What stops a stage: a loop flag while it runs, ignored once its run has returned.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def name_process(component: str) -> None:
    """Show the stage's name (``receiver``, ``assembler-0``…) as the process's comm: in ps,
    top and pgrep, rather than ``python`` (a forked stage's command line is its
    supervisor's)."""
    with contextlib.suppress(OSError):
        COMM_PATH.write_text(component[:15])  # the kernel keeps 15 bytes


def stage_main(name: str, run: StageRun, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m <stage> --config FILE``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {name}", description=f"auditstream {name} stage"
    )
    parser.add_argument(
        "--config", "-c", required=True, help="TOML config (or the supervisor's JSON)"
    )
    parser.add_argument("--index", type=int, default=0, help="instance number (assemblers)")
    parser.add_argument(
        "--supervisor-pid", type=int, default=0, help="stop when this parent process is gone"
    )
    parser.add_argument(
        "--start-after", metavar="PATH", help="wait (imports done) until PATH exists, then run"
    )
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as err:
        print(f"auditstream[{name}]: {err}", file=sys.stderr)
        return 2
    component = f"{name}-{args.index}" if name == "assembler" else name
    name_process(component)
    logs.setup(component, fmt=cfg.runtime.log_format, level=cfg.runtime.log_level)
    # Before any thread starts (ZeroMQ's, the sinks'): threads inherit the mask.
    if cpus := cpu_affinity_for(cfg, name, args.index):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as err:  # e.g. a CPU outside this cgroup's cpuset
            logging.getLogger(f"auditstream.{name}").error(
                "cannot pin to CPUs %s: %s", sorted(cpus), err.strerror or err
            )
            return EXIT_FATAL
    tune_gc()
    keep_freed_heap()
    ctx = StageContext(name=name, index=args.index, supervisor_pid=args.supervisor_pid or 0)
    for number in STOP_SIGNALS:
        signal.signal(number, ctx._on_signal)
    # SIGHUP: a supervised stage leaves it to its supervisor (which stops the pipeline in
    # order), so that a `pkill -HUP` reaching every process kills no stage mid-drain (exec'd
    # stages died of it; forked ones ran the supervisor's handler copy); a stage run alone
    # stops on it as the supervisor does, as on SIGTERM.
    signal.signal(signal.SIGHUP, signal.SIG_IGN if ctx.supervisor_pid else ctx._on_signal)
    # A forked stage has had them blocked since the fork (auditstream/stagefork.py): one
    # that came meanwhile lands on the handler now. An exec'd stage has nothing blocked.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # A broken stdout pipe (jq exited) must not kill the stage with a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL if name != "treekeeper" else signal.SIG_IGN)
    _stop_with_supervisor(ctx)
    try:
        if args.start_after and not _wait_for(Path(args.start_after), ctx):
            return 0  # stopped before the go: nothing was read, nothing to drain
        return run(cfg, ctx)
    finally:
        _keep_exit_code()


def _keep_exit_code() -> None:
    """Ignore stop signals once the stage's run has returned: its exit code stands.

    The supervisor signals the stages still running once the tree keeper has exited. A
    receiver that had failed (the audit PID held elsewhere: exit 78) but was still in
    Python's finalization, where the handlers are SIG_DFL again, died of that SIGTERM,
    which the supervisor counts as a clean stop: the refused run exited 0."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


START_AFTER_POLL_S = 0.002  # a stat() each: it is the start of every replay


def _wait_for(path: Path, ctx: StageContext) -> bool:
    """True once ``path`` exists; False if a stop signal came first.

    The supervisor starts the receiver while the tree keeper opens its sinks, so that the
    receiver's imports overlap the tree keeper's; the source opens only after this."""
    while not path.exists():
        if ctx.stop_requested:
            return False
        time.sleep(START_AFTER_POLL_S)
    return True


def _stop_with_supervisor(ctx: StageContext) -> None:
    """A stage whose supervisor died (SIGKILL, OOM) stops like on SIGTERM: drains, exits.

    Without this, stages run in their own sessions and would be orphaned forever.
    """
    try:
        privilege.signal_on_parent_death(signal.SIGTERM)
    except OSError as err:
        logging.getLogger("auditstream.stage").warning("no parent-death signal: %s", err)
    # The supervisor may have died before prctl: then our parent is already someone else.
    if ctx.orphaned():
        os.kill(os.getpid(), signal.SIGTERM)
