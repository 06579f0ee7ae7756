"""Container attribution: cgroup text (live) and runtime command lines (replay)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_tree import BASE_MS, ev, execve, exit_group, fork, run

from auditstream.cmd_tree import container_id_prefix, render, select_container
from treekeeper.containers import ContainerRef, RuntimeRole, classify, from_cgroup
from treekeeper.control import snapshot
from treekeeper.procfs import FakeProcSource, ProcInfo
from treekeeper.tree import ProcessTable

REPO = Path(__file__).resolve().parents[1]

CID = "369bb5f7b143" + "0123456789abcdef" * 3 + "abcd"
OTHER = "f" * 64


@pytest.mark.parametrize(
    ("text", "runtime"),
    [
        (f"12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n", "docker"),
        (f"0::/system.slice/docker-{CID}.scope\n", "docker"),
        (f"0::/system.slice/cri-containerd-{CID}.scope\n", "containerd"),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c_3d.slice/"
            f"cri-containerd-{CID}.scope\n",
            "containerd",
        ),
        (f"0::/machine.slice/crio-{CID}.scope\n", "cri-o"),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", "podman"),
        (f"4:cpu:/kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-0123456789ab/{CID}\n", None),
        (f"0::/some/odd/place/{CID}\n", None),
    ],
)
def test_cgroup_samples(text: str, runtime: str | None) -> None:
    """Each runtime's cgroup path gives the 64-hex id and the runtime where the path says it."""
    assert from_cgroup(text.encode()) == ContainerRef(CID, runtime)


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/\n",
        f"0::/machine.slice/libpod-conmon-{CID}.scope\n",  # the monitor, outside the container
        f"0::/system.slice/crio-conmon-{CID}.scope\n",
        "garbage without colons \xff",
        "",
        f"0::/docker/{CID}0\n",  # 65 hex: not an id
    ],
)
def test_cgroup_without_container(text: str) -> None:
    """Host cgroups, conmon monitors, garbage and near-ids give no container."""
    assert from_cgroup(text) is None


def test_cgroup_nested_takes_innermost() -> None:
    """Docker-in-docker: the deepest id in the path is the process's own container."""
    assert from_cgroup(f"0::/docker/{OTHER}/docker/{CID}\n") == ContainerRef(CID, "docker")


def test_classify_runtime_command_lines() -> None:
    """Shim, runc create/exec and runc init are recognised with the container they name."""
    shim = ["/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", CID, "-address", "/x"]
    assert classify(shim[0], shim) == (RuntimeRole.SHIM, ContainerRef(CID, "docker"))
    k8s = ["containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", CID]
    assert classify(None, k8s) == (RuntimeRole.SHIM, None)  # the pod sandbox's id, not ours
    create = ["runc", "--root", "/run/runc", "--log", "/l/log.json", "create", "--bundle",
              f"/run/containerd/io.containerd.runtime.v2.task/moby/{CID}", CID]  # fmt: skip
    assert classify("/usr/bin/runc", create) == (RuntimeRole.RUNTIME, ContainerRef(CID, "docker"))
    short = ["crun", "run", "-b", f"/var/lib/containers/storage/overlay-containers/{CID}/userdata"]
    assert classify("/usr/bin/crun", short)[0] is RuntimeRole.RUNTIME
    exec_args = ["runc", "--root", "/r", "exec", "--process", "/tmp/p.json", "--detach", CID]
    assert classify("/usr/sbin/runc", exec_args) == (RuntimeRole.RUNTIME, ContainerRef(CID, None))
    assert classify("/usr/bin/runc", ["runc", "init"]) == (RuntimeRole.RUNTIME_INIT, None)
    assert classify("/usr/bin/runc", ["runc", "delete", CID]) == (RuntimeRole.RUNTIME, None)
    assert classify("/bin/sh", ["sh", "-c", CID]) == (RuntimeRole.NONE, None)


def _shim(t: ProcessTable) -> None:
    run(t, execve(0, 500, 1, "/usr/bin/containerd-shim-runc-v2",
                  ["containerd-shim-runc-v2", "-namespace", "moby", "-id", CID]))  # fmt: skip


def test_replay_shim_runc_init_sh_rm_and_docker_exec() -> None:
    """shim → runc init → sh → rm is in the container; so is a docker exec'd child of the shim."""
    t = ProcessTable()
    _shim(t)
    run(t, fork(1, 500, 1, 501, exe="/usr/bin/containerd-shim-runc-v2"))
    init = execve(2, 501, 500, "/usr/bin/runc", ["runc", "init"])
    out = t.observe(init)
    t.enrich(init)
    assert [d["event"]["action"] for d in out] == ["container-first-seen", "process-exec"]
    assert out[0]["container"] == {"id": CID, "runtime": "docker"}
    run(t, execve(3, 501, 500, "/bin/sh", ["sh", "-c", "rm /data/victim.txt"]))
    run(t, fork(4, 501, 500, 502, exe="/bin/sh"))
    rm = execve(5, 502, 501, "/bin/rm", ["rm", "/data/victim.txt"])
    run(t, rm)
    assert rm["container"] == {"id": CID, "runtime": "docker"}
    assert [a["pid"] for a in rm["process"]["ancestry"]] == [501, 500]
    # docker exec: a process whose parent is the shim (reparented after runc exec left)
    run(t, fork(6, 500, 1, 510, exe="/usr/bin/containerd-shim-runc-v2"))
    exec_doc = execve(7, 510, 500, "/bin/bash", ["bash"])
    run(t, exec_doc)
    assert exec_doc["container"]["id"] == CID
    shim_doc = ev(8, "openat", 500, 1, exit="3")
    run(t, shim_doc)
    assert "container" not in shim_doc  # the shim itself runs on the host


def test_replay_real_runc_flow_and_hook_outside() -> None:
    """shim → runc create (bundle) → runc init → entrypoint is inside; runc's hook is not."""
    t = ProcessTable()
    _shim(t)
    run(t, fork(1, 500, 1, 600, exe="/usr/bin/containerd-shim-runc-v2"))
    bundle = f"/run/containerd/io.containerd.runtime.v2.task/moby/{CID}"
    runc = execve(2, 600, 500, "/usr/bin/runc", ["runc", "create", "--bundle", bundle, CID])
    run(t, runc)
    assert "container" not in runc
    run(t, fork(3, 600, 500, 601, exe="/usr/bin/runc"))
    run(t, execve(4, 601, 600, "/usr/bin/runc", ["runc", "init"]))
    entry = execve(5, 601, 600, "/usr/sbin/nginx", ["nginx"])
    run(t, entry)
    assert entry["container"]["id"] == CID
    run(t, fork(6, 600, 500, 602, exe="/usr/bin/runc"))
    hook = execve(7, 602, 600, "/usr/bin/nvidia-hook", ["nvidia-hook", "prestart"])
    run(t, hook)
    assert "container" not in hook
    # runc exits; its container init is reparented to the shim and stays in the container
    run(t, ev(8, "exit_group", 600, 500, a0="0"))
    later = ev(9, "openat", 601, 500, exit="3")
    run(t, later)
    assert later["container"]["id"] == CID and later["process"]["parent"]["pid"] == 500


def test_unknown_ancestry_has_no_container() -> None:
    """A process whose ancestry the log never showed carries no container.id."""
    t = ProcessTable()
    doc = execve(0, 700, 650, "/bin/sh", ["sh"])
    run(t, doc)
    assert "container" not in doc


def test_container_gone_when_last_member_deleted() -> None:
    """container-gone is emitted once the container's last known process is deleted."""
    t = ProcessTable()
    _shim(t)
    run(t, fork(1, 500, 1, 501, exe="/usr/bin/containerd-shim-runc-v2"))
    run(t, execve(2, 501, 500, "/bin/sleep", ["sleep", "1"]))
    run(t, ev(3, "exit_group", 501, 500, a0="0"))
    out = t.maintain(BASE_MS + 5000)
    assert [d["event"]["action"] for d in out] == ["container-gone"]
    assert out[0]["container"]["id"] == CID and out[0]["event"]["type"] == ["end"]


def test_live_scan_children_inherit_container() -> None:
    """Live: a scanned process's cgroup gives the container; its later forks inherit it."""
    cgroup = f"0::/system.slice/docker-{CID}.scope\n".encode()
    t = ProcessTable()
    t.scan(FakeProcSource([ProcInfo(900, 1, BASE_MS - 10_000, b"sh", b"/bin/sh", [b"sh"],
                                    cgroup=cgroup)]))  # fmt: skip
    run(t, fork(1, 900, 1, 901))
    doc = execve(2, 901, 900, "/bin/id", ["id"])
    run(t, doc)
    assert doc["container"] == {"id": CID, "runtime": "docker"}


def test_replay_docker_exec_through_runc_exec_and_unseen_init_clone() -> None:
    """docker exec as logged: `runc exec ID` → runc:[2:INIT] (its clone never seen) → sh is inside."""
    t = ProcessTable()
    _shim(t)
    run(t, fork(1, 500, 1, 620, exe="/usr/bin/containerd-shim-runc-v2"))
    runc_exec = [
        "runc",
        "--root",
        "/run/runc/moby",
        "exec",
        "--process",
        "/tmp/p.json",
        "--detach",
        CID,
    ]
    run(t, execve(2, 620, 500, "/usr/bin/runc", runc_exec))
    # runc's nsexec stage clones the init with CLONE_PARENT: its first event is its own.
    first = ev(3, "clone3", 622, 620, exit="10", comm="runc:[2:INIT]", exe="/usr/bin/runc")
    run(t, first)
    sh = execve(4, 622, 620, "/bin/sh", ["sh", "-c", "ls /"])
    run(t, sh)
    assert sh["container"]["id"] == CID
    # A hook is a plain fork of runc that execs: it stays outside.
    run(t, fork(5, 620, 500, 623, exe="/usr/bin/runc"))
    hook = execve(6, 623, 620, "/usr/bin/hook", ["hook"])
    run(t, hook)
    assert "container" not in hook


def test_runc_hook_orphans_handed_to_the_shim_stay_outside() -> None:
    """A runc hook's children (a clone3 thread, a daemon) reaped by the shim are not the container's."""
    t = ProcessTable()
    _shim(t)
    run(t, fork(1, 500, 1, 600, exe="/usr/bin/containerd-shim-runc-v2"))
    bundle = f"/run/containerd/io.containerd.runtime.v2.task/moby/{CID}"
    run(t, execve(2, 600, 500, "/usr/bin/runc", ["runc", "create", "--bundle", bundle, CID]))
    # dockerd's prestart hook, as logged: runc forks it, it execs, clones a Go thread, exits.
    run(t, fork(3, 600, 500, 602, exe="/usr/bin/runc"))
    run(t, execve(4, 602, 600, "/usr/sbin/dockerd", ["libnetwork-setkey", "-exec-root=/x"]))
    run(t, ev(5, "clone3", 602, 600, exit="603", exe="/usr/sbin/dockerd"))
    run(t, fork(6, 602, 600, 604, exe="/usr/sbin/dockerd"))  # a child that outlives it
    assert run(t, exit_group(7, 602, 600)) == ["process-exited"]  # no container-first-seen
    assert run(t, exit_group(8, 600, 500)) == ["process-exited"]
    orphan = ev(9, "openat", 604, 500, exit="3", exe="/usr/sbin/dockerd")
    assert run(t, orphan) == []
    assert orphan["process"]["parent"]["pid"] == 500  # reaped by the shim, a subreaper
    assert "container" not in orphan
    assert CID not in t.container_members


def test_tree_snapshot_leaves_out_processes_gone_from_proc() -> None:
    """Processes killed by a signal (no exit record) leave the live tree once /proc lacks them."""
    cgroup = f"0::/system.slice/docker-{CID}.scope\n".encode()
    at_start = [
        ProcInfo(900, 1, BASE_MS - 10_000, b"sh", b"/bin/sh", [b"sh"], cgroup=cgroup),
        ProcInfo(
            901, 900, BASE_MS - 9_000, b"sleep", b"/bin/sleep", [b"sleep", b"9"], cgroup=cgroup
        ),
        ProcInfo(902, 900, BASE_MS - 9_000, b"top", b"/bin/top", [b"top"], cgroup=cgroup),
    ]
    t = ProcessTable()
    t.scan(FakeProcSource(at_start))
    assert sorted(p["pid"] for p in snapshot(t)) == [900, 901, 902]  # a replay: no /proc
    # docker stop: 901 was SIGKILLed (gone), 902's pid now names a later process.
    reused = ProcInfo(902, 1, BASE_MS + 60_000, b"cron", b"/usr/sbin/cron", [b"cron"])
    t.proc_source = FakeProcSource([at_start[0], reused])
    assert [(p["pid"], p["container_id"]) for p in snapshot(t)] == [(900, CID)]


def _tree_row(pid: int, container: str | None, parent: str | None = None) -> dict[str, Any]:
    return {"pid": pid, "entity_id": f"e{pid}", "parent_entity_id": parent, "args": ["sh"],
            "container_id": container, "container_runtime": "docker"}  # fmt: skip


def test_tree_container_option_takes_a_docker_ps_prefix() -> None:
    """--container takes the 12-hex id `docker ps` shows, any case; none or several is an error."""
    rows = [_tree_row(1, None), _tree_row(10, CID, "e1"), _tree_row(11, CID, "e10"),
            _tree_row(20, OTHER, "e1")]  # fmt: skip
    assert container_id_prefix(f" {CID[:12].upper()} ") == CID[:12]
    assert [p["pid"] for p in select_container(rows, CID[:12])] == [10, 11]
    assert [p["pid"] for p in select_container(rows, OTHER)] == [20]
    with pytest.raises(LookupError, match="no live process of a container whose id starts with 0"):
        select_container(rows, "0")
    twin = "369bb5f7b143" + "f" * 52  # shares the 12 hex docker ps shows
    with pytest.raises(LookupError, match=f"ambiguous: {CID}, {twin}"):
        select_container([*rows, _tree_row(30, twin)], CID[:12])
    for bad in ("web", "", "x" * 3, CID + "0"):
        with pytest.raises(ValueError, match="not a container id"):
            container_id_prefix(bad)

    class Out:
        text = ""

        def write(self, chunk: str) -> None:
            Out.text += chunk

    render(select_container(rows, CID[:12]), Out())
    assert Out.text == f"container {CID} (docker):\n  10 sh\n    11 sh\n"


def test_tree_command_refuses_a_container_name(tmp_path: Path) -> None:
    """`auditstream tree --container web` exits 2 naming the option, before asking any pipeline."""
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "tree", "--container", "web", "--runtime-dir",
         str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--container 'web': not a container id" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
