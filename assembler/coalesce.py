"""Fold the records of one audit event into one summarised event.

Semantics follow go-libaudit's aucoalesce (the goldens in the corpus are the
spec): a one-record event is "simple"; a longer one is "compound" and built
around its SYSCALL record, with PATH, SOCKADDR and EXECVE records folded in and
every other record's fields merged into ``data`` (first value wins, later ones
give a warning). A summary (actor, action, object, how) and the ECS
categorisation come from :mod:`assembler.normalizations` (:mod:`assembler.summarize`).

Deliberate differences from go-libaudit (see docs/schema.md):
- EXECVE arguments split by the kernel (``a1_len=… a1[0]=… a1[1]=…``, possibly
  over several EXECVE records) are joined into one argument; go-libaudit
  reports them as missing.
- A compound event without a SYSCALL record is still coalesced (around its first
  record) with a warning instead of being rejected, so hostile or truncated
  input never loses an event.

Speed: the result is one flat :class:`~assembler.coalesced.Coalesced` per event; the
SYSCALL record's per-process tail is interpreted once (:mod:`assembler.syscall_tail`),
the records folded in are read from the interpreter's memo without copies, and EXECVE
argument lists are memoised by record body (commands repeat).
"""

from __future__ import annotations

import re
from functools import lru_cache

from assembler.coalesced import ECS_SLOTS, UNSET, Address, Coalesced, EcsEntity
from assembler.interpret import interpret, interpret_shared
from assembler.parse import Record
from assembler.summarize import apply_normalization
from assembler.syscall_tail import interpret_syscall
from auditstream.escape import escape
from auditstream.logline import type_name

__all__ = [
    "ECS_SLOTS",
    "UNSET",
    "Address",
    "CoalesceError",
    "Coalesced",
    "EcsEntity",
    "coalesce",
    "event_category",
]

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
_SYSCALL_EXACT = _UNTRUSTED_FIELDS[SYSCALL]


class CoalesceError(ValueError):
    """The records do not form an event (for example: nothing but EOE)."""


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
    event = _new_event(records[0], records[0]) if len(records) == 1 else _compound(records)
    apply_normalization(event)
    # Lift the acting process's fields out of data.
    data = event.data
    event.pid = data.pop("pid", "")
    event.ppid = data.pop("ppid", "")
    event.title = data.pop("proctitle", "")
    event.name = data.pop("comm", "")
    event.exe = data.pop("exe", "")
    event.cwd = data.pop("cwd", "")
    return event


def _new_event(lead: Record, source: Record) -> Coalesced:
    """The event's frame from ``lead`` and its fields from ``source`` (the SYSCALL record)."""
    event = Coalesced(
        lead.sec,
        lead.msec,
        lead.serial,
        lead.node,
        _CATEGORY_BY_TYPE.get(lead.type, "unknown"),
        _lower_type_name(lead.type),
    )
    try:
        # A fresh result either way: this record's fields are taken apart below.
        if source.type == SYSCALL:
            interpreted = interpret_syscall(source, _SYSCALL_EXACT)
        else:
            interpreted = interpret(source, _UNTRUSTED_FIELDS.get(source.type, ()))
    except ValueError as err:
        event.warnings.append(f"failed to parse {type_name(source.type)} message: {err}")
        return event
    data = interpreted.data
    result = data.pop("result", None)
    if result is not None:
        event.result = result
    event.session = data.pop("ses", "")
    event.actor_primary = data.get("auid", "")
    event.actor_secondary = data.get("uid", "")
    event.tags = interpreted.keys
    layout = tuple(data)
    route = _ROUTES.get(layout)
    if route is None:
        route = _route(layout)
    id_keys, selinux_keys = route
    # Taken out of data, which keeps the other fields in their order.
    if id_keys:
        event.user_ids = {key: data.pop(key) for key in id_keys}
    if selinux_keys:
        event.user_selinux = {key[5:]: data.pop(key) for key in selinux_keys}
    event.data = data
    return event


# Which of a record's fields are user ids and which the subject's SELinux context, per key
# sequence: a kernel's SYSCALL records share a handful of layouts, so this is memoised.
_Route = tuple[tuple[str, ...], tuple[str, ...]]
_ROUTES: dict[tuple[str, ...], _Route] = {}
_MAX_ROUTES = 1024  # hostile input can invent layouts: start over when full


def _route(keys: tuple[str, ...]) -> _Route:
    ids: list[str] = []
    selinux: list[str] = []
    for key in keys:
        if key.endswith(("uid", "gid")):
            ids.append(key)
        elif key.startswith("subj_"):
            selinux.append(key)
    if len(_ROUTES) >= _MAX_ROUTES:
        _ROUTES.clear()
    route = _ROUTES[keys] = (tuple(ids), tuple(selinux))
    return route


def _compound(records: list[Record]) -> Coalesced:
    lead = records[0]
    syscall: Record | None = None
    for rec in records:
        if rec.type == SYSCALL:
            syscall = rec
            break
    if syscall is None:
        # go-libaudit rejects this; we keep the event and say why it is thin.
        event = _new_event(lead, lead)
        event.warnings.append("missing syscall message in compound event")
        others = records[1:]
    else:
        event = _new_event(lead, syscall)
        others = records
    data = event.data
    execve_bodies: list[bytes] = []
    for rec in others:
        rtype = rec.type
        if rtype == SYSCALL:
            data.pop("items", None)
            continue
        if rtype == EXECVE:
            execve_bodies.append(rec.body)
            continue
        try:
            # Possibly the interpreter memo's own dict: read here, never changed.
            fields = interpret_shared(rec, _UNTRUSTED_FIELDS.get(rtype, ())).data
        except ValueError as err:
            event.warnings.append(f"failed to parse {type_name(rtype)} message: {err}")
            continue
        if rtype == PATH:
            event.paths.append(fields)
        elif rtype == SOCKADDR:
            _add_sockaddr(fields, event)
        elif data.keys().isdisjoint(fields):
            data.update(fields)  # the usual case: nothing to warn about
        else:
            _merge_fields(rtype, fields, event)
    if execve_bodies:
        _add_execve(tuple(execve_bodies), event)
    return event


def _merge_fields(record_type: int, fields: dict[str, str], event: Coalesced) -> None:
    data = event.data
    for key, value in fields.items():
        if key in data:
            event.warnings.append(f"duplicate key ({key}) from {type_name(record_type)} message")
            continue
        data[key] = value


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


# EXECVE results by record bodies: the same command lines run again and again. Bounded,
# cleared whole when full; long bodies are not kept.
_Execve = tuple[str | None, tuple[str, ...] | None, str | None]
_EXECVE_MEMO: dict[tuple[bytes, ...], _Execve] = {}
_EXECVE_MEMO_MAX_ENTRIES = 1024
_EXECVE_MEMO_MAX_BYTES = 2048


def _add_execve(bodies: tuple[bytes, ...], event: Coalesced) -> None:
    known = _EXECVE_MEMO.get(bodies)
    if known is None:
        known = _execve_arguments(bodies)
        if sum(map(len, bodies)) <= _EXECVE_MEMO_MAX_BYTES:
            if len(_EXECVE_MEMO) >= _EXECVE_MEMO_MAX_ENTRIES:
                _EXECVE_MEMO.clear()
            _EXECVE_MEMO[bodies] = known
    argc, args, warning = known
    if argc is not None:
        event.data["argc"] = argc
    if warning is not None:
        event.warnings.append(warning)
    if args is not None:
        event.args = args


def _execve_value(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return raw[1:-1]
    if _UPPER_HEX.fullmatch(raw):
        # The kernel hex-encodes arguments with spaces, quotes or non-ASCII.
        return bytes.fromhex(raw.decode("ascii"))
    return raw


def _execve_arguments(bodies: tuple[bytes, ...]) -> _Execve:
    """(argc text, arguments, warning) of an event's EXECVE records."""
    tokens: dict[bytes, bytes] = {}
    for body in bodies:
        for match in _EXECVE_TOKEN.finditer(body):
            tokens.setdefault(match.group(1), match.group(2))
    argc_raw = tokens.get(b"argc")
    if argc_raw is None:
        return None, None, "argc key not found in EXECVE message"
    argc = escape(argc_raw)
    if not argc_raw.isdigit() or len(argc_raw) > 10:
        return argc, None, f"failed to convert argc='{argc}' to number"
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
                return argc, None, f"failed to find arg a{index}"
            value = b"".join(pieces)
        # As go-libaudit and the kernel's own argv: an argument ends at NUL.
        args.append(escape(value.split(b"\x00", 1)[0]))
    return argc, tuple(args), None
