"""A container started before `auditstream run`, its `docker restart`, and hostile names, live.

One capture session: a private dockerd; container `pre` (a shell appending to a watched
bind-mounted dir every second) started BEFORE the run, so only the tree keeper's /proc scan
can place it; then `auditstream run` with the default rules plus a watch on that dir;
`auditstream tree` asked by the 12-hex id `docker ps` shows; `docker restart` of `pre`
(its processes are killed by signals: no exit record ever says they ended); the tree asked
again; then a container whose process has a hostile comm, executable and arguments.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import (
    DockerDaemon,
    exclusive_clean_kernel,
    kernel_audit_state,
    private_dockerd,
    skip_reason,
)
from test_docker_live import auditstream, read_jsonl, start_run, stop_run, wait_for

from auditstream.escape import unescape

pytestmark = [pytest.mark.docker, pytest.mark.kernel, pytest.mark.slow]

Doc = dict[str, Any]
LONG_ARG_BYTES = 100_000
# Run by busybox ash in the `hostile` container: a copy of busybox under a name with a
# quote, a newline and a non-UTF-8 byte (busybox runs as itself under any name starting
# "busybox"), a shell that renames its comm likewise, then writes into the watched dir.
HOSTILE_SCRIPT = rf"""
B="$(printf '/tmp/busybox"q\nx\377')"
cp /bin/busybox "$B"
long=$(head -c {LONG_ARG_BYTES} /dev/zero | tr '\0' a)
"$B" sh -c 'printf "ev\"il\nx\377" > /proc/$$/comm; echo hi > /data/hostile.txt; :' \
    "$(printf 'arg"q\nnl\377')" "$long" last
:
"""
HOSTILE_EXE = b'/tmp/busybox"q\nx\xff'
HOSTILE_COMM = b'ev"il\nx\xff'


@dataclass
class Session:
    """What the scenario did, and what auditstream wrote and answered about it."""

    pre_id: str
    pre_init_before: int
    pre_init_after: int
    hostile_id: str
    tree_before: subprocess.CompletedProcess[str]
    tree_after: subprocess.CompletedProcess[str]
    tree_unknown: subprocess.CompletedProcess[str]
    tree_all: subprocess.CompletedProcess[str]
    live: list[Doc]
    replayed: list[Doc]
    replay_stderr: str


def tree(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`auditstream tree ARGS` against the run in `run_dir`."""
    return auditstream("tree", *args, "--runtime-dir", str(run_dir))


def tree_pids(done: subprocess.CompletedProcess[str]) -> set[int]:
    """The pids of a successful `tree --json`."""
    assert done.returncode == 0, done.stderr
    return {p["pid"] for p in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """Drive the scenario once under a private dockerd and a live `auditstream run`."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("docker-restart")
    volume, scripts = tmp / "volume", tmp / "scripts"
    volume.mkdir()
    scripts.mkdir()
    (scripts / "hostile.sh").write_text(HOSTILE_SCRIPT)
    with exclusive_clean_kernel() as found, private_dockerd() as docker:
        mount = ["--network", "none", "-v", f"{volume}:/data"]
        loop = "while :; do sleep 1; echo x >> /data/pre.txt; done"
        pre_id = docker.cli("run", "-d", *mount, docker.image, "sh", "-c", loop).strip()
        pre_init_before = int(docker.inspect(pre_id)["State"]["Pid"])
        run = start_run(tmp, volume)
        try:
            time.sleep(1.5)  # a few appends by the scanned shell
            run_dir = tmp / "run"
            tree_before = tree(run_dir, "--json", "--container", pre_id[:12])
            docker.cli("restart", "-t", "1", pre_id)
            pre_init_after = int(docker.inspect(pre_id)["State"]["Pid"])
            wait_for(
                "the restarted init in the tree",
                lambda: pre_init_after in tree_pids(tree(run_dir, "--json")),
                timeout_s=20,
            )
            tree_after = tree(run_dir, "--json", "--container", pre_id[:12].upper())
            tree_unknown = tree(run_dir, "--container", "0000deadbeef")
            hostile_id = _run_hostile(docker, mount, scripts)
            time.sleep(3)  # past the reorder window and exit_grace_ms (1 s): container-gone
            tree_all = tree(run_dir, "--json")
        finally:
            code = stop_run(run)
            after = kernel_audit_state()
            assert after == found, f"kernel audit state changed: {found} -> {after}"
        assert code == 0, (tmp / "run.stderr").read_text()[-3000:]
    replay = auditstream(
        "replay", str(tmp / "raw.log"), "--sink", f"jsonl:{tmp / 'replayed.jsonl'}", timeout=90
    )
    assert replay.returncode == 0, replay.stderr
    yield Session(
        pre_id=pre_id,
        pre_init_before=pre_init_before,
        pre_init_after=pre_init_after,
        hostile_id=hostile_id,
        tree_before=tree_before,
        tree_after=tree_after,
        tree_unknown=tree_unknown,
        tree_all=tree_all,
        live=read_jsonl(tmp / "live.jsonl"),
        replayed=read_jsonl(tmp / "replayed.jsonl"),
        replay_stderr=replay.stderr,
    )


def _run_hostile(docker: DockerDaemon, mount: list[str], scripts: Path) -> str:
    cid = docker.cli(
        "run", "-d", *mount, "-v", f"{scripts}:/s:ro", docker.image, "sh", "/s/hostile.sh"
    ).strip()
    assert docker.cli("wait", cid).strip() == "0"
    return cid


def watched(docs: list[Doc], name: str) -> list[Doc]:
    """Audit events of the watch rule on the file `name` in the bind mount."""
    return [
        d
        for d in docs
        if "volume" in d.get("tags", []) and d.get("file", {}).get("path") == f"/data/{name}"
    ]


def test_container_started_before_the_run_is_attributed(session: Session) -> None:
    """The scanned shell's writes carry the full docker inspect Id, its host pid and the shim."""
    before = [d for d in watched(session.live, "pre.txt")
              if d["process"]["pid"] == session.pre_init_before]  # fmt: skip
    assert before, "no event of the container's init from before the restart"
    for doc in before:
        assert doc["container"] == {"id": session.pre_id, "runtime": "docker"}
        assert doc["process"]["args"][:2] == ["sh", "-c"]
        parent = doc["process"]["parent"]
        assert str(parent.get("executable", "")).endswith("containerd-shim-runc-v2")
        assert session.pre_id in parent["args"]
        assert doc["process"]["ancestry"][0]["entity_id"] == parent["entity_id"]


def test_replay_of_the_recording_knows_the_container_started_before_it(
    session: Session,
) -> None:
    """The scanned shell's writes replay from `run --record` as they were live: container,
    parent (the shim) and ancestry, from the process table written beside the recording."""
    live, replayed = (
        {
            d["event"]["sequence"]: d
            for d in watched(docs, "pre.txt")
            if d["process"]["pid"] == session.pre_init_before
        }
        for docs in (session.live, session.replayed)
    )
    assert live and live.keys() == replayed.keys(), session.replay_stderr
    for sequence, doc in live.items():
        assert replayed[sequence].get("container") == {"id": session.pre_id, "runtime": "docker"}
        assert replayed[sequence]["process"] == doc["process"], sequence
    assert "starts from the process table recorded" in session.replay_stderr


def test_restart_gives_a_new_init_with_a_new_entity_id(session: Session) -> None:
    """After docker restart the new init's writes carry the same container id, another entity."""
    after = [d for d in watched(session.live, "pre.txt")
             if d["process"]["pid"] == session.pre_init_after]  # fmt: skip
    before = [d for d in watched(session.live, "pre.txt")
              if d["process"]["pid"] == session.pre_init_before]  # fmt: skip
    assert after and before
    assert {d["container"]["id"] for d in after} == {session.pre_id}
    old = {d["process"]["entity_id"] for d in before}
    new = {d["process"]["entity_id"] for d in after}
    assert len(old) == 1 and len(new) == 1 and old != new


def test_tree_by_docker_ps_prefix_before_and_after_restart(session: Session) -> None:
    """`tree --container` with 12 hex lists the live init; after the restart, not the killed one."""
    assert session.pre_init_before in tree_pids(session.tree_before)
    rows = json.loads(session.tree_after.stdout)
    pids = {p["pid"] for p in rows}
    assert session.pre_init_after in pids
    assert session.pre_init_before not in pids  # SIGKILLed: no exit record, gone from /proc
    assert {p["container_id"] for p in rows} == {session.pre_id}


def test_tree_of_an_unknown_container_is_an_error(session: Session) -> None:
    """An id prefix no live container has exits 1 with a message naming it."""
    assert session.tree_unknown.returncode == 1
    assert "whose id starts with 0000deadbeef" in session.tree_unknown.stderr
    assert session.tree_unknown.stdout == ""


def test_container_lifecycle_docs_never_name_a_runc_hook(session: Session) -> None:
    """container-first-seen/-gone name a process of the container, never dockerd's hook.

    The hook's Go threads (clone3 children) are handed to the shim when it exits; taken for
    the container's, they kept it alive until their 10 s tentative_ttl_ms and were named by
    its container-gone. Its own processes gone, the container is gone after exit_grace_ms.
    """
    docs = [d for d in session.live
            if d["event"].get("action") in ("container-first-seen", "container-gone")]  # fmt: skip
    hostile = [d["event"]["action"] for d in docs if d["container"]["id"] == session.hostile_id]
    assert hostile == ["container-first-seen", "container-gone"]
    for doc in docs:
        assert (doc["process"].get("args") or [""])[0] != "libnetwork-setkey", doc
        assert doc["process"].get("executable") != "/usr/sbin/dockerd", doc


def test_hostile_names_are_exact_and_the_whole_tree_is_json(session: Session) -> None:
    """Quotes, newlines, non-UTF-8 bytes and a 100 kB argument come through escaped and whole."""
    (doc,) = watched(session.live, "hostile.txt")
    process = doc["process"]
    assert doc["container"]["id"] == session.hostile_id
    assert unescape(process["name"]) == HOSTILE_COMM
    assert unescape(process["executable"]) == HOSTILE_EXE
    args = [unescape(a) for a in process["args"]]
    assert args[0] == HOSTILE_EXE and args[4] == b'arg"q\nnl\xff'
    assert args[5] == b"a" * LONG_ARG_BYTES and args[6] == b"last"
    assert "\n" not in json.dumps(doc)
    assert session.tree_all.returncode == 0
    assert isinstance(json.loads(session.tree_all.stdout), list)
