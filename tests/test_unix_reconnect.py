"""`run --source unix:PATH` when auditd restarts, with stand-in auditd sockets (no kernel).

A stopping auditd closes its plugin's connection first and exits a moment later: until it
has, its listening socket still takes a connection, which its exit then resets. That is
not auditd back: one restart is one ``source-reconnected`` marker, counted once, however
the stop goes (the real auditd: tests/test_auditd_plugin.py).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from live_helpers import REPO, read_events, wait_for_events

NORMAL_LOG = REPO / "tests" / "corpus" / "go-libaudit" / "testdata" / "normal.log"


def listen(path: Path) -> socket.socket:
    """A stand-in for auditd's af_unix plugin socket at ``path``."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(20)
    return server


def line_with_serial(serial: int) -> bytes:
    """A lone USER record with ``serial``: an event of its own."""
    return (
        f"type=USER_END msg=audit(1700000100.000:{serial}): pid=1 uid=0 auid=0 ses=1 "
        f'msg=\'op=PAM:session_close acct="root" exe="/usr/sbin/sshd" res=success\'\n'
    ).encode()


def test_a_stopping_auditds_socket_is_not_a_reconnect(tmp_path: Path) -> None:
    """The old auditd's socket takes our connection and resets it as it exits; the new
    one's holds: one marker, `reconnects` 1, and the new auditd's lines after it."""
    path = tmp_path / "audispd_events"
    out = tmp_path / "o.jsonl"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nsource = "unix:{path}"\n')
    old = listen(path)
    run = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "run", "-c", str(conf), "--sink", f"jsonl:{out}"],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        first, _ = old.accept()
        first.sendall(NORMAL_LOG.read_bytes())
        assert wait_for_events(out, lambda d: d["event"].get("sequence") == 62, timeout_s=20)
        first.close()  # the stopping auditd ends its plugin's connection first...
        time.sleep(0.3)  # ...our reconnect lands in its listen queue meanwhile...
        old.close()  # ...and its exit resets it
        time.sleep(0.3)
        new = listen(path)
        second, _ = new.accept()
        second.sendall(line_with_serial(70001))
        assert wait_for_events(out, lambda d: d["event"].get("sequence") == 70001, timeout_s=20)
        second.close()
        new.close()
    finally:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    text = stderr.decode(errors="replace")
    assert run.returncode == 0, text
    markers = [d for d in read_events(out) if d["event"].get("action") == "source-reconnected"]
    assert len(markers) == 1, text
    assert text.count("connected again to") == 1, text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["receiver"]["reconnects"] == 1
