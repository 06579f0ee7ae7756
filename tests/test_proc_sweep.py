"""Processes killed by a signal end live through the /proc sweep; containers found by the
start-up scan are announced; a container's forked child that never execs has its args.

A process killed by a signal (`docker stop`, SIGKILL, the end of its pid namespace) makes
no exit syscall: the audit log never says it ended. Live, the tree keeper lists /proc every
`proc_sweep_ms` and ends the table's processes it no longer lists (treekeeper/tree.py
`sweep_proc`), through the /proc seam (treekeeper/procfs.py `FakeProcSource` here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_tree import BASE_MS, ev, execve, exit_group, fork, run

from auditstream import config
from auditstream.config import ConfigError
from treekeeper.enrich import iso_ms
from treekeeper.pipeline import TreeStep
from treekeeper.procfs import FakeProcSource, ProcInfo
from treekeeper.tree import GONE_CONFIRM_MIN_MS, ProcessTable, TableConfig

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
