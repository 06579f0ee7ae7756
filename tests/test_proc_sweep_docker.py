"""Live under a private dockerd: `docker stop` ends its processes and its container in the
archive, a container running before `run` is announced, and a container's forked `rm` has args.

One session: container `pre` started BEFORE `auditstream run` (only the start-up /proc scan
finds it); `run` with `[treekeeper] proc_sweep_ms = 500`; container `victim`, whose shell
has busybox's rm (forked, never exec'd) unlink a file in a watched bind mount and then
sleeps; `docker stop` of `victim` (SIGTERM is ignored by a pid namespace's init, then
SIGKILL: no exit syscall, so no exit record). The tree keeper's /proc sweep must then
write `process-exited` for its processes and `container-gone` for it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import exclusive_clean_kernel, kernel_audit_state, private_dockerd, skip_reason
from test_docker_live import read_jsonl, start_run, stop_run, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROC_SWEEP_MS = 500
EXIT_GRACE_MS = 1000  # the default; the sweep's confirmation waits as long (GONE_CONFIRM_MIN_MS)
# The victim's command: rm is a busybox applet the shell forks and runs without an exec.
VICTIM_SCRIPT = "echo x > /data/doomed.txt; rm /data/doomed.txt; sleep 300; :"
Doc = dict[str, Any]


@dataclass
class Session:
    """What the scenario did, and what auditstream wrote about it."""

    pre_id: str
    victim_id: str
    victim_init: int
    victim_pids: set[int]
    stopped_at_ms: int
    gone_seen_after_s: float
    live: list[Doc]


def start_sweeping_run(tmp: Path, volume: Path) -> subprocess.Popen[str]:
    """`auditstream run` (default rules, a watch on `volume`, a fast sweep); wait for its rules."""
    return start_run(tmp, volume, f"\n[treekeeper]\nproc_sweep_ms = {PROC_SWEEP_MS}\n")


def lifecycle(docs: list[Doc], action: str, container: str) -> list[Doc]:
    """The lifecycle docs `action` of container `container`."""
    return [d for d in docs if "auditd" not in d and d["event"].get("action") == action
            and d.get("container", {}).get("id") == container]  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """Drive the scenario once under a private dockerd and a live `auditstream run`."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("proc-sweep")
    volume = tmp / "volume"
    volume.mkdir()
    live = tmp / "live.jsonl"
    with exclusive_clean_kernel() as found, private_dockerd() as docker:
        mount = ["--network", "none", "-v", f"{volume}:/data"]
        pre_id = docker.cli("run", "-d", *mount, docker.image, "sleep", "300").strip()
        run = start_sweeping_run(tmp, volume)
        try:
            victim_id = docker.cli("run", "-d", *mount, docker.image, "sh", "-c",
                                   VICTIM_SCRIPT).strip()  # fmt: skip
            init = int(docker.inspect(victim_id)["State"]["Pid"])
            wait_for("the victim's rm", lambda: not (volume / "doomed.txt").exists() and
                     any(b"sleep" in p.read_bytes() for p in Path("/proc").glob("*/cmdline")
                         if p.parent.name.isdigit() and _ppid(p.parent) == init))  # fmt: skip
            victim_pids = {init} | {int(p.name) for p in Path("/proc").iterdir()
                                    if p.name.isdigit() and _ppid(p) == init}  # fmt: skip
            time.sleep(1)  # the victim's events through the pipeline
            docker.cli("stop", "-t", "1", victim_id)
            stopped = time.monotonic()
            stopped_at_ms = time.time_ns() // 1_000_000
            wait_for(
                "container-gone of the stopped container",
                lambda: lifecycle(read_jsonl(live), "container-gone", victim_id),
                timeout_s=30,
            )
            gone_seen_after_s = time.monotonic() - stopped
        finally:
            code = stop_run(run)
            after = kernel_audit_state()
            assert after == found, f"kernel audit state changed: {found} -> {after}"
        assert code == 0, (tmp / "run.stderr").read_text()[-3000:]
    yield Session(pre_id, victim_id, init, victim_pids, stopped_at_ms, gone_seen_after_s,
                  read_jsonl(live))  # fmt: skip


def _ppid(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_docker_stop_ends_its_processes_found_gone_from_proc(session: Session) -> None:
    """Each stopped process gets one process-exited, no exit code, saying /proc told it."""
    exited = lifecycle(session.live, "process-exited", session.victim_id)
    swept = {d["process"]["pid"]: d for d in exited
             if d.get("auditstream", {}).get("lifecycle_source") == "proc_sweep"}  # fmt: skip
    seen = {d["process"]["pid"] for d in session.live if "auditd" in d
            and d.get("container", {}).get("id") == session.victim_id}  # fmt: skip
    assert session.victim_init in swept
    assert seen & session.victim_pids <= set(swept), (session.victim_pids, seen, exited)
    for doc in swept.values():
        assert "exit_code" not in doc["process"]
        assert doc["event"]["type"] == ["end"] and doc["process"]["end"] == doc["@timestamp"]
    pids = [d["process"]["pid"] for d in exited]
    assert len(pids) == len(set(pids)), "a process ended twice"


def test_the_stopped_container_is_gone_within_sweep_and_grace(session: Session) -> None:
    """container-gone of the stopped container comes within proc_sweep_ms + twice exit_grace_ms."""
    (gone,) = lifecycle(session.live, "container-gone", session.victim_id)
    assert gone["auditstream"] == {"lifecycle_source": "proc_sweep"}
    # docker stop -t 1 returned once the container was dead; a second of slack for the sink.
    bound_s = (PROC_SWEEP_MS + 2 * EXIT_GRACE_MS) / 1000 + 1
    assert session.gone_seen_after_s < bound_s


def test_a_container_running_before_the_run_is_first_seen_by_the_scan(session: Session) -> None:
    """The container started before `run` gets one container-first-seen, sourced from the scan."""
    (first,) = lifecycle(session.live, "container-first-seen", session.pre_id)
    assert first["auditstream"] == {"lifecycle_source": "proc_scan"}
    assert first["process"]["args"] == ["sleep", "300"]
    assert lifecycle(session.live, "container-gone", session.pre_id) == []


def test_the_containers_forked_rm_has_the_shells_command_line(session: Session) -> None:
    """busybox's rm, forked by the container's sh without an exec, has the sh's argv (what ps shows)."""
    (unlink,) = [d for d in session.live if "volume" in d.get("tags", [])
                 and d.get("auditd", {}).get("data", {}).get("syscall") in ("unlink", "unlinkat")
                 and d.get("file", {}).get("path") == "/data/doomed.txt"]  # fmt: skip
    process = unlink["process"]
    assert process["pid"] != session.victim_init  # a child of the shell: forked
    assert process["executable"] == "/bin/busybox"
    assert process["args"] == ["sh", "-c", VICTIM_SCRIPT]
    assert unlink["container"]["id"] == session.victim_id
