"""auditstream beside Debian's real auditd: as its plugin on stdin (deploy/), and reading the
socket of auditd's builtin af_unix plugin. auditd holds the audit PID; we only read.

Each test compares the execve serials auditd wrote to its own log (rule key ``plug``) with
ours, and leaves the kernel as found (no rules, no pid holder, the settings) and no process
of its own running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live_helpers import (
    AUDITD,
    REPO,
    AuditdDaemon,
    Event,
    KernelState,
    LiveRun,
    auditctl,
    read_events,
    start_run,
    syscall_of,
    wait_for_events,
)

pytestmark = pytest.mark.kernel

EXECVE_RULE = ("always,exit", "-F", "arch=b64", "-S", "execve", "-k", "plug")
SYSCALL_LINE = re.compile(rb"^type=SYSCALL msg=audit\(\d+\.\d+:(\d+)\): .* syscall=59 ")
MakeAuditd = Callable[[dict[str, str]], AuditdDaemon]


@pytest.fixture
def plugin_auditd(kernel_clean: KernelState, tmp_path: Path) -> Iterator[MakeAuditd]:
    """Start auditd with the given plugins.d files; afterwards it is stopped, the test's
    rule deleted and no process of the test's directory is left."""
    if not AUDITD.exists():
        pytest.skip(f"{AUDITD} (package auditd) is not installed")
    daemons: list[AuditdDaemon] = []

    def make(plugins: dict[str, str]) -> AuditdDaemon:
        daemon = AuditdDaemon(tmp_path / "auditd", plugins=plugins)
        daemons.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            auditctl("-d", *EXECVE_RULE)
        for daemon in daemons:
            daemon.stop()
        left = wait_gone(tmp_path)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"


def processes_of(directory: Path) -> list[int]:
    """Live processes whose command line names ``directory`` (ours: plugin, stages)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if str(directory).encode() in cmdline and state != b"Z":
            found.append(int(entry.name))
    return found


def wait_gone(directory: Path, timeout_s: float = 30.0) -> list[int]:
    """Wait until no process of ``directory`` runs; those still running after the timeout."""
    deadline = time.monotonic() + timeout_s
    while (left := processes_of(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def plugin_files(tmp_path: Path, config: Path) -> tuple[str, Path]:
    """deploy/auditstream.plugin.conf and deploy/auditstream-plugin adapted as a user would:
    the wrapper's paths (auditstream, its log) and the conf's path and args. Returns the
    conf's text and the log file."""
    launcher = tmp_path / "bin" / "auditstream"  # this checkout's, as pip would install it
    launcher.parent.mkdir()
    launcher.write_text(
        f'#!/bin/sh\ncd {REPO}\nPYTHONPATH={REPO} exec {sys.executable} -m auditstream "$@"\n'
    )
    launcher.chmod(0o755)
    log = tmp_path / "plugin.log"
    wrapper = tmp_path / "bin" / "auditstream-plugin"
    text = (REPO / "deploy" / "auditstream-plugin").read_text()
    text = re.sub(r"(?m)^AUDITSTREAM=\S+", f"AUDITSTREAM={launcher}", text)
    wrapper.write_text(re.sub(r"(?m)^LOG=\S+", f"LOG={log}", text))
    wrapper.chmod(0o755)  # root-owned: we are root
    conf = (REPO / "deploy" / "auditstream.plugin.conf").read_text()
    conf = re.sub(r"(?m)^path = .*$", f"path = {wrapper}", conf)
    return re.sub(r"(?m)^args = .*$", f"args = {config}", conf), log


def pipeline_config(tmp_path: Path, source: str) -> Path:
    """deploy/plugin.toml with this test's runtime dir, source and jsonl sink."""
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    text = (REPO / "deploy" / "plugin.toml").read_text()
    text = text.replace('source = "stdin"', f"source = {json.dumps(source)}")
    text = re.sub(
        r'(?m)^path = ".*"$', f"path = {json.dumps(str(tmp_path / 'events.jsonl'))}", text
    )
    text = f"[runtime]\ndir = {json.dumps(str(runtime))}\n\n{text}"
    path = tmp_path / "plugin.toml"
    path.write_text(text)
    return path


def logged_execve_serials(log_file: Path) -> set[int]:
    """Serials of the execve SYSCALL records auditd wrote to its log under our rule key."""
    return {
        int(m.group(1))
        for line in log_file.read_bytes().splitlines()
        if b'key="plug"' in line and (m := SYSCALL_LINE.match(line))
    }


def our_execve_serials(events: list[Event]) -> list[int]:
    """Serials of our execve events under the rule key, one per event (duplicates kept)."""
    return [
        e["event"]["sequence"]
        for e in events
        if syscall_of(e) == "execve" and "plug" in e.get("tags", [])
    ]


def run_commands(tag: str) -> None:
    """A few execs the rule records; the last one's argument is ``tag``, to wait for."""
    for _ in range(3):
        subprocess.run(["/bin/true"], check=True)
    subprocess.run(["/bin/echo", tag], check=True, stdout=subprocess.DEVNULL)


def echo_of(tag: str) -> Callable[[Event], bool]:
    """Matches our event of ``/bin/echo TAG``."""
    return lambda e: (
        syscall_of(e) == "execve"
        and e.get("process", {}).get("args")
        == [
            "/bin/echo",
            tag,
        ]
    )


def wait_plugin_ready(runtime: Path, timeout_s: float = 30.0) -> None:
    """Wait until the plugin's receiver reads (its first status file)."""
    deadline = time.monotonic() + timeout_s
    while not (runtime / "status-receiver.json").exists():
        assert time.monotonic() < deadline, "auditd never started our plugin"
        time.sleep(0.1)


def supervisor_pid(runtime: Path) -> int:
    """The plugin's supervisor: the process auditd started (it holds the runtime lock)."""
    holders = [
        pid
        for pid in processes_of(runtime.parent)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"auditstream"]
    ]
    assert len(holders) == 1, holders
    return holders[0]


def test_auditd_starts_our_stdin_plugin_and_we_get_every_execve_it_logged(
    plugin_auditd: MakeAuditd, tmp_path: Path
) -> None:
    """auditd launches deploy/'s plugin, and at auditd's stop our output holds each execve
    serial of auditd's log once, enriched, with the summary in the plugin's log."""
    config = pipeline_config(tmp_path, "stdin")
    conf, plugin_log = plugin_files(tmp_path, config)
    daemon = plugin_auditd({"auditstream.conf": conf})
    wait_plugin_ready(tmp_path / "rt")
    tag = f"plugin-{uuid.uuid4()}"
    auditctl("-a", *EXECVE_RULE)
    run_commands(tag)
    out = tmp_path / "events.jsonl"
    assert wait_for_events(out, echo_of(tag), timeout_s=20), "the echo never came out"
    auditctl("-d", *EXECVE_RULE)
    daemon.stop()  # SIGTERM: auditd passes it on and closes our stdin
    assert not wait_gone(tmp_path / "rt"), "our plugin outlived auditd"

    events = read_events(out)
    ours = our_execve_serials(events)
    assert len(ours) == len(set(ours)), "an execve event came out twice"
    logged = logged_execve_serials(daemon.log_file)
    assert logged and set(ours) == logged
    (echo,) = [e for e in events if echo_of(tag)(e)]
    assert echo["process"]["executable"] == "/usr/bin/echo"
    assert echo["process"]["parent"]["pid"] == os.getpid()
    assert echo["process"]["entity_id"]
    summary = json.loads((tmp_path / "rt" / "summary.json").read_text())
    assert summary["failed"] is False
    assert summary["receiver"]["bad_lines"] == 0
    assert "records read" in plugin_log.read_text(), plugin_log.read_text()


def test_plugin_added_by_a_reload_survives_the_next_reload(
    plugin_auditd: MakeAuditd, tmp_path: Path
) -> None:
    """Installed as deploy/ says (conf copied, `pkill -HUP auditd`), our plugin keeps its
    process and reads on through a later reload, which auditd passes on as SIGHUP."""
    config = pipeline_config(tmp_path, "stdin")
    conf, _ = plugin_files(tmp_path, config)
    daemon = plugin_auditd({})
    assert daemon.proc is not None
    # A plugin auditd starts at its own start inherits SIGHUP ignored; one a reload starts
    # does not.
    (daemon.workdir / "plugins" / "auditstream.conf").write_text(conf)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_plugin_ready(tmp_path / "rt")
    before = supervisor_pid(tmp_path / "rt")
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(2)  # auditd reconfigures and signals its plugins
    auditctl("-a", *EXECVE_RULE)
    tag = f"reload-{uuid.uuid4()}"
    run_commands(tag)
    assert wait_for_events(tmp_path / "events.jsonl", echo_of(tag), timeout_s=20)
    assert supervisor_pid(tmp_path / "rt") == before, "the reload restarted our plugin"


def af_unix_conf(socket_path: Path) -> str:
    """auditd's builtin af_unix plugin (Debian's /etc/audit/plugins.d/af_unix.conf, active)."""
    return (
        "active = yes\ndirection = out\npath = builtin_af_unix\ntype = builtin\n"
        f"args = 0640 {socket_path}\nformat = string\n"
    )


def start_beside(
    plugin_auditd: MakeAuditd, runs: list[LiveRun], tmp_path: Path
) -> tuple[AuditdDaemon, LiveRun]:
    """auditd with its af_unix plugin, and `auditstream run --source unix:PATH` reading it."""
    sock = tmp_path / "audispd_events"
    daemon = plugin_auditd({"af_unix.conf": af_unix_conf(sock)})
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "auditd never made its af_unix socket"
        time.sleep(0.1)
    run = start_run(runs, tmp_path / "run", "-c", str(pipeline_config(tmp_path, f"unix:{sock}")))
    run.wait_file(tmp_path / "rt" / "status-receiver.json")
    return daemon, run


def test_unix_source_beside_auditd_af_unix_plugin_gets_every_execve_it_logged(
    plugin_auditd: MakeAuditd, runs: list[LiveRun], tmp_path: Path
) -> None:
    """`run --source unix:PATH` on auditd's af_unix socket writes each execve serial of
    auditd's log once, and stops cleanly on SIGTERM."""
    daemon, run = start_beside(plugin_auditd, runs, tmp_path)
    auditctl("-a", *EXECVE_RULE)
    tag = f"unix-{uuid.uuid4()}"
    run_commands(tag)
    out = tmp_path / "events.jsonl"
    assert wait_for_events(out, echo_of(tag), timeout_s=20), run.read_stderr()
    auditctl("-d", *EXECVE_RULE)
    time.sleep(0.5)  # the rule's own CONFIG_CHANGE reaches us, nothing keyed after it
    assert run.stop(signal.SIGTERM) == 0, run.stderr_text
    daemon.stop()

    ours = our_execve_serials(read_events(out))
    assert len(ours) == len(set(ours)), "an execve event came out twice"
    logged = logged_execve_serials(daemon.log_file)
    assert logged and set(ours) == logged
    assert "0 events lost" in run.stderr_text, run.stderr_text


def test_unix_source_connects_again_when_auditd_restarts_and_marks_the_gap(
    plugin_auditd: MakeAuditd, runs: list[LiveRun], tmp_path: Path
) -> None:
    """When auditd restarts, its socket goes and comes back: we connect again, put a
    source-reconnected marker in the output and read on; the run does not end."""
    daemon, run = start_beside(plugin_auditd, runs, tmp_path)
    auditctl("-a", *EXECVE_RULE)
    out = tmp_path / "events.jsonl"
    before, after = f"before-{uuid.uuid4()}", f"after-{uuid.uuid4()}"
    run_commands(before)
    assert wait_for_events(out, echo_of(before), timeout_s=20), run.read_stderr()
    daemon.stop()
    daemon.start()  # the kernel keeps the rule across the restart

    def is_reconnect(e: Event) -> bool:
        return bool(e.get("event", {}).get("action") == "source-reconnected")

    (marker,) = wait_for_events(out, is_reconnect, timeout_s=20) or [None]
    assert marker is not None, run.read_stderr()
    assert marker["auditstream"]["marker"]["cause"] == "source_reconnected"
    assert marker["auditstream"]["marker"]["disconnected_ms"] >= 0
    run_commands(after)
    assert wait_for_events(out, echo_of(after), timeout_s=20), run.read_stderr()
    auditctl("-d", *EXECVE_RULE)
    assert run.stop(signal.SIGTERM) == 0, run.stderr_text
    assert "connected again to unix:" in run.stderr_text
    summary = json.loads((tmp_path / "rt" / "summary.json").read_text())
    assert summary["receiver"]["reconnects"] == 1
