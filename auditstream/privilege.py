"""Least privilege: Linux capabilities (capget/capset/prctl through ctypes) and the stage user.

Only the receiver talks to the kernel's audit subsystem. Run as root, it keeps
CAP_AUDIT_CONTROL (rules, settings, status polls, restoring the kernel at exit) and
CAP_AUDIT_READ (the multicast group) once its netlink sockets are open, and nothing else;
it stays uid 0 because the kernel checks capabilities, not the uid, and because its files
(kernel state, status, --record) are root's. Assembler and tree keeper need no privilege:
with ``[runtime] user`` they run as that user with no capabilities at all.

Capabilities belong to threads: capset() changes the calling thread only. Limits that must
hold for a whole process are therefore applied before it starts any thread -- at exec, by
the supervisor (`limit_for_exec`, `become`) -- and the receiver's own drop after its setup
(`keep_only`) narrows its main thread further.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import logging
import os
import pwd
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditstream.config import Config

log = logging.getLogger("auditstream.privilege")

# Capability numbers (linux/capability.h); the names are the kernel's, lower-cased.
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
    "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
CAP_DAC_READ_SEARCH = 2
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_NICE = 23
CAP_AUDIT_CONTROL = 30
CAP_AUDIT_READ = 37

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Sockets and files the unprivileged stages create are for their group, never for others.
STAGE_UMASK = 0o007


def cap_mask(caps: Iterable[int]) -> int:
    """The bit mask of capability numbers, as /proc/PID/status and capget() show it."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def cap_names(mask: int) -> list[str]:
    """``cap_audit_control``-style names of the bits set in ``mask``."""
    return [
        f"cap_{CAP_NAMES[bit]}" if bit < len(CAP_NAMES) else f"cap_{bit}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    ]


# The receiver's capabilities per source: at exec (what its setup needs) and after setup.
# netlink/multicast: CAP_NET_ADMIN only for SO_RCVBUFFORCE (a 64 MiB socket buffer) while
# the sockets are opened, CAP_SYS_NICE only for [receiver] priority_boost. file:
# CAP_DAC_READ_SEARCH, so replay as root reads any file it is given. stdin and unix:PATH
# need nothing (auditd's socket is root's own).
AUDIT_CAPS = cap_mask((CAP_AUDIT_CONTROL, CAP_AUDIT_READ))
NETLINK_SETUP_CAPS = AUDIT_CAPS | cap_mask((CAP_NET_ADMIN, CAP_SYS_NICE))


def receiver_exec_caps(source: str) -> int:
    """What the receiver may hold from its start, for this source."""
    if source in ("netlink", "multicast"):
        return NETLINK_SETUP_CAPS
    if source == "file":
        return cap_mask((CAP_DAC_READ_SEARCH,))
    return 0


def receiver_kept_caps(source: str) -> int:
    """What the receiver keeps once its source is open."""
    if source in ("netlink", "multicast"):
        return AUDIT_CAPS
    return receiver_exec_caps(source)


@dataclass(frozen=True, slots=True)
class ThreadCaps:
    """The credentials one /proc/PID/status (or /proc/PID/task/TID/status) shows."""

    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int
    no_new_privs: bool
    uid: int  # effective uid
    gid: int  # effective gid
    groups: tuple[int, ...]


def parse_proc_status(text: str) -> ThreadCaps:
    """Read the Cap*, NoNewPrivs, Uid, Gid and Groups lines of a /proc status file."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()
    try:
        return ThreadCaps(
            inheritable=int(fields["CapInh"], 16),
            permitted=int(fields["CapPrm"], 16),
            effective=int(fields["CapEff"], 16),
            bounding=int(fields["CapBnd"], 16),
            ambient=int(fields.get("CapAmb", "0"), 16),
            no_new_privs=fields.get("NoNewPrivs", "0") == "1",
            uid=int(fields["Uid"].split()[1]),
            gid=int(fields["Gid"].split()[1]),
            groups=tuple(int(g) for g in fields.get("Groups", "").split()),
        )
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"not a /proc status text with capability lines: {err!r}") from err


def thread_caps(pid: int | None = None, tid: int | None = None) -> ThreadCaps:
    """The capability sets of a thread (default: the calling thread)."""
    if pid is None:
        path = Path("/proc/thread-self/status")
    else:
        path = Path(f"/proc/{pid}/task/{tid or pid}/status")
    return parse_proc_status(path.read_text())


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


# --- the system calls ---------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


@dataclass(frozen=True, slots=True)
class CapSets:
    """The calling thread's three capget() sets as 64-bit masks."""

    effective: int
    permitted: int
    inheritable: int


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def capget() -> CapSets:
    """capget(2) of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return CapSets(
        effective=data[0].effective | data[1].effective << 32,
        permitted=data[0].permitted | data[1].permitted << 32,
        inheritable=data[0].inheritable | data[1].inheritable << 32,
    )


def capset(sets: CapSets) -> None:
    """capset(2) of the calling thread (lowering needs no privilege; raising is refused)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        shift = 32 * word
        data[word].effective = sets.effective >> shift & 0xFFFFFFFF
        data[word].permitted = sets.permitted >> shift & 0xFFFFFFFF
        data[word].inheritable = sets.inheritable >> shift & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    libc = _libc()
    result: int = libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3),
        ctypes.c_ulong(0), ctypes.c_ulong(0),
    )  # fmt: skip
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}): {os.strerror(err)}")
    return result


PR_SET_PDEATHSIG = 1


def signal_on_parent_death(signum: int) -> None:
    """Ask the kernel to send ``signum`` when the parent (the supervisor) dies."""
    _prctl(PR_SET_PDEATHSIG, signum)


def drop_bounding(keep: int) -> list[str]:
    """Remove every capability not in ``keep`` from the calling thread's bounding set."""
    errors = []
    for cap in range(last_cap() + 1):
        try:
            if not keep >> cap & 1 and _prctl(PR_CAPBSET_READ, cap):
                _prctl(PR_CAPBSET_DROP, cap)
        except OSError as err:
            errors.append(f"cannot drop {cap_names(1 << cap)[0]} from the bounding set: {err}")
    return errors


def forbid_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec (setuid binary, file capabilities) can give any back."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def clear_ambient() -> None:
    """Empty the ambient set (capabilities that would survive an exec as non-root)."""
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


# --- the receiver -------------------------------------------------------------------------


@dataclass(slots=True)
class DropResult:
    """What `keep_only` did: the sets it left and the steps that failed."""

    permitted: int = 0
    bounding_limited: bool = False
    skipped: str = ""  # why nothing was done
    errors: list[str] = field(default_factory=list)


def keep_only(keep: int) -> DropResult:
    """Keep exactly ``keep`` (of what is held) in the calling thread's effective and permitted
    sets, none inheritable or ambient, and drop the rest from its bounding set.

    Never raises: a failed step is reported in ``errors`` (the caller logs and counts it).
    The bounding set can only shrink with CAP_SETPCAP; without it (the supervisor already
    limited it at exec) the bounding set is left, and no_new_privs makes it moot.
    """
    try:
        before = capget()
    except OSError as err:
        return DropResult(errors=[str(err)])
    if before.permitted & ~keep == 0 and before.inheritable == 0 and os.geteuid() != 0:
        log.debug("not root and no capabilities beyond the needed ones: nothing to drop")
        return DropResult(permitted=before.permitted, skipped="nothing to drop")
    result = DropResult()
    kept = keep & before.permitted
    try:
        clear_ambient()
    except OSError as err:
        result.errors.append(f"clear ambient capabilities: {err}")
    if before.effective >> CAP_SETPCAP & 1:
        result.bounding_limited = True
        result.errors.extend(drop_bounding(keep))
    try:
        capset(CapSets(kept, kept, 0))
    except OSError as err:
        result.errors.append(str(err))
    try:
        forbid_new_privileges()
    except OSError as err:
        result.errors.append(f"set no_new_privs: {err}")
    try:
        result.permitted = capget().permitted
    except OSError as err:
        result.errors.append(str(err))
    missing = keep & ~result.permitted
    if missing:
        result.errors.append(f"needed but not held: {', '.join(cap_names(missing))}")
    return result


def limit_for_exec(keep: int) -> None:
    """Before exec of a root process (Popen preexec_fn): after exec it holds at most ``keep``.

    Root's permitted set after exec is its bounding set (plus inheritable and ambient, both
    emptied here), so every thread the new program starts is limited too. Best effort: in
    the child between fork and exec nothing can be reported; without CAP_SETPCAP the
    supervisor logs that once (`can_limit_bounding`) and the receiver's own drop still applies.
    """
    for step in (clear_ambient, lambda: drop_bounding(keep), forbid_new_privileges):
        with contextlib.suppress(OSError):
            step()
    with contextlib.suppress(OSError):
        sets = capget()
        capset(CapSets(sets.effective, sets.permitted, 0))


def limit_in_place(keep: int) -> None:
    """In a forked stage that will not exec: hold at most ``keep`` from now on.

    What `limit_for_exec` and the exec give a root process, without the exec: bounding,
    ambient and inheritable sets limited as there, and the effective and permitted sets
    cut to ``keep`` (after exec, root's permitted set is its bounding set). Called before
    the stage starts any thread, so its threads inherit the limit. Best effort like
    `limit_for_exec` for the bounding set (CAP_SETPCAP); the capset cannot fail (it only
    lowers)."""
    for step in (clear_ambient, lambda: drop_bounding(keep), forbid_new_privileges):
        with contextlib.suppress(OSError):
            step()
    sets = capget()
    capset(CapSets(sets.effective & keep, sets.permitted & keep, 0))


def can_limit_bounding() -> bool:
    """True if this process may shrink bounding sets (CAP_SETPCAP effective)."""
    try:
        return bool(capget().effective >> CAP_SETPCAP & 1)
    except OSError:
        return False


# --- the stage user -----------------------------------------------------------------------


class AccountError(ValueError):
    """``[runtime].user`` or ``.group`` does not name a usable account; ``key`` says which."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged user and group the assembler(s) and tree keeper run as."""

    user: str
    group: str
    uid: int
    gid: int


def resolve_account(user: str, group: str = "") -> Account:
    """Look up ``user`` (and ``group``, default the user's primary group) in this host's database."""
    if not user:
        raise AccountError("group", f"group {group!r} is set but user is not; set both")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise AccountError("user", f"no such user {user!r} on this host") from None
    if entry.pw_uid == 0:
        raise AccountError(
            "user", f"{user!r} is uid 0; name an unprivileged user, or leave it empty"
        )
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise AccountError("group", f"no such group {group!r} on this host") from None
    else:
        gid = entry.pw_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    return Account(user=user, group=group, uid=entry.pw_uid, gid=gid)


def become(account: Account) -> None:
    """Popen preexec_fn of an unprivileged stage: drop every capability, then switch user.

    Bounding set emptied and no_new_privs set first (while still root), so no exec can give
    privileges back; then no supplementary groups, the group, the user -- setresuid away
    from 0 without PR_SET_KEEPCAPS clears the permitted and effective sets.
    """
    clear_ambient()
    drop_bounding(0)  # best effort: no_new_privs below already forbids regaining
    forbid_new_privileges()
    _prctl(PR_SET_KEEPCAPS, 0)
    os.setgroups([])
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)


def access_problems(account: Account, checks: list[tuple[Path, int]]) -> list[str]:
    """Which of ``(path, os.access mode)`` the account would be refused, as messages.

    Asked in a forked child that has switched to the account, so the kernel's own rules
    (ACLs, every directory on the way) decide, not a re-implementation of them.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)
            refused = [str(i) for i, (path, mode) in enumerate(checks) if not os.access(path, mode)]
            os.write(write_end, " ".join(refused).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return [f"could not check access as user {account.user}"]
    wanted = {os.R_OK: "read", os.W_OK: "write", os.X_OK: "execute"}
    problems = []
    for index in answer.split():
        path, mode = checks[int(index)]
        how = "/".join(name for bit, name in wanted.items() if mode & bit)
        problems.append(f"{path}: user {account.user} (uid {account.uid}) may not {how} it")
    return problems


# --- the supervisor's plan ----------------------------------------------------------------

# What an unprivileged stage must be able to read: the interpreter's packages and ours.
_STAGE_MODULES = ("auditstream", "zmq", "msgpack", "orjson", "pythonjsonlogger")


@dataclass(frozen=True, slots=True)
class SpawnPrivileges:
    """How a supervisor running as root starts each stage."""

    receiver_caps: int
    account: Account | None

    def popen_options(self, stage: str) -> dict[str, Any]:
        """Extra subprocess.Popen arguments for ``stage`` (receiver, assembler-N, treekeeper)."""
        if stage == "receiver":
            options: dict[str, Any] = {"preexec_fn": partial(limit_for_exec, self.receiver_caps)}
            if self.account is not None:
                # Root without CAP_DAC_OVERRIDE reaches the stages' sockets through their group.
                options["extra_groups"] = [self.account.gid]
            return options
        if self.account is None:
            return {}  # without [runtime] user the other stages run as before (root)
        return {"preexec_fn": partial(become, self.account), "umask": STAGE_UMASK}

    def fork_setup(self, stage: str) -> Callable[[], None] | None:
        """What a stage forked without exec (auditstream/stagefork.py) runs first to hold
        what :meth:`popen_options` would give it; None where only an exec can (a stage user:
        its groups, umask and switch are left to Popen, as they always were)."""
        if self.account is not None:
            return None
        if stage == "receiver":
            return partial(limit_in_place, self.receiver_caps)
        return no_setup


def no_setup() -> None:
    """A forked stage that holds what its supervisor holds: nothing to set up."""


def spawn_privileges(cfg: Config) -> SpawnPrivileges | None:
    """The plan for this configuration, or None when not root (nothing to drop or switch)."""
    if os.geteuid() != 0:
        if cfg.runtime.user:
            log.debug("not root: [runtime].user ignored, every stage runs as this user")
        return None
    account = resolve_account(cfg.runtime.user, cfg.runtime.group) if cfg.runtime.user else None
    if not can_limit_bounding():
        log.warning("no CAP_SETPCAP: the receiver's threads are not limited at exec")
    return SpawnPrivileges(receiver_caps=receiver_exec_caps(cfg.receiver.source), account=account)


def _writable_target(path: Path) -> list[tuple[Path, int]]:
    """Checks for a file a stage creates, appends to and rotates in its directory."""
    checks = [(path.parent, os.W_OK | os.X_OK)]
    if path.exists():
        checks.append((path, os.W_OK))
    return checks


def stage_account_problems(cfg: Config, account: Account) -> list[str]:
    """What would stop the stages from running as ``account``: the interpreter, the packages,
    the sink files, the tree keeper's state file."""
    checks: list[tuple[Path, int]] = [(Path(sys.executable), os.X_OK)]
    for name in _STAGE_MODULES:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        origin = getattr(module, "__file__", None)
        if origin:
            checks.append((Path(origin).parent, os.R_OK | os.X_OK))
    for table in cfg.sinks:
        target = table.get("path")
        if table.get("type") in ("jsonl", "file") and isinstance(target, str) and target != "-":
            checks += _writable_target(Path(target).absolute())
    if cfg.treekeeper.state_file:
        checks += _writable_target(Path(cfg.treekeeper.state_file).absolute())
    if cfg.runtime.dir:  # the stages must reach it (the default places are /run and /tmp)
        parent = Path(cfg.runtime.dir).absolute().parent
        while not parent.exists():
            parent = parent.parent
        checks.append((parent, os.X_OK))
    return access_problems(account, checks)


def share_with_group(path: Path, account: Account, mode: int) -> None:
    """Make a root-owned file or directory ``root:<group>`` with ``mode``."""
    os.chown(path, 0, account.gid)
    os.chmod(path, mode)
