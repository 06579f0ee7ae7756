"""The start of a `docker exec` as runc runs it, for process-table tests (containers, pid ns)."""

from __future__ import annotations

from test_tree import execve, fork, run

from treekeeper.tree import ProcessTable

SHIM = "/usr/bin/containerd-shim-runc-v2"
RUNC = "/usr/sbin/runc"
CLONE_PARENT_FLAGS = "8011"  # CLONE_PARENT | SIGCHLD, as runc's nsexec clones its stages
# The container of the captures in tests/corpus/containers/ (one docker run on this machine).
CORPUS_CONTAINER_ID = "98ed8dfe133e29d4745e7c1f310b06be23739d5ee45c0dd06e9c303c36d66dae"


def start_runc_exec(t: ProcessTable, cid: str, child_pid: int) -> list[str]:
    """shim 500 → `runc exec` 620 → `runc init` 621, whose runc:[1:CHILD] clones ``child_pid``
    with CLONE_PARENT (serials 0-5); returns the lifecycle events of that clone."""
    run(t, execve(0, 500, 1, SHIM, [SHIM, "-namespace", "moby", "-id", cid]))
    run(t, fork(1, 500, 1, 620, exe=SHIM))
    run(t, execve(2, 620, 500, RUNC, ["runc", "--root", "/r", "exec", "--detach", cid]))
    run(t, fork(3, 620, 500, 621, exe=RUNC))
    run(t, execve(4, 621, 620, RUNC, ["runc", "init"]))
    clone = fork(5, 621, 620, child_pid, exe=RUNC, a0=CLONE_PARENT_FLAGS, comm="runc:[1:CHILD]")
    return run(t, clone)
