"""Helpers for live-capture tests: the kernel lock, `auditstream run` and auditd as children.

Every test that touches the kernel audit subsystem holds `/run/lock/auditstream-kernel.lock`
for its whole duration (fixture `kernel_clean`), starts only from a clean kernel (no pid
holder, no rules, not immutable) and leaves `auditctl -s` / `auditctl -l` as it found them,
repairing and failing the test if something was left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RULES = REPO / "receiver" / "default.rules"
LOCK_PATH = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "auditstream-kernel.lock"
AUDITD = Path("/usr/sbin/auditd")
# The settings `auditctl -s` prints that a test may change and must put back.
SETTINGS = ("enabled", "failure", "pid", "rate_limit", "backlog_limit", "backlog_wait_time")
# auditctl flag that sets each setting back (pid cannot be set: it drops when its holder exits).
SETTING_FLAGS = {
    "enabled": "-e",
    "failure": "-f",
    "rate_limit": "-r",
    "backlog_limit": "-b",
    "backlog_wait_time": "--backlog_wait_time",
}
Event = dict[str, Any]


def auditctl(*args: str) -> str:
    """Run auditctl and return its stdout (it must succeed)."""
    return subprocess.run(["auditctl", *args], check=True, capture_output=True, text=True).stdout


def kernel_status() -> dict[str, int]:
    """`auditctl -s` as a dict of its numeric lines (enabled, pid, lost, ...)."""
    status: dict[str, int] = {}
    for line in auditctl("-s").splitlines():
        name, _, value = line.partition(" ")
        words = value.split()
        if words and words[0].isdigit():
            status[name] = int(words[0])
    return status


@dataclass(frozen=True, slots=True)
class KernelState:
    """What a live test must leave exactly as it found it."""

    settings: dict[str, int]
    rules: str

    @classmethod
    def read(cls) -> KernelState:
        """The kernel's current settings and rule listing."""
        status = kernel_status()
        return cls({name: status[name] for name in SETTINGS}, auditctl("-l").strip())

    def dirty_reason(self) -> str | None:
        """Why this state is not a clean starting point, or None."""
        if self.settings["pid"] != 0:
            return f"kernel audit pid is held by pid {self.settings['pid']}"
        if self.settings["enabled"] == 2:
            return "kernel audit configuration is immutable (enabled 2)"
        if self.rules != "No rules":
            return "audit rules are loaded"
        return None


def kernel_unusable_reason() -> str | None:
    """Why this machine cannot run live kernel tests, or None."""
    if os.geteuid() != 0:
        return "needs root for the kernel audit subsystem"
    if shutil.which("auditctl") is None:
        return "auditctl (package auditd) is not installed"
    probe = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"NETLINK_AUDIT cannot be used here: {probe.stderr.strip()}"
    return None


def restore_kernel(found: KernelState) -> list[str]:
    """Put settings and rules back to `found`; return what had to be repaired."""
    now = KernelState.read()
    repaired: list[str] = []
    if now.rules != found.rules and found.rules == "No rules":
        # Safe only because we hold the lock and the kernel had no rules when we took it.
        auditctl("-D")
        repaired.append(f"rules left behind:\n{now.rules}")
    for name, flag in SETTING_FLAGS.items():
        if now.settings[name] != found.settings[name]:
            auditctl(flag, str(found.settings[name]))
            repaired.append(f"{name} {now.settings[name]} -> {found.settings[name]}")
    if now.settings["pid"] != found.settings["pid"]:
        repaired.append(f"audit pid still held by {now.settings['pid']}")
    return repaired


@pytest.fixture
def kernel_clean() -> Iterator[KernelState]:
    """Hold the kernel lock for the test, require a clean kernel, and put it back afterwards."""
    reason = kernel_unusable_reason()
    if reason:
        pytest.skip(reason)
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = KernelState.read()
        dirty = found.dirty_reason()
        if dirty:
            pytest.skip(f"kernel audit is in use ({dirty}): not clean")
        yield found
        repaired = restore_kernel(found)
        assert not repaired, f"the test left the kernel changed (repaired): {repaired}"


def write_config(path: Path, runtime_dir: Path, rules_files: list[Path] | None = None) -> Path:
    """A TOML config with its own runtime dir and, when given, rule files."""
    lines = ["[runtime]", f"dir = {json.dumps(str(runtime_dir))}", "[receiver]"]
    if rules_files is not None:
        lines.append(f"rules_files = {json.dumps([str(p) for p in rules_files])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


STAGE_COMMS = re.compile(r"(receiver|treekeeper|assembler-\d+)")


def stage_name(pid: int) -> str | None:
    """A stage's name (receiver, assembler-N, treekeeper, auditstream.metrics) from its
    comm (stage_main sets it), else from ``python -m NAME … [--index N]`` (an exec'd stage
    still importing); None for another process or one gone."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if STAGE_COMMS.fullmatch(comm):
        return comm
    if comm == "metrics":
        return "auditstream.metrics"  # its module's name, as exec'd
    if b"-m" not in argv or argv.index(b"-m") + 1 >= len(argv):
        return None
    name = argv[argv.index(b"-m") + 1].decode()
    if name in ("auditstream", "auditstream.cli"):
        return None  # a forked stage before stage_main named it: its supervisor's argv
    if name == "assembler" and b"--index" in argv:
        name += "-" + argv[argv.index(b"--index") + 1].decode()
    return name


def stage_pids(supervisor: int) -> dict[str, int]:
    """The stages a supervisor runs now, by name (receiver, assembler-N, treekeeper,
    auditstream.metrics); {} once the supervisor is gone."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return {}
    stages: dict[str, int] = {}
    for child in children:
        name = stage_name(int(child))
        if name is not None:
            stages[name] = int(child)
    return stages


@dataclass
class LiveRun:
    """`auditstream run` as a child process in its own session (so it can be killed as a group)."""

    args: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    stderr_text: str = ""
    stopped_in_s: float = 0.0
    _stderr_path: Path = field(init=False)

    def start(self) -> LiveRun:
        """Start the command; stderr goes to a file in workdir."""
        self._stderr_path = self.workdir / "auditstream.stderr"
        with self._stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditstream", *self.args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        return self

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        assert self.proc is not None
        return self.proc.pid

    def stage_pids(self) -> dict[str, int]:
        """The supervisor's children by stage name (receiver, assembler-0, treekeeper)."""
        return stage_pids(self.pid)

    def wait_registered(self, timeout_s: float = 20.0) -> int:
        """Wait until our receiver holds the kernel audit pid and has enabled auditing.

        The receiver registers the pid first, loads its rules, and sets `enabled` last:
        only then are the test's own syscalls audited.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"auditstream run exited early: {self.read_stderr()}")
            status = kernel_status()
            pid = status["pid"]
            if pid and pid == self.stage_pids().get("receiver") and status["enabled"] == 1:
                return pid
            time.sleep(0.1)
        raise AssertionError(f"receiver never registered with the kernel: {self.read_stderr()}")

    def wait_file(self, path: Path, timeout_s: float = 20.0) -> None:
        """Wait until `path` exists (e.g. the receiver's first status file)."""
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{path} never appeared: {self.read_stderr()}")
            time.sleep(0.1)

    def read_stderr(self) -> str:
        """What the pipeline wrote on stderr so far."""
        return self._stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 40.0) -> int:
        """Signal the supervisor, wait for it, and return its exit code."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout=timeout_s)
        finally:
            self.stopped_in_s = time.monotonic() - started
            self.kill()
            self.stderr_text = self.read_stderr()
        return self.returncode

    def kill(self) -> None:
        """Kill our session's processes if any is still alive (used in finally)."""
        if self.proc is None:
            return
        # Stages run in sessions of their own: kill them by pid, then the supervisor's group.
        stages: dict[str, int] = {}
        with contextlib.suppress(OSError):
            stages = self.stage_pids() if self.proc.poll() is None else {}
        for pid in stages.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


def start_run(runs: list[LiveRun], workdir: Path, *args: str) -> LiveRun:
    """Start `auditstream run ARGS` (stderr in ``workdir``) and add it to ``runs`` (the
    conftest fixture that kills what is left)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = LiveRun(["run", *args], workdir)
    runs.append(run)
    return run.start()


def read_events(path: Path) -> list[Event]:
    """All complete JSON lines of a JSONL sink file ([] if it does not exist yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def wait_for_events(
    path: Path, match: Callable[[Event], bool], count: int = 1, timeout_s: float = 15.0
) -> list[Event]:
    """Wait until `path` holds at least `count` events matching `match`; return them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in read_events(path) if match(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def is_audit_event(event: Event) -> bool:
    """An event made from kernel records (not a lifecycle or marker event)."""
    return bool(event.get("auditd", {}).get("records"))


def replay_audit_events(log: Path, out: Path) -> dict[int, Event]:
    """`auditstream replay LOG` into the jsonl sink ``out``: its audit events by serial."""
    docs, _ = replay_to_jsonl(log, out)
    return {e["event"]["sequence"]: e for e in docs if is_audit_event(e)}


def replay_to_jsonl(log: Path, out: Path, native: str | None = None) -> tuple[list[Event], bytes]:
    """`auditstream replay LOG` into the jsonl sink ``out``, which must succeed: its docs in
    order and its stderr. ``native``: AUDITSTREAM_NATIVE for it ("": unset, C where built)."""
    env = dict(os.environ)
    if native is not None:
        env.pop("AUDITSTREAM_NATIVE", None)
        if native:
            env["AUDITSTREAM_NATIVE"] = native
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", f"jsonl:{out}"],
        cwd=REPO, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return read_events(out), done.stderr


ONE_EVENT_LOG = (
    b"type=SYSCALL msg=audit(1700000000.000:1): arch=c000003e syscall=59 success=yes exit=0"
    b' pid=10 ppid=1 comm="sh" exe="/bin/sh"\ntype=EOE msg=audit(1700000000.000:1): \n'
)


def replay(
    *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """`auditstream replay ARGS` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def replay_into_head(log: Path, *sinks: str, lines: int = 100) -> tuple[int, str, bytes, float]:
    """`auditstream replay LOG --sink … | head -LINES`: exit code, stderr, what head printed,
    seconds taken; the replay's process group is killed if it outlives the pipe."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "replay", str(log),
         *(f"--sink={sink}" for sink in sinks)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    head = subprocess.Popen(["head", f"-{lines}"], stdin=proc.stdout, stdout=subprocess.PIPE)
    proc.stdout.close()  # head alone reads it: its exit closes the pipe
    try:
        printed, _ = head.communicate(timeout=60)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr.decode(errors="replace"), printed, time.monotonic() - started


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a stage its supervisor has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def start_follow_replay(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`auditstream replay --follow` of a one-event log (serial 1, `sh`) into a jsonl sink.

    Returns the process, the log (append to it) and the sink file; stderr goes to
    ``tmp_path/stderr``.
    """
    log, out = tmp_path / "audit.log", tmp_path / "events.jsonl"
    log.write_bytes(ONE_EVENT_LOG)
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditstream", "replay", "--follow", str(log),
             "--sink", f"jsonl:{out}"],
            stderr=err, cwd=REPO,
        )  # fmt: skip
    return proc, log, out


def syscall_of(event: Event) -> str | None:
    """The syscall name of an audit event."""
    value = event.get("auditd", {}).get("data", {}).get("syscall")
    return value if isinstance(value, str) else None


AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log_file}
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 0
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
plugin_dir = {plugin_dir}
q_depth = 2000
overflow_action = IGNORE
end_of_event_timeout = 2
"""


@dataclass
class AuditdDaemon:
    """Debian's auditd in the foreground (`-n`) with a private config: log in `workdir`, the
    plugins.d files of `plugins` (none by default) in `workdir`/plugins.

    It loads no rules itself (rules come from augenrules, which we do not run) but leaves the
    kernel's enabled flag at 1 when it exits: `kernel_clean` puts that back.
    """

    workdir: Path
    # plugins.d files by name (e.g. {"auditstream.conf": "active = yes\n..."}), written at start
    plugins: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    enabled_before: int | None = None

    @property
    def log_file(self) -> Path:
        """Where auditd writes its (ENRICHED) log."""
        return self.workdir / "log" / "audit.log"

    def start(self, timeout_s: float = 10.0) -> AuditdDaemon:
        """Start auditd and wait until it holds the kernel audit pid."""
        (self.workdir / "plugins").mkdir(parents=True, exist_ok=True)
        for name, text in self.plugins.items():
            (self.workdir / "plugins" / name).write_text(text)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "auditd.conf"
        conf.write_text(
            AUDITD_CONF.format(log_file=self.log_file, plugin_dir=self.workdir / "plugins")
        )
        conf.chmod(0o600)  # auditd refuses a config others can write
        self.enabled_before = kernel_status()["enabled"]
        with (self.workdir / "auditd.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(AUDITD), "-n", "-c", str(self.workdir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + timeout_s
        while kernel_status()["pid"] != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"auditd did not start: {(self.workdir / 'auditd.out').read_text()}"
                )
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        """auditd's pid."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (auditd ignores SIGINT; SIGKILL after 10 s), then put back the enabled flag."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # auditd enables auditing at start and leaves it enabled when it exits.
        if self.enabled_before is not None and kernel_status()["enabled"] != self.enabled_before:
            auditctl("-e", str(self.enabled_before))


def feed_slowly(pipe: IO[bytes], log: Path, seconds: float, chunks: int = 40) -> None:
    """Write the log's lines to ``pipe`` in ``chunks`` over ``seconds``, then close it: a
    source that flows for as long whatever the machine's speed."""
    lines = log.read_bytes().splitlines(keepends=True)
    step = max(1, -(-len(lines) // chunks))
    with pipe:
        for start in range(0, len(lines), step):
            pipe.write(b"".join(lines[start : start + step]))
            pipe.flush()
            time.sleep(seconds / chunks)


@contextlib.contextmanager
def stdin_run(
    tmp_path: Path, receiver_options: str = "", stages: tuple[str, ...] = ("receiver",)
) -> Iterator[subprocess.Popen[bytes]]:
    """`run --source stdin` (the auditd plugin source: no kernel) into ``tmp_path/o.jsonl``,
    runtime dir ``tmp_path/run``, ``receiver_options`` added to `[receiver]`; yielded once
    each of ``stages`` has written its status; killed if the test leaves it running."""
    run_dir = tmp_path / "run"
    conf = tmp_path / "stdin.toml"
    conf.write_text(
        f'[runtime]\ndir = "{run_dir}"\n[receiver]\nsource = "stdin"\n{receiver_options}'
    )
    run = subprocess.Popen(
        [
            sys.executable, "-m", "auditstream", "run", "-c", str(conf),
            "--sink", f"jsonl:{tmp_path / 'o.jsonl'}",
        ],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not all((run_dir / f"status-{name}.json").exists() for name in stages):
            assert time.monotonic() < deadline and run.poll() is None, "the stages never ran"
            time.sleep(0.05)
        yield run
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pipe in (run.stdin, run.stderr):
            if pipe is not None:
                pipe.close()


def main_thread_sleeps(pid: int) -> int:
    """How often the process ``pid``'s main thread has gone to sleep (voluntary switches)."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")
