"""One run per runtime dir, and `run`'s refusals: a second instance, a rule the kernel
rejects, a stale summary, takeover of auditd, a sink path that cannot be made.

The kernel tests hold the kernel lock (`kernel_clean`, from live_helpers) and leave
`auditctl -s` / `-l` as they found them; the others use replays and `run` refusals that
stop before anything touches the kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import (
    DEFAULT_RULES,
    ONE_EVENT_LOG,
    REPO,
    AuditdDaemon,
    KernelState,
    LiveRun,
    auditctl,
    kernel_clean,
    kernel_status,
    read_events,
    replay,
    start_run,
    wait_for_events,
    write_config,
)

from auditstream.config import Config
from receiver.kernel import StoppedHolder
from receiver.live import record_takeover

__all__ = ["kernel_clean"]  # the fixture is used by name

EXIT_WITHIN_S = 15.0


def wait_exit(run: LiveRun, timeout_s: float = EXIT_WITHIN_S) -> tuple[int, str]:
    """Wait for a run that must end on its own: its exit code and stderr."""
    assert run.proc is not None
    try:
        code = run.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"auditstream run did not exit within {timeout_s} s: {run.read_stderr()}")
    return code, run.read_stderr()


def event_with_arg(path: Path, arg: str, timeout_s: float = 15.0) -> bool:
    """Whether an exec of ``arg`` (in its args) reached the jsonl sink ``path`` in time."""
    found = wait_for_events(
        path, lambda e: arg in (e.get("process", {}).get("args") or []), timeout_s=timeout_s
    )
    return bool(found)


def follow_replay(config: Path, log: Path, out: Path, stderr: Path) -> subprocess.Popen[bytes]:
    """`auditstream replay --follow -c CONFIG LOG` into the jsonl sink ``out``."""
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", "replay", "--follow", "-c", str(config),
             str(log), "--sink", f"jsonl:{out}"],
            stderr=err, cwd=REPO,
        )  # fmt: skip


def test_second_replay_in_a_busy_runtime_dir_is_refused_and_the_first_goes_on(
    tmp_path: Path,
) -> None:
    """A replay given the runtime dir of a running one exits 1 naming the dir and the holder's
    pid, creates no output, and the first still writes a later event and stops cleanly."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir)
    log, first_out, second_out = tmp_path / "a.log", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    log.write_bytes(ONE_EVENT_LOG)
    first = follow_replay(config, log, first_out, tmp_path / "first.stderr")
    try:
        assert wait_for_events(first_out, lambda e: e.get("event", {}).get("sequence") == 1)
        second = replay("-c", str(config), str(log), "--sink", f"jsonl:{second_out}")
        stderr = second.stderr.decode()
        assert second.returncode == 1, stderr
        assert f"runtime dir {run_dir} is in use by auditstream pid {first.pid}" in stderr, stderr
        assert "Traceback" not in stderr and not second_out.exists(), stderr
        with log.open("ab") as out:
            out.write(ONE_EVENT_LOG.replace(b":1)", b":2)"))
        later = wait_for_events(first_out, lambda e: e.get("event", {}).get("sequence") == 2)
        assert later, (tmp_path / "first.stderr").read_text()
    finally:
        first.terminate()
        code = first.wait(timeout=30)
    assert code == 0, (tmp_path / "first.stderr").read_text()
    written = len(read_events(first_out))
    assert f"sent: jsonl:{first_out} {written}\n" in (tmp_path / "first.stderr").read_text()


def test_failed_start_never_prints_the_previous_runs_summary(tmp_path: Path) -> None:
    """A replay that fails before writing its summary, in a runtime dir an earlier replay
    used, says it has none instead of printing the earlier one's."""
    config = write_config(tmp_path / "c.toml", tmp_path / "run")
    log = tmp_path / "a.log"
    log.write_bytes(ONE_EVENT_LOG)
    done = replay("-c", str(config), str(log), "--sink", f"jsonl:{tmp_path / 'a.jsonl'}")
    assert done.returncode == 0 and b" events out" in done.stderr, done.stderr
    assert (tmp_path / "run" / "summary.json").exists()
    failed = replay("-c", str(config), str(log), "--sink", "jsonl:/proc/nope/b.jsonl")
    stderr = failed.stderr.decode()
    assert failed.returncode != 0, stderr
    assert "no summary (the pipeline did not finish)" in stderr, stderr
    assert "events out" not in stderr, stderr


def test_run_with_an_uncreatable_sink_directory_says_so(tmp_path: Path) -> None:
    """`run --sink jsonl:/proc/nope/e.jsonl` exits 2 naming the sink, the directory and the
    reason, with no traceback, before anything starts."""
    config = write_config(tmp_path / "c.toml", tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "run", "-c", str(config),
         "--sink", "jsonl:/proc/nope/e.jsonl"],
        capture_output=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert (
        "sink jsonl:/proc/nope/e.jsonl: cannot create its directory /proc/nope: "
        "No such file or directory" in stderr
    ), stderr
    assert "Traceback" not in stderr, stderr
    assert not (tmp_path / "run").exists(), "the runtime dir was made before the refusal"


@pytest.mark.kernel
def test_second_run_refused_without_disturbing_the_first(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """A second `run` in the runtime dir of a running one is refused at once, naming the dir
    and the first's pid, binds and writes nothing; the first still captures a new exec after
    the refusal and stops cleanly with its own summary."""
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [DEFAULT_RULES])
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = start_run(runs, tmp_path / "first", "-c", str(config), "--sink", f"jsonl:{first_out}")
    first.wait_registered()
    sockets = {p.name: p.stat().st_ino for p in (tmp_path / "run").glob("*.sock")}
    second = start_run(runs, tmp_path / "second", "-c", str(config),
                       "--sink", f"jsonl:{second_out}")  # fmt: skip
    code, stderr = wait_exit(second, timeout_s=5)
    assert code == 1, stderr
    assert f"runtime dir {tmp_path / 'run'} is in use by auditstream pid {first.pid}" in stderr
    assert "Traceback" not in stderr and not second_out.exists(), stderr
    assert {p.name: p.stat().st_ino for p in (tmp_path / "run").glob("*.sock")} == sockets
    marker = f"after-refusal-{time.monotonic_ns()}"
    subprocess.run(["/bin/echo", marker], check=True, capture_output=True)
    assert event_with_arg(first_out, marker), first.read_stderr()
    assert first.stop() == 0, first.stderr_text
    assert first.stopped_in_s < 30, first.stderr_text
    assert f"sent: jsonl:{first_out} " in first.stderr_text, first.stderr_text


@pytest.mark.kernel
def test_kernel_rejected_rule_ends_the_run_naming_file_and_line(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """A rule the kernel rejects (dir= of a missing directory) ends `run` non-zero within
    seconds with file:line and the reason, no traceback, no restart, the two rules loaded
    before it taken out again."""
    rules = tmp_path / "r.rules"
    rules.write_text(
        "-a always,exit -F arch=b64 -S execve -k before1\n"
        f"-w {tmp_path} -p wa -k before2\n"
        f"-a always,exit -F arch=b64 -S openat -F dir={tmp_path}/missing/deeper -k w2\n"
    )
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [rules])
    run = start_run(runs, tmp_path / "w", "-c", str(config),
                    "--sink", f"jsonl:{tmp_path / 'o.jsonl'}")  # fmt: skip
    code, stderr = wait_exit(run, timeout_s=10)
    assert code == 1, stderr
    assert f"{rules}:3: the kernel refused the rule: No such file or directory" in stderr, stderr
    assert "Traceback" not in stderr and "restarting" not in stderr, stderr
    assert "receiver cannot run (exit code 78)" in stderr, stderr
    assert auditctl("-l").strip() == "No rules"
    status = kernel_status()
    assert (status["pid"], status["enabled"]) == (0, kernel_clean.settings["enabled"])


@pytest.mark.kernel
def test_unicast_run_beside_auditd_refused_before_anything_starts(
    auditd: AuditdDaemon, runs: list[LiveRun], tmp_path: Path
) -> None:
    """Beside auditd, unicast `run` is refused naming auditd before any stage starts: no
    sink file is created and no summary printed."""
    out = tmp_path / "u.jsonl"
    config = write_config(tmp_path / "u.toml", tmp_path / "u-run")
    refused = start_run(runs, tmp_path / "u", "-c", str(config), "--sink", f"jsonl:{out}")
    code, stderr = wait_exit(refused, timeout_s=5)
    assert code == 1, stderr
    assert f"held by pid {auditd.pid} (/usr/sbin/auditd" in stderr, stderr
    assert "stage pids" not in stderr and "summary" not in stderr, stderr
    assert not out.exists()


@pytest.mark.kernel
def test_takeover_warns_that_auditd_stays_stopped(
    auditd: AuditdDaemon, runs: list[LiveRun], tmp_path: Path
) -> None:
    """`run --takeover` beside auditd says at the takeover and again at the stop that auditd
    was stopped, is not running, and how to start it again (its command line here)."""
    config = write_config(tmp_path / "t.toml", tmp_path / "t-run", [DEFAULT_RULES])
    run = start_run(runs, tmp_path / "t", "-c", str(config), "--takeover",
                    "--sink", f"jsonl:{tmp_path / 't.jsonl'}")  # fmt: skip
    run.wait_registered()
    assert auditd.proc is not None and auditd.proc.wait(timeout=10) == 0
    recorded = json.loads((tmp_path / "t-run" / "taken-over.json").read_text())
    assert recorded["pid"] == auditd.pid and recorded["comm"] == "auditd"
    command = f"/usr/sbin/auditd -n -c {auditd.workdir}"
    at_takeover = run.read_stderr()
    assert f"sending SIGTERM to {auditd.pid} ({command})" in at_takeover, at_takeover
    assert f"stays stopped when auditstream stops: start it again then with: {command}" in (
        at_takeover
    )
    assert run.stop() == 0, run.stderr_text
    at_stop = run.stderr_text[len(at_takeover) :]
    assert (
        f"auditd (pid {auditd.pid}, command {command}) was stopped by takeover and is not "
        f"running; start it again with: {command}" in at_stop
    ), at_stop
    assert read_events(tmp_path / "t.jsonl"), "the run captured nothing"
    # Said at the stop, so not again by the next start in the dir (nor by status).
    assert not (tmp_path / "t-run" / "taken-over.json").exists()


def record_takeover_in(run_dir: Path, comm: str) -> StoppedHolder:
    """Write the runtime dir's takeover record as the receiver's takeover does, for a holder
    named ``comm`` whose pid has exited (a supervisor SIGKILLed after the takeover)."""
    holder = StoppedHolder(
        pid=first_free_pid(), command="/usr/sbin/auditd", comm=comm, unit="auditd.service"
    )
    cfg = Config(source_path="<test>")
    cfg.runtime.dir = str(run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record_takeover(cfg, holder)
    assert (run_dir / "taken-over.json").exists()
    return holder


def first_free_pid() -> int:
    """The pid of a child that has exited and been reaped: no process has it now."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


STOPPED_COMM = "auditd-stopped"  # no process has this name: the holder is not running again


def test_status_says_a_killed_runs_takeover_every_time(tmp_path: Path) -> None:
    """`status -c CONF` on the dir of a run killed after its takeover says on stderr, each
    time it is asked, what was stopped and how to start it again, and leaves the record."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir)
    holder = record_takeover_in(run_dir, STOPPED_COMM)
    notice = (
        f"{STOPPED_COMM} (pid {holder.pid}, command /usr/sbin/auditd) was stopped by takeover "
        "and is not running; start it again with: systemctl start auditd.service"
    )
    for _ in range(2):
        shown = status_of(config)
        assert shown.returncode == 3, shown.stderr
        assert f"auditstream[cli] WARNING: {notice}\n" in shown.stderr, shown.stderr
        assert notice not in shown.stdout and "Traceback" not in shown.stderr
    as_json = status_of(config, "--json")
    assert json.loads(as_json.stdout)["takeover"] == notice
    assert (run_dir / "taken-over.json").exists()


def test_the_next_start_says_a_killed_runs_takeover_once(tmp_path: Path) -> None:
    """The next start in the dir (here a replay) says what the killed run's takeover stopped
    and how to start it again, naming the dir, then removes the record: said once."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir)
    log = tmp_path / "a.log"
    log.write_bytes(ONE_EVENT_LOG)
    holder = record_takeover_in(run_dir, STOPPED_COMM)
    first = replay("-c", str(config), str(log), "--sink", f"jsonl:{tmp_path / 'a.jsonl'}")
    stderr = first.stderr.decode()
    assert first.returncode == 0, stderr
    assert (
        f"auditstream[cli] WARNING: left by an earlier run in {run_dir} that did not stop "
        f"cleanly: {STOPPED_COMM} (pid {holder.pid}, command /usr/sbin/auditd) was stopped by "
        "takeover and is not running; start it again with: systemctl start auditd.service\n"
    ) in stderr, stderr
    assert not (run_dir / "taken-over.json").exists()
    again = replay("-c", str(config), str(log), "--sink", f"jsonl:{tmp_path / 'b.jsonl'}")
    assert again.returncode == 0 and b"takeover" not in again.stderr, again.stderr
    shown = status_of(config)
    assert "takeover" not in shown.stderr, shown.stderr


def test_a_stopped_holder_running_again_is_not_reported(tmp_path: Path) -> None:
    """When a process of the stopped holder's name runs again, neither status nor the next
    start warns (they only note that it runs again), and the start still removes the record."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir)
    log = tmp_path / "a.log"
    log.write_bytes(ONE_EVENT_LOG)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        record_takeover_in(run_dir, "sleep")
        shown = status_of(config)
        assert "WARNING" not in shown.stderr and "runs again" in shown.stderr, shown.stderr
        done = replay("-c", str(config), str(log), "--sink", f"jsonl:{tmp_path / 'a.jsonl'}")
        stderr = done.stderr.decode()
        assert done.returncode == 0 and "WARNING" not in stderr and "runs again" in stderr, stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (run_dir / "taken-over.json").exists()


def status_of(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``auditstream status -c CONFIG ARGS``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "status", "-c", str(config), *args],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=60,
    )  # fmt: skip
