"""The process table: scripted doc sequences (fork, exec, exit, reordering, reuse, threads)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from treekeeper import state
from treekeeper.procfs import FakeProcSource, LiveProcSource, ProcInfo, parse_stat
from treekeeper.tree import CLONE_THREAD, ProcessTable, TableConfig

BASE_MS = 1_700_000_000_000
_serial = iter(range(1, 1 << 30))


def stamp(ms: int) -> str:
    """``@timestamp`` text for an event time in ms."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{ms % 1000:03d}Z"
    )


def ev(
    at: int,
    syscall: str,
    pid: int,
    ppid: int | None,
    *,
    exit: str | None = None,
    a0: str | None = None,
    exe: str | None = None,
    comm: str | None = None,
    args: list[str] | None = None,
    result: str = "success",
    host: str = "",
) -> dict[str, Any]:
    """One syscall event doc at ``BASE_MS + at`` ms."""
    data: dict[str, Any] = {"syscall": syscall}
    if exit is not None:
        data["exit"] = exit
    if a0 is not None:
        data["a0"] = a0
    process: dict[str, Any] = {"pid": pid}
    if ppid is not None:
        process["parent"] = {"pid": ppid}
    if exe is not None:
        process["executable"] = exe
    if comm is not None:
        process["name"] = comm
    if args is not None:
        process["args"] = args
        process["title"] = " ".join(args)
        process["working_directory"] = "/"
    doc: dict[str, Any] = {
        "@timestamp": stamp(BASE_MS + at),
        "event": {"sequence": next(_serial)},
        "auditd": {"data": data, "result": result},
        "process": process,
    }
    if host:
        doc["host"] = {"name": host}
    return doc


def fork(
    at: int, pid: int, ppid: int, child: int, exe: str = "/bin/sh", **kw: Any
) -> dict[str, Any]:
    """A fork-like clone (flags 0x1200011: SIGCHLD|CLONE_CHILD_*) returning ``child``."""
    return ev(at, kw.pop("syscall", "clone"), pid, ppid, exit=str(child),
              a0=kw.pop("a0", "1200011"), exe=exe, **kw)  # fmt: skip


def execve(at: int, pid: int, ppid: int, exe: str, args: list[str], **kw: Any) -> dict[str, Any]:
    """A successful execve of ``exe`` with ``args``."""
    return ev(at, "execve", pid, ppid, exit="0", exe=exe, comm=exe.rsplit("/", 1)[-1],
              args=args, **kw)  # fmt: skip


def exit_group(at: int, pid: int, ppid: int, code: int = 0, **kw: Any) -> dict[str, Any]:
    """An exit_group(code) by ``pid`` (no exit value: the call never returns)."""
    return ev(at, "exit_group", pid, ppid, a0=f"{code:x}", result="", **kw)


def actions(docs: list[dict[str, Any]]) -> list[str]:
    """The event.action of each lifecycle doc."""
    return [d["event"]["action"] for d in docs]


def run(table: ProcessTable, doc: dict[str, Any]) -> list[str]:
    """Observe then enrich one doc, as the stage does; return lifecycle actions."""
    out = table.observe(doc)
    table.enrich(doc)
    return actions(out)


def test_fork_exec_exit_lifecycle_and_enrichment() -> None:
    """A fork, an exec and an exit give start/change/end docs and a fully enriched child."""
    t = ProcessTable(TableConfig(host="h1"))
    assert run(t, execve(0, 100, 1, "/bin/bash", ["bash"])) == ["process-exec"]
    assert run(t, fork(10, 100, 1, 200, exe="/bin/bash")) == ["process-started"]
    doc = execve(20, 200, 100, "/bin/ls", ["ls", "-l"])
    assert run(t, doc) == ["process-exec"]
    proc = doc["process"]
    parent = t.lookup(100, BASE_MS + 20)
    assert parent is not None
    assert proc["parent"]["entity_id"] == parent.entity_id
    assert proc["parent"]["executable"] == "/bin/bash"
    assert proc["start"] == stamp(BASE_MS + 10)
    assert [a["pid"] for a in proc["ancestry"]] == [100]
    assert proc["ancestry"][0]["args"] == ["bash"]
    assert proc["args"] == ["ls", "-l"]  # the record's own field, untouched
    out = t.observe(exit_group(30, 200, 100, code=3))
    assert actions(out) == ["process-exited"]
    assert out[0]["process"]["exit_code"] == 3
    assert out[0]["event"]["type"] == ["end"] and out[0]["host"] == {"name": "h1"}


def test_entity_id_is_deterministic_across_replays() -> None:
    """Replaying the same events into two tables gives the same entity ids."""
    ids = []
    for _ in range(2):
        t = ProcessTable(TableConfig(host="h"))
        t.observe(fork(0, 100, 1, 200))
        doc = execve(5, 200, 100, "/bin/true", ["true"])
        run(t, doc)
        ids.append((doc["process"]["entity_id"], doc["process"]["parent"]["entity_id"]))
    assert ids[0] == ids[1] and ids[0][0] != ids[0][1]


def test_exit_before_fork_keeps_one_process() -> None:
    """An exit that arrives before the fork that created the process merges into one entry."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    gone = exit_group(20, 200, 100)
    run(t, gone)
    assert run(t, fork(10, 100, 1, 200)) == ["process-started"]
    assert len([p for p in t.processes.values() if p.pid == 200]) == 1
    child = t.lookup(200, BASE_MS + 15)
    assert child is not None and child.exited_at == BASE_MS + 20
    assert child.entity_id == gone["process"]["entity_id"] and not child.inferred
    assert child.creator == t.current[100]


def test_exec_before_fork_is_merged() -> None:
    """An exec seen before its fork: the fork fills in creator and start, not a second process."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    early = execve(12, 200, 100, "/bin/cat", ["cat"])
    run(t, early)
    assert early["process"]["parent"]["executable"] == "/bin/sh"
    run(t, fork(10, 100, 1, 200))
    late = ev(15, "openat", 200, 100, exit="3", exe="/bin/cat")
    run(t, late)
    assert late["process"]["entity_id"] == early["process"]["entity_id"]
    assert late["process"]["start"] == stamp(BASE_MS + 10)
    assert t.stats.merged_placeholders == 1
    proc = t.lookup(200, BASE_MS + 15)
    assert proc is not None and proc.executable == "/bin/cat"  # the fork did not undo the exec


PY_PID, PY_PPID, SH_PID, TR_PID = 25762, 25760, 25770, 25771
PYTEST_ARGS = ["python", "-m", "pytest"]
SH_ARGS = ["sh", "-c", "echo hi | tr a-z A-Z"]
# vfork takes no arguments: its a0 is a leftover register (here with bit 0x8000 set,
# which as clone flags would read CLONE_PARENT). Python's posix_spawn-style clone
# is CLONE_VM|CLONE_VFORK|SIGCHLD; a plain fork-like clone is 0x1200011.
SPAWNS = {
    "vfork": ("vfork", "7f3a1c5e8b40"),
    "clone-vfork": ("clone", "4111"),
    "clone-fork": ("clone", "1200011"),
    "clone3": ("clone3", "7ffd2a4c8b40"),  # a0 points to struct clone_args
}


def spawn_sh_child_exec_first(
    t: ProcessTable, syscall: str, a0: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """python spawns ``sh -c``; the kernel emits the child's execve before the parent's
    fork/vfork/clone (lower serial, same ms). Return the exec doc and the fork's output."""
    run(t, execve(0, PY_PID, PY_PPID, "/usr/bin/python3.11", PYTEST_ARGS))
    sh_exec = execve(100, SH_PID, PY_PID, "/usr/bin/dash", SH_ARGS)
    assert run(t, sh_exec) == ["process-exec"]
    spawn = ev(100, syscall, PY_PID, PY_PPID, exit=str(SH_PID), a0=a0,
               exe="/usr/bin/python3.11", comm="python3")  # fmt: skip
    assert spawn["event"]["sequence"] == sh_exec["event"]["sequence"] + 1
    out = t.observe(spawn)
    t.enrich(spawn)
    return sh_exec, out


@pytest.mark.parametrize("spawn", sorted(SPAWNS))
def test_child_exec_before_parent_fork_keeps_child_image(spawn: str) -> None:
    """A child's execve emitted before its parent's fork/vfork/clone keeps the exec'd image."""
    t = ProcessTable(TableConfig(host="h"))
    sh_exec, out = spawn_sh_child_exec_first(t, *SPAWNS[spawn])
    python = t.lookup(PY_PID, BASE_MS + 100)
    assert python is not None and python.args == PYTEST_ARGS
    # The exec doc itself: its recorded ppid decides parent and ancestry.
    assert sh_exec["process"]["parent"]["pid"] == PY_PID
    assert sh_exec["process"]["parent"]["entity_id"] == python.entity_id
    assert sh_exec["process"]["parent"]["args"] == PYTEST_ARGS
    assert [a["pid"] for a in sh_exec["process"]["ancestry"]] == [PY_PID]

    assert actions(out) == ["process-started"]
    started = out[0]["process"]
    assert started["pid"] == SH_PID
    assert started["executable"] == "/usr/bin/dash" and started["args"] == SH_ARGS
    assert started["parent"] == {"pid": PY_PID, "entity_id": python.entity_id}
    assert started["entity_id"] == sh_exec["process"]["entity_id"]
    assert started["start"] == stamp(BASE_MS + 100)

    sh = t.lookup(SH_PID, BASE_MS + 100)
    assert sh is not None and not sh.inferred
    assert sh.executable == "/usr/bin/dash" and sh.args == SH_ARGS and sh.name == "dash"
    assert sh.title == " ".join(SH_ARGS) and sh.cwd == "/"
    assert sh.parent == python.key and sh.creator == python.key and sh.ppid == PY_PID
    assert len([p for p in t.processes.values() if p.pid == SH_PID]) == 1
    assert t.stats.merged_placeholders == 1 and t.stats.missed_exits == 0

    assert run(t, fork(101, SH_PID, PY_PID, TR_PID, exe="/usr/bin/dash")) == ["process-started"]
    tr_exec = execve(102, TR_PID, SH_PID, "/usr/bin/tr", ["tr", "a-z", "A-Z"])
    assert run(t, tr_exec) == ["process-exec"]
    parent = tr_exec["process"]["parent"]
    assert parent["pid"] == SH_PID and parent["entity_id"] == sh.entity_id
    assert parent["args"] == SH_ARGS and parent["executable"] == "/usr/bin/dash"
    ancestry = tr_exec["process"]["ancestry"]
    assert [a["pid"] for a in ancestry] == [SH_PID, PY_PID]
    assert [a["args"] for a in ancestry] == [SH_ARGS, PYTEST_ARGS]


def test_grandchild_exec_before_clone_too() -> None:
    """Both spawns reordered child-exec first: tr's parent and ancestry are sh, then python."""
    t = ProcessTable()
    spawn_sh_child_exec_first(t, "clone", "1200011")
    tr_exec = execve(101, TR_PID, SH_PID, "/usr/bin/tr", ["tr", "a-z", "A-Z"])
    run(t, tr_exec)
    assert tr_exec["process"]["parent"]["args"] == SH_ARGS
    out = t.observe(fork(101, SH_PID, PY_PID, TR_PID, exe="/usr/bin/dash"))
    assert actions(out) == ["process-started"]
    assert out[0]["process"]["executable"] == "/usr/bin/tr"
    assert out[0]["process"]["parent"]["pid"] == SH_PID
    later = ev(102, "write", TR_PID, SH_PID, exit="3", exe="/usr/bin/tr")
    run(t, later)
    assert later["process"]["entity_id"] == tr_exec["process"]["entity_id"]
    assert later["process"]["parent"]["args"] == SH_ARGS
    assert [a["args"][0] for a in later["process"]["ancestry"]] == ["sh", "python"]


def test_child_exec_first_with_unknown_parent_links_the_caller() -> None:
    """The exec's ppid names a parent the table learns of only from the fork: it is linked."""
    t = ProcessTable()
    sh_exec = execve(100, SH_PID, PY_PID, "/usr/bin/dash", SH_ARGS)
    run(t, sh_exec)
    assert "entity_id" not in sh_exec["process"]["parent"]
    out = t.observe(ev(100, "vfork", PY_PID, PY_PPID, exit=str(SH_PID), a0="7f3a1c5e8b40",
                       exe="/usr/bin/python3.11", comm="python3"))  # fmt: skip
    python = t.lookup(PY_PID, BASE_MS + 100)
    assert python is not None and python.inferred
    assert out[-1]["process"]["parent"] == {"pid": PY_PID, "entity_id": python.entity_id}
    assert out[-1]["process"]["args"] == SH_ARGS


def test_child_exec_first_does_not_merge_with_reused_pid() -> None:
    """PID reuse: an exited process or one seen before the fork is never the forked child."""
    t = ProcessTable()
    run(t, execve(0, PY_PID, PY_PPID, "/usr/bin/python3.11", PYTEST_ARGS))
    run(t, execve(10, 4000, 1, "/bin/bash", ["bash"]))
    run(t, fork(20, 4000, 1, SH_PID, exe="/bin/bash"))
    run(t, execve(21, SH_PID, 4000, "/bin/sleep", ["sleep", "0"]))
    old_doc = exit_group(30, SH_PID, 4000)
    run(t, old_doc)
    old = t.lookup(SH_PID, BASE_MS + 30)
    assert old is not None
    sh_exec = execve(100, SH_PID, PY_PID, "/usr/bin/dash", SH_ARGS)
    run(t, sh_exec)
    out = t.observe(ev(100, "vfork", PY_PID, PY_PPID, exit=str(SH_PID), a0="7f3a1c5e8b40",
                       exe="/usr/bin/python3.11", comm="python3"))  # fmt: skip
    assert out[0]["process"]["entity_id"] == sh_exec["process"]["entity_id"] != old.entity_id
    assert old.args == ["sleep", "0"] and old.parent == t.current[4000]
    # A placeholder first seen before a fork is an older process: the fork makes a new one.
    run(t, ev(200, "openat", 5000, 4000, exit="3", exe="/bin/cat", comm="cat"))
    stale = t.lookup(5000, BASE_MS + 200)
    out = t.observe(fork(300, PY_PID, PY_PPID, 5000, exe="/usr/bin/python3.11"))
    fresh = t.lookup(5000, BASE_MS + 300)
    assert stale is not None and fresh is not None and fresh is not stale
    assert stale.executable == "/bin/cat" and fresh.parent == t.current[PY_PID]
    assert out[-1]["process"]["entity_id"] == fresh.entity_id
    # A placeholder first seen after the fork but under an unrelated parent is a later
    # process reusing the pid: the late fork's child neither merges nor ends it.
    newer_doc = ev(500, "openat", 6000, 4000, exit="3", exe="/bin/cat", comm="cat")
    run(t, newer_doc)
    newer = t.lookup(6000, BASE_MS + 500)
    out = t.observe(fork(400, PY_PID, PY_PPID, 6000, exe="/usr/bin/python3.11"))
    assert newer is not None and newer.exited_at is None and newer.executable == "/bin/cat"
    assert t.lookup(6000, BASE_MS + 500) is newer
    assert out[-1]["process"]["entity_id"] != newer.entity_id
    assert out[-1]["process"]["executable"] == "/usr/bin/python3.11"


def test_unknown_pid_gives_inferred_placeholder() -> None:
    """An event from an unknown pid creates a placeholder from what the event says."""
    t = ProcessTable()
    doc = ev(0, "openat", 300, 42, exit="3", exe="/usr/bin/vim", comm="vim")
    run(t, doc)
    proc = t.lookup(300, BASE_MS)
    assert proc is not None and proc.inferred and proc.ppid == 42
    assert proc.executable == "/usr/bin/vim" and proc.name == "vim"
    assert "start" not in doc["process"]  # unknown stays absent
    assert "entity_id" not in doc["process"]["parent"]


def test_orphan_is_reparented_and_keeps_its_creator() -> None:
    """A child outliving its parent is reparented (ppid 1); its ancestry keeps the creator."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/usr/bin/daemonize", ["daemonize"]))
    run(t, fork(5, 100, 1, 200, exe="/usr/bin/daemonize"))
    run(t, exit_group(6, 100, 1))
    child = t.lookup(200, BASE_MS + 6)
    assert child is not None and child.ppid == 1  # reparented to init as the kernel does
    doc = execve(10, 200, 1, "/bin/nc", ["nc", "-l"])
    run(t, doc)
    assert doc["process"]["parent"] == {"pid": 1}
    assert doc["process"]["ancestry"][0]["executable"] == "/usr/bin/daemonize"
    t.maintain(BASE_MS + 5000)
    doc = ev(5000, "connect", 200, 1, exit="0")
    run(t, doc)  # creator deleted: ancestry falls back to the kernel parent (unknown here)
    assert "ancestry" not in doc["process"] and doc["process"]["entity_id"] == child.entity_id


def test_reparent_to_subreaper() -> None:
    """A dying process's children go to the nearest live subreaper (a containerd shim)."""
    t = ProcessTable()
    shim_args = ["containerd-shim-runc-v2", "-namespace", "moby", "-id", "a" * 64]
    run(t, execve(0, 50, 1, "/usr/bin/containerd-shim-runc-v2", shim_args))
    run(t, fork(1, 50, 1, 60, exe="/usr/bin/containerd-shim-runc-v2"))
    run(t, execve(2, 60, 50, "/usr/bin/runc", ["runc", "create", "--bundle", "/b/" + "a" * 64]))
    run(t, fork(3, 60, 50, 70, exe="/usr/bin/runc"))
    run(t, exit_group(4, 60, 50))
    child = t.lookup(70, BASE_MS + 4)
    assert child is not None and child.ppid == 50


def test_pid_reuse_gives_new_entity_and_old_children_keep_old_parent() -> None:
    """A pid reused after exit is a new process; the old one's children still resolve to it."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    run(t, fork(1, 100, 1, 200))
    run(t, execve(2, 200, 100, "/bin/old", ["old"]))
    run(t, fork(3, 200, 100, 300, exe="/bin/old"))
    run(t, exit_group(4, 200, 100))
    run(t, fork(5, 100, 1, 200))  # pid 200 again
    new = execve(6, 200, 100, "/bin/new", ["new"])
    run(t, new)
    grandchild = ev(7, "openat", 300, 200, exit="3")
    run(t, grandchild)
    old = grandchild["process"]["parent"]
    assert old["entity_id"] != new["process"]["entity_id"]
    assert old["executable"] == "/bin/old"
    assert grandchild["process"]["ancestry"][0]["executable"] == "/bin/old"


def test_pid_reuse_with_missed_exit_and_fork() -> None:
    """Same pid, unrelated live parent: the old process is retired and a new one inferred."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/a", ["a"]))
    run(t, execve(0, 101, 1, "/bin/b", ["b"]))
    run(t, fork(1, 100, 1, 200, exe="/bin/a"))
    first = ev(2, "openat", 200, 100, exit="3")
    run(t, first)
    second = ev(9, "openat", 200, 101, exit="3", exe="/bin/x")
    run(t, second)
    assert first["process"]["entity_id"] != second["process"]["entity_id"]
    assert t.stats.missed_exits == 1


def test_clone_thread_is_not_a_process() -> None:
    """clone with CLONE_THREAD creates no process; a later plain exit does not end the process."""
    t = ProcessTable()
    run(t, fork(0, 1, 0, 100, exe="/sbin/init"))
    flags = f"{0x3D0F00 | CLONE_THREAD:x}"
    assert run(t, ev(1, "clone", 100, 1, exit="101", a0=flags)) == []
    assert 101 not in t.current
    assert run(t, ev(2, "exit", 100, 1, a0="0")) == []  # a thread's exit
    proc = t.lookup(100, BASE_MS + 2)
    assert proc is not None and proc.exited_at is None
    assert run(t, exit_group(3, 100, 1)) == ["process-exited"]


def test_plain_exit_ends_a_single_threaded_process() -> None:
    """exit (not exit_group) ends a process known to be single-threaded."""
    t = ProcessTable()
    run(t, fork(0, 1, 0, 100, exe="/sbin/init"))
    assert run(t, ev(1, "exit", 100, 1, a0="2")) == ["process-exited"]


def test_clone3_child_is_tentative_until_seen_as_process() -> None:
    """A clone3 child is announced only when an event shows it as a process; else it expires."""
    t = ProcessTable(TableConfig(tentative_ttl_ms=1000))
    run(t, fork(0, 1, 0, 100, exe="/sbin/init"))
    assert run(t, ev(1, "clone3", 100, 1, exit="101")) == []
    assert run(t, ev(2, "clone3", 100, 1, exit="102")) == []
    assert run(t, execve(3, 101, 100, "/bin/true", ["true"])) == ["process-started", "process-exec"]
    t.maintain(BASE_MS + 5000)
    assert t.lookup(101, BASE_MS + 3) is not None
    assert t.lookup(102, BASE_MS + 3) is None  # never acted as a process: a thread
    assert t.stats.tentative_dropped == 1


def test_exec_chain_keeps_entity() -> None:
    """sh -c 'exec prog' replaces the image of the same process: same entity_id, new exe."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/bash", ["bash"]))
    run(t, fork(1, 100, 1, 200, exe="/bin/bash"))
    sh = execve(2, 200, 100, "/bin/sh", ["sh", "-c", "exec sleep 5"])
    run(t, sh)
    sleep = execve(3, 200, 100, "/bin/sleep", ["sleep", "5"])
    run(t, sleep)
    assert sh["process"]["entity_id"] == sleep["process"]["entity_id"]
    proc = t.lookup(200, BASE_MS + 3)
    assert proc is not None and proc.executable == "/bin/sleep" and proc.args == ["sleep", "5"]
    old_exec = execve(2, 200, 100, "/bin/sh", ["sh"])
    t.observe(old_exec)  # a late copy of an older exec does not roll the image back
    assert proc.executable == "/bin/sleep"


def test_delayed_deletion() -> None:
    """A child's event 500 ms after its parent's exit resolves the parent; after the grace not."""
    t = ProcessTable(TableConfig(exit_grace_ms=1000))
    run(t, execve(0, 100, 1, "/bin/make", ["make"]))
    run(t, fork(1, 100, 1, 200, exe="/bin/make"))
    run(t, exit_group(10, 100, 1))
    t.maintain(BASE_MS + 500)
    late = ev(500, "openat", 200, 100, exit="3")
    run(t, late)
    assert late["process"]["parent"]["executable"] == "/bin/make"
    t.maintain(BASE_MS + 1011)
    assert t.lookup(100, BASE_MS + 9) is None
    later = ev(1100, "openat", 200, 100, exit="3")
    run(t, later)
    assert "entity_id" not in later["process"]["parent"]


def test_memory_is_bounded() -> None:
    """Past max_processes the oldest exited, then oldest inferred entries are evicted, counted."""
    t = ProcessTable(TableConfig(max_processes=100))
    run(t, fork(0, 1, 0, 2, exe="/sbin/init"))
    for i in range(1000):
        pid = 1000 + i
        t.observe(fork(i, 2, 1, pid))
        t.observe(exit_group(i, pid, 2))
        t.observe(ev(i, "openat", 100000 + i, 2, exit="3"))  # placeholders that never exit
    assert len(t) <= 100
    assert t.stats.evicted_exited > 0 and t.stats.evicted_inferred > 0
    assert t.lookup(2, BASE_MS + 999) is not None  # the live parent survived
    assert len(t.current) <= 100


def test_hostile_docs_are_counted_not_fatal() -> None:
    """Garbage docs neither crash the table nor change it; bad shapes are counted."""
    t = ProcessTable()
    for doc in [
        {},
        {"process": "x"},
        {"process": {"pid": "12"}, "@timestamp": 5},
        {
            "process": {"pid": 7, "parent": []},
            "auditd": {"data": {"syscall": "clone", "exit": "x"}},
        },
        {
            "process": {"pid": 7},
            "auditd": {"data": {"syscall": "execve"}, "result": "success"},
            "@timestamp": "not a time at all....Z",
        },
        {"process": {"pid": True}},
        ev(0, "clone", 8, 1, exit="-11", a0="zz"),
    ]:
        t.observe(doc)  # type: ignore[arg-type]
        t.enrich(doc)  # type: ignore[arg-type]
    assert t.stats.bad_times >= 1
    assert all(p.pid in (7, 8) for p in t.processes.values())


def test_enrich_does_not_overwrite_record_fields() -> None:
    """Fields the records set (exe, name, args, parent pid) are left as the records say."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/a", ["a"]))
    same = ev(1, "openat", 100, 1, exit="3", exe="/bin/a", comm="renamed")
    run(t, same)
    assert same["process"]["name"] == "renamed"
    assert same["process"]["args"] == ["a"]  # absent in the record: filled from the table
    doc = ev(2, "openat", 100, 1, exit="3", exe="/bin/other", comm="other")
    run(t, doc)
    assert doc["process"]["executable"] == "/bin/other"
    assert doc["process"]["name"] == "other"
    assert "args" not in doc["process"]  # a missed exec: the old args would be wrong


def test_state_roundtrip(tmp_path: Path) -> None:
    """A saved table loads back with the same processes, links and containers."""
    t = ProcessTable(TableConfig(host="h"))
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    run(t, fork(1, 100, 1, 200))
    path = tmp_path / "tree.state"
    state.save(t, path, now_ms=BASE_MS)
    loaded = state.load(path, max_age_ms=60_000, config=TableConfig(host="h"), now_ms=BASE_MS + 10)
    assert loaded is not None and len(loaded) == len(t)
    doc = ev(5, "openat", 200, 100, exit="3")
    run(loaded, doc)
    assert doc["process"]["parent"]["executable"] == "/bin/sh"
    assert doc["process"]["entity_id"] == t.processes[t.current[200]].entity_id


def test_state_stale_or_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stale or corrupt state file is logged and gives a fresh table; no file gives None."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    path = tmp_path / "tree.state"
    assert state.load(path, 1000) is None
    state.save(t, path, now_ms=BASE_MS)
    with caplog.at_level(logging.WARNING):
        stale = state.load(path, 1000, now_ms=BASE_MS + 5000)
    assert stale is not None and len(stale) == 0 and "old" in caplog.text
    for garbage in (b"\x00\xff garbage", b"", b"\x93\x01\x02\x03"):
        path.write_bytes(garbage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            fresh = state.load(path, 1000)
        assert fresh is not None and len(fresh) == 0 and "corrupt" in caplog.text


def test_state_keeps_that_the_sweep_ended_a_process(tmp_path: Path) -> None:
    """A process the /proc sweep ended is still so after a restart: its container-gone says proc_sweep."""
    cgroup = b"0::/system.slice/docker-" + b"c" * 64 + b".scope\n"
    init = ProcInfo(1, 0, BASE_MS - 900_000, b"systemd", b"/usr/lib/systemd/systemd", [b"init"])
    sh = ProcInfo(900, 1, BASE_MS - 50_000, b"sh", b"/bin/busybox", [b"sh"], cgroup=cgroup)
    t = ProcessTable(TableConfig(host="h"))
    t.scan(FakeProcSource([init, sh]), None, BASE_MS)
    t.sweep_proc(FakeProcSource([init]), BASE_MS + 100)  # the container's sh was SIGKILLed
    assert actions(t.maintain(BASE_MS + 1_100)) == ["process-exited"]
    path = tmp_path / "tree.state"
    state.save(t, path, now_ms=BASE_MS + 1_200)
    loaded = state.load(path, 60_000, TableConfig(host="h"), now_ms=BASE_MS + 1_300)
    assert loaded is not None
    docs = loaded.maintain(BASE_MS + 5_000)  # past exit_grace_ms: deleted, its container gone
    assert actions(docs) == ["container-gone"]
    assert docs[0]["auditstream"] == {"lifecycle_source": "proc_sweep"}


def test_state_rows_of_older_and_newer_versions_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows saved before ended_gone (24 fields) or proc_start_ms (25) load with them defaulted; a newer version's longer rows load with the extra fields left out, said once; a known field of the wrong type is still corrupt."""
    t = ProcessTable()
    run(t, execve(0, 100, 1, "/bin/sh", ["sh"]))
    run(t, fork(1, 100, 1, 200))
    path = tmp_path / "tree.state"
    state.save(t, path, now_ms=BASE_MS)
    body = msgpack.unpackb(path.read_bytes())
    assert [len(row) for row in body["processes"]] == [state.KNOWN_FIELDS] * 2
    for fields in (24, 25):
        older = {**body, "processes": [row[:fields] for row in body["processes"]]}
        path.write_bytes(msgpack.packb(older))
        loaded = state.load(path, 60_000, now_ms=BASE_MS)
        assert loaded is not None and sorted(loaded.processes) == sorted(t.processes)
        assert not any(proc.ended_gone for proc in loaded.processes.values())
    newer = {**body, "processes": [[*row, "a field of the future"] for row in body["processes"]]}
    path.write_bytes(msgpack.packb(newer))
    with caplog.at_level(logging.WARNING):
        loaded = state.load(path, 60_000, now_ms=BASE_MS)
    assert loaded is not None and sorted(loaded.processes) == sorted(t.processes)
    assert "2 process rows hold fields of a newer auditstream" in caplog.text
    for row in body["processes"]:
        row[25] = "not a time"
    path.write_bytes(msgpack.packb(body))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fresh = state.load(path, 60_000, now_ms=BASE_MS)
    assert fresh is not None and len(fresh) == 0 and "corrupt" in caplog.text


def test_state_keeps_the_start_proc_gave_a_process(tmp_path: Path) -> None:
    """A process's start as /proc gave it survives a restart: the first sweep after it tells a pid reused while stopped (another start) from a process still running (the same start)."""
    init = ProcInfo(1, 0, BASE_MS - 900_000, b"systemd", b"/usr/lib/systemd/systemd", [b"init"])
    sh = ProcInfo(900, 1, BASE_MS - 50_000, b"sh", b"/bin/sh", [b"sh"])
    cron = ProcInfo(901, 1, BASE_MS - 40_000, b"cron", b"/usr/sbin/cron", [b"cron"])
    t = ProcessTable(TableConfig(host="h"))
    t.scan(FakeProcSource([init, sh, cron]), None, BASE_MS)
    path = tmp_path / "tree.state"
    state.save(t, path, now_ms=BASE_MS + 100)
    loaded = state.load(path, 60_000, TableConfig(host="h"), now_ms=BASE_MS + 200)
    assert loaded is not None
    restored = {pid: loaded.get(loaded.current[pid]) for pid in (900, 901)}
    assert {pid: p.proc_start_ms for pid, p in restored.items() if p} == {
        900: BASE_MS - 50_000,
        901: BASE_MS - 40_000,
    }
    reused = ProcInfo(900, 1, BASE_MS + 150, b"vim", b"/usr/bin/vim", [b"vim"])
    loaded.sweep_proc(FakeProcSource([init, reused, cron]), BASE_MS + 300)
    gone = {pid: p.gone_at for pid, p in restored.items() if p}
    assert gone == {900: BASE_MS + 300, 901: None}


def test_parse_stat_with_hostile_comm() -> None:
    """A comm holding ') ' and spaces does not shift the stat fields."""
    fields = " ".join(["S", "77"] + ["0"] * 15 + ["3", "0", "250"] + ["0"] * 10)
    text = b"123 (a) b (c) " + fields.encode()
    assert parse_stat(text, 1_000_000, 100) == (77, 1_000_000 + 2500, b"a) b (c", 3)
    assert parse_stat(b"garbage", 0, 100) is None


def test_scan_fake_proc() -> None:
    """A scan links parents, keeps start times and reads containers from cgroup text."""
    cid = "b" * 64
    fake = FakeProcSource([
        ProcInfo(1, 0, BASE_MS, b"systemd", b"/sbin/init", [b"/sbin/init"]),
        ProcInfo(10, 1, BASE_MS + 5, b"sh", b"/bin/sh", [b"sh"], b"/",
                 b"0::/system.slice/docker-" + cid.encode() + b".scope\n"),
        ProcInfo(11, 10, BASE_MS + 9, b"bad\xff", None, [], None, None, 4),
    ])  # fmt: skip
    t = ProcessTable()
    assert t.scan(fake) == 3
    doc = ev(100, "openat", 11, 10, exit="3")
    run(t, doc)
    assert [a["pid"] for a in doc["process"]["ancestry"]] == [10, 1]
    assert doc["process"]["name"] == "bad%ff"
    sh = t.lookup(10, BASE_MS + 100)
    assert sh is not None and sh.container is not None and sh.container.id == cid
    assert doc.get("container") is None  # pid 11 has no cgroup text: unknown, absent


def _ps_pairs() -> dict[int, int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True)
    return {int(a): int(b) for a, b in (line.split() for line in out.stdout.splitlines())}


@pytest.mark.skipif(shutil.which("ps") is None, reason="ps not installed")
def test_scan_real_proc_matches_ps() -> None:
    """A scan of this machine's /proc agrees with ps on pid/ppid of processes present in both."""
    before = _ps_pairs()
    t = ProcessTable()
    count = t.scan(LiveProcSource())
    after = _ps_pairs()
    stable = {pid: ppid for pid, ppid in before.items() if after.get(pid) == ppid}
    scanned = {p.pid: p.ppid for p in t.processes.values()}
    common = stable.keys() & scanned.keys()
    assert count > 0 and len(common) >= 0.9 * len(stable)
    assert all(scanned[pid] == stable[pid] for pid in common)
    init = t.lookup(1, 2**62)
    assert init is not None and init.started_at is not None and init.name


def test_ancestry_args_are_capped() -> None:
    """An ancestor with huge arguments adds at most 1024 characters of them to each event."""
    t = ProcessTable()
    huge = ["sh", "-c", "x" * 100_000]
    run(t, fork(100, SH_PID, 1, SH_PID + 1, exe="/usr/bin/dash"))
    run(t, execve(101, SH_PID + 1, SH_PID, "/usr/bin/dash", huge))
    run(t, fork(102, SH_PID + 1, SH_PID, TR_PID, exe="/usr/bin/dash"))
    tr_exec = execve(103, TR_PID, SH_PID + 1, "/usr/bin/tr", ["tr", "a-z", "A-Z"])
    run(t, tr_exec)
    nearest = tr_exec["process"]["ancestry"][0]
    assert nearest["pid"] == SH_PID + 1 and nearest["args_truncated"] is True
    assert nearest["args"][:2] == ["sh", "-c"]
    assert sum(len(a) for a in nearest["args"]) == 1024
    assert tr_exec["process"]["parent"]["args"] == huge  # the parent section stays whole
    assert tr_exec["process"]["args"] == ["tr", "a-z", "A-Z"]
