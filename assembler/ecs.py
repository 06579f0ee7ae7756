"""Turn a coalesced event into the ECS document Auditbeat's auditd module would write.

Field names follow Auditbeat (``auditbeat/module/auditd/audit_linux.go``): the
summary and other fields under ``auditd.*``, identities under ``user.*`` and
``group.*``, and ``process.*``, ``file.*``, ``source.*``, ``destination.*``,
``network.direction``. Two additions: ``auditd.records`` keeps every raw record
(escaped, so nothing is lost and nothing is trusted) and ``host.name`` is the
log's node. Every string here is either ASCII, text the interpreter already
escaped, or passed through :func:`auditstream.escape.escape`; never raw bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from assembler.coalesced import ECS_SLOTS, Address, Coalesced, EcsEntity
from assembler.parse import Record, enriched_fields
from auditstream.escape import escape
from auditstream.hostnode import host_name
from auditstream.logline import type_name

MARKER_TAG = "auditstream-marker"

# aucoalesce user-id field -> dotted ECS path under ``user`` (Auditbeat's addUser).
_ID_FIELDS = {
    "uid": "",
    "gid": "group",
    "euid": "effective",
    "egid": "effective.group",
    "suid": "saved",
    "sgid": "saved.group",
    "fsuid": "filesystem",
    "fsgid": "filesystem.group",
    "auid": "audit",
}


# Auditbeat's path of each id field's ``id`` and ``name`` under ``user``.
_ID_PATHS = {
    key: ((*path.split("."), "id"), (*path.split("."), "name")) if path else (("id",), ("name",))
    for key, path in _ID_FIELDS.items()
}


# The dicts above each id field's ``id`` under ``user`` ("uid" -> none, "egid" -> effective.group).
_ID_PARENTS = {key: paths[0][:-1] for key, paths in _ID_PATHS.items()}


@lru_cache(maxsize=4096)
def _second_text(sec: int) -> str:
    # strftime is slow and events come many per second: format each second once.
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# ".000Z" … ".999Z": the millisecond tail of every timestamp, formatted once.
_MSEC_SUFFIXES = tuple(f".{msec:03d}Z" for msec in range(1000))


def _timestamp(sec: int, msec: int) -> str:
    if 0 <= msec < 1000:  # parse_record already carried whole seconds over
        return _second_text(sec) + _MSEC_SUFFIXES[msec]
    extra, msec = divmod(msec, 1000)
    return _second_text(sec + extra) + _MSEC_SUFFIXES[msec]


def _id_paths(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    paths = _ID_PATHS.get(key)
    return paths if paths is not None else ((key, "id"), (key, "name"))


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``target[a][b][c] = value`` for ``(a, b, c)``, creating dicts on the way."""
    *parents, last = path
    for name in parents:
        child = target.get(name)
        if not isinstance(child, dict):
            child = target[name] = {}
        target = child
    target[last] = value


_U64_MAX = 2**64 - 1


def _as_int(text: str) -> int | None:
    # Bounded so a hostile 10 kB digit string cannot cost quadratic time, and to 64 bits,
    # which JSON encoders (orjson) can write.
    if text.isascii() and text.isdigit() and len(text) <= 20:
        number = int(text)
        return number if number <= _U64_MAX else None
    return None


def raw_record_text(rec: Record) -> str:
    """One record as ``type=NAME msg=DATA``, escaped (reversible with unescape)."""
    return f"type={type_name(rec.type)} msg={escape(rec.data)}"


def raw_records_text(records: list[Record]) -> list[str]:
    """:func:`raw_record_text` of each record; one check decides for the whole event."""
    joined = b"\n".join([rec.data for rec in records])
    # escape() changes controls, '%', DEL and non-ASCII; printable ASCII passes as is.
    # Deleting every byte that passes must leave the joining LFs alone (a C-level scan).
    if joined.translate(None, _PASSES_ESCAPE) != b"\n" * (len(records) - 1):
        return [raw_record_text(rec) for rec in records]
    prefixes = _RECORD_PREFIXES
    return [
        prefixes[rec.type] + text
        for rec, text in zip(records, joined.decode("ascii").split("\n"), strict=True)
    ]


_PASSES_ESCAPE = bytes(byte for byte in range(0x20, 0x7F) if byte != 0x25)


class _RecordPrefixes(dict[int, str]):
    """``type=NAME msg=`` per record type, made on first use (bounded: types are ints
    the receiver parsed, but a hostile log can name many)."""

    def __missing__(self, record_type: int) -> str:
        if len(self) >= 1024:
            self.clear()
        prefix = self[record_type] = f"type={type_name(record_type)} msg="
        return prefix


_RECORD_PREFIXES = _RecordPrefixes()


_OUTCOMES = {"success": "success", "fail": "failure"}


def build_doc(records: list[Record], coalesced: Coalesced) -> dict[str, Any]:
    """The ECS document for one event; ``records`` are the event's raw records.

    The document takes over containers the event owns (``data``, ``file``, ``warnings``):
    build it once per coalesced event.
    """
    c = coalesced
    warnings = c.warnings
    try:
        stamp = _timestamp(c.sec, c.msec)
    except (OverflowError, ValueError, OSError):
        warnings = [*warnings, f"timestamp out of range: {c.sec}.{c.msec:03d}"]
        stamp = _timestamp(0, 0)
    outcome = c.ecs_outcome or _OUTCOMES.get(c.result, "unknown")
    event: dict[str, Any]
    if c.action:
        event = {
            "kind": "event",
            "module": "auditd",
            "action": c.action,
            "outcome": outcome,
            "sequence": c.serial,
        }
    else:
        event = {"kind": "event", "module": "auditd", "outcome": outcome, "sequence": c.serial}
    if c.ecs_category:
        event["category"] = list(c.ecs_category)
    if c.ecs_type:
        event["type"] = list(c.ecs_type)
    user = _user_fields(records, c)
    doc: dict[str, Any] = {
        "@timestamp": stamp,
        "event": event,
        "auditd": _auditd_fields(records, c),
        "user": user,
    }
    if c.ecs_entities:
        _add_ecs_entities(doc, c.ecs_entities)
    effective = user.get("effective")
    if isinstance(effective, dict):
        # As Auditbeat: user.effective goes when it repeats the user.
        for key in ("id", "name"):
            if user.get(key) and effective.get(key) == user.get(key):
                del user["effective"]
                break
    process = _process_fields(c)
    if process:
        doc["process"] = process
    if c.file is not None:
        doc["file"] = c.file
    if c.source is not None:
        doc["source"] = _address_fields(c.source)
    if c.destination is not None:
        doc["destination"] = _address_fields(c.destination)
    if c.direction:
        doc["network"] = {"direction": c.direction}
    if c.node:
        doc["host"] = {"name": host_name(c.node)}
    if c.tags:
        doc["tags"] = list(c.tags)
    if warnings:
        doc["error"] = {"message": warnings}
    return doc


def _auditd_fields(records: list[Record], c: Coalesced) -> dict[str, Any]:
    auditd: dict[str, Any] = {
        "message_type": c.record_type,
        "category": c.category,
        "sequence": c.serial,
        "result": c.result,
        "data": _data_fields(c.data),
    }
    if c.session and c.session != "unset":
        auditd["session"] = c.session
    summary: dict[str, Any] = {}
    primary, secondary = c.actor_primary, c.actor_secondary
    if primary or secondary:
        actor = summary["actor"] = {}
        if primary:
            actor["primary"] = primary
        if secondary:
            actor["secondary"] = secondary
    object_type, primary, secondary = c.object_type, c.object_primary, c.object_secondary
    if object_type or primary or secondary:
        obj = summary["object"] = {}
        if object_type:
            obj["type"] = object_type
        if primary:
            obj["primary"] = primary
        if secondary:
            obj["secondary"] = secondary
    if c.how:
        summary["how"] = c.how
    auditd["summary"] = summary
    if c.paths:
        # Copies: the PATH dicts are the interpreter memo's own.
        auditd["paths"] = list(map(dict, c.paths))
    auditd["records"] = raw_records_text(records)
    return auditd


def _data_fields(data: dict[str, str]) -> dict[str, Any]:
    if "\x00socket_" not in "\x00" + "\x00".join(data):
        return data  # no SOCKADDR fields (most events): nothing to nest
    out: dict[str, Any] = {}
    nest_sockets = not isinstance(data.get("socket"), str)
    for key, value in data.items():
        if nest_sockets and key.startswith("socket_"):
            # Auditbeat writes SOCKADDR fields as auditd.data.socket.*.
            out.setdefault("socket", {})[key[7:]] = value
        else:
            out[key] = value
    return out


# The id fields of a kernel SYSCALL record, in its order: the usual event's user.
_KERNEL_ID_LAYOUT = ("auid", "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid")


def _user_fields(records: list[Record], c: Coalesced) -> dict[str, Any]:
    ids = c.user_ids
    user: dict[str, Any]
    if len(ids) == 9 and tuple(ids) == _KERNEL_ID_LAYOUT and "unset" not in ids.values():
        # What the loop in _user_ids makes of these, as one literal.
        auid, uid, gid, euid, suid, fsuid, egid, sgid, fsgid = ids.values()
        user = {
            "audit": {"id": auid},
            "id": uid,
            "group": {"id": gid},
            "effective": {"id": euid, "group": {"id": egid}},
            "saved": {"id": suid, "group": {"id": sgid}},
            "filesystem": {"id": fsuid, "group": {"id": fsgid}},
        }
    else:
        user = _user_ids(ids)
    if c.user_selinux:
        user["selinux"] = dict(c.user_selinux)
    if not records:
        return user
    # auditd's ENRICHED trailer names the ids (UID="root"); raw logs have no names.
    primary = records[0]
    if primary.type != 1300:
        for rec in records:
            if rec.type == 1300:
                primary = rec
                break
    if primary.enriched:
        for enriched_key, name in enriched_fields(primary.enriched).items():
            id_key = enriched_key.lower()
            if id_key in ids and ids[id_key] != "unset":
                _put(user, _id_paths(id_key)[1], escape(name))
    return user


def _user_ids(ids: dict[str, str]) -> dict[str, Any]:
    """Each id under its Auditbeat path (``egid`` -> ``effective.group.id``), unset ones left out."""
    user: dict[str, Any] = {}
    for key, value in ids.items():
        if value == "unset":
            continue
        # Unrolled _put: parents are never "id"/"name" (keys end in uid/gid).
        parents = _ID_PARENTS.get(key)
        if parents is None:
            user.setdefault(key, {})["id"] = value
        elif not parents:
            user["id"] = value
        elif len(parents) == 1:
            parent = parents[0]
            if parent in user:
                user[parent]["id"] = value
            else:
                user[parent] = {"id": value}
        else:  # effective.group and the like
            user.setdefault(parents[0], {}).setdefault(parents[1], {})["id"] = value
    return user


# Where each ECS slot lives in the document.
_SLOT_PATHS = {
    "user": ("user",),
    "user.effective": ("user", "effective"),
    "user.target": ("user", "target"),
    "user.changes": ("user", "changes"),
    "group": ("group",),
}


def _add_ecs_entities(doc: dict[str, Any], entities: dict[str, EcsEntity]) -> None:
    for slot in ECS_SLOTS:
        entity = entities.get(slot)
        if entity is None or (not entity.id and not entity.name):
            continue
        node: dict[str, Any] = doc
        for name in _SLOT_PATHS[slot]:
            node = node.setdefault(name, {})
        # As Auditbeat: an "unset" id is dropped, a name replaces a stale one; but a
        # name the ENRICHED trailer gave for this very id is kept.
        known_name = node.pop("name", None) if node.get("id") == entity.id else None
        node.pop("id", None)
        node.pop("name", None)
        if known_name is not None and not entity.name:
            node["name"] = known_name
        if entity.id and entity.id != "unset":
            node["id"] = entity.id
        if entity.name:
            node["name"] = entity.name


def _process_fields(c: Coalesced) -> dict[str, Any]:
    process: dict[str, Any] = {}
    pid, ppid = _as_int(c.pid), _as_int(c.ppid)
    if pid is not None:
        process["pid"] = pid
    if ppid is not None:
        process["parent"] = {"pid": ppid}
    if c.title:
        process["title"] = c.title
    if c.name:
        process["name"] = c.name
    if c.exe:
        process["executable"] = c.exe
    if c.cwd:
        process["working_directory"] = c.cwd
    if c.args:
        process["args"] = list(c.args)
        process["args_count"] = len(c.args)
    return process


def _address_fields(address: Address) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if address.ip:
        out["ip"] = address.ip
    port = _as_int(address.port)
    if port is not None:
        out["port"] = port
    if address.path:
        out["path"] = address.path
    return out


def _json_ready(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return escape(bytes(value))
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def marker_doc(
    action: str, node: str, sec: int, msec: int, details: dict[str, Any]
) -> dict[str, Any]:
    """A document for something the pipeline itself observed (loss, parse error)."""
    try:
        stamp = _timestamp(sec, msec)
    except (OverflowError, ValueError, OSError):
        stamp = _timestamp(0, 0)
    doc: dict[str, Any] = {
        "@timestamp": stamp,
        "event": {"kind": "event", "module": "auditd", "action": action},
        "auditstream": {"marker": _json_ready(details)},
        "tags": [MARKER_TAG],
    }
    if node:
        doc["host"] = {"name": host_name(node)}
    return doc
