"""Container attribution when `runc exec` exits before its container process's next records.

A `docker exec` runs `runc exec ID` (a child of the containerd shim); runc's nsexec stages
clone the container's process with CLONE_PARENT, so its kernel parent is `runc exec`, not
its creator. `runc exec --detach` may exit before that process has exec'd and forked. The
kernel writes the exit_group record before it hands the children to the shim (the last
thread's exit_notify), so for a few ms the child's records still say ``ppid=<runc exec>``.
The table had already reparented the child to the shim at the exit record and took such a
record for a reused pid: it retired the process and made a placeholder without container,
and the `sleep` forked next had no container.id in a replay (live, /proc's cgroup hid it).
Seen once in ~10 loaded runs of tests/test_docker_live.py; the log excerpt below is from
such a run.
"""

from __future__ import annotations

from pathlib import Path

from live_helpers import replay_audit_events
from runc_trace import CORPUS_CONTAINER_ID, start_runc_exec
from test_tree import BASE_MS, ev, execve, exit_group, fork, run

from treekeeper.tree import ProcessTable, TableConfig

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "corpus" / "containers" / "docker-exec-runc-exits-first.log"
CID = "369bb5f7b143" + "0123456789abcdef" * 3 + "abcd"


def _docker_exec_until_runc_exits(t: ProcessTable) -> None:
    """shim 500 → `runc exec` 620 → `runc init` 621 → CLONE_PARENT 622 (runc:[2:INIT]); 620 exits."""
    start_runc_exec(t, CID, 622)
    run(t, exit_group(6, 621, 620))
    run(t, exit_group(10, 620, 500))  # written before the kernel reparents 622 to the shim


def test_stale_ppid_of_an_exited_runc_exec_keeps_process_and_container() -> None:
    """Records that still name the just-exited `runc exec` as ppid belong to the same process."""
    t = ProcessTable()
    _docker_exec_until_runc_exits(t)
    sh = execve(10, 622, 620, "/bin/sh", ["sh", "-c", "sleep 2; ls /; :"])
    run(t, sh)
    clone = fork(14, 622, 620, 14, exe="/bin/sh")  # ppid still 620, 4 ms after its exit
    run(t, clone)
    sleep = execve(14, 623, 622, "/bin/sleep", ["sleep", "2"])
    run(t, sleep)
    assert sh["container"]["id"] == CID
    assert clone["process"]["entity_id"] == sh["process"]["entity_id"]
    assert clone["container"]["id"] == CID
    assert clone["process"]["args"] == ["sh", "-c", "sleep 2; ls /; :"]
    runc_exec = t.lookup(620, BASE_MS + 10)
    assert runc_exec is not None and runc_exec.exited_at == BASE_MS + 10
    # The recorded ppid is the exited runc exec: enrichment names that process.
    assert clone["process"]["parent"]["entity_id"] == runc_exec.entity_id
    assert sleep["container"]["id"] == CID
    assert sleep["process"]["parent"]["entity_id"] == sh["process"]["entity_id"]
    assert [a["pid"] for a in sleep["process"]["ancestry"][:4]] == [622, 621, 620, 500]
    assert t.stats.missed_exits == 0
    proc = t.lookup(622, BASE_MS + 20)
    assert proc is not None and proc.ppid == 500  # the shim, as the kernel has it by now


def test_a_dead_parents_pid_after_its_exit_grace_is_a_new_process() -> None:
    """Once the exited parent is deleted (exit grace), a record naming its pid is a reused pid."""
    t = ProcessTable(TableConfig(exit_grace_ms=1000))
    _docker_exec_until_runc_exits(t)
    run(t, execve(10, 622, 620, "/bin/sh", ["sh", "-c", "sleep 5"]))
    t.maintain(BASE_MS + 2000)
    assert t.lookup(620, BASE_MS + 10) is None  # runc exec is gone from the table
    later = ev(2100, "openat", 622, 620, exit="3", exe="/bin/sh")
    run(t, later)
    assert t.stats.missed_exits == 1
    assert "container" not in later  # unknown ancestry: no guessed container


def test_replay_of_the_captured_ordering_names_the_container(tmp_path: Path) -> None:
    """`auditstream replay` of the real records: sh, its clone and the sleep carry the id."""
    docs = replay_audit_events(CAPTURE, tmp_path / "out.jsonl")
    # 5502750: runc exec (14104) exit_group; 5502751: sh execve in 14114 with ppid=14104;
    # 5502752: that sh clones, ppid still 14104; 5502753: the sleep (14120) execs.
    sh, clone, sleep = docs[5502751], docs[5502752], docs[5502753]
    assert sh["process"]["args"] == ["sh", "-c", "sleep 2; ls / f8df738214f9; :"]
    assert clone["process"]["parent"]["pid"] == 14104
    assert sleep["process"]["args"] == ["sleep", "2"]
    for doc in (sh, clone, sleep):
        assert doc.get("container") == {"id": CORPUS_CONTAINER_ID, "runtime": "docker"}
    assert clone["process"]["entity_id"] == sh["process"]["entity_id"]
    assert clone["process"]["parent"]["entity_id"] == docs[5502730]["process"]["entity_id"]
    assert sleep["process"]["parent"]["entity_id"] == sh["process"]["entity_id"]
    assert [a["pid"] for a in sleep["process"]["ancestry"]] == [14114, 14113, 14112, 14104, 14033]
