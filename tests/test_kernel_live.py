"""Live kernel audit tests: status, rules, unicast and multicast records, holders, leftovers.

Root and the kernel audit subsystem are needed; auditctl is the independent witness. The
tests take a file lock (one kernel test at a time on the machine), insist on a clean kernel
(no pid holder, no rules) and check it is left exactly as found.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import LOCK_PATH, auditctl, kernel_status

from receiver.kernel import AuditHeld, AuditStatus, KernelSession
from receiver.netlink import NetlinkSource
from receiver.rules import KernelSettings, Rule, load_rules, parse_rules

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RULES = REPO / "deploy" / "rules" / "default.rules"
WATCH_AND_FILTER_RULES = """\
-w /etc/passwd -p wa -k identity
-w /tmp -k tmpdir
-a always,exit -F arch=b64 -S openat -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access
-A exit,always -F arch=b64 -S all -F path=/etc/shadow -F perm=r -k shadow
-a always,exit -F arch=b32 -S 11 -F exe=/usr/bin/true -F success=1
-a never,exclude -F msgtype=CWD
-a always,task -F uid=0
"""
EVENT_TYPES = {1300, 1309, 1307, 1302, 1327, 1320}  # SYSCALL EXECVE CWD PATH PROCTITLE EOE


@pytest.fixture(scope="module", autouse=True)
def clean_kernel() -> Iterator[dict[str, int]]:
    """Serialise kernel tests, require a clean kernel, and check it is left as found."""
    if os.geteuid() != 0:
        pytest.skip("needs root for the kernel audit subsystem")
    if shutil.which("auditctl") is None:
        pytest.skip("auditctl (package auditd) is not installed")
    try:
        with KernelSession() as probe:
            probe.status()
    except OSError as exc:
        pytest.skip(f"NETLINK_AUDIT cannot be used here: {exc}")
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = kernel_status()
        if found["pid"] != 0 or auditctl("-l").strip() != "No rules" or found["enabled"] == 2:
            pytest.skip("kernel audit is in use (pid holder, rules or immutable): not clean")
        yield found
        after = kernel_status()
        assert (after["pid"], after["enabled"]) == (0, found["enabled"])
        assert after["backlog_limit"] == found["backlog_limit"]
        assert auditctl("-l").strip() == "No rules"


@pytest.fixture
def sessions() -> Iterator[list[KernelSession]]:
    """Sessions made by a test; each is closed (restored) even when the test fails."""
    made: list[KernelSession] = []
    yield made
    for session in reversed(made):
        session.close()


def own_children_exec_rule() -> list[Rule]:
    """An execve rule limited to our children, so other processes' events stay out."""
    line = f"-a always,exit -F arch=b64 -S execve -F ppid={os.getpid()} -k auditstream-test"
    return parse_rules([line.encode()]).rules


def collect_event(source: NetlinkSource, child_pid: int) -> list[tuple[int, bytes, str]]:
    """Read records until the EOE of the event whose SYSCALL names `child_pid` (5 s at most)."""
    deadline = time.monotonic() + 5
    seen: list[tuple[int, bytes, str]] = []
    serial: bytes | None = None
    while time.monotonic() < deadline:
        for record in source.read_records(1000):
            seen.append(record)
            if record[0] == 1300 and f" pid={child_pid} ".encode() in record[1]:
                serial = record[1].split(b")", 1)[0]
        if serial is not None:
            event = [r for r in seen if r[1].startswith(serial + b")")]
            if any(r[0] == 1320 for r in event):
                return event
        time.sleep(0.02)
    raise AssertionError(f"no complete event for pid {child_pid} in {len(seen)} records")


def run_true() -> int:
    """Run /bin/true as our child and return its pid."""
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    return child.pid


def test_status_matches_auditctl() -> None:
    """AUDIT_GET gives what `auditctl -s` prints."""
    with KernelSession() as session:
        status = session.status()
    printed = kernel_status()
    for name in ("enabled", "failure", "pid", "rate_limit", "backlog_limit", "backlog_wait_time"):
        assert getattr(status, name) == printed[name], name
    assert isinstance(status, AuditStatus)


def test_rule_listing_equals_auditctl_and_restore_keeps_others(
    sessions: list[KernelSession], tmp_path: Path, clean_kernel: dict[str, int]
) -> None:
    """Our encoder and `auditctl -R` give the same `auditctl -l`; restore removes only ours."""
    watch_file = tmp_path / "watch.rules"
    watch_file.write_text(WATCH_AND_FILTER_RULES)
    rules = load_rules(DEFAULT_RULES).rules + load_rules(watch_file).rules
    session = KernelSession()
    sessions.append(session)
    session.start(pid=0, settings=KernelSettings(enabled=clean_kernel["enabled"]), rules=rules)
    ours = auditctl("-l")
    session.restore()
    assert auditctl("-l").strip() == "No rules"

    rule_lines = [
        line
        for line in (DEFAULT_RULES.read_text() + WATCH_AND_FILTER_RULES).splitlines()
        if line.startswith(("-a", "-A", "-w"))  # settings lines would change the kernel
    ]
    reference = tmp_path / "reference.rules"
    reference.write_text("\n".join(rule_lines) + "\n")
    try:
        auditctl("-R", str(reference))
        theirs = auditctl("-l")
    finally:
        auditctl("-D")
    assert ours == theirs
    assert len(ours.splitlines()) == len(rules)

    preexisting = "-a always,exit -F arch=b64 -S chdir -F key=preexisting"
    auditctl(*preexisting.split())
    try:
        mine = parse_rules([preexisting.encode(), b"-w /etc/hosts -p w -k mine"]).rules
        session = KernelSession()
        sessions.append(session)
        session.start(pid=0, settings=KernelSettings(enabled=clean_kernel["enabled"]), rules=mine)
        assert len(auditctl("-l").splitlines()) == 2
        session.restore()
        assert auditctl("-l").strip() == preexisting
    finally:
        auditctl("-d", *preexisting.split()[1:])


def test_unicast_records_of_an_exec(sessions: list[KernelSession]) -> None:
    """With our pid registered, the records of a /bin/true exec arrive through read_records."""
    session = KernelSession()
    sessions.append(session)
    session.start(pid=os.getpid(), settings=KernelSettings(), rules=own_children_exec_rule())
    status = session.status()
    assert (status.pid, status.enabled) == (os.getpid(), 1)
    source = session.records_source()
    source.open()
    event = collect_event(source, run_true())
    assert {r[0] for r in event} >= EVENT_TYPES
    assert all(node == "" for _, _, node in event)
    assert any(b'a0="/bin/true"' in data for kind, data, _ in event if kind == 1309)


def test_multicast_sees_the_same_records(sessions: list[KernelSession]) -> None:
    """A multicast reader next to our unicast session receives the same records."""
    multicast = NetlinkSource(multicast=True)
    multicast.open()
    try:
        session = KernelSession()
        sessions.append(session)
        session.start(pid=os.getpid(), settings=KernelSettings(), rules=own_children_exec_rule())
        unicast = session.records_source()
        child = run_true()
        from_unicast = collect_event(unicast, child)
        from_multicast = collect_event(multicast, child)
        assert from_multicast == from_unicast
        assert multicast.overruns == 0
    finally:
        multicast.close()


HOLDER = """
import os, signal, sys, time
from pathlib import Path
from receiver.kernel import KernelSession
from receiver.rules import KernelSettings, parse_rules
state = Path(sys.argv[1]) if len(sys.argv) > 1 else None
session = KernelSession(state_path=state)
rules = parse_rules([b"-a always,exit -F arch=b64 -S chdir -k auditstream-holder"]).rules
session.start(pid=os.getpid(), settings=KernelSettings(backlog_limit=4321), rules=rules)
def stop(signum, frame):
    session.close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def start_holder(*args: str) -> subprocess.Popen[str]:
    """Start a python child that holds the audit pid with our own KernelSession."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_audit_held_then_takeover(sessions: list[KernelSession]) -> None:
    """A second session refuses a live holder naming its pid and command; takeover replaces it."""
    holder = start_holder()
    try:
        refused = KernelSession()
        sessions.append(refused)
        with pytest.raises(AuditHeld) as caught:
            refused.start(pid=os.getpid(), settings=KernelSettings(), rules=[])
        assert caught.value.pid == holder.pid
        assert "python" in caught.value.command and "KernelSession" in caught.value.command
        assert refused.status().pid == holder.pid

        taker = KernelSession(takeover=True)
        sessions.append(taker)
        taker.start(pid=os.getpid(), settings=KernelSettings(), rules=[])
        assert taker.status().pid == os.getpid()
        assert holder.wait(timeout=5) == 0  # it got SIGTERM and restored its own changes
        assert auditctl("-l").strip() == "No rules"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.__exit__(None, None, None)  # waits and closes its stdout pipe


def test_sigkill_leftovers_are_restored(
    sessions: list[KernelSession], tmp_path: Path, clean_kernel: dict[str, int]
) -> None:
    """A SIGKILLed session's rules, settings and pid are undone by the next start."""
    state = tmp_path / "run" / "kernel-state.json"
    with start_holder(str(state)) as holder:
        os.kill(holder.pid, signal.SIGKILL)
    assert "auditstream-holder" in auditctl("-l")
    assert kernel_status()["backlog_limit"] == 4321
    assert state.exists()

    session = KernelSession(state_path=state)
    sessions.append(session)
    session.start(pid=os.getpid(), settings=KernelSettings(), rules=[])
    assert session.leftovers_restored
    assert auditctl("-l").strip() == "No rules"
    status = kernel_status()
    assert status["pid"] == os.getpid()
    assert status["backlog_limit"] == clean_kernel["backlog_limit"]
    session.restore()
    assert not state.exists()
    assert kernel_status()["pid"] == 0
