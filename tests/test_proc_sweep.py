"""Processes killed by a signal end live through the /proc sweep; containers found by the
start-up scan are announced; a container's forked child that never execs has its args.

A process killed by a signal (`docker stop`, SIGKILL, the end of its pid namespace) makes
no exit syscall: the audit log never says it ended. Live, the tree keeper lists /proc every
`proc_sweep_ms` and ends the table's processes it no longer lists (treekeeper/tree.py
`sweep_proc`), in bounded steps between frames (`sweep_step`: a big host's sweep never
stalls the loop), through the /proc seam (treekeeper/procfs.py `FakeProcSource` here).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tree import BASE_MS, ev, execve, exit_group, fork, run

from auditstream import config
from auditstream.config import ConfigError
from treekeeper.enrich import iso_ms
from treekeeper.pipeline import TreeStep
from treekeeper.procfs import FakeProcSource, LiveProcSource, ProcInfo
from treekeeper.tree import (
    GONE_CONFIRM_MIN_MS,
    REUSE_START_SLACK_MS,
    SWEEP_LIST_PER_STEP,
    SWEEP_READS_PER_STEP,
    ProcessTable,
    TableConfig,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus" / "containers" / "docker-exec-runc-exits-first.log"
CID = "5eed" + "0123456789abcdef" * 3 + "abcdef012345"
OTHER = "e" * 64
Doc = dict[str, Any]


def cgroup(cid: str) -> bytes:
    """A cgroup v2 file naming docker container ``cid``."""
    return f"0::/system.slice/docker-{cid}.scope\n".encode()


INIT = ProcInfo(1, 0, BASE_MS - 900_000, b"systemd", b"/usr/lib/systemd/systemd", [b"/sbin/init"])
SHIM = ProcInfo(800, 1, BASE_MS - 60_000, b"containerd-shim", b"/usr/bin/containerd-shim-runc-v2",
                [b"/usr/bin/containerd-shim-runc-v2", b"-namespace", b"moby", b"-id",
                 CID.encode()])  # fmt: skip
SH = ProcInfo(900, 800, BASE_MS - 50_000, b"sh", b"/bin/busybox", [b"sh", b"-c", b"loop"],
              cgroup=cgroup(CID), nspid=(900, 1))  # fmt: skip
SLEEP = ProcInfo(901, 900, BASE_MS - 40_000, b"sleep", b"/bin/busybox", [b"sleep", b"9"],
                 cgroup=cgroup(CID), nspid=(901, 2))  # fmt: skip
WEB = ProcInfo(950, 800, BASE_MS - 30_000, b"httpd", b"/bin/busybox", [b"httpd", b"-f"],
               cgroup=cgroup(OTHER), nspid=(950, 1))  # fmt: skip


def scanned(*infos: ProcInfo) -> tuple[ProcessTable, list[Doc]]:
    """A live table filled by the start-up scan of ``infos``, and the scan's lifecycle docs."""
    table = ProcessTable(TableConfig(host="h1"))
    found: list[Doc] = []
    table.scan(FakeProcSource(list(infos)), found, BASE_MS)
    table.proc_source = FakeProcSource(list(infos))
    return table, found


def actions(docs: list[Doc]) -> list[tuple[str, int]]:
    """(event.action, process.pid) of each lifecycle doc."""
    return [(d["event"]["action"], d["process"]["pid"]) for d in docs]


def test_killed_processes_end_one_confirmation_after_the_sweep_then_their_container() -> None:
    """docker stop: each process /proc lost gets process-exited (no exit code), then container-gone."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP)
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH]), BASE_MS + 100)  # the sleep was SIGKILLed
    assert t.maintain(BASE_MS + 100 + GONE_CONFIRM_MIN_MS - 1) == []  # its exit may be on its way
    (exited,) = t.maintain(BASE_MS + 100 + GONE_CONFIRM_MIN_MS)
    assert actions([exited]) == [("process-exited", 901)]
    assert exited["@timestamp"] == exited["process"]["end"] == iso_ms(BASE_MS + 100)
    assert "exit_code" not in exited["process"]
    assert exited["auditstream"] == {"lifecycle_source": "proc_sweep"}
    assert exited["container"] == {"id": CID, "runtime": "docker"}
    late = ev(99, "openat", 901, 900, exit="3", exe="/bin/busybox")  # before it died: still its
    assert run(t, late) == [] and late["process"]["args"] == ["sleep", "9"]
    assert t.stats.gone_from_proc == 1 and t.stats.proc_sweeps == 1
    t.sweep_proc(FakeProcSource([INIT, SHIM]), BASE_MS + 2_000)  # and then its init
    assert actions(t.maintain(BASE_MS + 3_000)) == [("process-exited", 900)]
    docs = t.maintain(BASE_MS + 4_001)  # exit_grace_ms after: deleted, the container is gone
    assert actions(docs) == [("container-gone", 900)]
    assert docs[0]["auditstream"] == {"lifecycle_source": "proc_sweep"}
    assert CID not in t.container_members


def test_an_exit_record_arriving_after_the_sweep_ends_it_with_its_code() -> None:
    """A process that exited just before the sweep keeps its exit code: its record wins."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP)
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH]), BASE_MS + 100)
    assert run(t, exit_group(95, 901, 900, code=3)) == ["process-exited"]
    assert t.maintain(BASE_MS + 5_000) == []  # nothing more: not ended twice
    proc = t.processes.get((901, SLEEP.start_ms))
    assert proc is None or (proc.exit_code == 3 and not proc.ended_gone)
    assert t.stats.gone_from_proc == 0


def test_a_reused_pid_is_gone_and_a_clock_step_is_not() -> None:
    """/proc's own start of a listed pid changing means another process; the wall clock never matters."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP)
    reused = ProcInfo(901, 1, BASE_MS + 50, b"cron", b"/usr/sbin/cron", [b"cron"])
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH, reused]), BASE_MS + 100)
    assert actions(t.maintain(BASE_MS + 1_100)) == [("process-exited", 901)]
    # A process forked long after the start, /proc's start far off its fork's event time (a
    # clock stepped back): the same process while /proc's start for it stays the same.
    run(t, fork(2_000, 800, 1, 902, exe="/usr/bin/containerd-shim-runc-v2"))
    skewed = ProcInfo(902, 800, BASE_MS + 90_000, b"runc", b"/usr/bin/runc", [b"runc"])
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH, skewed]), BASE_MS + 3_000)
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH, skewed]), BASE_MS + 13_000)
    assert t.maintain(BASE_MS + 20_000) == []
    assert t.lookup(902, BASE_MS + 20_000) is not None


def test_a_listing_without_pid_1_ends_nothing() -> None:
    """A /proc mounted with hidepid (or another pid namespace's) lists too little: counted, ignored."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP)
    t.sweep_proc(FakeProcSource([SH]), BASE_MS + 100)
    assert t.maintain(BASE_MS + 10_000) == []
    assert t.stats.proc_sweeps_skipped == 1 and t.stats.gone_from_proc == 0


def test_a_tentative_clone3_child_is_never_swept() -> None:
    """An unconfirmed clone3 child may be a thread, whose tid /proc does not list: left to its TTL."""
    t, _ = scanned(INIT, SHIM, SH)
    run(t, ev(10, "clone3", 800, 1, exit="805", exe="/usr/bin/containerd-shim-runc-v2"))
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH]), BASE_MS + 100)
    assert t.maintain(BASE_MS + 2_000) == []


def test_scan_announces_each_running_container_once_by_its_oldest_process() -> None:
    """Containers running at start get one container-first-seen each, from the scan, and no second."""
    t, found = scanned(INIT, SHIM, SH, SLEEP, WEB)
    assert actions(found) == [("container-first-seen", 900), ("container-first-seen", 950)]
    for doc in found:
        assert doc["@timestamp"] == iso_ms(BASE_MS)
        assert doc["auditstream"] == {"lifecycle_source": "proc_scan"}
    assert [d["container"]["id"] for d in found] == [CID, OTHER]
    assert run(t, fork(10, 900, 800, 903, exe="/bin/busybox", a0="1200011")) == []  # nested
    child = ev(11, "openat", 903, 900, exit="3", exe="/bin/busybox")
    assert run(t, child) == []  # a new member of a known container: no second first-seen
    assert child["container"]["id"] == CID


def _step(sweep_ms: int, source: str) -> TreeStep:
    cfg = config.from_dict({"receiver": {"source": source},
                            "treekeeper": {"proc_sweep_ms": sweep_ms}})  # fmt: skip
    return TreeStep(cfg)


def test_the_stage_sweeps_live_every_proc_sweep_ms_and_never_in_replay() -> None:
    """Live, maintain() lists /proc at most every proc_sweep_ms; 0 and a replay never do."""
    step = _step(60_000, "netlink")
    fake = FakeProcSource([INIT])
    step.table.proc_source = fake
    step.next_sweep_ms = 0
    step.maintain()
    step.maintain()
    assert step.table.stats.proc_sweeps == 1  # the next one is a minute away
    assert step.stats()["tree"]["proc_sweeps"] == 1
    off = _step(0, "netlink")
    off.table.proc_source = fake
    off.next_sweep_ms = 0
    off.maintain()
    assert off.table.stats.proc_sweeps == 0
    replay = _step(100, "file")
    assert replay.table.proc_source is None and replay.proc_sweep_ms == 0
    replay.maintain()
    assert replay.table.stats.proc_sweeps == 0


# -- the sweep in steps: a big host's never stalls the loop --------------------------------

BIG = 20_000  # processes of a big host (a build server, a Kubernetes node)


class CountingProc(FakeProcSource):
    """A fake /proc that also counts the pids its listing has handed out."""

    def __init__(self, processes: list[ProcInfo]) -> None:
        super().__init__(processes)
        self.listed = 0

    def iter_pids(self) -> Iterator[int]:
        for pid in self.pids():
            self.listed += 1
            yield pid


def big_host() -> tuple[ProcessTable, list[ProcInfo], set[int]]:
    """A table scanned from a host of BIG processes; /proc after a sweep's worth of changes:
    every 97th process killed, every 101st pid taken by a later process. Returns the table,
    /proc's processes now, and the pids whose processes must be found gone."""
    before = [INIT] + [
        ProcInfo(pid, 1, BASE_MS - 60_000 + pid, b"cc1") for pid in range(2, BIG + 1)
    ]
    table = ProcessTable(TableConfig(host="h1"))
    table.scan(FakeProcSource(before), None, BASE_MS)
    killed = set(range(2, BIG + 1, 97))
    reused = set(range(3, BIG + 1, 101)) - killed
    now = [info for info in before if info.pid not in killed and info.pid not in reused]
    now += [ProcInfo(pid, 1, BASE_MS + pid, b"make") for pid in sorted(reused)]
    return table, now, killed | reused


def live_step(table: ProcessTable, source: FakeProcSource, sweep_ms: int = 10_000) -> TreeStep:
    """A live tree keeper step on ``table`` whose /proc is ``source``, its sweep due now."""
    step = _step(sweep_ms, "netlink")
    step.table = step.tables[""] = table
    table.proc_source = source
    step.next_sweep_ms = 0
    return step


def found_gone(table: ProcessTable) -> dict[int, int]:
    """pid: when it had ended by, of each process the sweep found gone."""
    return {p.pid: p.gone_at for p in table.processes.values() if p.gone_at is not None}


def test_a_big_hosts_sweep_runs_in_bounded_steps_and_finds_exactly_the_gone() -> None:
    """20,000 processes: no maintain() lists or reads more than a step's bound, and the sweep
    ends exactly the killed processes and those whose pid a later process took."""
    table, now, gone = big_host()
    proc = CountingProc(now)
    step = live_step(table, proc)
    per_call: list[tuple[int, int]] = []
    while True:
        reads, listed = proc.start_reads, proc.listed
        step.maintain()
        per_call.append((proc.start_reads - reads, proc.listed - listed))
        assert per_call[-1][0] <= SWEEP_READS_PER_STEP and per_call[-1][1] <= SWEEP_LIST_PER_STEP
        if not table.sweeping:
            break
        assert step.idle_poll_ms(100) == 0  # the loop runs the next step without waiting
    assert step.idle_poll_ms(100) == 100
    assert len(per_call) > len(now) // SWEEP_READS_PER_STEP
    assert proc.listed == proc.start_reads == len(now)  # each pid listed, each live one read once
    assert set(found_gone(table)) == gone
    assert table.stats.proc_sweeps == 1 and table.stats.proc_sweeps_skipped == 0
    docs = table.maintain(time.time_ns() // 1_000_000 + GONE_CONFIRM_MIN_MS)  # all confirmed
    assert sorted(pid for action, pid in actions(docs) if action == "process-exited") == sorted(
        gone
    )
    assert table.stats.gone_from_proc == len(gone)


def test_only_processes_known_when_the_listing_began_are_judged_by_it() -> None:
    """Between the listing and the checks: a new child is not judged, an exited process is
    skipped, a pid taken by a later process or a process killed is gone by the check's time."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP, WEB)
    proc = FakeProcSource([INIT, SHIM, SH, SLEEP, WEB])
    t.start_sweep(proc, BASE_MS + 100)
    assert t.sweep_step(proc, BASE_MS + 100) and t.sweeping  # the listing, read whole
    assert proc.start_reads == 0
    run(t, fork(150, 800, 1, 960, exe="/usr/bin/containerd-shim-runc-v2"))  # not listed
    assert run(t, exit_group(160, 901, 900, code=0)) == ["process-exited"]
    proc.processes[950] = ProcInfo(950, 1, BASE_MS + 170, b"cron", b"/usr/sbin/cron", [b"cron"])
    del proc.processes[900]  # killed after the listing, which has it
    while t.sweep_step(proc, BASE_MS + 200):
        pass
    assert not t.sweeping
    assert found_gone(t) == {900: BASE_MS + 200, 950: BASE_MS + 200}
    docs = t.maintain(BASE_MS + 200 + GONE_CONFIRM_MIN_MS)
    assert sorted(actions(docs)) == [("process-exited", 900), ("process-exited", 950)]
    assert t.lookup(960, BASE_MS + 5_000) is not None  # the new child lives on


def test_the_next_sweep_waits_for_the_one_under_way_and_zero_is_off() -> None:
    """A sweep due again while one runs does not restart it; proc_sweep_ms = 0 never sweeps."""
    table, now, _ = big_host()
    proc = CountingProc(now)
    step = live_step(table, proc, sweep_ms=100)
    step.maintain()
    while table.sweeping:
        step.next_sweep_ms = 0  # overdue: still the same sweep
        step.maintain()
    assert table.stats.proc_sweeps == 1 and proc.listed == proc.start_reads == len(now)
    step.next_sweep_ms = 0
    step.maintain()
    assert table.sweeping and proc.listed == len(now) + SWEEP_LIST_PER_STEP  # the next began
    small, _ = scanned(INIT, SHIM)
    idle = CountingProc([INIT])
    off = live_step(small, idle, sweep_ms=0)
    off.maintain()
    assert not small.sweeping and off.idle_poll_ms(100) == 100
    assert small.stats.proc_sweeps == 0 and idle.listed == idle.start_reads == 0


class BrokenListing(FakeProcSource):
    """A /proc whose listing stops with EIO after two pids."""

    def pids(self) -> list[int]:
        return super().pids()[:2]

    def iter_pids(self) -> Iterator[int]:
        yield from self.pids()
        raise OSError(errno.EIO, "Input/output error")


def test_a_listing_that_breaks_off_ends_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A /proc listing that fails half-way is no evidence: counted, logged once, none gone."""
    t, _ = scanned(INIT, SHIM, SH, SLEEP)
    with caplog.at_level(logging.WARNING, logger="treekeeper.tree"):
        t.sweep_proc(BrokenListing([INIT, SHIM, SH, SLEEP]), BASE_MS + 100)
        t.sweep_proc(BrokenListing([INIT, SHIM, SH, SLEEP]), BASE_MS + 10_100)
    assert t.maintain(BASE_MS + 20_000) == [] and found_gone(t) == {}
    assert t.stats.proc_sweeps_skipped == 2 and t.stats.proc_sweeps == 0
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "Input/output error" in warned[0], warned


# -- a pid reused before the first sweep saw it --------------------------------------------


def test_a_pid_reused_before_the_first_sweep_saw_it_is_gone() -> None:
    """/proc's start clearly after an event the process made itself means its pid was reused,
    while within the slack, or known from a fork alone (stamped late for a big parent), it stays."""
    t, _ = scanned(INIT, SHIM, SH)
    run(t, ev(1_000, "openat", 700, 1, exit="3", exe="/usr/bin/python3"))  # a placeholder
    run(t, ev(1_000, "openat", 730, 1, exit="3", exe="/usr/bin/python3"))
    run(t, fork(1_000, 1, 0, 710, exe="/usr/lib/systemd/systemd"))
    run(t, execve(1_200, 710, 1, "/usr/bin/make", ["make"]))  # its own exec
    run(t, fork(1_000, 1, 0, 720, exe="/usr/lib/systemd/systemd"))  # its fork only
    starts = {
        700: BASE_MS + 1_000 + REUSE_START_SLACK_MS + 1,
        710: BASE_MS + 1_200 + REUSE_START_SLACK_MS + 1,
        720: BASE_MS + 1_000 + 5_000,
        730: BASE_MS + 1_000 + REUSE_START_SLACK_MS,
    }
    now = [ProcInfo(pid, 1, start, b"x") for pid, start in starts.items()]
    t.sweep_proc(FakeProcSource([INIT, SHIM, SH, *now]), BASE_MS + 8_000)
    assert found_gone(t) == {700: BASE_MS + 8_000, 710: BASE_MS + 8_000}
    for pid in (720, 730):  # the same processes: /proc's start recorded for the next sweep
        kept = t.lookup(pid, BASE_MS + 8_000)
        assert kept is not None and kept.proc_start_ms == starts[pid]


def test_a_clock_step_or_offset_never_makes_a_reuse() -> None:
    """/proc's start is put on the wall clock as set now; across a clock step nothing is
    compared, and once recorded only /proc's own start counts; steady again, a reuse shows."""
    t, _ = scanned(INIT, SHIM, SH)
    # btime 3 s ahead of the wall clock: /proc's starts read 3 s late, the shift puts them back.
    ahead = [INIT, SHIM, SH, ProcInfo(700, 1, BASE_MS + 1_000 + 2_500, b"x")]
    t.scan(FakeProcSource([], clock_shift_ms=-3_000), None, BASE_MS)
    run(t, ev(1_000, "openat", 700, 1, exit="3", exe="/usr/bin/python3"))
    t.sweep_proc(FakeProcSource(ahead, clock_shift_ms=-3_000), BASE_MS + 8_000)
    assert found_gone(t) == {}
    # The clock stepped 88 s forward before this sweep: events before it are not compared.
    run(t, ev(9_000, "openat", 740, 1, exit="3", exe="/usr/bin/python3"))
    stepped = [*ahead, ProcInfo(740, 1, BASE_MS + 9_000 + 500, b"y")]
    t.sweep_proc(FakeProcSource(stepped, clock_shift_ms=85_000), BASE_MS + 18_000)
    t.sweep_proc(FakeProcSource(stepped, clock_shift_ms=85_000), BASE_MS + 28_000)
    assert found_gone(t) == {} and t.maintain(BASE_MS + 40_000) == []
    # Steady since: a placeholder whose pid /proc says began 2 s after its event (on the
    # wall clock: /proc's own reading is 83 s earlier) was reused; one 0.5 s after was not.
    run(t, ev(30_000, "openat", 750, 1, exit="3", exe="/usr/bin/python3"))
    run(t, ev(30_000, "openat", 760, 1, exit="3", exe="/usr/bin/python3"))
    later = [*stepped, ProcInfo(750, 1, BASE_MS + 30_000 - 85_000 + 2_000, b"z"),
             ProcInfo(760, 1, BASE_MS + 30_000 - 85_000 + 500, b"w")]  # fmt: skip
    t.sweep_proc(FakeProcSource(later, clock_shift_ms=85_000), BASE_MS + 38_000)
    assert found_gone(t) == {750: BASE_MS + 38_000}


def test_the_real_proc_lists_in_order_and_its_starts_match_the_wall_clock() -> None:
    """This host's /proc: the lazy listing is the whole one, in pid order, and a child's
    start, put on the wall clock (clock_shift_ms), falls between just before and after it was
    spawned (a tick's rounding either way)."""
    live = LiveProcSource()
    listed = list(live.iter_pids())
    assert listed == sorted(listed) and {1, os.getpid()} <= set(listed)
    assert set(live.pids()) & set(listed) >= {1, os.getpid()}
    assert 0 <= live.clock_shift_ms() < 1_000 + 50  # btime is whole seconds
    before = time.time_ns() // 1_000_000
    child = subprocess.Popen(["sleep", "5"])
    after = time.time_ns() // 1_000_000
    try:
        started = live.start_ms(child.pid)
        assert started is not None
        tick = 1000 // os.sysconf("SC_CLK_TCK")
        assert before - 2 * tick <= started + live.clock_shift_ms() <= after + 2 * tick
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("value", [-1, 1, 99, 3_600_001])
def test_proc_sweep_ms_out_of_range_is_refused_naming_the_key(tmp_path: Path, value: int) -> None:
    """proc_sweep_ms takes 0 (no sweep) or 100..3600000; anything else names the key."""
    path = tmp_path / "c.toml"
    path.write_text(f"[treekeeper]\nproc_sweep_ms = {value}\n")
    with pytest.raises(ConfigError, match=r"\[treekeeper\]\.proc_sweep_ms"):
        config.load(path)
    assert config.from_dict({"treekeeper": {"proc_sweep_ms": 0}}).treekeeper.proc_sweep_ms == 0


# -- a container's fork that never execs ------------------------------------------------


def _container_sh(t: ProcessTable) -> None:
    """A container's busybox sh, scanned: its forks return pids of its namespace."""
    t.scan(FakeProcSource([INIT, SHIM, SH]))


def test_a_containers_forked_child_that_never_execs_has_its_parents_args() -> None:
    """busybox's rm forked by the container's sh: args and cwd are the sh's, as ps shows them."""
    t = ProcessTable()
    _container_sh(t)
    t.get(t.current[900]).cwd = "/data"  # type: ignore[union-attr]
    assert run(t, fork(10, 900, 800, 14, exe="/bin/busybox")) == []  # exit=14: a namespace pid
    rm = ev(11, "unlinkat", 905, 900, exit="0", exe="/bin/busybox", comm="rm")
    rm["process"]["title"] = "sh -c loop"
    run(t, rm)
    assert rm["process"]["args"] == ["sh", "-c", "loop"]
    assert rm["container"]["id"] == CID
    proc = t.lookup(905, BASE_MS + 11)
    assert proc is not None and proc.cwd == "/data"
    again = ev(12, "openat", 905, 900, exit="3", exe="/bin/busybox", comm="rm")
    run(t, again)  # its next events keep them (in C as in Python)
    assert again["process"]["args"] == ["sh", "-c", "loop"]


@pytest.mark.parametrize(
    ("exe", "title"),
    [("/usr/bin/python3", None), ("/bin/busybox", "nginx: worker process")],
)
def test_a_containers_child_with_another_image_or_title_gets_no_args(
    exe: str, title: str | None
) -> None:
    """Another executable (an exec not seen) or a renamed command line is no copy of the parent."""
    t = ProcessTable()
    _container_sh(t)
    child = ev(11, "openat", 905, 900, exit="3", exe=exe)
    if title is not None:
        child["process"]["title"] = title
    run(t, child)
    assert "args" not in child["process"]


def test_a_host_fork_arriving_after_its_childs_events_gives_the_child_the_args() -> None:
    """A placeholder merged with its late fork gets the caller's args, as a fork seen first gives."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/usr/bin/python3", ["python3", "server.py"]))
    early = ev(5, "connect", 200, 100, exit="0", exe="/usr/bin/python3")
    run(t, early)
    assert run(t, fork(3, 100, 1, 200, exe="/usr/bin/python3")) == ["process-started"]
    later = ev(6, "connect", 200, 100, exit="0", exe="/usr/bin/python3")
    run(t, later)
    assert later["process"]["args"] == ["python3", "server.py"]


def _log_with_a_forked_rm() -> str:
    """The real docker exec capture, with the container sh forking busybox's rm (no exec)."""
    lines = CORPUS.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "pid=14120" in line and "syscall=231" in line)
    title = b"sh\0-c\0sleep 2; ls / f8df738214f9; :".hex().upper()  # argv, NUL-separated
    common = ("auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
              "tty=(none) ses=4294967295")  # fmt: skip
    added = [
        f"type=SYSCALL msg=audit(1795347709.100:5502800): arch=c000003e syscall=56 success=yes "
        f'exit=15 a0=1200011 a1=0 a2=0 a3=0 items=0 ppid=14104 pid=14114 {common} comm="sh" '
        f'exe="/bin/busybox" key="auditstream-proc"\n',
        "type=PROCTITLE msg=audit(1795347709.100:5502800): proctitle=72756E6300696E6974\n",
        "type=EOE msg=audit(1795347709.100:5502800): \n",
        f"type=SYSCALL msg=audit(1795347709.102:5502801): arch=c000003e syscall=263 success=yes "
        f"exit=0 a0=ffffff9c a1=7ffd1 a2=0 a3=0 items=2 ppid=14114 pid=14121 {common} "
        f'comm="rm" exe="/bin/busybox" key="volume"\n',
        'type=CWD msg=audit(1795347709.102:5502801): cwd="/"\n',
        'type=PATH msg=audit(1795347709.102:5502801): item=0 name="/data/" inode=5 dev=fe:00 '
        "mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 "
        "cap_fver=0 cap_frootid=0\n",
        'type=PATH msg=audit(1795347709.102:5502801): item=1 name="/data/x" inode=6 dev=fe:00 '
        "mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=DELETE cap_fp=0 cap_fi=0 cap_fe=0 "
        "cap_fver=0 cap_frootid=0\n",
        f"type=PROCTITLE msg=audit(1795347709.102:5502801): proctitle={title}\n",
        "type=EOE msg=audit(1795347709.102:5502801): \n",
    ]
    return "".join(lines[:at] + added + lines[at:])


def test_replay_of_a_container_fork_without_exec_gives_the_shells_args(tmp_path: Path) -> None:
    """`auditstream replay`: the unlink by the container sh's forked rm carries the sh's argv."""
    log = tmp_path / "audit.log"
    log.write_text(_log_with_a_forked_rm())
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", f"jsonl:{out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    (sh_exec,) = [d for d in docs if d.get("process", {}).get("pid") == 14114
                  and d.get("auditd", {}).get("data", {}).get("syscall") == "execve"]  # fmt: skip
    (rm,) = [d for d in docs if d.get("auditd", {}).get("data", {}).get("syscall") == "unlinkat"]
    assert rm["process"]["pid"] == 14121 and rm["process"]["executable"] == "/bin/busybox"
    assert rm["process"]["args"] == sh_exec["process"]["args"] == [
        "sh", "-c", "sleep 2; ls / f8df738214f9; :"]  # fmt: skip
    assert rm["process"]["parent"]["entity_id"] == sh_exec["process"]["entity_id"]
    assert rm["container"]["id"] == sh_exec["container"]["id"]
    assert not [d for d in docs if d["event"].get("action") == "process-exited"
                and d.get("auditstream", {}).get("lifecycle_source")]  # fmt: skip
