"""Real docker containers under a live `auditstream run`: container attribution, tree, replay.

One capture session serves the module: a private dockerd, then `auditstream run` with the
default rules plus a watch on a host dir, then four containers (a long-running one with
nested shells, a `docker exec` into it, a short `--rm` one, and one deleting a file in a
bind-mounted watched dir). `docker inspect`, /proc and the kernel's own ppid fields are the
witnesses; the JSONL of the run and of `auditstream replay` of its raw capture are judged.

Busybox ash execs the last command of `sh -c` in place, so the commands end in `; :` where
a separate child process is wanted (nested shells, the rm below its sh).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
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

pytestmark = [pytest.mark.docker, pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BUSYBOX_IN_IMAGE = "/bin/busybox"
EXEC_SYSCALLS = ("execve", "execveat")
Doc = dict[str, Any]


@dataclass
class Capture:
    """What the scenario did and what auditstream wrote about it."""

    long_id: str
    long_init_pid: int
    long_init_ppid: int
    inner_sh_pid: int
    sleep_pid: int
    sleep_ppid: int
    sleep_exe: str
    exec_sh_pid: int
    exec_sh_ppid: int
    short_id: str
    victim_id: str
    short_args: list[str]
    victim_args: list[str]
    volume_dir: Path
    tree: list[Doc]
    live: list[Doc]
    replayed: list[Doc] = field(default_factory=list)
    replay_stderr: str = ""


def read_jsonl(path: Path) -> list[Doc]:
    """Every JSON line of a sink file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def auditstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the auditstream CLI of this checkout to completion."""
    return subprocess.run(
        [sys.executable, "-m", "auditstream", *args],
        cwd=REPO,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )


def ppid_of(pid: int) -> int:
    """PPid from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid line for {pid}")


def children_of(pid: int) -> list[int]:
    """Live children of a process (from /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def wait_for(what: str, probe: Any, timeout_s: float = 15) -> Any:
    """Poll `probe()` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def find_pid(cmdline: bytes, cgroup_id: str) -> int | None:
    """The pid whose command line is `cmdline` and whose cgroup names the container."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() == cmdline and cgroup_id in (
                entry / "cgroup"
            ).read_text():
                return int(entry.name)
        except OSError:
            continue
    return None


def start_run(tmp: Path, volume: Path, more_config: str = "") -> subprocess.Popen[str]:
    """Start `auditstream run` with the default rules and a watch on `volume` (and
    ``more_config``'s tables); wait for rules."""
    extra = tmp / "extra.rules"
    extra.write_text(f"-w {volume} -p wa -k volume\n")
    config = tmp / "auditstream.toml"
    config.write_text(
        f'[runtime]\ndir = "{tmp / "run"}"\n\n'
        f'[receiver]\nrules_files = ["{REPO / "receiver" / "default.rules"}", "{extra}"]\n'
        + more_config
    )
    stderr = (tmp / "run.stderr").open("w")
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auditstream",
            "run",
            "-c",
            str(config),
            "--sink",
            f"jsonl:{tmp / 'live.jsonl'}",
            "--record",
            str(tmp / "raw.log"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )
    stderr.close()

    def ready() -> bool:
        if run.poll() is not None:
            raise AssertionError(f"auditstream run exited: {(tmp / 'run.stderr').read_text()}")
        status, rules = kernel_audit_state()
        # The receiver loads its rules, then sets `enabled` last (auditctl -l shows -w as -k).
        return status.get("pid", 0) != 0 and status.get("enabled") == 1 and "-k volume" in rules

    try:
        wait_for("auditstream run to load its rules", ready, timeout_s=30)
    except BaseException:
        stop_run(run)  # never leave a run holding the kernel
        raise
    time.sleep(0.5)  # let the tree keeper finish its /proc scan
    return run


def stop_run(run: subprocess.Popen[str]) -> int:
    """SIGINT `auditstream run` and wait for it (kill only if it hangs)."""
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
        try:
            return run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise
    return run.returncode


def drive_containers(docker: DockerDaemon, tmp: Path, volume: Path) -> dict[str, Any]:
    """Start the four containers and note what /proc and docker say while they live."""
    token = uuid.uuid4().hex[:12]
    seen: dict[str, Any] = {}
    long_id = docker.cli(
        "run",
        "-d",
        "--network",
        "none",
        docker.image,
        "sh",
        "-c",
        f'sh -c "sleep 300; :"; : {token}',
    ).strip()
    init_pid = int(docker.inspect(long_id)["State"]["Pid"])
    inner_sh = wait_for("the inner shell", lambda: children_of(init_pid))[0]
    sleep_pid = wait_for("the sleep", lambda: children_of(inner_sh))[0]
    seen.update(
        long_id=long_id,
        long_init_pid=init_pid,
        long_init_ppid=ppid_of(init_pid),
        inner_sh_pid=inner_sh,
        sleep_pid=sleep_pid,
        sleep_ppid=ppid_of(sleep_pid),
        sleep_exe=os.readlink(f"/proc/{sleep_pid}/exe"),
    )

    exec_script = f"sleep 2; ls / {token}; :"
    with subprocess.Popen(
        ["docker", "exec", long_id, "sh", "-c", exec_script],
        env=docker.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as docker_exec:
        exec_sh = wait_for(
            "the docker exec'd shell",
            lambda: find_pid(b"sh\0-c\0" + exec_script.encode() + b"\0", long_id),
        )
        seen.update(exec_sh_pid=exec_sh, exec_sh_ppid=ppid_of(exec_sh))
        assert docker_exec.wait(timeout=30) == 0

    short_args = ["sh", "-c", f"echo hi {token}; :"]
    docker.cli(
        "run",
        "--rm",
        "--network",
        "none",
        "--cidfile",
        str(tmp / "short.cid"),
        docker.image,
        *short_args,
    )
    (volume / "victim.txt").write_text("delete me\n")
    victim_args = ["sh", "-c", f"rm /data/victim.txt; : {token}"]
    docker.cli(
        "run",
        "--rm",
        "--network",
        "none",
        "--cidfile",
        str(tmp / "victim.cid"),
        "-v",
        f"{volume}:/data",
        docker.image,
        *victim_args,
    )
    assert not (volume / "victim.txt").exists()
    seen.update(
        short_id=(tmp / "short.cid").read_text().strip(),
        short_args=short_args,
        victim_id=(tmp / "victim.cid").read_text().strip(),
        victim_args=victim_args,
    )
    return seen


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """A private dockerd with the busybox image, torn down at the end of the session."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with private_dockerd() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def capture(
    docker_daemon: DockerDaemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Capture]:
    """Run the whole scenario once under `auditstream run`, then replay its raw capture."""
    tmp = tmp_path_factory.mktemp("docker-live")
    volume = tmp / "volume"
    volume.mkdir()
    with exclusive_clean_kernel() as found:
        run = start_run(tmp, volume)
        try:
            seen = drive_containers(docker_daemon, tmp, volume)
            time.sleep(1.5)  # past the reorder window, so the tree holds the sleep
            tree = auditstream(
                "tree", "--json", "--container", seen["long_id"], "--runtime-dir", str(tmp / "run")
            )
            assert tree.returncode == 0, tree.stderr
        finally:
            code = stop_run(run)
            after = kernel_audit_state()
            assert after == found, f"kernel audit state changed: {found} -> {after}"
        assert code == 0, (tmp / "run.stderr").read_text()[-3000:]
    docker_daemon.cli("rm", "-f", seen["long_id"])
    result = Capture(
        **seen, volume_dir=volume, tree=json.loads(tree.stdout), live=read_jsonl(tmp / "live.jsonl")
    )
    replay = auditstream(
        "replay", str(tmp / "raw.log"), "--sink", f"jsonl:{tmp / 'replayed.jsonl'}", timeout=90
    )
    assert replay.returncode == 0, replay.stderr
    result.replayed = read_jsonl(tmp / "replayed.jsonl")
    result.replay_stderr = replay.stderr
    yield result


# -- reading the events ------------------------------------------------------------


def exec_events(docs: list[Doc]) -> list[Doc]:
    """Successful execve/execveat syscall events (not lifecycle docs)."""
    return [
        d
        for d in docs
        if d.get("auditd", {}).get("data", {}).get("syscall") in EXEC_SYSCALLS
        and d.get("event", {}).get("outcome") == "success"
    ]


def args_of(doc: Doc) -> list[str]:
    """process.args of an event, [] if absent."""
    args = doc.get("process", {}).get("args")
    return list(args) if isinstance(args, list) else []


def container_of(doc: Doc) -> str | None:
    """container.id of an event, or None."""
    container = doc.get("container")
    return container.get("id") if isinstance(container, dict) else None


def kernel_ppids(docs: list[Doc]) -> dict[int, int]:
    """pid -> ppid as the kernel wrote it in the SYSCALL records of exec events."""
    return {
        d["process"]["pid"]: d["process"]["parent"]["pid"]
        for d in exec_events(docs)
        if isinstance(d.get("process", {}).get("parent", {}).get("pid"), int)
    }


def descendants(ppids: dict[int, int], roots: set[int]) -> set[int]:
    """The roots and every pid whose kernel ppid chain reaches one of them."""
    members = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in ppids.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


def init_exec(docs: list[Doc], args: list[str]) -> Doc:
    """The one exec event of a container's first process (busybox with exactly `args`)."""
    found = [
        d
        for d in exec_events(docs)
        if args_of(d) == args and d["process"].get("executable") == BUSYBOX_IN_IMAGE
    ]
    assert len(found) == 1, f"{len(found)} exec events of {args}"
    return found[0]


def expected_containers(cap: Capture, docs: list[Doc]) -> dict[int, str]:
    """pid -> full container id, from docker inspect, /proc and the kernel's ppids."""
    ppids = kernel_ppids(docs)
    roots = {
        cap.long_id: {cap.long_init_pid, cap.exec_sh_pid},
        cap.short_id: {init_exec(docs, cap.short_args)["process"]["pid"]},
        cap.victim_id: {init_exec(docs, cap.victim_args)["process"]["pid"]},
    }
    truth: dict[int, str] = {}
    for cid, pids in roots.items():
        for pid in descendants(ppids, pids):
            assert truth.setdefault(pid, cid) == cid, f"pid {pid} in two containers"
    return truth


def is_runtime(doc: Doc) -> bool:
    """runc itself (create, exec, init): the runtime, exec'd before the container's command."""
    return args_of(doc)[:2] == ["runc", "init"] or str(
        doc["process"].get("executable", "")
    ).endswith("/runc")


# -- the tests ------------------------------------------------------------------------


def test_docker_inspect_and_proc_agree_on_the_long_container(capture: Capture) -> None:
    """The witnesses are sound: 64-hex ids, the sleep's parent is the inner shell, busybox runs."""
    for cid in (capture.long_id, capture.short_id, capture.victim_id):
        assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    assert capture.sleep_ppid == capture.inner_sh_pid
    assert capture.sleep_exe == BUSYBOX_IN_IMAGE


def test_every_container_exec_names_its_container(capture: Capture) -> None:
    """Each exec of a process in our containers carries that container's full id and busybox."""
    truth = expected_containers(capture, capture.live)
    checked = 0
    for doc in exec_events(capture.live):
        pid = doc["process"]["pid"]
        if pid in truth and not is_runtime(doc):
            assert container_of(doc) == truth[pid], (pid, args_of(doc), doc.get("container"))
            assert doc["container"].get("runtime") == "docker"
            assert doc["process"]["executable"] == BUSYBOX_IN_IMAGE
            checked += 1
        elif container_of(doc) in set(truth.values()) and not is_runtime(doc):
            pytest.fail(f"pid {pid} {args_of(doc)} is not in {container_of(doc)}")
    # at least: inits of 3 containers, the inner sh, the sleep 300 and the exec'd sh
    assert checked >= 6


def test_live_parents_match_proc(capture: Capture) -> None:
    """process.parent.pid of the still-running processes' execs equals /proc's PPid."""
    execs = exec_events(capture.live)
    by_pid = {d["process"]["pid"]: d for d in execs}
    sleep = by_pid[capture.sleep_pid]
    assert args_of(sleep) == ["sleep", "300"]
    assert sleep["process"]["parent"]["pid"] == capture.sleep_ppid
    assert sleep["process"]["parent"].get("executable") == BUSYBOX_IN_IMAGE
    assert [a["pid"] for a in sleep["process"]["ancestry"][:2]] == [
        capture.inner_sh_pid,
        capture.long_init_pid,
    ]
    init = [
        d
        for d in execs
        if d["process"]["pid"] == capture.long_init_pid
        and d["process"].get("executable") == BUSYBOX_IN_IMAGE
    ]
    assert len(init) == 1
    assert init[0]["process"]["parent"]["pid"] == capture.long_init_ppid
    exec_sh = [
        d
        for d in execs
        if d["process"]["pid"] == capture.exec_sh_pid and args_of(d)[:2] == ["sh", "-c"]
    ]
    assert len(exec_sh) == 1
    # The exec'd shell's parent at exec time may still be `runc exec` (it reparents to the
    # shim, /proc's PPid, only later): so the enrichment must agree with the kernel's ppid.
    exec_parent = exec_sh[0]["process"]["parent"]
    assert exec_parent["pid"] in (
        capture.exec_sh_ppid,
        *[d["process"]["pid"] for d in execs if is_runtime(d) or "runc" in args_of(d)[:1]],
    )
    assert container_of(exec_sh[0]) == capture.long_id


def test_host_docker_cli_has_no_container(capture: Capture) -> None:
    """The docker CLI runs on the host: its exec events carry no container.id."""
    cli = [d for d in exec_events(capture.live) if args_of(d)[:1] == ["docker"]]
    assert len(cli) >= 4  # run -d, inspect, exec, run --rm twice
    assert [container_of(d) for d in cli] == [None] * len(cli)


def test_volume_deletion_names_process_and_container(capture: Capture) -> None:
    """The unlink in the watched bind mount names rm, its sh parent and the container."""
    # The README's query:
    #   jq -c 'select((.tags // []) | index("volume")) | select(.event.action == "deleted")
    #          | {container: .container.id, pid: .process.pid, exe: .process.executable,
    #             args: .process.args, parent: .process.parent.args, file: .file.path}' events.jsonl
    deleted = [
        d
        for d in capture.live
        if "volume" in d.get("tags", [])
        and d.get("auditd", {}).get("data", {}).get("syscall") in ("unlink", "unlinkat")
    ]
    assert len(deleted) == 1, [d.get("auditd", {}).get("data") for d in deleted]
    event = deleted[0]
    assert event["event"].get("action") == "deleted"
    assert str(event["file"]["path"]).startswith("/data/")
    assert container_of(event) == capture.victim_id
    process = event["process"]
    assert process.get("name") == "rm" or args_of(event)[:1] == ["rm"]
    assert process["executable"] == BUSYBOX_IN_IMAGE
    victim_sh = init_exec(capture.live, capture.victim_args)["process"]
    assert process["parent"]["pid"] == victim_sh["pid"]
    assert process["parent"]["entity_id"] == victim_sh["entity_id"]
    assert process["parent"].get("args") == capture.victim_args


def test_tree_lists_the_long_running_container(capture: Capture) -> None:
    """`auditstream tree --json --container ID` shows the init, inner shell and sleep."""
    by_pid = {p["pid"]: p for p in capture.tree}
    for pid in (capture.long_init_pid, capture.inner_sh_pid, capture.sleep_pid):
        assert pid in by_pid, f"pid {pid} missing from the tree: {sorted(by_pid)}"
        assert by_pid[pid]["container_id"] == capture.long_id
    assert by_pid[capture.sleep_pid]["ppid"] == capture.sleep_ppid
    assert (
        by_pid[capture.sleep_pid]["parent_entity_id"] == by_pid[capture.inner_sh_pid]["entity_id"]
    )
    assert {p["container_id"] for p in capture.tree} == {capture.long_id}


def test_replay_assigns_the_same_containers(capture: Capture) -> None:
    """Replaying the raw capture gives every container exec the live id, and none a wrong one."""
    truth = expected_containers(capture, capture.live)
    live = {d["event"]["sequence"]: d for d in exec_events(capture.live)}
    replayed = {d["event"]["sequence"]: d for d in exec_events(capture.replayed)}
    assert set(live) == set(replayed), capture.replay_stderr
    checked = 0
    for seq, doc in replayed.items():
        pid = doc["process"]["pid"]
        wanted = truth.get(pid) if not is_runtime(doc) else None
        if wanted is not None:
            assert container_of(doc) == wanted, (seq, pid, args_of(doc))
            checked += 1
        elif container_of(doc) is not None:
            assert container_of(doc) == container_of(live[seq]), (seq, pid, args_of(doc))
    assert checked >= 6
