"""The private runtime directory: where the stages' sockets, effective config and summary live."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from auditstream import privilege
from auditstream.config import Config

LIVE_DEFAULT_DIR = "/run/auditstream"
STAGES_SUBDIR = "stages"
LOCK_NAME = "auditstream.lock"
# The receiver writes it when `takeover` stopped the audit PID's holder; the supervisor
# reads it at the stop to say that holder is not running (receiver/live.py), then removes
# it. One left behind (a SIGKILLed supervisor) is said by the next start in the directory,
# and by `status` while it is there.
TAKEOVER_NAME = "taken-over.json"


class RuntimeDirBusy(Exception):
    """Another auditstream run (or replay) holds the runtime directory's lock."""


@dataclass(frozen=True, slots=True)
class RuntimeDir:
    """The runtime directory of this run, and the descriptor of its lock (held until exit;
    every stage keeps a copy, so the lock goes with the last process of the run)."""

    path: Path
    lock_fd: int
    # An earlier run's takeover that run did not get to say (it was killed), as the
    # sentence to say now: what it stopped and how to start that again.
    left_takeover: str | None = None


def make_private_dir(cfg: Config, *, live: bool) -> RuntimeDir:
    """Create (or take over) a 0700 directory, lock it, and record it in ``cfg.runtime.dir``.

    The lock comes before anything in the directory changes: a second run given the same
    directory is refused (RuntimeDirBusy) without touching the first one's sockets and files.
    With ``[runtime] user`` (as root) it is 0750 ``root:<group>`` and holds the stages'
    own directory, `stage_dir`, 0750 ``<user>:<group>``: the unprivileged stages create
    their sockets and files there, and never in a directory root writes to.
    """
    if cfg.runtime.dir:
        path = Path(cfg.runtime.dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif live and os.geteuid() == 0:
        path = Path(LIVE_DEFAULT_DIR)
        path.mkdir(mode=0o700, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="auditstream-"))  # mkdtemp makes it 0700
    lock_fd = lock_dir(path)
    try:
        os.chmod(path, 0o700)
        cfg.runtime.dir = str(path)
        if cfg.runtime.user:
            stages = stage_dir(cfg)
            stages.mkdir(mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                account = privilege.resolve_account(cfg.runtime.user, cfg.runtime.group)
                privilege.share_with_group(path, account, 0o750)
                os.chown(stages, account.uid, account.gid)
                os.chmod(stages, 0o750)
        # Files an earlier run left must not count for this one: ready, capturing, its
        # summary (printed as this run's when this one fails before writing its own), the
        # holder its takeover stopped (said by the caller: that run could not).
        for stale in (ready_path(cfg), status_path(cfg, "receiver"), summary_path(cfg)):
            stale.unlink(missing_ok=True)
        left_takeover = takeover_notice_in(path)
        takeover_path(cfg).unlink(missing_ok=True)
    except BaseException:
        os.close(lock_fd)
        raise
    return RuntimeDir(path, lock_fd, left_takeover)


def takeover_notice_in(run_dir: Path) -> str | None:
    """The sentence about the audit PID holder a run in ``run_dir`` stopped by `takeover`
    (receiver/live.py takeover_notice): None if it stopped none, or that holder runs again."""
    record = run_dir / TAKEOVER_NAME
    try:
        if not record.exists():
            return None  # the common case, without importing the receiver
    except OSError:  # e.g. a root-only dir: the reader says it cannot read the dir itself
        return None
    from receiver.live import takeover_notice

    return takeover_notice(record)


def lock_dir(path: Path) -> int:
    """Take the exclusive lock of the runtime dir ``path`` and write our pid into it.

    flock: the kernel releases it when the last descriptor closes, so a SIGKILLed run
    leaves no stale lock. The descriptor is read-only (stages that drop privileges keep a
    copy); the pid is written through another one. RuntimeDirBusy names the holder."""
    lock_path = path / LOCK_NAME
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeDirBusy(
            f"runtime dir {path} is in use by {_lock_holder(lock_path)}; "
            "stop that run first, or give this one a directory of its own "
            "([runtime] dir in a config file, -c)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # The pid only makes a refusal's message precise: the lock is what counts.
    with contextlib.suppress(OSError):
        pid_fd = os.open(lock_path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        with os.fdopen(pid_fd, "w") as out:
            out.write(f"{os.getpid()}\n")
    return fd


def _lock_holder(lock_path: Path) -> str:
    """Who holds the lock, from the pid written in it: "auditstream pid N (COMMAND)"."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock_path.read_text().split()[0])
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
        except OSError:
            # The supervisor is gone (SIGKILL) and its stages, which keep the lock, drain.
            return f"the stages of auditstream pid {pid}, which has exited; they are stopping"
        text = command.replace(b"\0", b" ").decode("utf-8", "backslashreplace")
        return f"auditstream pid {pid} ({text})"
    return "another auditstream process"


def stage_dir(cfg: Config) -> Path:
    """Where assembler(s) and tree keeper bind their sockets and write their files.

    The runtime directory itself, or with ``[runtime] user`` its subdirectory ``stages``.
    """
    base = Path(cfg.runtime.dir)
    return base / STAGES_SUBDIR if cfg.runtime.user else base


def stage_dir_of(run_dir: Path) -> Path:
    """The stage dir of a running pipeline known by its runtime dir only (status, tree)."""
    stages = run_dir / STAGES_SUBDIR
    return stages if stages.is_dir() else run_dir


def status_files(run_dir: Path) -> list[Path]:
    """Every stage's ``status-*.json`` of the pipeline whose runtime dir is ``run_dir``."""
    found = set(run_dir.glob("status-*.json")) | set(stage_dir_of(run_dir).glob("status-*.json"))
    return sorted(found, key=lambda path: path.name)


def assembler_endpoint(cfg: Config, index: int) -> str:
    if index < len(cfg.runtime.assembler_endpoints):
        return cfg.runtime.assembler_endpoints[index]
    return f"ipc://{stage_dir(cfg)}/assembler-{index}.sock"


def treekeeper_endpoint(cfg: Config) -> str:
    return cfg.runtime.treekeeper_endpoint or f"ipc://{stage_dir(cfg)}/treekeeper.sock"


def summary_path(cfg: Config) -> Path:
    return stage_dir(cfg) / "summary.json"


def status_path(cfg: Config, stage: str) -> Path:
    """The receiver's in the runtime dir (root's), every other stage's in `stage_dir`."""
    base = Path(cfg.runtime.dir) if stage == "receiver" else stage_dir(cfg)
    return base / f"status-{stage}.json"


def output_closed_path(cfg: Config) -> Path:
    """The tree keeper creates it once every sink's output is gone (stdout's reader exited)."""
    return stage_dir(cfg) / "output-closed"


def ready_path(cfg: Config) -> Path:
    """The tree keeper creates it once its sinks are open; upstream stages start after."""
    return stage_dir(cfg) / "treekeeper.ready"


def takeover_path(cfg: Config) -> Path:
    """Who `takeover` stopped (the audit PID's holder before us), if it stopped anyone."""
    return Path(cfg.runtime.dir) / TAKEOVER_NAME
