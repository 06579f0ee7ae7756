"""Least privilege: capability sets of the running stages, the stage user, the runtime dir, sd_notify.

The capability tests read the kernel's own account of each thread (/proc/PID/task/TID/status).
Tests that switch users need root; the live ones also the kernel (lock and restore through
`kernel_clean`, from live_helpers).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import pickle
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from live_helpers import (
    KernelState,
    LiveRun,
    free_port,
    is_audit_event,
    kernel_clean,
    read_events,
    syscall_of,
    wait_for_events,
)

from auditstream import privilege, sdnotify
from auditstream.privilege import (
    AUDIT_CAPS,
    CAP_AUDIT_CONTROL,
    CAP_AUDIT_READ,
    NETLINK_SETUP_CAPS,
    AccountError,
    ThreadCaps,
)

__all__ = ["kernel_clean"]  # the fixture is used by name

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "tests" / "corpus" / "go-libaudit" / "auparse" / "testdata" / "test3.log"
# CAP_AUDIT_CONTROL is bit 30 and CAP_AUDIT_READ bit 37 (linux/capability.h); bit 29 would be
# CAP_AUDIT_WRITE, which the receiver does not need.
RECEIVER_MASK = 0x0000_0020_4000_0000
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change capabilities and users")


# --- masks and /proc parsing -----------------------------------------------------------------


def audit_ids(log: Path) -> set[bytes]:
    """The distinct event ids (time:serial) in an audit log: one event each."""
    return set(re.findall(rb"msg=audit\((\d+\.\d+:\d+)\)", log.read_bytes()))


def test_mask_of_the_receiver_caps_is_bits_30_and_37() -> None:
    """The two capabilities the receiver keeps make the mask /proc shows for it."""
    assert privilege.cap_mask([CAP_AUDIT_CONTROL, CAP_AUDIT_READ]) == RECEIVER_MASK == AUDIT_CAPS
    assert privilege.cap_names(RECEIVER_MASK) == ["cap_audit_control", "cap_audit_read"]
    assert privilege.cap_names(0) == []
    assert privilege.cap_names(1 << 45) == ["cap_45"]  # newer than our table: still named


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (package libcap2-bin) is not installed")
def test_cap_names_agree_with_capsh() -> None:
    """Our name of every capability bit is the one libcap's capsh --decode gives."""
    everything = (1 << (privilege.last_cap() + 1)) - 1
    decoded = subprocess.run(
        ["capsh", f"--decode={everything:#x}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert decoded.split("=", 1)[1].split(",") == privilege.cap_names(everything)


STATUS_SAMPLE = """\
Name:\tpython3.11
Umask:\t0022
State:\tS (sleeping)
Uid:\t0\t0\t0\t0
Gid:\t0\t65534\t0\t0
Groups:\t65534\x20
NoNewPrivs:\t1
CapInh:\t0000000000000000
CapPrm:\t0000002040000000
CapEff:\t0000002040000000
CapBnd:\t0000002040001000
CapAmb:\t0000000000000000
"""


def test_parse_proc_status_sample() -> None:
    """Every set, no_new_privs, the effective ids and the groups come out of a status text."""
    caps = privilege.parse_proc_status(STATUS_SAMPLE)
    assert caps == ThreadCaps(
        inheritable=0,
        permitted=RECEIVER_MASK,
        effective=RECEIVER_MASK,
        bounding=RECEIVER_MASK | 1 << privilege.CAP_NET_ADMIN,  # the sample's CapBnd
        ambient=0,
        no_new_privs=True,
        uid=0,
        gid=65534,
        groups=(65534,),
    )


def test_parse_proc_status_of_this_thread_matches_capget() -> None:
    """/proc's view of the calling thread and the capget() system call agree."""
    from_proc = privilege.thread_caps()
    from_syscall = privilege.capget()
    assert (from_proc.effective, from_proc.permitted, from_proc.inheritable) == (
        from_syscall.effective,
        from_syscall.permitted,
        from_syscall.inheritable,
    )
    assert from_proc.uid == os.geteuid()


def test_parse_proc_status_refuses_text_without_capabilities() -> None:
    """A text that is not a status file is an error, not zeros."""
    with pytest.raises(ValueError, match="capability"):
        privilege.parse_proc_status("Name:\tx\nUid:\t0\t0\t0\t0\n")


def test_receiver_caps_per_source() -> None:
    """netlink and multicast keep the two audit caps (plus CAP_NET_ADMIN and CAP_SYS_NICE only at exec); the others nothing or read-search."""
    for source in ("netlink", "multicast"):
        assert privilege.receiver_kept_caps(source) == RECEIVER_MASK
        setup = 1 << privilege.CAP_NET_ADMIN | 1 << privilege.CAP_SYS_NICE
        assert privilege.receiver_exec_caps(source) == RECEIVER_MASK | setup
    assert privilege.receiver_kept_caps("file") == 1 << privilege.CAP_DAC_READ_SEARCH
    assert privilege.receiver_kept_caps("stdin") == 0
    assert privilege.receiver_exec_caps("unix:/var/run/audispd_events") == 0


# --- the system calls, in forked children (this test process keeps its privileges) -----------


def in_child(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child and return its (pickled) result or raise its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                outcome: tuple[str, Any] = ("ok", work())
            except BaseException as err:
                outcome = ("error", repr(err))
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"in the child: {value}")
    return value


def nobody() -> privilege.Account:
    """The `nobody` account of this host."""
    return privilege.resolve_account("nobody")


@needs_root
def test_keep_only_leaves_exactly_the_two_audit_caps() -> None:
    """As root, keep_only keeps the two caps effective and permitted, drops the rest from the bounding set, sets no_new_privs."""

    def drop() -> tuple[privilege.DropResult, ThreadCaps]:
        return privilege.keep_only(AUDIT_CAPS), privilege.thread_caps()

    result, caps = in_child(drop)
    assert result.errors == [] and result.bounding_limited
    assert caps.effective == caps.permitted == caps.bounding == RECEIVER_MASK
    assert caps.inheritable == caps.ambient == 0
    assert caps.no_new_privs and caps.uid == 0


@needs_root
def test_keep_only_reports_a_cap_that_was_not_held() -> None:
    """Asking to keep what the thread no longer has is an error in the result, not an exception."""

    def drop_twice() -> privilege.DropResult:
        privilege.keep_only(0)
        return privilege.keep_only(AUDIT_CAPS)

    result = in_child(drop_twice)
    assert any("needed but not held: cap_audit_control, cap_audit_read" in e for e in result.errors)


@needs_root
def test_keep_only_as_unprivileged_user_does_nothing() -> None:
    """Without root and without capabilities there is nothing to drop: skipped, no errors."""
    account = nobody()

    def as_nobody() -> privilege.DropResult:
        privilege.become(account)
        return privilege.keep_only(AUDIT_CAPS)

    result = in_child(as_nobody)
    assert result.skipped and result.permitted == 0
    assert result.errors == []


@needs_root
def test_become_leaves_no_capability_anywhere() -> None:
    """become() switches uid, gid and groups and empties every capability set, bounding included."""
    account = nobody()

    def switch() -> ThreadCaps:
        privilege.become(account)
        return privilege.thread_caps()

    caps = in_child(switch)
    assert (caps.uid, caps.gid, caps.groups) == (account.uid, account.gid, ())
    assert caps.effective == caps.permitted == caps.bounding == caps.inheritable == 0
    assert caps.no_new_privs


@needs_root
def test_access_problems_are_asked_as_the_user(tmp_path: Path) -> None:
    """A root-only directory is refused to nobody, a world-writable one is not."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    problems = privilege.access_problems(
        nobody(), [(private, os.W_OK | os.X_OK), (Path("/tmp"), os.W_OK | os.X_OK)]
    )
    assert problems == [f"{private}: user nobody (uid {nobody().uid}) may not write/execute it"]


# --- the account in the configuration ------------------------------------------------------


def test_resolve_account_of_nobody() -> None:
    """The user's primary group is the default group."""
    entry = pwd.getpwnam("nobody")
    account = nobody()
    assert (account.uid, account.gid) == (entry.pw_uid, entry.pw_gid)
    assert privilege.resolve_account("nobody", "root").gid == 0


@pytest.mark.parametrize(
    ("user", "group", "key", "words"),
    [
        ("no-such-user-auditstream", "", "user", "no such user"),
        ("nobody", "no-such-group-auditstream", "group", "no such group"),
        ("root", "", "user", "uid 0"),
        ("", "nogroup", "group", "user is not"),
    ],
)
def test_resolve_account_errors_name_the_key(user: str, group: str, key: str, words: str) -> None:
    """Each refusal says which key is wrong."""
    with pytest.raises(AccountError, match=words) as caught:
        privilege.resolve_account(user, group)
    assert caught.value.key == key


def test_check_config_names_the_unknown_user(tmp_path: Path) -> None:
    """`auditstream check-config` refuses a user this host does not have, naming file and key."""
    config = tmp_path / "c.toml"
    config.write_text('[runtime]\nuser = "no-such-user-auditstream"\n')
    result = subprocess.run(
        [sys.executable, "-m", "auditstream", "check-config", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: [runtime].user: no such user 'no-such-user-auditstream'" in result.stderr


# --- sd_notify -----------------------------------------------------------------------------


def test_notify_without_socket_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET (not under systemd): a no-op."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(
    abstract: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 and STATUS arrive as one datagram at a path or an abstract ('@') address."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        if abstract:
            name = f"auditstream-test-{os.getpid()}"
            listener.bind(b"\0" + name.encode())
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            listener.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sdnotify.notify("READY=1", "STATUS=up") is True
        listener.settimeout(5)
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_to_a_missing_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NOTIFY_SOCKET nobody listens on: False (and a warning), never an exception."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.notify("STOPPING=1") is False


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def catches_sigterm(pid: int) -> bool:
    """True once ``pid`` has installed a SIGTERM handler (its SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_replay_follow_notifies_ready_when_stages_run_and_stopping_at_stop(tmp_path: Path) -> None:
    """A real `replay --follow` sends READY=1 once its three stages run, STOPPING=1 at SIGTERM."""
    log = tmp_path / "audit.log"
    shutil.copy(SAMPLE_LOG, log)
    out = tmp_path / "out.jsonl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditstream", "replay", "--follow", str(log),
             "--sink", f"jsonl:{out}"],
            cwd=REPO, env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            ready = listener.recv(4096)
            stages_at_ready = children_of(proc.pid)
            assert ready.startswith(b"READY=1\nSTATUS=stages running: receiver=")
            assert len(stages_at_ready) == 3, stages_at_ready
            # A signal before a stage has its handler would kill it (not this test's subject).
            wait_until(lambda: all(catches_sigterm(pid) for pid in stages_at_ready))
            proc.send_signal(signal.SIGTERM)
            assert listener.recv(4096) == b"STOPPING=1"
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                # The stages run in sessions of their own: kill them by pid, then the supervisor.
                for pid in children_of(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")
    # Followed in event time, the events complete at the stop; all of them reach the sink.
    assert len([e for e in read_events(out) if is_audit_event(e)]) == len(audit_ids(SAMPLE_LOG))


# --- an interpreter the unprivileged user can run ----------------------------------------------

STAGE_DISTRIBUTIONS = ("pyzmq", "msgpack", "orjson", "python-json-logger")
STAGE_IMPORTS = "import zmq, msgpack, orjson, pythonjsonlogger, assembler.stage, treekeeper.stage"


@dataclass(frozen=True)
class StagePython:
    """A Python interpreter and PYTHONPATH with which `nobody` can run the stages."""

    executable: str
    pythonpath: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a child using this interpreter."""
        return {**os.environ, "PYTHONPATH": self.pythonpath, **extra}


def _runs_as_nobody(python: str, pythonpath: str) -> str | None:
    """None if `nobody` can import the stages with this interpreter, else why not."""
    account = nobody()
    try:
        probe = subprocess.run(
            [python, "-c", STAGE_IMPORTS], env={**os.environ, "PYTHONPATH": pythonpath},
            preexec_fn=lambda: privilege.become(account), capture_output=True, text=True,
            check=False, cwd="/",
        )  # fmt: skip
    except OSError as err:
        return str(err)
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]


def _copy_distributions(target: Path) -> None:
    """Copy the stages' third-party packages (with their bundled libraries) into ``target``."""
    for dist in STAGE_DISTRIBUTIONS:
        files = importlib.metadata.files(dist) or []
        site = Path(str(importlib.metadata.distribution(dist).locate_file("")))
        tops = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info")}
        for top in tops - {"..", "__pycache__"}:
            source = site / top
            if source.is_dir():
                shutil.copytree(source, target / top, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copy2(source, target / top)


@pytest.fixture(scope="module")
def stage_python() -> Iterator[StagePython]:
    """This interpreter if `nobody` can use it; otherwise this host's python of the same version
    with copies of the few packages the stages import (a pyenv under /root is unreadable to others)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run stages as another user")
    reason = _runs_as_nobody(sys.executable, str(REPO))
    if reason is None:
        yield StagePython(sys.executable, str(REPO))
        return
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"nobody cannot run {sys.executable} ({reason}) and there is no system {version}")
    deps = Path(tempfile.mkdtemp(prefix="auditstream-stage-python-", dir="/tmp"))
    try:
        _copy_distributions(deps)
        subprocess.run(["chmod", "-R", "a+rX", str(deps)], check=True)
        pythonpath = f"{deps}:{REPO}"
        reason = _runs_as_nobody(system, pythonpath)
        if reason is not None:
            pytest.skip(f"nobody cannot run the stages with {system} either: {reason}")
        yield StagePython(system, pythonpath)
    finally:
        shutil.rmtree(deps, ignore_errors=True)


def shared_tmp(prefix: str, owner: int = 0) -> Path:
    """A fresh directory under /tmp that other users can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    os.chown(path, owner, -1)
    return path


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory other users can reach, removed after the test."""
    path = shared_tmp("auditstream-privilege-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def audit_keys(path: Path) -> list[tuple[int, str | None]]:
    """(sequence, syscall) of the audit events in a jsonl file, in order."""
    return [(e["event"]["sequence"], syscall_of(e)) for e in read_events(path) if is_audit_event(e)]


# --- replay as root with a stage user --------------------------------------------------------


def test_replay_as_root_with_user_nobody_writes_the_same_events(
    stage_python: StagePython, world: Path, tmp_path: Path
) -> None:
    """Assembler and tree keeper as nobody: the sink file is nobody's and holds what a root-only replay writes."""
    out_dir = world / "out"
    out_dir.mkdir()
    os.chown(out_dir, nobody().uid, -1)
    config = world / "c.toml"
    config.write_text('[runtime]\nuser = "nobody"\n')
    out = out_dir / "events.jsonl"
    result = subprocess.run(
        [stage_python.executable, "-m", "auditstream", "replay", "-c", str(config),
         str(SAMPLE_LOG), "--sink", f"jsonl:{out}"],
        env=stage_python.env(), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.stat().st_uid == nobody().uid
    as_root = tmp_path / "root.jsonl"
    plain = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(SAMPLE_LOG), "--sink", f"jsonl:{as_root}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert audit_keys(out) == audit_keys(as_root)
    assert len(audit_keys(out)) == len(audit_ids(SAMPLE_LOG))


def test_replay_refuses_a_sink_the_user_cannot_write(stage_python: StagePython, world: Path) -> None:
    """A sink directory only root may write: the start fails naming the path and the user."""
    config = world / "c.toml"
    config.write_text('[runtime]\nuser = "nobody"\n')
    out = world / "events.jsonl"  # `world` is root's, 0755
    result = subprocess.run(
        [stage_python.executable, "-m", "auditstream", "replay", "-c", str(config),
         str(SAMPLE_LOG), "--sink", f"jsonl:{out}"],
        env=stage_python.env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "[runtime].user: the stages cannot run as nobody" in result.stderr
    assert f"{world}: user nobody (uid {nobody().uid}) may not write/execute it" in result.stderr
    assert not out.exists()


def test_replay_refuses_a_runtime_dir_the_user_cannot_reach(
    stage_python: StagePython, world: Path, tmp_path: Path
) -> None:
    """A runtime dir inside root's 0700 directory: refused, naming the directory nobody cannot enter."""
    closed = world / "closed"
    closed.mkdir(mode=0o700)
    config = world / "c.toml"
    config.write_text(f'[runtime]\nuser = "nobody"\ndir = "{closed / "run"}"\n')
    result = subprocess.run(
        [stage_python.executable, "-m", "auditstream", "replay", "-c", str(config),
         str(SAMPLE_LOG), "--sink", f"jsonl:{tmp_path / 'never.jsonl'}"],
        env=stage_python.env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{closed}: user nobody (uid {nobody().uid}) may not execute it" in result.stderr
    assert not (closed / "run").exists()


# --- live: the capability sets of each running stage ----------------------------------------


@dataclass
class LiveRunWith(LiveRun):
    """`auditstream run` with a chosen interpreter (one the stage user can run)."""

    python: StagePython | None = None

    def start(self) -> LiveRunWith:
        """Like LiveRun.start, with this interpreter and its PYTHONPATH."""
        python = self.python or StagePython(sys.executable, str(REPO))
        self._stderr_path = self.workdir / "auditstream.stderr"
        with self._stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [python.executable, "-m", "auditstream", *self.args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, env=python.env(),
            )  # fmt: skip
        return self


def threads_of(pid: int) -> dict[str, ThreadCaps]:
    """Each thread of a process by "name/tid", as /proc reports it."""
    caps = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        caps[f"{name}/{task.name}"] = privilege.parse_proc_status((task / "status").read_text())
    return caps


def mode_of(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(path.lstat().st_mode)


def live_config(path: Path, run_dir: Path, user: str = "", metrics_port: int = 0) -> Path:
    """A config: this runtime dir, the packaged rules, optionally a stage user and /metrics."""
    lines = ["[runtime]", f'dir = "{run_dir}"']
    if user:
        lines.append(f'user = "{user}"')
    if metrics_port:
        lines.append(f'metrics_listen = "127.0.0.1:{metrics_port}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.kernel
def test_live_run_with_user_drops_to_two_caps_and_nobody(
    kernel_clean: KernelState, stage_python: StagePython, world: Path, tmp_path: Path
) -> None:
    """With `user = "nobody"`: receiver root with exactly the two audit caps, assembler and tree keeper nobody with none."""
    account = nobody()
    out_dir = world / "out"
    out_dir.mkdir()
    os.chown(out_dir, account.uid, -1)
    run_dir = world / "run"
    raw = tmp_path / "raw.log"  # root's: the receiver writes it after dropping its privileges
    port = free_port()
    config = live_config(world / "c.toml", run_dir, user="nobody", metrics_port=port)
    out = out_dir / "events.jsonl"
    run = LiveRunWith(["run", "-c", str(config), "--record", str(raw), "--sink", f"jsonl:{out}"],
                      tmp_path, python=stage_python).start()
    try:
        receiver_pid = run.wait_registered()
        run.wait_file(run_dir / "status-receiver.json")  # written after the drop
        expected = {"receiver", "assembler-0", "treekeeper", "auditstream.metrics"}
        # The supervisor spawns the metrics process once it has seen the tree keeper ready,
        # which the receiver may see (and then register and drop) first.
        wait_until(lambda: set(run.stage_pids()) == expected)
        stages = run.stage_pids()
        assert set(stages) == expected
        # The metrics process serves HTTP: nobody, no capability.
        for name, caps in threads_of(stages["auditstream.metrics"]).items():
            assert (caps.uid, caps.effective, caps.permitted) == (account.uid, 0, 0), name

        receiver = threads_of(receiver_pid)
        main = receiver[next(name for name in receiver if name.endswith(f"/{receiver_pid}"))]
        assert main.effective == main.permitted == RECEIVER_MASK, privilege.cap_names(main.permitted)
        assert (main.uid, main.inheritable, main.ambient, main.no_new_privs) == (0, 0, 0, True)
        assert account.gid in main.groups  # reaches the stages' sockets through their group
        assert len(receiver) > 1, receiver  # ZeroMQ's threads are there to check too
        for name, caps in receiver.items():
            # The drop comes before ZeroMQ starts its threads: they hold no more than main.
            assert caps.permitted == caps.effective == RECEIVER_MASK, (
                name, privilege.cap_names(caps.permitted))  # fmt: skip
            assert caps.bounding & ~NETLINK_SETUP_CAPS == 0, name  # moot with no_new_privs
        for stage in ("assembler-0", "treekeeper"):
            for name, caps in threads_of(stages[stage]).items():
                assert (caps.uid, caps.gid) == (account.uid, account.gid), (stage, name)
                assert caps.effective == caps.permitted == caps.bounding == 0, (stage, name)
                assert caps.no_new_privs, (stage, name)

        assert (mode_of(run_dir), run_dir.stat().st_uid, run_dir.stat().st_gid) == (0o750, 0, account.gid)
        stage_dir = run_dir / "stages"
        assert (mode_of(stage_dir), stage_dir.stat().st_uid) == (0o750, account.uid)
        def stage_sockets() -> list[Path]:
            return [p for p in stage_dir.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]

        wanted = {"assembler-0.sock", "treekeeper.sock"}
        deadline = time.monotonic() + 20  # an assembler still importing has not bound yet
        while not wanted <= {p.name for p in stage_sockets()} and time.monotonic() < deadline:
            time.sleep(0.1)
        sockets = stage_sockets()
        assert wanted <= {p.name for p in sockets}
        for sock in sockets:
            assert mode_of(sock) & 0o007 == 0, (sock, oct(mode_of(sock)))
        assert mode_of(run_dir / "effective-config.json") == 0o640

        true = subprocess.Popen(["/bin/true"])
        true.wait()
        seen = wait_for_events(out, lambda e: is_audit_event(e) and e.get("process", {}).get("pid") == true.pid)
        assert seen, run.read_stderr()

        # `status` and `tree` (root) find the stages' files and sockets under stages/.
        def cli(*args: str) -> Any:
            result = subprocess.run(
                [sys.executable, "-m", "auditstream", *args, "--json", "--runtime-dir", str(run_dir)],
                cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            return json.loads(result.stdout)

        assert {"receiver", "assembler-0", "treekeeper"} <= set(cli("status")["pipeline"])
        assert stages["treekeeper"] in {p["pid"] for p in cli("tree")}

        # /metrics, served by nobody, has every stage, root's receiver (kernel figures) included.
        assert run_dir.joinpath("status-receiver.json").stat().st_gid == account.gid
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        for stage in ("receiver", "assembler-0", "treekeeper"):
            assert f'component_id="{stage}"' in metrics, (stage, metrics)
        assert "\nauditstream_kernel_lost_total " in metrics, metrics
    finally:
        code = run.stop(signal.SIGINT)
    assert code == 0, run.stderr_text
    assert "capabilities kept: cap_audit_control, cap_audit_read" in run.stderr_text
    assert "dropping privileges" not in run.stderr_text
    assert raw.stat().st_size > 0  # --record still written after the drop
    assert out.stat().st_uid == account.uid


@pytest.mark.kernel
def test_live_run_without_user_keeps_0700_and_still_drops_the_receiver(
    kernel_clean: KernelState, tmp_path: Path
) -> None:
    """Without `user`: runtime dir 0700, assembler and tree keeper root as before, the receiver with the two caps."""
    run_dir = tmp_path / "run"
    config = live_config(tmp_path / "c.toml", run_dir)
    run = LiveRunWith(["run", "-c", str(config), "--sink", f"jsonl:{tmp_path / 'events.jsonl'}"],
                      tmp_path).start()
    try:
        receiver_pid = run.wait_registered()
        run.wait_file(run_dir / "status-receiver.json")
        stages = run.stage_pids()
        main = privilege.thread_caps(receiver_pid)
        assert main.effective == main.permitted == RECEIVER_MASK
        # priority_boost (default 4, as auditd) took effect before CAP_SYS_NICE went.
        nice_of = functools.partial(os.getpriority, os.PRIO_PROCESS)
        assert nice_of(receiver_pid) == nice_of(stages["treekeeper"]) - 4
        for stage in ("assembler-0", "treekeeper"):
            caps = privilege.thread_caps(stages[stage])
            assert caps.uid == 0 and caps.effective != 0  # unchanged without `user`
        assert mode_of(run_dir) == 0o700
        assert not (run_dir / "stages").exists()
        run.wait_file(run_dir / "assembler-0.sock")  # an assembler still importing has not bound yet
    finally:
        code = run.stop(signal.SIGTERM)
    assert code == 0, run.stderr_text
