"""Forks inside a container's (any non-host) pid namespace create no host-pid processes.

clone/fork/vfork return the child's pid in the caller's pid namespace (`exit=14` from a
container's sh) while audit's pid/ppid are host pids. The table used to key a child by that
number with the caller's container: a host process with that pid was then labelled as the
container's, or retired as if it had exited. Live, /proc's NSpid tells the namespace; from a
log, the container attribution does (treekeeper/namespaces.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import (
    DEFAULT_RULES,
    Event,
    KernelState,
    LiveRun,
    is_audit_event,
    kernel_clean,
    read_events,
    replay_audit_events,
    syscall_of,
    wait_for_events,
    write_config,
)
from runc_trace import CLONE_PARENT_FLAGS, CORPUS_CONTAINER_ID, RUNC, SHIM, start_runc_exec
from test_tree import BASE_MS, ev, execve, fork, run

from treekeeper import namespaces
from treekeeper.namespaces import PidNs
from treekeeper.procfs import FakeProcSource, LiveProcSource, ProcInfo, parse_nspid
from treekeeper.tree import ProcessTable

__all__ = ["kernel_clean"]  # the fixture is used by name

REPO = Path(__file__).resolve().parents[1]
CORPUS_LOG = REPO / "tests" / "corpus" / "containers" / "container-fork-pid-is-a-host-pid.log"
CID = "7e57" + "0123456789abcdef" * 3 + "abcdef012345"
CLONE_NEWPID_FLAGS = "20000011"  # CLONE_NEWPID | SIGCHLD, as bubblewrap or crun clone


def _container_sh(t: ProcessTable, sh_pid: int = 622) -> None:
    """shim 500 → `runc exec` 620 → runc init 621 → runc:[1:CHILD] clones 622 → 622 execs sh."""
    # runc:[1:CHILD] is on the host: its clone returns a host pid, a process is created.
    assert start_runc_exec(t, CID, sh_pid) == ["process-started"]
    sh = execve(6, sh_pid, 620, "/bin/sh", ["sh", "-c", "sleep 5; ls /; :"])
    run(t, sh)
    assert sh["container"]["id"] == CID


def test_namespaced_fork_leaves_the_host_process_with_that_pid_alone() -> None:
    """A container sh's fork returning 812 neither retires nor relabels host sshd 812."""
    t = ProcessTable()
    _container_sh(t)
    before = ev(7, "accept4", 812, 1, exit="5", exe="/usr/sbin/sshd", comm="sshd")
    run(t, before)
    clone = fork(10, 622, 620, 812, exe="/bin/sh")  # 812 is the sleep's pid inside the container
    assert run(t, clone) == []  # nothing created: no process-started
    assert clone["container"]["id"] == CID  # the caller is the container's sh
    sleep = execve(11, 623, 622, "/bin/sleep", ["sleep", "5"])  # the child's host pid is 623
    run(t, sleep)
    after = ev(20, "accept4", 812, 1, exit="5", exe="/usr/sbin/sshd", comm="sshd")
    run(t, after)
    assert "container" not in before and "container" not in after
    assert after["process"]["entity_id"] == before["process"]["entity_id"]
    sshd = t.lookup(812, BASE_MS + 20)
    assert sshd is not None and sshd.exited_at is None
    assert t.stats.missed_exits == 0 and t.stats.namespaced_forks == 1
    assert sleep["container"]["id"] == CID
    assert sleep["process"]["parent"]["entity_id"] == clone["process"]["entity_id"]
    assert [a["pid"] for a in sleep["process"]["ancestry"]] == [622, 621, 620, 500]


def test_host_process_first_seen_after_a_namespaced_fork_has_no_container() -> None:
    """A host process whose pid a container fork returned earlier is not the container's."""
    t = ProcessTable()
    _container_sh(t)
    run(t, fork(10, 622, 620, 813, exe="/bin/sh"))
    assert t.lookup(813, BASE_MS + 11) is None
    cron = execve(12, 813, 1, "/usr/sbin/cron", ["/usr/sbin/cron", "-f"])
    run(t, cron)
    assert "container" not in cron
    assert "ancestry" not in cron["process"]  # its parent (pid 1) is not in the table
    assert t.stats.namespaced_forks == 1


def test_runc_init_stages_on_the_host_fork_host_pids_the_last_stage_does_not() -> None:
    """runc:[0:PARENT]/[1:CHILD] clones name host pids; runc:[2:INIT]'s (comm) do not."""
    t = ProcessTable()
    run(t, execve(0, 500, 1, SHIM, [SHIM, "-namespace", "moby", "-id", CID]))
    run(t, fork(1, 500, 1, 501, exe=SHIM))
    run(t, execve(2, 501, 500, RUNC, ["runc", "init"]))  # the shim's runc init: attributed
    parent_clone = fork(3, 501, 500, 502, exe=RUNC, a0=CLONE_PARENT_FLAGS, comm="runc:[0:PARENT]")
    assert run(t, parent_clone) == ["process-started"]
    assert parent_clone["container"]["id"] == CID  # attributed, yet on the host side
    child_clone = fork(4, 502, 500, 503, exe=RUNC, a0=CLONE_PARENT_FLAGS, comm="runc:[1:CHILD]")
    assert run(t, child_clone) == ["process-started"]
    init_fork = fork(5, 503, 500, 7, exe=RUNC, comm="runc:[2:INIT]")
    assert run(t, init_fork) == []
    assert t.lookup(7, BASE_MS + 5) is None
    assert t.stats.namespaced_forks == 1


def test_clone_newpid_child_and_its_descendants_are_nested() -> None:
    """A sandbox cloned with CLONE_NEWPID (no container) forks namespaced pids, and so do its children."""
    t = ProcessTable()
    run(t, execve(0, 4000, 1, "/usr/bin/bwrap", ["bwrap", "--unshare-pid", "sh"]))
    sandbox_clone = fork(1, 4000, 1, 4001, exe="/usr/bin/bwrap", a0=CLONE_NEWPID_FLAGS)
    assert run(t, sandbox_clone) == ["process-started"]  # bwrap is on the host: a host pid
    run(t, execve(2, 4001, 4000, "/bin/sh", ["sh"]))
    assert run(t, fork(3, 4001, 4000, 2, exe="/bin/sh")) == []
    inner = execve(4, 4002, 4001, "/bin/sh", ["sh", "-c", "id"])
    run(t, inner)
    assert run(t, fork(5, 4002, 4001, 3, exe="/bin/sh")) == []
    assert t.lookup(2, BASE_MS + 5) is None and t.lookup(3, BASE_MS + 5) is None
    assert t.stats.namespaced_forks == 2
    assert "container" not in inner  # a pid namespace is not a container
    assert [a["pid"] for a in inner["process"]["ancestry"]] == [4001, 4000]


def test_parse_nspid_lines() -> None:
    """NSpid lists the pid outermost first; absent or malformed gives ()."""
    status = b"Name:\tsleep\nTgid:\t6444\nNgid:\t0\nPid:\t6444\nNSpid:\t6444\t2\nNStgid:\t6444\t2\n"
    assert parse_nspid(status) == (6444, 2)
    assert parse_nspid(b"Name:\tinit\nNSpid:\t1\n") == (1,)
    assert parse_nspid(b"Name:\told kernel\nPid:\t5\n") == ()
    assert parse_nspid(b"NSpid:\t5\tx\n") == ()
    assert namespaces.from_nspid(6444, (6444, 2)) is PidNs.NESTED
    assert namespaces.from_nspid(1, (1,)) is PidNs.HOST
    assert namespaces.from_nspid(6444, (2,)) is PidNs.UNKNOWN  # a /proc of another namespace
    assert namespaces.from_nspid(5, ()) is PidNs.UNKNOWN


def test_live_nspid_overrides_the_log_rule() -> None:
    """Live, /proc decides: a --pid=host container's fork is a host pid; an unshared host shell's is not."""
    cgroup = f"0::/system.slice/docker-{CID}.scope\n".encode()
    source = FakeProcSource([
        ProcInfo(900, 1, BASE_MS - 10_000, b"sh", b"/bin/sh", [b"sh"], cgroup=cgroup,
                 nspid=(900,)),  # in a container's cgroup, but the host's pid namespace
        ProcInfo(950, 949, BASE_MS - 5_000, b"sh", b"/bin/sh", [b"sh"], nspid=(950, 1)),
    ])  # fmt: skip
    t = ProcessTable()
    t.scan(FakeProcSource([source.processes[900]]))  # 950 started after the scan
    t.proc_source = source
    pid_host = fork(1, 900, 1, 901)
    assert run(t, pid_host) == ["process-started"]
    child = t.lookup(901, BASE_MS + 1)
    assert child is not None and child.container is not None and child.container.id == CID
    run(t, execve(2, 950, 949, "/bin/sh", ["sh", "-c", "sleep 1; :"]))
    assert run(t, fork(3, 950, 949, 2)) == []
    assert t.lookup(2, BASE_MS + 3) is None
    assert t.stats.namespaced_forks == 1


def test_live_probe_of_a_reused_pid_falls_back_to_the_log_rule() -> None:
    """A /proc process that started after the fork is another process: the log decides."""
    source = FakeProcSource([ProcInfo(960, 1, BASE_MS + 60_000, b"sh", nspid=(960, 1))])
    assert namespaces.probe(source, 960, BASE_MS + 1) is PidNs.UNKNOWN
    assert namespaces.probe(source, 961, BASE_MS + 1) is PidNs.UNKNOWN  # gone
    t = ProcessTable()
    t.proc_source = source
    run(t, execve(0, 960, 1, "/bin/sh", ["sh"]))
    assert run(t, fork(1, 960, 1, 961)) == ["process-started"]  # no container: a host pid
    assert t.stats.namespaced_forks == 0


def test_replay_keeps_host_processes_out_of_the_container(tmp_path: Path) -> None:
    """`auditstream replay` of a docker exec whose sh forks container pids 812 and 813 (host pids too)."""
    out = tmp_path / "out.jsonl"
    docs = replay_audit_events(CORPUS_LOG, out)
    # 5502748/5502851: host sshd 812 (ppid 1) before and after; 5502752/5502847: the
    # container's sh (14114) clones, exit=812 and exit=813; 5502753/5502848: its children's
    # execs under their host pids 14120 (sleep) and 14125 (ls); 5502852: host cron 813 execs.
    sshd_before, sshd_after, cron = docs[5502748], docs[5502851], docs[5502852]
    first_clone, second_clone = docs[5502752], docs[5502847]
    sleep, ls = docs[5502753], docs[5502848]
    assert first_clone["auditd"]["data"]["exit"] == "812"
    assert second_clone["auditd"]["data"]["exit"] == "813"
    for host_doc in (sshd_before, sshd_after, cron):
        assert "container" not in host_doc, host_doc
        assert "ancestry" not in host_doc["process"]
    assert sshd_after["process"]["entity_id"] == sshd_before["process"]["entity_id"]
    assert cron["process"]["parent"] == {"pid": 1}
    for container_doc in (first_clone, second_clone, sleep, ls):
        assert container_doc.get("container") == {"id": CORPUS_CONTAINER_ID, "runtime": "docker"}
    sh_entity = first_clone["process"]["entity_id"]
    assert sleep["process"]["parent"]["entity_id"] == sh_entity
    assert ls["process"]["parent"]["entity_id"] == sh_entity
    assert [a["pid"] for a in sleep["process"]["ancestry"]] == [14114, 14113, 14112, 14104, 14033]
    lifecycle = [json.loads(line) for line in out.read_bytes().splitlines()]
    touched = [
        d for d in lifecycle
        if d["event"].get("action") in ("process-started", "process-exited")
        and d["process"]["pid"] in (812, 813)
    ]  # fmt: skip
    assert touched == []  # no process was made or ended from a namespaced pid


# -- real pid namespaces -------------------------------------------------------------

UNSHARE = shutil.which("unshare")


def _unshare_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a pid namespace"
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    return None


@pytest.fixture
def namespaced_sleep() -> Iterator[tuple[int, int]]:
    """(host pid, pid in its namespace) of a real `sleep` in a new pid namespace."""
    reason = _unshare_reason()
    if reason:
        pytest.skip(reason)
    assert UNSHARE is not None
    # --kill-child: unshare's death kills its child, the namespace's init, and so the sleep.
    with subprocess.Popen(
        [UNSHARE, "--pid", "--kill-child", "sh", "-c", "sleep 30 & echo $!; wait"],
        stdout=subprocess.PIPE,
    ) as outer:
        try:
            assert outer.stdout is not None
            inner_pid = int(outer.stdout.readline())
            (ns_init,) = _children(outer.pid)
            (sleep,) = _children(ns_init)
            yield sleep, inner_pid
        finally:
            outer.kill()


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (its main thread's), from /proc."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_real_proc_tells_a_namespaced_process_from_a_host_one(
    namespaced_sleep: tuple[int, int],
) -> None:
    """/proc's NSpid of a real process in a new pid namespace reads as nested; ours as host."""
    host_pid, inner_pid = namespaced_sleep
    source = LiveProcSource()
    reading = source.nspid(host_pid)
    assert reading is not None and reading.nspid == (host_pid, inner_pid)
    now_ms = int(time.time() * 1000)
    assert namespaces.probe(source, host_pid, now_ms) is PidNs.NESTED
    assert namespaces.probe(source, os.getpid(), now_ms) is PidNs.HOST
    info = source.read(host_pid)
    assert info is not None and info.nspid == (host_pid, inner_pid)


@pytest.mark.kernel
def test_live_run_creates_nothing_from_forks_inside_a_pid_namespace(
    kernel_clean: KernelState, tmp_path: Path
) -> None:
    """Under `auditstream run`, a shell in an unshared pid namespace forks pids 2 and 3: no such processes appear."""
    reason = _unshare_reason()
    if reason:
        pytest.skip(reason)
    assert UNSHARE is not None
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [DEFAULT_RULES])
    out = tmp_path / "events.jsonl"
    live = LiveRun(["run", "-c", str(config), "--sink", f"jsonl:{out}"], tmp_path).start()
    try:
        live.wait_registered()
        # The namespace's sh (pid 1 inside) lives ~2 s: long enough for the tree keeper
        # to read its /proc NSpid when its forks come out of the reorder window.
        script = "sleep 0.1; sleep 2; :"
        subprocess.run([UNSHARE, "--pid", "--fork", "sh", "-c", script], check=True, timeout=30)

        def is_inner_sleep(e: Event) -> bool:
            return e.get("process", {}).get("args") == ["sleep", "2"] and syscall_of(e) == "execve"

        assert wait_for_events(out, is_inner_sleep), live.read_stderr()
        assert live.stop(signal.SIGINT) == 0, live.stderr_text
    finally:
        live.kill()
    events = read_events(out)
    (sh_exec,) = [
        e for e in events
        if is_audit_event(e) and syscall_of(e) == "execve"
        and e["process"].get("args") == ["sh", "-c", script]
    ]  # fmt: skip
    sh_pid = sh_exec["process"]["pid"]
    forks = [
        e for e in events
        if is_audit_event(e) and e.get("process", {}).get("pid") == sh_pid
        and syscall_of(e) in ("clone", "fork", "vfork")  # dash uses vfork
    ]  # fmt: skip
    returned = sorted(int(e["auditd"]["data"]["exit"]) for e in forks)
    assert returned == [2, 3], forks  # the kernel numbered the children in the namespace
    sleeps = [
        e for e in events
        if is_audit_event(e) and syscall_of(e) == "execve"
        and e["process"].get("args") in (["sleep", "0.1"], ["sleep", "2"])
    ]  # fmt: skip
    assert len(sleeps) == 2
    for sleep in sleeps:
        assert sleep["process"]["pid"] not in (2, 3)  # audit names the host pid
        assert sleep["process"]["parent"]["entity_id"] == sh_exec["process"]["entity_id"]
    made_from_namespaced_pid = [
        e for e in events
        if e["event"].get("action") == "process-started"
        and e["process"].get("parent", {}).get("pid") == sh_pid
    ]  # fmt: skip
    assert made_from_namespaced_pid == []
