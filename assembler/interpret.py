"""Interpret a parsed record into go-libaudit's auparse ``data`` map and rule ``keys``.

The rules are go-libaudit's (``auparse.go``, ``hex.go``, ``sockaddr.go``), as
summarised in the conformance corpus README §1a: drop ``?``/``(null)``/empty
values, merge ``msg='…'`` into the top level (later duplicates win), the
AVC/LOGIN/PAM fix-ups, ``unset`` ids, subj/obj context split, ``result``,
errno names for ``exit``, rule keys (hex multi-keys split on 0x01), arch and
per-arch syscall names, SECCOMP signal names, upper-case hex decoding of the
listed fields only, and SOCKADDR decoding (:mod:`assembler.sockaddr`).

Bytes become str by one rule: bytes that are valid UTF-8 are kept as the str they
decode to, control characters included (JSON escapes them, as Go's encoder does
for the TTY records in the goldens); only bytes that are not valid UTF-8 go
through :func:`auditstream.escape.escape` (``%xx``), where Go would write U+FFFD.
So a value with ``%`` is not escaped and ``escape`` is not reversible for it:
the untouched record stays in ``Record.data`` for whoever needs the exact bytes.

Deliberate difference: go-libaudit fails the whole record (``Data()`` error, no
data at all) when a step's field is missing or malformed — e.g. a SYSCALL
without ``exe`` (kernel threads log ``exe=(null)``), an EXECVE missing an
argument, an odd ``saddr``. Here that step is skipped and the other fields
stay: :func:`interpret` never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from assembler.parse import FIELD_REGEX, Record
from assembler.sockaddr import decode_sockaddr
from assembler.tables import ARCH_NAMES, ERRNO_NAMES, SIGNAL_NAMES, SYSCALL_NAMES
from auditstream.escape import escape
from auditstream.record_types import NUMBER_BY_NAME

_SYSCALL = NUMBER_BY_NAME["SYSCALL"]
_SECCOMP = NUMBER_BY_NAME["SECCOMP"]
_SOCKADDR = NUMBER_BY_NAME["SOCKADDR"]
_PROCTITLE = NUMBER_BY_NAME["PROCTITLE"]
_USER_CMD = NUMBER_BY_NAME["USER_CMD"]
_TTY_TYPES = (NUMBER_BY_NAME["TTY"], NUMBER_BY_NAME["USER_TTY"])
_EXECVE = NUMBER_BY_NAME["EXECVE"]
_PATH = NUMBER_BY_NAME["PATH"]
_USER_LOGIN = NUMBER_BY_NAME["USER_LOGIN"]
_AVC = NUMBER_BY_NAME["AVC"]
_LOGIN = NUMBER_BY_NAME["LOGIN"]
_PAM_OLD_FORMAT = (
    NUMBER_BY_NAME["CRED_DISP"],
    NUMBER_BY_NAME["USER_START"],
    NUMBER_BY_NAME["USER_END"],
)

# The body is matched as text: bytes decoded with surrogateescape, which is lossless,
# so one decode per record replaces one per field (the hot path: ASCII bodies).
_FIELDS = re.compile(FIELD_REGEX)
_DROPPED_VALUES = frozenset(("", "?", "?,", "(null)"))
_UNSET_IDS = ("4294967295", "-1")
_CONTEXT_PARTS = ("_user", "_role", "_domain", "_level", "_category")
_UPPER_HEX = re.compile(r"(?:[0-9A-F]{2})*")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_HEX_INT = re.compile(r"[+-]?[0-9a-fA-F]+")
# auparse's SELinux AVC regex with Go's ASCII-only \s and \w spelled out.
_GO_SPACE = "[\t\n\f\r ]"
_SELINUX_AVC = re.compile(
    rf"avc:{_GO_SPACE}+([0-9A-Za-z_]+){_GO_SPACE}+\{{{_GO_SPACE}*(.*){_GO_SPACE}*\}}"
    rf"{_GO_SPACE}+for{_GO_SPACE}+"
)
_GO_FIELDS_SPACE = re.compile("[\t\n\v\f\r \x85\xa0]+")  # strings.Fields separators
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class Interpreted:
    """go-libaudit's per-record result: the ``data`` map and the rule keys."""

    data: dict[str, str]
    keys: list[str]


def decode_hex(token: bytes) -> bytes | None:
    """Decode upper-case hex of even length (go-libaudit ignores lower case); else None."""
    try:
        return _decode_hex_text(token.decode("ascii"))
    except UnicodeDecodeError:
        return None


def _decode_hex_text(token: str) -> bytes | None:
    if _UPPER_HEX.fullmatch(token) is None:
        return None
    return bytes.fromhex(token)


def arch_name(hex_token: str) -> str:
    """``c000003e`` -> ``x86_64``; unknown -> ``unknown[<hex>]``; not hex -> unchanged."""
    if _GO_HEX_INT.fullmatch(hex_token) is None:
        return hex_token
    value = int(hex_token, 16)
    if not _INT64_MIN <= value <= _INT64_MAX:
        return hex_token  # Go's ParseInt(…, 16, 64) rejects it
    value &= 0xFFFFFFFF  # Go converts to uint32 AuditArch
    return ARCH_NAMES.get(value) or f"unknown[{value:x}]"


def syscall_name(arch: str, number: int) -> str:
    """Syscall name for an arch NAME (``x86_64``), or the number as text if unknown."""
    return SYSCALL_NAMES.get(arch, {}).get(number) or str(number)


def errno_name(n: int) -> str | None:
    """Name of positive errno ``n`` (13 -> ``EACCES``), None if unknown."""
    return ERRNO_NAMES.get(n)


def _bytes_text(raw: bytes) -> str:
    """Decoded bytes as str: valid UTF-8 kept (controls too), anything else escaped."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return escape(raw)


def _go_atoi(value: str) -> int | None:
    if _GO_INT.fullmatch(value) is None:
        return None
    number = int(value)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _normalize(record_type: int, body: str) -> str:
    """go-libaudit's per-type rewrites that make odd bodies parse as key=value."""
    if record_type == _AVC:
        match = _SELINUX_AVC.search(body)
        if match is not None:  # AppArmor AVCs are already key=value
            perms = ",".join(p for p in _GO_FIELDS_SPACE.split(match.group(2)) if p)
            body = f"seresult={match.group(1)} seperms={perms} {body[match.end() :]}"
    elif record_type == _LOGIN:
        body = body.replace("old ", "old_", 2).replace("new ", "new_", 2)
    elif record_type in _PAM_OLD_FORMAT:
        body = body.replace(" (hostname=", " hostname=", 2).rstrip(")'")
    return body


class _Fields:
    """go-libaudit's fieldMap: current values, and the original tokens (with quotes)."""

    __slots__ = ("origs", "values")

    def __init__(self, body: str) -> None:
        # Fields in order, later duplicates overwriting; msg='…' merged in place. An
        # explicit stack instead of recursion: msg=msg=msg=… nests once per 4 bytes.
        values: dict[str, str] = {}
        origs: dict[str, str] = {}
        stack = [iter(_FIELDS.findall(body))]
        while stack:
            for key, orig in stack[-1]:
                value = orig.strip("'\" ")
                if value in _DROPPED_VALUES:
                    continue
                if key == "msg":
                    stack.append(iter(_FIELDS.findall(value)))
                    break
                values[key] = value
                origs[key] = orig
            else:
                stack.pop()
        self.values, self.origs = values, origs

    def add(self, key: str, value: str) -> None:
        self.values[key] = value
        self.origs[key] = value

    def pop(self, key: str) -> str | None:
        self.origs.pop(key, None)
        return self.values.pop(key, None)

    def hex_decode(self, key: str, nul_ends: bool = False) -> None:
        """Decode the field if its original token is upper-case hex.

        NULs separate strings (proctitle's argv) and become spaces, except where
        ``nul_ends`` (EXECVE arguments end at their first NUL).
        """
        orig = self.origs.get(key)
        if orig is None:
            return
        decoded = _decode_hex_text(orig)
        if decoded is None:
            return
        text = decoded.split(b"\x00", 1)[0] if nul_ends else decoded.replace(b"\x00", b" ")
        self.values[key] = _bytes_text(text)

    def split_context(self, key: str) -> None:
        """``subj=user:role:domain:level:category`` -> ``subj_user`` … (at most 5 parts)."""
        value = self.pop(key)
        if value is not None:
            for suffix, part in zip(_CONTEXT_PARTS, value.split(":", 4), strict=False):
                self.add(key + suffix, part)

    def result(self) -> None:
        """``success`` (else ``res``) -> ``result`` = success|fail."""
        value = self.pop("success")
        if value is None:
            value = self.pop("res")
            if value is None:
                return
        lower = value.lower()
        ok = lower in ("yes", "1") or lower.startswith("suc")
        self.add("result", "success" if ok else "fail")

    def exit_name(self) -> None:
        value = self.values.get("exit")
        code = _go_atoi(value) if value is not None else None
        if code is not None and code < 0:
            name = ERRNO_NAMES.get(-code)
            if name is not None:
                self.values["exit"] = name

    def rule_keys(self) -> list[str]:
        orig = self.origs.get("key")
        value = self.pop("key")
        if orig is None or value is None:
            return []
        decoded = _decode_hex_text(orig)
        if decoded is not None:  # key=6578656301... : several keys joined by 0x01
            return [_bytes_text(part) for part in decoded.split(b"\x01")]
        return [value.split("=", 1)[-1]]  # key="key=net" -> ["net"]

    def execve_args(self) -> None:
        argc = self.values.get("argc")
        if argc is None or not argc.isascii() or not argc.isdigit():
            return
        for index in range(int(argc)):
            key = f"a{index}"
            if key not in self.values:
                break  # go-libaudit fails the record here; we keep what we have
            self.hex_decode(key, nul_ends=True)

    def syscall_fields(self) -> None:
        values = self.values
        arch = values.get("arch")
        if arch is not None:
            arch = values["arch"] = arch_name(arch)
        syscall = values.get("syscall")
        if syscall is not None and arch is not None:
            number = _go_atoi(syscall)
            name = SYSCALL_NAMES.get(arch, {}).get(number) if number is not None else None
            if name is not None:
                values["syscall"] = name
        self.hex_decode("exe")

    def signal_name(self) -> None:
        value = self.values.get("sig")
        number = _go_atoi(value) if value is not None else None
        name = SIGNAL_NAMES.get(number) if number is not None else None
        if name is not None:
            self.values["sig"] = name

    def sockaddr(self) -> None:
        value = self.values.get("saddr")
        if value is None or not value.isascii():
            return
        decoded = decode_sockaddr(value.encode("ascii"))
        if decoded is None:
            return  # go-libaudit fails the record; we keep the raw saddr
        self.pop("saddr")
        for key, part in decoded.items():
            self.add(key, part)


def interpret(rec: Record) -> Interpreted:
    """Return go-libaudit's auparse ``data`` and ``keys`` for one record."""
    body = rec.body
    ascii_body = body.isascii()
    text = body.decode("ascii") if ascii_body else body.decode("utf-8", "surrogateescape")
    record_type = rec.type
    fm = _Fields(_normalize(record_type, text))
    values = fm.values
    for key in ("auid", "old-auid", "ses"):
        if values.get(key) in _UNSET_IDS:
            values[key] = "unset"
    fm.split_context("subj")
    fm.result()
    fm.exit_name()
    keys = fm.rule_keys()
    fm.hex_decode("cwd")

    if record_type in (_SYSCALL, _SECCOMP):
        if record_type == _SECCOMP:
            fm.signal_name()
        fm.syscall_fields()
    elif record_type == _SOCKADDR:
        fm.sockaddr()
    elif record_type == _PROCTITLE:
        fm.hex_decode("proctitle")
    elif record_type == _USER_CMD:
        fm.hex_decode("cmd")
    elif record_type in _TTY_TYPES:
        fm.hex_decode("data")
    elif record_type == _EXECVE:
        fm.execve_args()
    elif record_type == _PATH:
        fm.split_context("obj")
        fm.hex_decode("name")
    elif record_type == _USER_LOGIN:
        fm.hex_decode("acct")

    if not ascii_body:
        # Undecodable bytes ride through as surrogates; give them back to escape().
        for key, value in values.items():
            if not value.isascii():
                values[key] = _surrogates_escaped(value)
        keys = [_surrogates_escaped(k) for k in keys]
    return Interpreted(data=values, keys=keys)


def _surrogates_escaped(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return escape(value.encode("utf-8", "surrogateescape"))
    return value
