"""`auditstream run` against the live kernel: enrichment, auditd beside it, record/replay, SIGTERM.

All real: the kernel, Debian's auditd and the pipeline's processes. Each test holds the kernel
lock (`kernel_clean`, from live_helpers) and leaves `auditctl -s` / `-l` as it found them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import (
    DEFAULT_RULES,
    REPO,
    AuditdDaemon,
    Event,
    KernelState,
    LiveRun,
    auditctl,
    is_audit_event,
    kernel_clean,
    kernel_status,
    read_events,
    start_run,
    syscall_of,
    wait_for_events,
    write_config,
)

pytestmark = pytest.mark.kernel
__all__ = ["kernel_clean"]  # the fixture is used by name

PYTHON_EXE = os.path.realpath(sys.executable)


def execs_of(events: list[Event], pid: int) -> list[Event]:
    """The successful execve audit events of process `pid` (a PATH search fails on the way)."""
    return [
        e for e in events
        if is_audit_event(e) and syscall_of(e) == "execve" and e.get("process", {}).get("pid") == pid
        and e["event"].get("outcome") == "success"
    ]


def test_live_run_enriches_exec_connect_and_watched_delete(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """A shell pipeline, a TCP connect and a watched rm become events with the right process and parent."""
    watched = tmp_path / "watched"
    watched.mkdir()
    victim = watched / "victim.txt"
    victim.write_text("x")
    watch_rules = tmp_path / "watch.rules"
    watch_rules.write_text(f"-w {watched} -p wa -k watched\n")
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [DEFAULT_RULES, watch_rules])
    out = tmp_path / "events.jsonl"
    run = start_run(runs, tmp_path, "-c", str(config), "--sink", f"jsonl:{out}")
    receiver_pid = run.wait_registered()

    pipeline = "echo hi | tr a-z A-Z > /dev/null"
    shell = subprocess.Popen(["sh", "-c", pipeline])
    shell.wait()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
        client = subprocess.Popen([sys.executable, "-c", connect])
        server.accept()[0].close()
        client.wait()
    remover = subprocess.Popen(["rm", str(victim)])
    remover.wait()

    deleted = wait_for_events(out, lambda e: e.get("file", {}).get("path") == str(victim))
    assert deleted, f"no deletion event in {out}: {run.read_stderr()}"
    assert run.stop(signal.SIGINT) == 0, run.stderr_text
    assert f"receiver={receiver_pid}" in run.stderr_text
    events = read_events(out)

    me = os.getpid()
    (sh_exec,) = execs_of(events, shell.pid)
    assert sh_exec["process"]["executable"] == os.path.realpath(shutil.which("sh") or "sh")
    assert sh_exec["process"]["args"] == ["sh", "-c", pipeline]
    assert sh_exec["process"]["parent"]["pid"] == me
    assert sh_exec["process"]["parent"]["executable"] == PYTHON_EXE
    tr_execs = [
        e for e in events
        if is_audit_event(e) and syscall_of(e) == "execve"
        and e["process"].get("args") == ["tr", "a-z", "A-Z"]
    ]
    assert len(tr_execs) == 1, tr_execs
    assert tr_execs[0]["process"]["executable"] == os.path.realpath(shutil.which("tr") or "tr")
    assert tr_execs[0]["process"]["parent"]["pid"] == shell.pid
    assert tr_execs[0]["process"]["parent"]["args"] == ["sh", "-c", pipeline]

    connects = [
        e for e in events
        if is_audit_event(e) and syscall_of(e) == "connect" and e["process"]["pid"] == client.pid
    ]
    assert [c.get("destination") for c in connects] == [{"ip": "127.0.0.1", "port": port}]
    assert connects[0]["process"]["executable"] == PYTHON_EXE
    assert connects[0]["process"]["parent"]["pid"] == me
    assert connects[0]["process"]["args"] == [sys.executable, "-c", connect]

    (deletion,) = deleted
    assert "watched" in deletion["tags"]
    assert syscall_of(deletion) in ("unlink", "unlinkat")
    assert deletion["event"]["action"] == "deleted"
    assert deletion["process"]["pid"] == remover.pid
    assert deletion["process"]["name"] == "rm"
    assert deletion["process"]["args"] == ["rm", str(victim)]
    assert deletion["process"]["parent"]["pid"] == me
    assert deletion["process"]["parent"]["executable"] == PYTHON_EXE
    assert not victim.exists()


def serials_in_auditd_log(log_file: Path, key: str, pids: list[int]) -> set[int]:
    """Serials of SYSCALL records with rule key `key` by one of `pids` in an auditd log."""
    serials: set[int] = set()
    wanted = {f" pid={pid} ".encode() for pid in pids}
    for line in log_file.read_bytes().split(b"\n"):
        if (
            line.startswith(b"type=SYSCALL ")
            and f' key="{key}"'.encode() in line
            and any(w in line for w in wanted)
        ):
            serials.add(int(line.split(b":", 2)[1].split(b")", 1)[0]))
    return serials


AUDIT_USER_LOGIN = 1112
# Run in a child: it sets its own login uid (so the event has an auid, whose name the
# trailer would give) and sends a user message to the kernel, as libaudit does.
SEND_USER_MESSAGE = """
import socket, struct, sys
with open("/proc/self/loginuid", "w") as f:
    f.write(sys.argv[1])
payload = sys.argv[3].encode().replace(b"<GS>", bytes([0x1d])) + bytes(1)
with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9) as sock:  # NETLINK_AUDIT
    sock.settimeout(5)
    flags = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    sock.send(struct.pack("=IHHII", 16 + len(payload), int(sys.argv[2]), flags, 1, 0) + payload)
    reply = sock.recv(8192)
kind = struct.unpack_from("=H", reply, 4)[0]
error = struct.unpack_from("=i", reply, 16)[0]
sys.exit(0 if kind == 2 and error == 0 else f"no ack: type {kind} error {error}")
"""


def test_0x1d_in_a_live_user_message_is_data_not_a_trailer(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """A user message carrying 0x1d and `AUID="alice"` does not name the event's user live: the
    kernel appends no ENRICHED trailer, so the byte stays in the record as %1d."""
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [DEFAULT_RULES])
    out = tmp_path / "events.jsonl"
    run = start_run(runs, tmp_path, "-c", str(config), "--sink", f"jsonl:{out}")
    run.wait_registered()
    acct = f"trailer-{os.getpid()}"
    # The kernel closes msg='...' with a quote: the attacker's X= takes it in.
    text = f'op=login acct="{acct}" exe="/usr/bin/x" hostname=? addr=? terminal=? res=success'
    text += '<GS>AUID="alice" UID="root" X='
    sender = subprocess.run(
        [sys.executable, "-c", SEND_USER_MESSAGE, "1000", str(AUDIT_USER_LOGIN), text],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert sender.returncode == 0, sender.stderr
    found = wait_for_events(out, lambda e: acct in json.dumps(e.get("auditd", {}).get("records")))
    assert run.stop(signal.SIGINT) == 0, run.stderr_text
    assert len(found) == 1, f"no user-login event in {out}: {run.stderr_text}"
    (event,) = found
    (record,) = event["auditd"]["records"]
    assert "auid=1000 " in record and 'res=success%1dAUID="alice" UID="root" X=\'' in record
    assert event["auditd"]["message_type"] == "user_login"
    assert event["user"]["audit"] == {"id": "1000"}  # no name: the id is all the kernel said
    assert "alice" not in json.dumps(event["user"]) and "root" not in json.dumps(event["user"])


def test_kernel_untouched_while_the_sinks_cannot_start(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """The receiver starts beside the tree keeper but touches the kernel only once the sinks are
    open: while a Kafka sink waits 4 s for brokers that never answer, the audit pid stays 0 and
    no rule is added; then the run fails naming the brokers, and no stage is left."""
    pytest.importorskip("confluent_kafka", reason="confluent-kafka (pip install -e '.[kafka]')")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.toml", run_dir, [DEFAULT_RULES])
    config.write_text(
        config.read_text() + f'[[sinks]]\ntype = "kafka"\nbrokers = ["127.0.0.1:{dead}"]\n'
        'topic = "t"\nconnect_timeout_ms = 4000\n'
    )
    run = start_run(runs, tmp_path, "-c", str(config))
    assert run.proc is not None
    seen: set[tuple[int, str]] = set()
    deadline = time.monotonic() + 30
    while run.proc.poll() is None and time.monotonic() < deadline:
        seen.add((kernel_status()["pid"], auditctl("-l").strip()))
        time.sleep(0.1)
    assert run.proc.poll() not in (None, 0), run.read_stderr()
    assert seen == {(0, "No rules")}, seen
    stderr = run.read_stderr()
    assert "cannot start sinks" in stderr and "no answer from brokers" in stderr, stderr
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(run_dir).encode() in _read(p)]
    assert not left, f"stages outlived the failed start: {left}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_unicast_run_refused_beside_auditd(
    auditd: AuditdDaemon, runs: list[LiveRun], tmp_path: Path
) -> None:
    """With auditd holding the audit pid, unicast `run` exits non-zero quickly, naming auditd."""
    config = write_config(tmp_path / "u.toml", tmp_path / "u-run")
    refused = start_run(runs, tmp_path / "unicast", "-c", str(config),
                        "--sink", f"jsonl:{tmp_path / 'u.jsonl'}")
    assert refused.proc is not None
    try:
        code = refused.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"auditstream run did not exit within 15 s: {refused.read_stderr()}")
    stderr = refused.read_stderr()
    assert code != 0, stderr
    assert f"pid {auditd.pid} (/usr/sbin/auditd" in stderr, stderr


@pytest.mark.slow
def test_multicast_run_beside_auditd_sees_what_auditd_logs(
    auditd: AuditdDaemon, runs: list[LiveRun], tmp_path: Path
) -> None:
    """`run --source multicast` next to auditd gets the same exec events (same serials) as auditd's log."""
    key = f"live-mc-{os.getpid()}"
    rule = ["always,exit", "-F", "arch=b64", "-S", "execve", "-F", f"ppid={os.getpid()}", "-k", key]
    auditctl("-a", *rule)
    try:
        out = tmp_path / "mc.jsonl"
        run_dir = tmp_path / "mc-run"
        multicast = start_run(runs, tmp_path / "mc", "--source", "multicast", "-c",
                              str(write_config(tmp_path / "m.toml", run_dir)), "--sink", f"jsonl:{out}")
        multicast.wait_file(run_dir / "status-receiver.json")
        pids: list[int] = []
        for _ in range(4):
            child = subprocess.Popen(["/bin/true"])
            child.wait()
            pids.append(child.pid)
        ours = wait_for_events(out, lambda e: key in e.get("tags", []), count=len(pids))
        assert multicast.stop(signal.SIGTERM) == 0, multicast.stderr_text
    finally:
        auditctl("-d", *rule)
    auditd.stop()  # flushes its log
    assert auditd.proc is not None and auditd.proc.returncode == 0
    # Only the execs the test made: other children of this process (auditctl after the stop)
    # are in auditd's log but were never meant to be in ours.
    theirs = serials_in_auditd_log(auditd.log_file, key, pids)
    assert len(theirs) >= len(pids)  # a failed PATH lookup is an execve event too
    assert {e["event"]["sequence"] for e in ours if e["process"]["pid"] in pids} == theirs
    assert set(pids) <= {e["process"]["pid"] for e in ours}


def audit_event_keys(events: list[Event]) -> set[tuple[int, str | None, int, str]]:
    """(sequence, syscall, pid, executable) of the audit events."""
    return {
        (e["event"]["sequence"], syscall_of(e), e.get("process", {}).get("pid", 0),
         e.get("process", {}).get("executable", ""))
        for e in events if is_audit_event(e)
    }


@pytest.mark.slow
def test_recorded_raw_replays_to_the_same_events(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """`run --record raw.log` then `replay raw.log` gives the same audit events as live."""
    raw = tmp_path / "raw.log"
    live_out = tmp_path / "live.jsonl"
    config = write_config(tmp_path / "c.toml", tmp_path / "run")
    run = start_run(runs, tmp_path, "-c", str(config), "--record", str(raw), "--sink", f"jsonl:{live_out}")
    run.wait_registered()
    script = "for i in 1 2 3; do ls / > /dev/null; cat /etc/hostname > /dev/null; done"
    shell = subprocess.Popen(["sh", "-c", script])
    shell.wait()
    assert wait_for_events(live_out, lambda e: e.get("process", {}).get("parent", {}).get("pid") == shell.pid,
                           count=6)
    assert run.stop(signal.SIGINT) == 0, run.stderr_text

    replayed = tmp_path / "replayed.jsonl"
    replay = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(raw), "--sink", f"jsonl:{replayed}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert replay.returncode == 0, replay.stderr
    live = audit_event_keys(read_events(live_out))
    again = audit_event_keys(read_events(replayed))
    assert len(live) > 6
    assert live - again == set() and again - live == set()
    # The recording names this host (node=): the shell's children, forked while recording,
    # get the live entity ids back (a replay joins the live archive) and host.name.
    host = socket.gethostname()
    assert raw.read_bytes().split(b" ", 1)[0] == b"node=" + host.encode()
    live_ids, again_ids = (
        {
            e["event"]["sequence"]: e["process"]["entity_id"]
            for e in read_events(out)
            if is_audit_event(e) and e.get("process", {}).get("parent", {}).get("pid") == shell.pid
        }
        for out in (live_out, replayed)
    )
    assert len(live_ids) >= 6 and live_ids == again_ids
    # The processes running before the recording began (this test's, its ancestors) come
    # from the table written beside it (raw.log.tree): whole `process` objects agree,
    # ancestry and parent included, not only the entity ids of those forked meanwhile.
    assert (tmp_path / "raw.log.tree").is_file()
    live_procs, again_procs = (
        {
            e["event"]["sequence"]: e["process"]
            for e in read_events(out)
            if is_audit_event(e)
            and e.get("process", {}).get("parent", {}).get("pid") in (shell.pid, os.getpid())
        }
        for out in (live_out, replayed)
    )
    assert live_procs.keys() == again_procs.keys() and len(live_procs) > 6
    for sequence, process in live_procs.items():
        assert again_procs[sequence] == process, sequence
    # Every audit doc names this host, live (kernel records name no node: the receiver
    # gives them this host's, as auditd's name_format = hostname) as replayed.
    for out in (live_out, replayed):
        assert {e.get("host", {}).get("name") for e in read_events(out) if is_audit_event(e)} == {
            host
        }, out


def summary_of(run_dir: Path) -> dict[str, object]:
    """The pipeline's summary.json."""
    data = json.loads((run_dir / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
def test_sigterm_under_exec_load_loses_nothing(
    kernel_clean: KernelState, runs: list[LiveRun], tmp_path: Path
) -> None:
    """SIGTERM while /bin/true is exec'd in a tight loop: clean exit, no loss, no loss marker."""
    run_dir = tmp_path / "run"
    out = tmp_path / "events.jsonl"
    run = start_run(runs, tmp_path, "-c", str(write_config(tmp_path / "c.toml", run_dir)),
                    "--sink", f"jsonl:{out}")
    run.wait_registered()
    load = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        time.sleep(3)
        code = run.stop(signal.SIGTERM)
    finally:
        load.kill()
        load.wait()
    assert code == 0, run.stderr_text
    assert run.stopped_in_s < 15, f"stopping took {run.stopped_in_s:.1f} s"
    assert " 0 events lost" in run.stderr_text, run.stderr_text
    summary = summary_of(run_dir)
    receiver = summary["receiver"]
    assert isinstance(receiver, dict)
    assert receiver["kernel_lost"] == 0 and receiver["socket_overruns"] == 0
    events = read_events(out)
    loop_execs = [e for e in events if is_audit_event(e) and syscall_of(e) == "execve"
                  and e["process"].get("parent", {}).get("pid") == load.pid]
    assert len(loop_execs) > 50, f"only {len(loop_execs)} execs of the loop arrived"
    markers = [e for e in events if "auditstream-marker" in e.get("tags", [])]
    assert markers == []
