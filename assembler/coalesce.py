"""Fold the records of one audit event into one summarised event.

Semantics follow go-libaudit's aucoalesce (the goldens in the corpus are the
spec): a one-record event is "simple"; a longer one is "compound" and built
around its SYSCALL record, with PATH, SOCKADDR and EXECVE records folded in and
every other record's fields merged into ``data`` (first value wins, later ones
give a warning). A summary (actor, action, object, how) and the ECS
categorisation come from :mod:`assembler.normalizations`.

Deliberate differences from go-libaudit (see docs/schema.md):
- EXECVE arguments split by the kernel (``a1_len=… a1[0]=… a1[1]=…``, possibly
  over several EXECVE records) are joined into one argument; go-libaudit
  reports them as missing.
- A compound event without a SYSCALL record is still coalesced (around its first
  record) with a warning instead of being rejected, so hostile or truncated
  input never loses an event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from assembler.interpret import interpret
from assembler.normalizations import (
    RECORD_TYPE_NORMALIZATIONS,
    SYSCALL_NORMALIZATIONS,
    Normalization,
)
from assembler.parse import Record
from auditstream.escape import escape
from auditstream.logline import type_name

SYSCALL = 1300
PATH = 1302
SOCKADDR = 1306
CWD = 1307
EXECVE = 1309
EOE = 1320
PROCTITLE = 1327

# Kernel fields whose text the acting user chooses. interpret() takes them from the
# raw token exactly (quotes removed, nothing stripped), so the doc's text maps back to
# the exact bytes with unescape(). comm is hex-decoded too (go-libaudit leaves it hex;
# the kernel hex-encodes it like exe).
_UNTRUSTED_FIELDS: dict[int, tuple[str, ...]] = {
    SYSCALL: ("comm", "exe"),
    CWD: ("cwd",),
    PATH: ("name",),
    PROCTITLE: ("proctitle",),
}

UNSET = "unset"


class CoalesceError(ValueError):
    """The records do not form an event (for example: nothing but EOE)."""


@dataclass(slots=True)
class Summary:
    """Who did what to which object, and how (aucoalesce's summary)."""

    actor_primary: str = ""
    actor_secondary: str = ""
    action: str = ""
    object_type: str = ""
    object_primary: str = ""
    object_secondary: str = ""
    how: str = ""


@dataclass(slots=True)
class ProcessInfo:
    """The acting process as the records describe it (all values are text)."""

    pid: str = ""
    ppid: str = ""
    title: str = ""
    name: str = ""
    exe: str = ""
    cwd: str = ""
    args: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FileInfo:
    """The file object chosen from the PATH records."""

    path: str = ""
    device: str = ""
    inode: str = ""
    mode: str = ""
    uid: str = ""
    gid: str = ""
    selinux: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Address:
    """One end of a connection, from SOCKADDR (or a user-space ``addr``)."""

    ip: str = ""
    port: str = ""
    path: str = ""


@dataclass(slots=True)
class EcsEntity:
    """An ECS user or group reference: a numeric id, a name, or ``unset``."""

    id: str = ""
    name: str = ""

    def set(self, value: str) -> None:
        """Fill from a value that may be an id, a name, or an unset marker."""
        if value in ("", UNSET, "4294967295", "-1"):
            self.id, self.name = UNSET, ""
        elif value.isascii() and value.isdigit():
            self.id = value
        else:
            self.name = value


@dataclass(slots=True)
class EcsUser:
    """ECS ``user.*`` with the effective, target and changes sub-entities."""

    subject: EcsEntity = field(default_factory=EcsEntity)
    effective: EcsEntity = field(default_factory=EcsEntity)
    target: EcsEntity = field(default_factory=EcsEntity)
    changes: EcsEntity = field(default_factory=EcsEntity)


@dataclass(slots=True)
class Coalesced:
    """One event, summarised. Strings are JSON-safe: text from the records is escaped."""

    sec: int
    msec: int
    serial: int
    node: str
    category: str
    record_type: str
    result: str = "unknown"
    session: str = ""
    tags: list[str] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    user_ids: dict[str, str] = field(default_factory=dict)
    user_selinux: dict[str, str] = field(default_factory=dict)
    process: ProcessInfo = field(default_factory=ProcessInfo)
    file: FileInfo | None = None
    source: Address | None = None
    destination: Address | None = None
    direction: str = ""
    data: dict[str, str] = field(default_factory=dict)
    paths: list[dict[str, str]] = field(default_factory=list)
    ecs_kind: str = ""
    ecs_category: list[str] = field(default_factory=list)
    ecs_type: list[str] = field(default_factory=list)
    ecs_outcome: str = ""
    ecs_user: EcsUser = field(default_factory=EcsUser)
    ecs_group: EcsEntity = field(default_factory=EcsEntity)
    warnings: list[str] = field(default_factory=list)


# Record-type ranges of aucoalesce's event categories, checked in this order.
_CATEGORY_RANGES: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("user-login", ((1100, 1106), (1108, 1110), (1112, 1113), (1126, 1126))),
    ("user-account", ((1114, 1117), (1132, 1133), (1135, 1136))),
    ("system-services", ((2000, 2000), (1127, 1131))),
    ("configuration", ((1111, 1111), (1305, 1305), (1325, 1325), (1328, 1329))),
    ("dac-decision", ((1326, 1326),)),
    ("user-space", ((1119, 1121), (1123, 1123), (1125, 1125))),
    ("TTY", ((1124, 1124), (1319, 1319))),
    ("audit-daemon", ((1200, 1299),)),
    ("mac-decision", ((1122, 1122), (1107, 1107), (1502, 1503), (1506, 1506), (1400, 1402))),
    ("integrity", ((1800, 1899), (2109, 2109))),
    ("anomaly", ((1700, 1799), (2100, 2108), (2110, 2199))),
    ("anomaly-response", ((2200, 2299),)),
    ("mac", ((1403, 1499), (1500, 1501), (1504, 1505), (2300, 2399))),
    ("crypto", ((1600, 1699), (2400, 2499))),
    ("virt", ((2500, 2599),)),
    ("audit-rule", ((1300, 1304), (1306, 1315), (1317, 1318), (1321, 1324))),
)

# Interpreters whose exe says little; their comm names the script instead.
_INTERPRETER_PREFIXES = ("/usr/bin/python", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/perl")

# EXECVE tokens: argc, aN, aN_len, aN[i]; values quoted or bare (hex).
_EXECVE_TOKEN = re.compile(rb'(argc|a\d+(?:_len|\[\d+\])?)=("[^"]*"|\S*)')
_UPPER_HEX = re.compile(rb"(?:[0-9A-F]{2})+")


def _category_table() -> dict[int, str]:
    # The first range that holds a type wins, as in aucoalesce's ordered checks.
    table: dict[int, str] = {}
    for name, ranges in _CATEGORY_RANGES:
        for low, high in ranges:
            for record_type in range(low, high + 1):
                table.setdefault(record_type, name)
    return table


_CATEGORY_BY_TYPE = _category_table()


@lru_cache(maxsize=512)
def _lower_type_name(record_type: int) -> str:
    return type_name(record_type).lower()


def event_category(record_type: int) -> str:
    """aucoalesce's coarse category of a record type (``audit-rule``, ``user-login``…)."""
    return _CATEGORY_BY_TYPE.get(record_type, "unknown")


def coalesce(records: list[Record]) -> Coalesced:
    """Coalesce the records of one event (a trailing EOE is ignored)."""
    if records and records[-1].type == EOE:
        records = records[:-1]
    if not records:
        raise CoalesceError("event has no records besides EOE")
    event = _new_event(records[0], None) if len(records) == 1 else _compound(records)
    _apply_normalization(event)
    _lift_process_fields(event)
    return event


def _record_data(rec: Record, event: Coalesced) -> tuple[dict[str, str], list[str]] | None:
    try:
        interpreted = interpret(rec, _UNTRUSTED_FIELDS.get(rec.type, ()))
    except ValueError as err:
        event.warnings.append(f"failed to parse {type_name(rec.type)} message: {err}")
        return None
    return interpreted.data, interpreted.keys


def _new_event(first: Record, syscall: Record | None) -> Coalesced:
    event = Coalesced(
        sec=first.sec,
        msec=first.msec,
        serial=first.serial,
        node=first.node,
        category=event_category(first.type),
        record_type=_lower_type_name(first.type),
    )
    parsed = _record_data(syscall or first, event)
    if parsed is None:
        return event
    data, keys = parsed
    result = data.pop("result", None)
    event.result = result if result is not None else "unknown"
    event.session = data.pop("ses", "")
    event.summary.actor_primary = data.get("auid", "")
    event.summary.actor_secondary = data.get("uid", "")
    event.tags = keys
    route = _ROUTES.get(tuple(data))
    if route is None:
        route = _route(tuple(data))
    other_keys, id_keys, selinux_keys = route
    event.data = {key: data[key] for key in other_keys}
    if id_keys:
        event.user_ids = {key: data[key] for key in id_keys}
    if selinux_keys:
        event.user_selinux = {key[5:]: data[key] for key in selinux_keys}
    return event


# Where a record's fields go (other data, user ids, subject SELinux context), per key
# sequence: a kernel's SYSCALL records share a handful of layouts, so this is memoised.
_Route = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
_ROUTES: dict[tuple[str, ...], _Route] = {}
_MAX_ROUTES = 1024  # hostile input can invent layouts: start over when full


def _route(keys: tuple[str, ...]) -> _Route:
    other: list[str] = []
    ids: list[str] = []
    selinux: list[str] = []
    for key in keys:
        if key.endswith(("uid", "gid")):
            ids.append(key)
        elif key.startswith("subj_"):
            selinux.append(key)
        else:
            other.append(key)
    if len(_ROUTES) >= _MAX_ROUTES:
        _ROUTES.clear()
    route = _ROUTES[keys] = (tuple(other), tuple(ids), tuple(selinux))
    return route


def _compound(records: list[Record]) -> Coalesced:
    first: Record | None = None
    syscall: Record | None = None
    for index, rec in enumerate(records):
        if index == 0 and rec.type != SYSCALL:
            first = rec
            continue
        if rec.type == SYSCALL:
            syscall = rec
            break
    if syscall is None:
        # go-libaudit rejects this; we keep the event and say why it is thin.
        event = _new_event(records[0], None)
        event.warnings.append("missing syscall message in compound event")
        others = records[1:]
    else:
        event = _new_event(first or syscall, syscall)
        others = records
    execve_records: list[Record] = []
    for rec in others:
        if rec.type == SYSCALL:
            event.data.pop("items", None)
        elif rec.type == EXECVE:
            execve_records.append(rec)
        elif rec.type in (PATH, SOCKADDR):
            parsed = _record_data(rec, event)
            if parsed is not None and rec.type == PATH:
                event.paths.append(parsed[0])
            elif parsed is not None:
                _add_sockaddr(parsed[0], event)
        else:
            _merge_fields(rec, event)
    if execve_records:
        _add_execve(execve_records, event)
    return event


def _merge_fields(rec: Record, event: Coalesced) -> None:
    parsed = _record_data(rec, event)
    if parsed is None:
        return
    for key, value in parsed[0].items():
        if key in event.data:
            event.warnings.append(f"duplicate key ({key}) from {type_name(rec.type)} message")
            continue
        event.data[key] = value


def _add_sockaddr(sockaddr: dict[str, str], event: Coalesced) -> None:
    syscall = event.data.get("syscall")
    if syscall is None:
        event.warnings.append("failed to add SOCKADDR data because syscall is unknown")
        return
    for key, value in sockaddr.items():
        event.data["socket_" + key] = value
    address = Address(
        ip=sockaddr.get("addr", ""), port=sockaddr.get("port", ""), path=sockaddr.get("path", "")
    )
    has_address = bool(address.ip or address.port or address.path)
    # bind, listen, getsockname, getpeername have no clear direction.
    if syscall in ("recvfrom", "recvmsg", "accept", "accept4"):
        event.source = address if has_address else event.source
        event.direction = "ingress"
    elif syscall in ("connect", "sendto", "sendmsg"):
        event.destination = address if has_address else event.destination
        event.direction = "egress"


def _execve_value(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return raw[1:-1]
    if _UPPER_HEX.fullmatch(raw):
        # The kernel hex-encodes arguments with spaces, quotes or non-ASCII.
        return bytes.fromhex(raw.decode("ascii"))
    return raw


def _add_execve(records: list[Record], event: Coalesced) -> None:
    tokens: dict[bytes, bytes] = {}
    for rec in records:
        for match in _EXECVE_TOKEN.finditer(rec.body):
            tokens.setdefault(match.group(1), match.group(2))
    argc_raw = tokens.get(b"argc")
    if argc_raw is None:
        event.warnings.append("argc key not found in EXECVE message")
        return
    argc = escape(argc_raw)
    event.data["argc"] = argc
    if not argc_raw.isdigit() or len(argc_raw) > 10:
        event.warnings.append(f"failed to convert argc='{argc}' to number")
        return
    args: list[str] = []
    for index in range(int(argc_raw)):
        name = b"a%d" % index
        whole = tokens.get(name)
        if whole is not None:
            value = _execve_value(whole)
        else:
            pieces: list[bytes] = []
            while (piece := tokens.get(name + b"[%d]" % len(pieces))) is not None:
                pieces.append(_execve_value(piece))
            if not pieces:
                event.warnings.append(f"failed to find arg a{index}")
                return
            value = b"".join(pieces)
        # As go-libaudit and the kernel's own argv: an argument ends at NUL.
        args.append(escape(value.split(b"\x00", 1)[0]))
    event.process.args = args


def _set_how_defaults(event: Coalesced) -> None:
    exe = event.data.get("exe", event.data.get("comm"))
    if exe is None:
        return
    event.summary.how = exe
    if exe.startswith(_INTERPRETER_PREFIXES) and "comm" in event.data:
        event.summary.how = event.data["comm"]


def _lookup(key: str, event: Coalesced) -> str | None:
    value = event.data.get(key)
    return value if value is not None else event.user_ids.get(key)


def _choose_normalization(event: Coalesced) -> tuple[Normalization | None, Normalization | None]:
    syscall_norm: Normalization | None = None
    syscall = event.data.get("syscall")
    if syscall is not None:
        syscall_norm = SYSCALL_NORMALIZATIONS.get(syscall, SYSCALL_NORMALIZATIONS.get("*"))
    if event.record_type == "syscall":
        return syscall_norm, syscall_norm
    norm: Normalization | None = None
    for candidate in RECORD_TYPE_NORMALIZATIONS.get(event.record_type.upper(), ()):
        # Several entries for one record type: the last whose fields are all present.
        if all(name in event.data for name in candidate.has_fields):
            norm = candidate
    return norm, syscall_norm


def _first_present(keys: tuple[str, ...], event: Coalesced, what: str) -> str | None:
    for key in keys:
        value = _lookup(key, event)
        if value is not None:
            return value
    event.warnings.append(
        f"failed to set {what} using keys=[{' '.join(keys)}] because they were not found"
    )
    return None


def _apply_normalization(event: Coalesced) -> None:
    _set_how_defaults(event)
    norm, syscall_norm = _choose_normalization(event)
    if norm is None:
        event.warnings.append("no normalization found for event")
        return
    event.ecs_kind = norm.ecs_kind
    event.ecs_category = list(norm.ecs_category)
    event.ecs_type = list(norm.ecs_type)
    if syscall_norm is not None and syscall_norm is not norm:
        # A user-space or MAC record riding on a syscall gets both categorisations.
        event.ecs_category += syscall_norm.ecs_category
        event.ecs_type += syscall_norm.ecs_type
        if event.result == "fail":
            event.ecs_outcome = "failure"
    event.summary.action = norm.action
    event.summary.object_type = norm.object_what
    if norm.object_what in ("file", "filesystem") and event.paths:
        _set_file_object(event, norm.object_path_index)
    elif norm.object_what == "socket":
        _set_socket_object(event)
    _apply_summary_fields(norm, event)
    for source, target in norm.ecs_copy:
        _ecs_target(target, event).set(_ecs_source(source, event))


def _apply_summary_fields(norm: Normalization, event: Coalesced) -> None:
    summary = event.summary
    if norm.subject_primary:
        value = _first_present(norm.subject_primary, event, "subject primary")
        summary.actor_primary = summary.actor_primary if value is None else value
    if norm.subject_secondary:
        value = _first_present(norm.subject_secondary, event, "subject secondary")
        summary.actor_secondary = summary.actor_secondary if value is None else value
    if norm.object_primary:
        value = _first_present(norm.object_primary, event, "object primary")
        summary.object_primary = summary.object_primary if value is None else value
    if norm.object_secondary:
        value = _first_present(norm.object_secondary, event, "object secondary")
        summary.object_secondary = summary.object_secondary if value is None else value
    if norm.how:
        value = _first_present(norm.how, event, "how")
        summary.how = summary.how if value is None else value
    if event.source is None and norm.source_ip:
        for key in norm.source_ip:
            if key in event.data:
                event.source = Address(ip=event.data.pop(key))
                event.direction = "ingress"
                break
        else:
            keys = " ".join(norm.source_ip)
            event.warnings.append(
                f"failed to set source IP using keys=[{keys}] because they were not found"
            )


def _ecs_source(reference: str, event: Coalesced) -> str:
    summary = event.summary
    if reference == "subject.primary":
        return summary.actor_primary
    if reference == "subject.secondary":
        return summary.actor_secondary
    if reference == "object.primary":
        return summary.object_primary
    if reference == "object.secondary":
        return summary.object_secondary
    table, _, key = reference.partition(".")
    if table == "data":
        return event.data.get(key, "")
    if table == "uid":
        return event.user_ids.get(key, "")
    raise ValueError(f"unknown ECS mapping source {reference}")


def _ecs_target(reference: str, event: Coalesced) -> EcsEntity:
    if reference == "group":
        return event.ecs_group
    user = event.ecs_user
    if reference == "user":
        return user.subject
    if reference == "user.effective":
        return user.effective
    if reference == "user.target":
        return user.target
    if reference == "user.changes":
        return user.changes
    raise KeyError(reference)


def _set_file_object(event: Coalesced, index_hint: int) -> None:
    start = index_hint if len(event.paths) > index_hint else 0
    chosen = event.paths[start]
    for candidate in event.paths[start:]:
        # Skip PARENT and UNKNOWN entries in case the index hint was off.
        if candidate.get("nametype") not in ("PARENT", "UNKNOWN"):
            chosen = candidate
            break
    info = FileInfo()
    event.file = info
    if "name" in chosen:
        event.summary.object_primary = info.path = chosen["name"]
    info.inode = chosen.get("inode", "")
    info.device = chosen.get("rdev", "")
    if "mode" in chosen:
        try:
            mode = int(chosen["mode"], 8)
        except ValueError:
            event.warnings.append(
                f"failed to set file object: failed to parse file mode: {chosen['mode']}"
            )
            return
        info.mode = f"{mode & 0o7777:04o}"
        # go-libaudit reads st_mode through Go's FileMode, where every st_mode
        # looks like a regular file; its goldens therefore always say "file".
        event.summary.object_type = "file"
    info.uid = chosen.get("ouid", "")
    info.gid = chosen.get("ogid", "")
    if "\x00obj_" in "\x00" + "\x00".join(chosen):  # one C-level scan, usually absent
        for key, value in chosen.items():
            if key.startswith("obj_"):
                info.selinux[key[4:]] = value


def _set_socket_object(event: Coalesced) -> None:
    primary = event.data.get("socket_addr", event.data.get("socket_path"))
    if primary is not None:
        event.summary.object_primary = primary
    if "socket_port" in event.data:
        event.summary.object_secondary = event.data["socket_port"]


def _lift_process_fields(event: Coalesced) -> None:
    process, data = event.process, event.data
    process.pid = data.pop("pid", "")
    process.ppid = data.pop("ppid", "")
    process.title = data.pop("proctitle", "")
    process.name = data.pop("comm", "")
    process.exe = data.pop("exe", "")
    process.cwd = data.pop("cwd", "")
