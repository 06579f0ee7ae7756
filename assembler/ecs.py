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

from assembler.coalesce import Address, Coalesced, EcsEntity
from assembler.parse import Record, enriched_fields
from auditstream.escape import escape
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


def _timestamp(sec: int, msec: int) -> str:
    extra, msec = divmod(msec, 1000)
    return f"{_second_text(sec + extra)}.{msec:03d}Z"


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


def _as_int(text: str) -> int | None:
    # Bounded so a hostile 10 kB digit string cannot cost quadratic time.
    if text.isascii() and text.isdigit() and len(text) <= 20:
        return int(text)
    return None


def raw_record_text(rec: Record) -> str:
    """One record as ``type=NAME msg=DATA``, escaped (reversible with unescape)."""
    return f"type={type_name(rec.type)} msg={escape(rec.data)}"


def raw_records_text(records: list[Record]) -> list[str]:
    """:func:`raw_record_text` of each record; one check decides for the whole event."""
    joined = b" ".join([rec.data for rec in records])
    # escape() changes controls, '%', DEL and non-ASCII; printable ASCII passes as is.
    if not joined.isascii() or b"%" in joined or not joined.decode("ascii").isprintable():
        return [raw_record_text(rec) for rec in records]
    return [_record_prefix(rec.type) + rec.data.decode("ascii") for rec in records]


@lru_cache(maxsize=512)
def _record_prefix(record_type: int) -> str:
    return f"type={type_name(record_type)} msg="


_OUTCOMES = {"success": "success", "fail": "failure"}


def build_doc(records: list[Record], coalesced: Coalesced) -> dict[str, Any]:
    """The ECS document for one event; ``records`` are the event's raw records."""
    c = coalesced
    warnings = list(c.warnings)
    try:
        stamp = _timestamp(c.sec, c.msec)
    except (OverflowError, ValueError, OSError):
        warnings.append(f"timestamp out of range: {c.sec}.{c.msec:03d}")
        stamp = _timestamp(0, 0)
    outcome = _OUTCOMES.get(c.result, "unknown")
    event: dict[str, Any] = {
        "kind": "event",
        "module": "auditd",
        "action": c.summary.action,
        "outcome": c.ecs_outcome or outcome,
        "sequence": c.serial,
    }
    if c.ecs_category:
        event["category"] = list(c.ecs_category)
    if c.ecs_type:
        event["type"] = list(c.ecs_type)
    if not c.summary.action:
        del event["action"]
    doc: dict[str, Any] = {
        "@timestamp": stamp,
        "event": event,
        "auditd": _auditd_fields(records, c),
        "user": _user_fields(records, c),
    }
    _add_ecs_entities(doc, c)
    process = _process_fields(c)
    if process:
        doc["process"] = process
    if c.file is not None:
        doc["file"] = _file_fields(c)
    for key, address in (("source", c.source), ("destination", c.destination)):
        if address is not None:
            doc[key] = _address_fields(address)
    if c.direction:
        doc["network"] = {"direction": c.direction}
    if c.node:
        doc["host"] = {"name": c.node}
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
    s = c.summary
    if s.actor_primary or s.actor_secondary:
        actor = summary["actor"] = {}
        if s.actor_primary:
            actor["primary"] = s.actor_primary
        if s.actor_secondary:
            actor["secondary"] = s.actor_secondary
    if s.object_type or s.object_primary or s.object_secondary:
        obj = summary["object"] = {}
        for name, value in (
            ("type", s.object_type),
            ("primary", s.object_primary),
            ("secondary", s.object_secondary),
        ):
            if value:
                obj[name] = value
    if s.how:
        summary["how"] = s.how
    auditd["summary"] = summary
    if c.paths:
        auditd["paths"] = [dict(path) for path in c.paths]
    auditd["records"] = raw_records_text(records)
    return auditd


def _data_fields(data: dict[str, str]) -> dict[str, Any]:
    if "\x00socket_" not in "\x00" + "\x00".join(data):
        return dict(data)  # no SOCKADDR fields (most events): nothing to nest
    out: dict[str, Any] = {}
    nest_sockets = not isinstance(data.get("socket"), str)
    for key, value in data.items():
        if nest_sockets and key.startswith("socket_"):
            # Auditbeat writes SOCKADDR fields as auditd.data.socket.*.
            out.setdefault("socket", {})[key[7:]] = value
        else:
            out[key] = value
    return out


def _user_fields(records: list[Record], c: Coalesced) -> dict[str, Any]:
    user: dict[str, Any] = {}
    for key, value in c.user_ids.items():
        if value == "unset":
            continue
        # Unrolled _put: parents are never "id"/"name" (keys end in uid/gid).
        parents = _ID_PARENTS.get(key)
        if parents is None:
            user.setdefault(key, {})["id"] = value
        elif not parents:
            user["id"] = value
        elif len(parents) == 1:
            user.setdefault(parents[0], {})["id"] = value
        else:  # effective.group and the like
            user.setdefault(parents[0], {}).setdefault(parents[1], {})["id"] = value
    if c.user_selinux:
        user["selinux"] = dict(c.user_selinux)
    if not records:
        return user
    # auditd's ENRICHED trailer names the ids (UID="root"); raw logs have no names.
    primary = records[0]
    for rec in records:
        if rec.type == 1300:
            primary = rec
            break
    if primary.enriched:
        for enriched_key, name in enriched_fields(primary.enriched).items():
            id_key = enriched_key.lower()
            if id_key in c.user_ids and c.user_ids[id_key] != "unset":
                _put(user, _id_paths(id_key)[1], escape(name))
    return user


def _add_ecs_entities(doc: dict[str, Any], c: Coalesced) -> None:
    slots: tuple[tuple[tuple[str, ...], EcsEntity], ...] = (
        (("user",), c.ecs_user.subject),
        (("user", "effective"), c.ecs_user.effective),
        (("user", "target"), c.ecs_user.target),
        (("user", "changes"), c.ecs_user.changes),
        (("group",), c.ecs_group),
    )
    for path, entity in slots:
        if not entity.id and not entity.name:
            continue
        node: dict[str, Any] = doc
        for name in path:
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
    user = doc["user"]
    effective = user.get("effective")
    if isinstance(effective, dict):
        for key in ("id", "name"):
            if user.get(key) and effective.get(key) == user.get(key):
                del user["effective"]
                break


def _process_fields(c: Coalesced) -> dict[str, Any]:
    p = c.process
    process: dict[str, Any] = {}
    pid, ppid = _as_int(p.pid), _as_int(p.ppid)
    if pid is not None:
        process["pid"] = pid
    if ppid is not None:
        process["parent"] = {"pid": ppid}
    for key, value in (
        ("title", p.title),
        ("name", p.name),
        ("executable", p.exe),
        ("working_directory", p.cwd),
    ):
        if value:
            process[key] = value
    if p.args:
        process["args"] = list(p.args)
        process["args_count"] = len(p.args)
    return process


def _file_fields(c: Coalesced) -> dict[str, Any]:
    assert c.file is not None
    f = c.file
    out: dict[str, Any] = {
        key: value
        for key, value in (
            ("path", f.path),
            ("device", f.device),
            ("inode", f.inode),
            ("mode", f.mode),
            ("uid", f.uid),
            ("gid", f.gid),
        )
        if value
    }
    if f.selinux:
        out["selinux"] = dict(f.selinux)
    return out


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
        doc["host"] = {"name": node}
    return doc
