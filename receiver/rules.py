"""Audit rules in auditctl syntax, encoded natively as the kernel's `struct audit_rule_data`.

We follow auditctl 3.0.9 (Debian's): the same line syntax, the same checks, and byte for
byte the same encoding (tests compare with libaudit and with what the kernel lists back).
Kernel facts (field ids, operators, struct layout) come from include/uapi/linux/audit.h.
"""

from __future__ import annotations

import errno
import grp
import os
import platform
import pwd
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from auditstream.record_types import NUMBER_BY_NAME
from receiver.logsource import SourceError
from receiver.syscall_numbers import AUDIT_ARCHES, SYSCALL_NUMBERS

if TYPE_CHECKING:
    from auditstream.config import Config

# What a unicast `run` loads when the config names no rules files.
DEFAULT_RULES = Path(__file__).with_name("default.rules")

# Filter lists (rule flags) and actions.
FILTER_USER, FILTER_TASK, FILTER_EXIT, FILTER_EXCLUDE, FILTER_FS = 0x00, 0x01, 0x04, 0x05, 0x06
FILTER_PREPEND = 0x10
FILTER_NAMES = {
    "user": FILTER_USER,
    "task": FILTER_TASK,
    "exit": FILTER_EXIT,
    "exclude": FILTER_EXCLUDE,
    "filesystem": FILTER_FS,
}
ACTION_NEVER, ACTION_ALWAYS = 0, 2
ACTION_NAMES = {"never": ACTION_NEVER, "always": ACTION_ALWAYS}

# Operators, longest first: the first one found in the pair splits it (as libaudit does).
OP_BIT_MASK, OP_LT, OP_GT, OP_NE, OP_EQ = 0x08000000, 0x10000000, 0x20000000, 0x30000000, 0x40000000
OPERATORS: tuple[tuple[str, int], ...] = (
    ("!=", OP_NE),
    (">=", OP_GT | OP_EQ),
    ("<=", OP_LT | OP_EQ),
    ("&=", OP_BIT_MASK | OP_EQ),
    ("=", OP_EQ),
    (">", OP_GT),
    ("<", OP_LT),
    ("&", OP_BIT_MASK),
)

OPERATOR_CHARS = "=!<>&"
OPERATORS_AS_LISTED = "=, !=, <, >, <=, >=, &, &="  # auditctl(8)'s order, for messages

PERM_EXEC, PERM_WRITE, PERM_READ, PERM_ATTR = 1, 2, 4, 8
PERM_LETTERS = {"x": PERM_EXEC, "w": PERM_WRITE, "r": PERM_READ, "a": PERM_ATTR}

# Field ids (linux/audit.h) by auditctl name.
FIELD_IDS: dict[str, int] = {
    "pid": 0, "uid": 1, "euid": 2, "suid": 3, "fsuid": 4, "gid": 5, "egid": 6, "sgid": 7,
    "fsgid": 8, "auid": 9, "loginuid": 9, "pers": 10, "arch": 11, "msgtype": 12,
    "subj_user": 13, "subj_role": 14, "subj_type": 15, "subj_sen": 16, "subj_clr": 17,
    "ppid": 18, "obj_user": 19, "obj_role": 20, "obj_type": 21, "obj_lev_low": 22,
    "obj_lev_high": 23, "sessionid": 25, "fstype": 26, "devmajor": 100, "devminor": 101,
    "inode": 102, "exit": 103, "success": 104, "path": 105, "perm": 106, "dir": 107,
    "filetype": 108, "obj_uid": 109, "obj_gid": 110, "exe": 112, "saddr_fam": 113,
    "a0": 200, "a1": 201, "a2": 202, "a3": 203, "key": 210,
}  # fmt: skip
F_ARCH, F_MSGTYPE, F_PPID, F_KEY = 11, 12, 18, 210
F_WATCH, F_PERM, F_DIR, F_EXE = 105, 106, 107, 112
F_EXIT, F_SUCCESS, F_INODE, F_FILETYPE, F_FSTYPE, F_SESSIONID = 103, 104, 102, 108, 26, 25
UID_FIELDS = frozenset({1, 2, 3, 4, 9, 109})
GID_FIELDS = frozenset({5, 6, 7, 8, 110})
STRING_FIELDS = frozenset({13, 14, 15, 16, 17, 19, 20, 21, 22, 23, F_WATCH, F_DIR, F_EXE, F_KEY})
EXIT_ONLY_FIELDS = frozenset({19, 20, 21, 22, 23, F_WATCH, F_DIR, F_EXIT, F_SUCCESS, F_FILETYPE,
                              F_PPID, 100, 101, F_INODE})  # fmt: skip
FILE_TYPES = {"socket": 0o140000, "link": 0o120000, "file": 0o100000, "block": 0o060000,
              "dir": 0o040000, "character": 0o020000, "fifo": 0o010000}  # fmt: skip
FS_TYPES = {"debugfs": 0x64626720, "tracefs": 0x74726163}

ENABLED_IMMUTABLE = 2  # -e 2: the audit configuration locked until reboot
FAILURE_PANIC = 2  # -f 2: the kernel panics when it loses audit records

MAX_FIELDS = 64
BITMASK_WORDS = 64
MAX_KEY_LEN = 256
PATH_MAX = 4096
NAME_MAX = 255
KEY_SEPARATOR = "\x01"
UNSET_ID = 0xFFFFFFFF
RULE_HEADER = struct.Struct(f"=3I{BITMASK_WORDS}I{MAX_FIELDS}I{MAX_FIELDS}I{MAX_FIELDS}II")

# b64/b32 are relative to the machine we run on; auditctl's default table is the machine's.
_MACHINE_ARCHES = {"x86_64": ("x86_64", "i386"), "aarch64": ("aarch64", "arm")}


class RuleError(ValueError):
    """A rule line that auditctl would refuse; says where and why."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KernelSettings:
    """Kernel audit settings to apply; None leaves a setting as found."""

    enabled: int | None = None
    failure: int | None = None
    rate_limit: int | None = None
    backlog_limit: int | None = None
    backlog_wait_time: int | None = None

    def overridden_by(self, other: KernelSettings) -> KernelSettings:
        """Return these settings with every value that `other` sets replaced."""
        return KernelSettings(
            **{
                name: getattr(other, name)
                if getattr(other, name) is not None
                else getattr(self, name)
                for name in self.__dataclass_fields__
            }
        )


@dataclass(frozen=True, slots=True)
class RuleField:
    """One `-F` condition: field id, operator, numeric value or string."""

    field: int
    op: int
    value: int
    text: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as the kernel sees it; `origin` says where it was written (file:line)."""

    flags: int
    action: int
    mask: tuple[int, ...]
    fields: tuple[RuleField, ...]
    origin: str = field(default="", compare=False)

    def encode(self) -> bytes:
        """Return the rule as `struct audit_rule_data` (header plus string buffer)."""
        count = len(self.fields)
        values = [f.value if f.text is None else len(f.text) for f in self.fields]
        pad = [0] * (MAX_FIELDS - count)
        buf = b"".join(f.text for f in self.fields if f.text is not None)
        header = RULE_HEADER.pack(
            self.flags, self.action, count, *self.mask,
            *[f.field for f in self.fields], *pad,
            *values, *pad,
            *[f.op for f in self.fields], *pad,
            len(buf),
        )  # fmt: skip
        return header + buf


def decode_rule(data: bytes) -> Rule:
    """Parse a `struct audit_rule_data` (as the kernel lists rules); ValueError if malformed."""
    if len(data) < RULE_HEADER.size:
        raise ValueError(f"rule data too short: {len(data)} < {RULE_HEADER.size} bytes")
    words = RULE_HEADER.unpack_from(data)
    flags, action, count = words[0], words[1], words[2]
    if count > MAX_FIELDS:
        raise ValueError(f"rule claims {count} fields, the kernel allows {MAX_FIELDS}")
    mask = tuple(words[3 : 3 + BITMASK_WORDS])
    base = 3 + BITMASK_WORDS
    ids, vals, ops = (
        words[base + i * MAX_FIELDS : base + i * MAX_FIELDS + count] for i in range(3)
    )
    buflen = words[-1]
    buf = data[RULE_HEADER.size : RULE_HEADER.size + buflen]
    if len(buf) != buflen:
        raise ValueError("rule string buffer truncated")
    fields: list[RuleField] = []
    offset = 0
    for fid, value, op in zip(ids, vals, ops, strict=True):
        if fid in STRING_FIELDS:
            text = buf[offset : offset + value]
            if len(text) != value:
                raise ValueError(f"string field {fid} runs past the buffer")
            offset += value
            fields.append(RuleField(fid, op, 0, text))
        else:
            fields.append(RuleField(fid, op, value))
    return Rule(flags, action, mask, tuple(fields))


@dataclass(frozen=True, slots=True)
class SettingLine:
    """A kernel settings line of a rules file (``-b 8192``) and where it was written."""

    origin: str  # file:line
    option: str  # as written: -b, -f, --backlog_wait_time ...
    name: str  # the KernelSettings field it sets
    value: int


@dataclass(slots=True)
class RuleFile:
    """What a rules file asks for: rules, whether to delete all first (-D), settings."""

    rules: list[Rule]
    delete_all: bool
    settings: KernelSettings
    setting_lines: list[SettingLine] = field(default_factory=list)
    delete_all_origins: list[str] = field(default_factory=list)  # file:line of each -D


def machine_arch() -> str:
    """Our arch name for the machine we run on (the default syscall table, as auditctl's)."""
    machine = platform.machine()
    return "i386" if machine in ("i686", "i586", "i486") else machine


def arch_by_value(value: int) -> str | None:
    """Return the arch name for an AUDIT_ARCH_* value, None if we have no table for it."""
    for name, known in AUDIT_ARCHES.items():
        if known == value:
            return name
    return None


def _arch_value(text: str) -> int:
    """Turn b64/b32/an arch name/a number into an AUDIT_ARCH_* value; ValueError if unknown."""
    b64, b32 = _MACHINE_ARCHES.get(machine_arch(), (machine_arch(), machine_arch()))
    name = {"b64": b64, "b32": b32, "i686": "i386", "armeb": "arm"}.get(text, text)
    if text[:1].isdigit():
        value = int(text, 0)
        if arch_by_value(value) is None:
            raise ValueError(f"unknown arch value {text}")
        return value
    if name not in AUDIT_ARCHES:
        raise ValueError(f"unknown arch {text!r}")
    return AUDIT_ARCHES[name]


def _c_int(text: str, *, unsigned: bool = False) -> int:
    """C's base-0 number (0x.. hex, 0.. octal, decimal, optional '-'), stored as 32 bits."""
    digits = text[1:] if text.startswith("-") else text
    try:
        if digits[:2].lower() == "0x":
            value = int(digits[2:], 16)
        elif digits.startswith("0") and len(digits) > 1:
            value = int(digits[1:], 8)
        else:
            value = int(digits, 10)
    except ValueError:
        raise ValueError(f"value {text!r} is not a number") from None
    value = -value if text.startswith("-") else value
    if not -(2**31) <= value < (2**32 if unsigned else 2**31):
        raise ValueError(f"value {text} does not fit in 32 bits")
    return value & 0xFFFFFFFF


def _signed_or_name(text: str) -> bool:
    """True when libaudit reads the value as a number (digit, or '-' then digit)."""
    return text[:1].isdigit() or (len(text) >= 2 and text[0] == "-" and text[1].isdigit())


def _errno_value(text: str) -> int:
    """EPERM / -EPERM -> 1 / -1 (32-bit); ValueError if no such errno name."""
    negative = text.startswith("-")
    number = getattr(errno, text.lstrip("-"), None)
    if not isinstance(number, int) or not text.lstrip("-").startswith("E"):
        raise ValueError(f"unknown errno name {text!r}")
    return (-number if negative else number) & 0xFFFFFFFF


def _id_value(text: str, *, user: bool) -> int:
    """A uid/gid field value: number, 'unset' (uids), or a name looked up locally."""
    if user and _signed_or_name(text):
        return _c_int(text, unsigned=True)
    if not user and text[:1].isdigit():
        return _c_int(text)
    if user and text == "unset":
        return UNSET_ID
    try:
        return pwd.getpwnam(text).pw_uid if user else grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"unknown {'user' if user else 'group'}: {text}") from None


def _perm_bits(text: str) -> int:
    """'rwxa' letters -> AUDIT_PERM_* bits."""
    if len(text) > 4:
        raise ValueError(f"permission {text} is too long")
    bits = 0
    for letter in text.lower():
        if letter not in PERM_LETTERS:
            raise ValueError(f"permission {text!r}: only r, w, x, a are allowed")
        bits |= PERM_LETTERS[letter]
    return bits


def _check_path(path: str) -> None:
    """Watch paths must be absolute and within PATH_MAX/NAME_MAX (auditctl check_path)."""
    if len(os.fsencode(path)) >= PATH_MAX:
        raise ValueError("the path is too long")
    if not path.startswith("/"):
        raise ValueError(f"the path must start with '/': {path}")
    if len(os.fsencode(os.path.basename(path))) > NAME_MAX:
        raise ValueError("the base name of the path is too long")


def _split_pair(pair: str) -> tuple[str, int, str]:
    """'auid>=1000' -> ('auid', OP_GT | OP_EQ, '1000'): the first operator found splits.

    Operator characters left beside the split ('uid=>0', 'uid==0', 'uid<>0') are an
    operator auditctl does not have: named as such, not read as part of a name or value
    (libaudit would look up a user called '>0').
    """
    for token, op in OPERATORS:
        name, found, value = pair.partition(token)
        if found:
            written = name[len(name.rstrip(OPERATOR_CHARS)) :] + token
            written += value[: len(value) - len(value.lstrip(OPERATOR_CHARS))]
            if written != token:
                raise ValueError(
                    f"-F {pair!r}: operator {written!r} is not supported "
                    f"(auditctl's operators: {OPERATORS_AS_LISTED})"
                )
            return name, op, value
    raise ValueError(f"-F {pair!r}: no operator")


class _RuleBuilder:
    """Collects the options of one `-a`/`-A`/`-w` line, in auditctl's order of checks."""

    def __init__(self) -> None:
        self.flags: int | None = None
        self.action = ACTION_ALWAYS
        self.prepend = False
        self.mask = [0] * BITMASK_WORDS
        self.fields: list[RuleField] = []
        self.arch: str | None = None
        self.syscall_added = False
        self.perm_added = False
        self.exe_added = False
        self.keys: list[str] = []
        self.watch = False

    def set_list(self, spec: str, *, prepend: bool) -> None:
        if self.flags is not None:
            raise ValueError("only one -a/-A/-w per rule")
        parts = spec.split(",")
        if len(parts) != 2:
            raise ValueError(f"-a needs 'action,list', got {spec!r}")
        first, second = parts
        if first in ACTION_NAMES and second in FILTER_NAMES:
            action, lst = first, second
        elif second in ACTION_NAMES and first in FILTER_NAMES:
            action, lst = second, first
        elif "possible" in parts or "entry" in parts:
            raise ValueError(f"{spec!r}: 'possible' and 'entry' are deprecated and refused")
        else:
            raise ValueError(f"{spec!r}: unknown action or list")
        if lst == "task" and self.syscall_added:
            raise ValueError("syscall auditing requested for the task list")
        self.flags, self.action, self.prepend = FILTER_NAMES[lst], ACTION_NAMES[action], prepend

    def add_syscalls(self, spec: str) -> None:
        if self.flags is None:
            raise ValueError("-S needs -a or -A before it")
        if self.flags == FILTER_TASK:
            raise ValueError("syscall auditing requested for the task list")
        if self.flags in (FILTER_EXCLUDE, FILTER_FS, FILTER_USER):
            raise ValueError("syscalls can only be given on the exit list")
        table = SYSCALL_NUMBERS.get(self.arch or machine_arch())
        if table is None:
            raise ValueError(f"no syscall table for arch {self.arch or machine_arch()}")
        for name in spec.split(","):
            if name == "all":
                self.mask = [0xFFFFFFFF] * BITMASK_WORDS
                continue
            number = table.get(name)
            if number is None and name[:1].isdigit():
                number = _c_int(name)
            if number is None:
                raise ValueError(f"syscall name unknown: {name}")
            if number // 32 >= BITMASK_WORDS - 1:
                raise ValueError(f"syscall number {name} is out of range")
            self.mask[number // 32] |= 1 << (number % 32)
        self.syscall_added = True

    def add_field(self, pair: str) -> None:
        if self.flags is None:
            raise ValueError("list must be given before field")
        if pair.startswith("key="):
            self.add_key(pair[4:], via_field=True)
            return
        if len(self.fields) >= MAX_FIELDS - 1:
            raise ValueError("too many fields in the rule")
        name, op, value = _split_pair(pair)
        if not name:
            raise ValueError(f"-F {pair!r}: field name missing")
        if not value:
            raise ValueError(f"-F {pair!r}: value missing")
        fid = FIELD_IDS.get(name)
        if fid is None:
            raise ValueError(f"-F {pair!r}: unknown field {name!r}")
        self.fields.append(self._field(fid, op, value))

    def _field(self, fid: int, op: int, value: str) -> RuleField:
        flags = self.flags
        eq_ne = op in (OP_EQ, OP_NE)
        if fid in EXIT_ONLY_FIELDS and flags != FILTER_EXIT:
            raise ValueError("this field is only valid on the exit list")
        if fid == F_MSGTYPE and flags not in (FILTER_EXCLUDE, FILTER_USER):
            raise ValueError("msgtype is only valid on the exclude and user lists")
        if fid in UID_FIELDS or fid in GID_FIELDS:
            return RuleField(fid, op, _id_value(value, user=fid in UID_FIELDS))
        if fid == F_EXIT:
            number = _c_int(value) if _signed_or_name(value) else _errno_value(value)
            return RuleField(fid, op, number)
        if fid == F_MSGTYPE:
            if value[:1].isdigit():
                return RuleField(fid, op, _c_int(value))
            if value not in NUMBER_BY_NAME:
                raise ValueError(f"unknown message type {value!r}")
            return RuleField(fid, op, NUMBER_BY_NAME[value])
        if fid in STRING_FIELDS:
            return self._string_field(fid, op, value, eq_ne)
        if fid == F_ARCH:
            if self.syscall_added:
                raise ValueError("arch must be given before -S")
            if not eq_ne:
                raise ValueError("arch only takes = or !=")
            arch_value = _arch_value(value)
            self.arch = arch_by_value(arch_value)
            return RuleField(fid, op, arch_value)
        if fid == F_PERM:
            if op != OP_EQ:
                raise ValueError("perm only takes =")
            self.perm_added = True
            return RuleField(fid, op, _perm_bits(value))
        if fid == F_FILETYPE:
            if value not in FILE_TYPES:
                raise ValueError(f"unknown file type {value!r}")
            return RuleField(fid, op, FILE_TYPES[value])
        if fid == F_FSTYPE:
            if flags != FILTER_FS or not eq_ne:
                raise ValueError("fstype needs the filesystem list and = or !=")
            if value[:1].isdigit():
                return RuleField(fid, op, _c_int(value, unsigned=True))
            if value not in FS_TYPES:
                raise ValueError(f"unknown file system type {value!r}")
            return RuleField(fid, op, FS_TYPES[value])
        if fid in (200, 201, 202, 203, F_SESSIONID):
            if fid == F_SESSIONID and value == "unset":
                return RuleField(fid, op, UNSET_ID)
            if not _signed_or_name(value):
                raise ValueError(f"value {value!r} is not a number")
            return RuleField(fid, op, _c_int(value, unsigned=True))
        if fid == F_INODE and not eq_ne:
            raise ValueError("inode only takes = or !=")
        if not value[:1].isdigit():
            raise ValueError(f"value {value!r} is not a number")
        return RuleField(fid, op, _c_int(value, unsigned=fid == F_INODE))

    def _string_field(self, fid: int, op: int, value: str, eq_ne: bool) -> RuleField:
        if fid in (F_WATCH, F_DIR):
            self.perm_added = True
        if fid == F_EXE:
            if not eq_ne:
                raise ValueError("exe only takes = or !=")
            self.exe_added = True
        text = os.fsencode(value)
        if len(text) > PATH_MAX:
            raise ValueError("string value is too long")
        return RuleField(fid, op, 0, text)

    def add_key(self, key: str, *, via_field: bool = False) -> None:
        if self.flags is None or not (self.syscall_added or self.perm_added or self.exe_added):
            raise ValueError("key option needs a watch or syscall given prior to it")
        if not key:
            raise ValueError("key option needs a value")
        if KEY_SEPARATOR in key:
            raise ValueError(f"key {key!r} has an illegal character")
        joined = KEY_SEPARATOR.join([*self.keys, key])
        if len(os.fsencode(joined)) > MAX_KEY_LEN:
            raise ValueError("key option exceeds size limit")
        self.keys.append(key)

    def set_watch(self, path: str) -> None:
        if self.flags is not None:
            raise ValueError("watch option can't be given with a syscall")
        _check_path(path)
        if len(path) > 2:
            path = path.rstrip("/") or "/"
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            is_dir = False  # a watch on a path that does not exist yet is allowed
        self.flags, self.action, self.watch = FILTER_EXIT, ACTION_ALWAYS, True
        self.mask = [0xFFFFFFFF] * BITMASK_WORDS
        self.syscall_added = self.perm_added = True
        all_perms = PERM_READ | PERM_WRITE | PERM_EXEC | PERM_ATTR
        self.fields = [
            RuleField(F_DIR if is_dir else F_WATCH, OP_EQ, 0, os.fsencode(path)),
            RuleField(F_PERM, OP_EQ, all_perms),
        ]

    def set_perms(self, letters: str) -> None:
        if self.flags is None:
            raise ValueError("permission option needs a watch given prior to it")
        bits = _perm_bits(letters)
        for index, existing in enumerate(self.fields):
            if existing.field == F_PERM:
                self.fields[index] = RuleField(F_PERM, existing.op, bits)
                return
        raise ValueError("permission option needs a watch or path field")

    def build(self, origin: str) -> Rule:
        assert self.flags is not None
        if self.flags != FILTER_TASK and not self.syscall_added:
            self.mask = [0xFFFFFFFF] * BITMASK_WORDS  # auditctl: no -S means all syscalls
        fields = list(self.fields)
        if self.keys:
            key = os.fsencode(KEY_SEPARATOR.join(self.keys))
            fields.append(RuleField(F_KEY, OP_EQ, 0, key))
        flags = self.flags | (FILTER_PREPEND if self.prepend else 0)
        return Rule(flags, self.action, tuple(self.mask), tuple(fields), origin)


# Options that take a value, as auditctl's getopt table.
_VALUE_OPTIONS = frozenset(
    {"-a", "-A", "-S", "-F", "-k", "-w", "-p", "-b", "-e", "-f", "-r", "--backlog_wait_time"}
)
_SETTING_RANGES = {
    "-b": ("backlog_limit", 0, 2**32 - 1),
    "-e": ("enabled", 0, 2),
    "-f": ("failure", 0, 2),
    "-r": ("rate_limit", 0, 2**32 - 1),
    "--backlog_wait_time": ("backlog_wait_time", 0, 600_000),
}


def _parse_line(
    tokens: list[str], origin: str, setting_lines: list[SettingLine]
) -> tuple[Rule | None, bool]:
    """One line of options -> (the rule it builds or None, whether it said -D); a settings
    option is added to ``setting_lines``."""
    builder = _RuleBuilder()
    delete_all = False
    index = 0
    while index < len(tokens):
        option = tokens[index]
        if option == "-D":
            delete_all = True
            index += 1
            continue
        if option.startswith("#"):
            # auditctl reads '#' as a comment only at the start of a line, and so do we.
            raise ValueError(
                "trailing comments are not supported (as in auditctl, '#' starts a comment "
                "only at the start of a line): put the comment on its own line"
            )
        if option not in _VALUE_OPTIONS:
            raise ValueError(f"unsupported option {option!r}")
        if index + 1 >= len(tokens):
            raise ValueError(f"option {option} needs a value")
        value = tokens[index + 1]
        index += 2
        if option in _SETTING_RANGES:
            name, low, high = _SETTING_RANGES[option]
            if not value.isdigit() or not low <= int(value) <= high:
                raise ValueError(f"{option} needs a number from {low} to {high}, got {value!r}")
            if name == "enabled" and int(value) == ENABLED_IMMUTABLE:
                # The kernel would refuse every rule change until reboot, our removal at
                # the stop included; receiver/kernel.py refuses it too.
                raise ValueError(
                    "-e 2 (immutable: audit rules and settings locked until reboot) is refused: "
                    "auditstream must be able to remove its rules when it stops; remove the line"
                )
            setting_lines.append(SettingLine(origin, option, name, int(value)))
        elif option in ("-a", "-A"):
            builder.set_list(value, prepend=option == "-A")
        elif option == "-S":
            builder.add_syscalls(value)
        elif option == "-F":
            builder.add_field(value)
        elif option == "-k":
            builder.add_key(value)
        elif option == "-w":
            builder.set_watch(value)
        else:  # -p
            builder.set_perms(value)
    if builder.flags is None:
        if builder.keys or builder.fields:
            raise ValueError("fields or keys given without -a, -A or -w")
        return None, delete_all
    if delete_all:
        raise ValueError("-D cannot be combined with a rule on one line")
    return builder.build(origin), delete_all


def parse_rules(lines: Iterable[bytes], *, source: str = "<rules>") -> RuleFile:
    """Parse auditctl rule lines (bytes, like a rules file); RuleError on the first bad line."""
    rules: list[Rule] = []
    setting_lines: list[SettingLine] = []
    delete_all_origins: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if b"\x00" in raw:
            raise RuleError(source, number, "NUL byte in line")
        # surrogateescape keeps paths that are not UTF-8 byte-exact through os.fsencode
        text = raw.decode("utf-8", "surrogateescape").strip()
        if not text or text.startswith("#"):
            continue
        origin = f"{source}:{number}"
        try:
            rule, deletes = _parse_line(text.split(), origin, setting_lines)
        except ValueError as exc:
            raise RuleError(source, number, str(exc)) from None
        if deletes:
            delete_all_origins.append(origin)
        if rule is not None:
            rules.append(rule)
    settings = KernelSettings(**{line.name: line.value for line in setting_lines})
    return RuleFile(rules, bool(delete_all_origins), settings, setting_lines, delete_all_origins)


# The config key that sets what a settings line of a rules file would (the config wins).
CONFIG_KEY_OF_SETTING = {
    "failure": "[receiver] failure_mode",
    "rate_limit": "[receiver] rate_limit",
    "backlog_limit": "[receiver] backlog_limit",
    "backlog_wait_time": "[receiver] backlog_wait_time",
}


def ignored_line_warnings(files: Iterable[RuleFile], applied: KernelSettings) -> list[str]:
    """What a live start says about rules-file lines it does not follow, and about a panic
    failure mode, given the settings it applies (the config's): one sentence each, naming
    file:line. Said by ``check-config`` and by the receiver alike (receiver/live.py)."""
    warnings: list[str] = []
    for rule_file in files:
        warnings.extend(
            f"{origin}: -D (delete all rules) is ignored: auditstream never deletes rules it "
            "did not add; it removes only its own when it stops"
            for origin in rule_file.delete_all_origins
        )
        for line in rule_file.setting_lines:
            wanted = getattr(applied, line.name)
            if wanted is None or wanted == line.value:
                continue
            if line.name == "enabled":
                why = (
                    "auditstream enables auditing while it runs and puts the flag back at the stop"
                )
            else:
                key = CONFIG_KEY_OF_SETTING[line.name]
                why = f"auditstream applies {key} = {wanted} (config or default); set it there"
            warnings.append(f"{line.origin}: {line.option} {line.value} is ignored: {why}")
    if applied.failure == FAILURE_PANIC:
        warnings.append(
            f"{CONFIG_KEY_OF_SETTING['failure']} = {FAILURE_PANIC}: the kernel panics (halts) "
            "the host whenever it loses audit records (a full backlog, a rate limit); "
            "1 (printk) logs the loss instead"
        )
    return warnings


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """What a unicast start loads: its rules, the kernel settings it applies, and one
    sentence per rules-file line it does not follow (``ignored_line_warnings``)."""

    rules: list[Rule]
    settings: KernelSettings
    warnings: list[str]


def load_rule_set(cfg: Config) -> LoadedRules:
    """The rules files of ``cfg`` (the packaged default.rules when none is given) parsed, no
    kernel touched; SourceError names the file, line and reason. The receiver logs the
    warnings (receiver/live.py rules_and_settings), ``check-config`` prints and counts them."""
    paths = [Path(p) for p in cfg.receiver.rules_files] or [DEFAULT_RULES]
    rules: list[Rule] = []
    settings = KernelSettings()
    files: list[RuleFile] = []
    for path in paths:
        try:
            loaded = load_rules(path)
        except OSError as err:
            raise SourceError(f"cannot read rules file {path}: {err.strerror or err}") from err
        except RuleError as err:
            raise SourceError(f"bad rule: {err}") from err
        rules.extend(loaded.rules)
        settings = settings.overridden_by(loaded.settings)
        files.append(loaded)
    ours = KernelSettings(
        enabled=1,
        failure=cfg.receiver.failure_mode,
        rate_limit=cfg.receiver.rate_limit,
        backlog_limit=cfg.receiver.backlog_limit,
        backlog_wait_time=cfg.receiver.backlog_wait_time,
    )
    # The config file wins over settings lines in rule files; each line overridden or
    # ignored (-D) is said.
    return LoadedRules(rules, settings.overridden_by(ours), ignored_line_warnings(files, ours))


def load_rules(path: Path) -> RuleFile:
    """Read and parse an auditctl rules file; RuleError names the file, line and reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuleError(str(path), 0, f"cannot read: {exc.strerror}") from None
    return parse_rules(data.splitlines(), source=str(path))
