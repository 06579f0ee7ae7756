"""Kernel audit status, settings and rules, with a session that puts back what it changed.

`KernelSession` owns one NETLINK_AUDIT socket. `start()` registers our pid (records then
arrive on that socket: read them through `records_source()`), applies settings and rules and
writes down every change first in a state file, so that `restore()` -- or the next start
after a SIGKILL -- undoes exactly those changes: enabled flag, pid, settings, and only the
rules we added.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from receiver.netlink import AuditNetlink, NetlinkError, NetlinkSource
from receiver.rules import FILTER_PREPEND, KernelSettings, Rule, decode_rule

log = logging.getLogger(__name__)

AUDIT_GET, AUDIT_SET = 1000, 1001
AUDIT_ADD_RULE, AUDIT_DEL_RULE, AUDIT_LIST_RULES = 1011, 1012, 1013
STATUS = struct.Struct("=11I")
STATUS_BITS = {  # AUDIT_STATUS_* mask bit for each setting we may change
    "enabled": 0x01,
    "failure": 0x02,
    "pid": 0x04,
    "rate_limit": 0x08,
    "backlog_limit": 0x10,
    "backlog_wait_time": 0x20,
}
ENABLED_IMMUTABLE = 2
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """The kernel's `struct audit_status` (AUDIT_GET)."""

    mask: int
    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    feature_bitmap: int
    backlog_wait_time: int
    backlog_wait_time_actual: int

    @classmethod
    def from_payload(cls, payload: bytes) -> AuditStatus:
        """Decode an AUDIT_GET reply; older kernels send a shorter struct (zero-filled)."""
        return cls(*STATUS.unpack(payload[: STATUS.size].ljust(STATUS.size, b"\x00")))


class AuditHeld(RuntimeError):
    """Another live process holds the kernel's audit pid."""

    def __init__(self, pid: int, command: str, detail: str = "") -> None:
        message = f"the kernel audit pid is held by pid {pid} ({command})"
        super().__init__(f"{message}{': ' + detail if detail else ''}")
        self.pid = pid
        self.command = command


class KernelRefused(NetlinkError):
    """The kernel answered a rule or a setting with an error: the configuration is wrong
    for this kernel (a missing directory, a field combination it rejects), so a restart
    would fail the same way. The message names the rule's file:line and the reason."""


# What an errno from AUDIT_ADD_RULE means for the rule (auditctl only prints strerror).
RULE_ERRNO_HINTS = {
    errno.ENOENT: "a path it names with dir=, path= or -w, or that path's parent, does not exist",
    errno.EINVAL: "this kernel does not accept the rule's fields or their combination",
}


@dataclass(frozen=True, slots=True)
class StoppedHolder:
    """The audit PID's holder that `takeover` stopped (it is not started again by us)."""

    pid: int
    command: str
    comm: str
    # Its systemd unit (e.g. auditd.service) when it ran as one: how to start it again.
    unit: str = ""

    def start_hint(self) -> str:
        """How the user starts it again: its unit, else the command it ran."""
        return f"systemctl start {self.unit}" if self.unit else self.command


def process_comm(pid: int) -> str:
    """A process's comm (``auditd``), "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def systemd_unit(pid: int) -> str:
    """The systemd service a process runs in (its cgroup's last part), "" if none."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        last = line.rpartition("/")[2]
        if last.endswith(".service"):
            return last
    return ""


STATUS_FIELDS = tuple(f.name for f in fields(AuditStatus))


def process_command(pid: int) -> str | None:
    """The command line of a process (comm if it has none), None if it does not exist."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        comm = Path(f"/proc/{pid}/comm").read_bytes().strip()
    except OSError:
        return None
    text = cmdline.rstrip(b"\x00").replace(b"\x00", b" ") or b"[" + comm + b"]"
    return text.decode("utf-8", "backslashreplace")


def process_start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot), to tell a pid reused from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def boot_id() -> str:
    """This boot's id: a state file from an earlier boot describes nothing that still exists."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def get_status(conn: AuditNetlink) -> AuditStatus:
    """AUDIT_GET."""
    (reply,) = conn.request(AUDIT_GET, reply_type=AUDIT_GET)
    return AuditStatus.from_payload(reply.payload)


def set_status(conn: AuditNetlink, name: str, value: int) -> None:
    """AUDIT_SET of one setting (one request per setting, so we know which one failed)."""
    words = dict.fromkeys(STATUS_FIELDS, 0)
    words["mask"] = STATUS_BITS[name]
    words[name] = value
    conn.request(AUDIT_SET, STATUS.pack(*words.values()))


def list_rules(conn: AuditNetlink) -> list[bytes]:
    """AUDIT_LIST_RULES: each rule as the kernel's `struct audit_rule_data` bytes."""
    replies = conn.request(AUDIT_LIST_RULES, reply_type=AUDIT_LIST_RULES, multi=True)
    return [reply.payload for reply in replies]


@dataclass(slots=True)
class _Changes:
    """What this session changed: original settings by name, rules added, pid registered."""

    settings: dict[str, int]
    rules: list[str]  # hex of the encoded rule
    audit_pid: int = 0


class KernelSession:
    """Owns the unicast control socket; changes kernel audit state and puts it back."""

    def __init__(
        self, *, takeover: bool = False, state_path: Path | None = None,
        rcvbuf_bytes: int = 64 << 20, takeover_timeout_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.takeover = takeover
        self.state_path = state_path
        self.takeover_timeout_s = takeover_timeout_s
        self.immutable = False
        self.leftovers_restored = False
        self.stopped_holder: StoppedHolder | None = None  # who takeover stopped, if anyone
        self._conn = AuditNetlink(rcvbuf_bytes=rcvbuf_bytes)
        self._changes = _Changes({}, [])
        self._started = False

    def _open(self) -> AuditNetlink:
        self._conn.open()
        return self._conn

    def status(self) -> AuditStatus:
        """The kernel's audit status now (lost and backlog counters included)."""
        return get_status(self._open())

    def rules(self) -> list[Rule]:
        """Every rule the kernel has now, ours or not."""
        return [decode_rule(data) for data in list_rules(self._open())]

    def records_source(self) -> NetlinkSource:
        """A NetlinkSource reading this session's socket (where unicast records arrive)."""
        return NetlinkSource(multicast=False, connection=self._open())

    def start(self, *, pid: int, settings: KernelSettings, rules: list[Rule]) -> None:
        """Register `pid` (0: do not), apply settings, add rules, enable auditing.

        Raises AuditHeld if another live process holds the audit pid (unless takeover).
        In immutable mode (enabled 2) only the pid is registered; `self.immutable` is set.
        """
        if settings.enabled == ENABLED_IMMUTABLE:
            raise ValueError("enabled=2 would lock the audit configuration until reboot")
        conn = self._open()
        self._restore_leftovers()
        status = get_status(conn)
        if pid and status.pid and status.pid != pid:
            status = self._free_audit_pid(status)
        self._started = True
        if status.enabled == ENABLED_IMMUTABLE:
            self.immutable = True
            log.warning("audit configuration is immutable (enabled 2): settings and rules left")
            if pid:
                self._change_pid(pid)
            return
        for name in ("failure", "rate_limit", "backlog_limit", "backlog_wait_time"):
            wanted = getattr(settings, name)
            if wanted is not None and wanted != getattr(status, name):
                self._change_setting(name, wanted, getattr(status, name))
        if pid:
            self._change_pid(pid)
        for rule in rules:
            self._add_rule(rule)
        enabled = 1 if settings.enabled is None else settings.enabled
        if enabled != status.enabled:
            self._change_setting("enabled", enabled, status.enabled)

    def _free_audit_pid(self, status: AuditStatus) -> AuditStatus:
        """Deal with another holder: a dead one is replaced, a live one refused or stopped."""
        holder = status.pid
        command = process_command(holder)
        if command is None:
            return status  # dead holder: the kernel drops it when we register
        if not self.takeover:
            raise AuditHeld(holder, command)
        # Captured before the signal: afterwards /proc no longer has them.
        stopped = StoppedHolder(holder, command, process_comm(holder), systemd_unit(holder))
        # We do not start it again at our stop: say so now, and again then (the supervisor).
        log.warning(
            "taking over the audit pid: sending SIGTERM to %d (%s); it stays stopped when "
            "auditstream stops: start it again then with: %s",
            holder,
            command,
            stopped.start_hint(),
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGTERM)
        deadline = time.monotonic() + self.takeover_timeout_s
        while time.monotonic() < deadline:
            status = get_status(self._conn)
            if status.pid != holder or process_command(holder) is None:
                self.stopped_holder = stopped
                return status
            time.sleep(0.05)
        raise AuditHeld(holder, command, f"still holding {self.takeover_timeout_s} s after SIGTERM")

    def _change_setting(self, name: str, value: int, original: int) -> None:
        self._changes.settings.setdefault(name, original)
        self._save_state()  # write-ahead: a crash after the change still finds it
        try:
            set_status(self._conn, name, value)
        except NetlinkError as exc:
            if exc.errno == errno.ETIMEDOUT:  # no answer: not a refusal
                raise
            raise KernelRefused(
                exc.errno, f"the kernel refused {name} {value}: {os.strerror(exc.errno or 0)}"
            ) from None

    def _change_pid(self, pid: int) -> None:
        self._changes.audit_pid = pid
        self._save_state()
        set_status(self._conn, "pid", pid)

    def _add_rule(self, rule: Rule) -> None:
        encoded = rule.encode()
        self._changes.rules.append(encoded.hex())
        self._save_state()
        try:
            self._conn.request(AUDIT_ADD_RULE, encoded)
        except NetlinkError as exc:
            self._changes.rules.pop()  # not ours: the same rule was there, or it failed
            self._save_state()
            if exc.errno == errno.ETIMEDOUT:  # no answer: not a refusal
                raise NetlinkError(exc.errno, f"{rule.origin}: cannot add rule: {exc}") from None
            if exc.errno != errno.EEXIST:
                hint = RULE_ERRNO_HINTS.get(exc.errno or 0)
                raise KernelRefused(
                    exc.errno,
                    f"{rule.origin}: the kernel refused the rule: "
                    f"{os.strerror(exc.errno or 0)}{f' ({hint})' if hint else ''}",
                ) from None
            log.info("%s: rule already present, left to its owner", rule.origin)

    def quiesce(self, conn: AuditNetlink | None = None) -> None:
        """Stop new records (put the enabled flag back) but stay registered.

        What the kernel already queued for us is still delivered, so the receiver can
        drain it before restore() unregisters the PID (unregistering first loses it).
        """
        if not self._started or "enabled" not in self._changes.settings:
            return
        # `conn`: a second socket, whose reply is not queued behind our records.
        set_status(conn or self._open(), "enabled", self._changes.settings.pop("enabled"))
        self._save_state()

    def restore(self) -> None:
        """Put back what start() changed. Idempotent; failures are logged, then raised."""
        if not self._started:
            return
        errors = _undo(self._open(), self._changes, os.getpid())
        if errors:
            raise NetlinkError(errors[0].errno, "; ".join(str(e) for e in errors))
        self._changes = _Changes({}, [])
        self._started = False
        self._remove_state()

    def close(self) -> None:
        """Restore, then close the socket."""
        try:
            self.restore()
        finally:
            self._conn.close()

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the state file: what a SIGKILLed session changed -------------------------------

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        state = {
            "version": STATE_VERSION,
            "owner_pid": os.getpid(),
            "owner_start": process_start_time(os.getpid()),
            "boot_id": boot_id(),
            **asdict(self._changes),
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_path)

    def _remove_state(self) -> None:
        if self.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    def _restore_leftovers(self) -> None:
        """Undo what a dead session wrote down in our state file, then remove the file."""
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
            owner, owner_start = int(state["owner_pid"]), state.get("owner_start")
            changes = _Changes(
                {str(k): int(v) for k, v in state["settings"].items()},
                [str(r) for r in state["rules"]],
                int(state.get("audit_pid", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("ignoring unreadable kernel state file %s: %s", self.state_path, exc)
            self._remove_state()
            return
        if state.get("boot_id") != boot_id():
            self._remove_state()  # from an earlier boot: the kernel has forgotten it all
            return
        if owner != os.getpid() and process_start_time(owner) == owner_start:
            command = process_command(owner) or "?"
            raise AuditHeld(owner, command, f"a live session owns {self.state_path}")
        log.warning("restoring kernel audit state left by dead pid %d", owner)
        errors = _undo(self._conn, changes, owner)
        for error in errors:
            log.error("leftover restore: %s", error)
        self.leftovers_restored = True
        self._remove_state()


def _deletion(encoded: bytes) -> bytes:
    """The AUDIT_DEL_RULE form of an added rule: without the prepend flag (the kernel does
    not find a rule to delete when it is set, as auditctl -d knows)."""
    flags = int.from_bytes(encoded[:4], sys.byteorder) & ~FILTER_PREPEND
    return flags.to_bytes(4, sys.byteorder) + encoded[4:]


def _undo(conn: AuditNetlink, changes: _Changes, owner_pid: int) -> list[NetlinkError]:
    """Undo `changes` made by `owner_pid`: enabled first, then rules, settings, pid."""
    errors: list[NetlinkError] = []

    def attempt(what: str, name: str, *args: Any) -> None:
        try:
            if name == "rule":
                conn.request(AUDIT_DEL_RULE, _deletion(bytes.fromhex(args[0])))
            else:
                set_status(conn, name, args[0])
        except NetlinkError as exc:
            if not (name == "rule" and exc.errno == errno.ENOENT):  # already gone is fine
                errors.append(NetlinkError(exc.errno, f"{what}: {exc}"))

    settings = dict(changes.settings)
    if "enabled" in settings:
        attempt("restore enabled", "enabled", settings.pop("enabled"))
    for rule_hex in reversed(changes.rules):
        attempt("delete rule", "rule", rule_hex)
    for name, value in settings.items():
        attempt(f"restore {name}", name, value)
    if changes.audit_pid:
        holder = get_status(conn).pid
        if holder in (changes.audit_pid, owner_pid):
            # Only the holder may unregister; a dead holder is dropped by the kernel first.
            attempt("unregister audit pid", "pid", 0)
    return errors
