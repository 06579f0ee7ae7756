"""A private dockerd for tests, a busybox image built without a registry, and the kernel lock.

The daemon gets its own data root, exec root, pid file and socket under a fresh temp
dir, so nothing of it outlives the session: at the end its containers are removed,
dockerd is stopped by its pid (SIGTERM, then SIGKILL), the containerd and shims it
started are stopped by theirs, mounts under the temp dir are unmounted and the dir is
deleted. Kernel tests hold /run/lock/auditstream-kernel.lock for their whole duration.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from live_helpers import LOCK_PATH, auditctl

IMAGE = "auditstream-busybox:test"
BUSYBOX = Path("/bin/busybox")
LOCK_WAIT_S = 180


@dataclass(frozen=True)
class DockerDaemon:
    """A running private dockerd: where it listens and how to call its CLI."""

    root: Path
    socket: Path
    pid: int
    image: str

    @property
    def env(self) -> dict[str, str]:
        """The environment that points the docker CLI at this daemon only."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """Run `docker ARGS` against this daemon and return its stdout."""
        done = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def inspect(self, container: str) -> dict[str, Any]:
        """`docker inspect` of one container."""
        found = json.loads(self.cli("inspect", container))
        assert isinstance(found, list) and len(found) == 1
        result: dict[str, Any] = found[0]
        return result


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line names `text` (the daemon's temp dir): dockerd's own helpers."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if (
            entry.name.isdigit()
            and int(entry.name) != os.getpid()
            and any(needle in part for part in _cmdline(int(entry.name)))
        ):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pid(pid: int, grace_s: float = 15) -> None:
    """SIGTERM a process, wait for it to go, SIGKILL it if it does not."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            return


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount point below `root`, deepest first."""
    prefix = str(root) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def build_busybox_image(daemon_root: Path, env: dict[str, str]) -> None:
    """`docker import` a tarball of /bin/busybox and its applet links (no registry needed)."""
    rootfs = daemon_root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    subprocess.run(
        [str(rootfs / "bin" / "busybox"), "--install", "-s", str(rootfs / "bin")],
        check=True,
        capture_output=True,
    )
    for link in (rootfs / "bin").iterdir():  # --install writes absolute host paths
        if link.is_symlink():
            link.unlink()
            link.symlink_to("busybox")
    tarball = daemon_root / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
    subprocess.run(
        ["docker", "import", str(tarball), IMAGE],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _wait_for_daemon(env: dict[str, str], dockerd: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dockerd.poll() is not None:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"dockerd exited with {dockerd.returncode}: {tail}")
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env,
            capture_output=True,
            timeout=20,
            check=False,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"dockerd did not answer within 60 s: {log.read_text()[-2000:]}")


def skip_reason() -> str | None:
    """Why the docker tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to start a private dockerd"
    for tool in ("dockerd", "docker", "containerd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package docker.io)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (package busybox-static)"
    return None


@contextlib.contextmanager
def private_dockerd() -> Iterator[DockerDaemon]:
    """Start dockerd on a temp dir, build the image, and tear everything down afterwards."""
    root = Path(tempfile.mkdtemp(prefix="auditstream-docker-"))
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    with log.open("wb") as log_out:
        dockerd = subprocess.Popen(
            [
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--data-root",
                str(root / "docker"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "docker.pid"),
                "-H",
                f"unix://{socket}",
            ],
            stdout=log_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = DockerDaemon(root=root, socket=socket, pid=dockerd.pid, image=IMAGE)
    try:
        _wait_for_daemon(env, dockerd, log)
        build_busybox_image(root, env)
        yield daemon
    finally:
        if dockerd.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                ids = daemon.cli("ps", "-aq", timeout=30, check=False).split()
                if ids:
                    daemon.cli("rm", "-f", *ids, timeout=60, check=False)
        helpers = processes_mentioning(str(root))  # containerd and shims, before they reparent
        stop_pid(dockerd.pid)
        dockerd.wait(timeout=10)
        for pid in helpers:
            stop_pid(pid, grace_s=5)
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def kernel_audit_state() -> tuple[dict[str, int], str]:
    """`auditctl -s` (numeric lines, without the moving counters) and `auditctl -l`."""
    status: dict[str, int] = {}
    for line in auditctl("-s").splitlines():
        name, _, value = line.partition(" ")
        if (
            value.split()
            and value.split()[0].isdigit()
            and name not in ("lost", "backlog", "backlog_wait_time_actual")
        ):
            status[name] = int(value.split()[0])
    return status, auditctl("-l")


@contextlib.contextmanager
def exclusive_clean_kernel() -> Iterator[tuple[dict[str, int], str]]:
    """Hold the machine-wide kernel lock; skip unless the kernel is clean; check it is left so."""
    if os.geteuid() != 0:
        pytest.skip("needs root for the kernel audit subsystem")
    if shutil.which("auditctl") is None:
        pytest.skip("auditctl (package auditd) is not installed")
    with LOCK_PATH.open("w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:  # wait for the other kernel tests, but not forever
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(
                        f"{LOCK_PATH} still held by another kernel test after {LOCK_WAIT_S} s"
                    )
                time.sleep(0.5)
        found = kernel_audit_state()
        status, rules = found
        if status.get("pid") != 0 or rules.strip() != "No rules" or status.get("enabled") != 0:
            pytest.skip(
                f"kernel audit is not clean (pid {status.get('pid')}, "
                f"enabled {status.get('enabled')}, rules: {rules.strip()!r})"
            )
        yield found
