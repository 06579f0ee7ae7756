"""Save the process table on shutdown and load it on start, so a restart keeps ancestry.

The file is msgpack: ``{"version", "saved_ms", "host", "processes": [[field, ...], ...]}``,
and ``"node"`` in a recording's table (treekeeper/recording_tree.py). It is written to a
temporary file and renamed, so a crash never leaves half a file.
A file older than ``max_age_ms`` describes processes that may be long gone, and a
corrupt one cannot be trusted: both are logged and give a fresh, empty table.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack

from auditstream.hostnode import host_name
from auditstream.redelivery import write_atomically
from treekeeper.containers import ContainerRef, RuntimeRole
from treekeeper.tree import Process, ProcessTable, TableConfig

log = logging.getLogger(__name__)

STATE_VERSION = 1


# A saved row is checked field by field: a value of another type (a corrupt file, one edited
# by hand, a recording's table from elsewhere) would otherwise reach the table and stop the
# tree keeper at its first comparison (an exit time that is text), restart after restart.
_INT_MAX = 2**63


def _int(value: Any) -> int:
    if type(value) is not int or not -_INT_MAX <= value < _INT_MAX:
        raise ValueError(f"{value!r:.40} is not a 64-bit integer")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"{value!r:.40} is not text")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{value!r:.40} is not true or false")
    return value


def _opt_strs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise ValueError(f"{value!r:.40} is not a list")
    return [_str(item) for item in value]


def _key(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 2:
        raise ValueError(f"{value!r:.40} is not a process key")
    return (_int(value[0]), _int(value[1]))


def _ref(value: Any) -> ContainerRef | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 2:
        raise ValueError(f"{value!r:.40} is not a container")
    return ContainerRef(_str(value[0]), _opt_str(value[1]))


def _pack(p: Process) -> list[Any]:
    def ref(r: ContainerRef | None) -> list[Any] | None:
        return [r.id, r.runtime] if r is not None else None

    return [
        p.pid, p.start_ms, p.entity_id, p.ppid,
        list(p.parent) if p.parent else None, list(p.creator) if p.creator else None,
        p.executable, p.name, p.args, p.cwd, p.title,
        p.started_at, p.first_seen, p.image_ms, p.exec_ms,
        p.inferred, p.tentative, p.maybe_threaded, p.exited_at, p.exit_code,
        ref(p.container), p.role.value, ref(p.managed),
        list(p.previous) if p.previous else None,
        p.ended_gone, p.proc_start_ms,
    ]  # fmt: skip


# The fields every saved row has; later ones were added since and default when absent.
BASE_FIELDS = 24
# The fields this version writes. A row with more is of a newer auditstream, which only
# ever appends fields (an incompatible change would raise STATE_VERSION): their values are
# left out, as a newer version defaults what an older row lacks, so a downgrade keeps the
# table (forty-fifth pass).
KNOWN_FIELDS = 26


def _unpack(row: list[Any]) -> Process:
    if type(row) is not list or len(row) < BASE_FIELDS:
        raise ValueError(f"a process row of {len(row) if type(row) is list else 0} fields")
    (pid, start_ms, eid, ppid, parent, creator, exe, name, args, cwd, title, started_at,
     first_seen, image_ms, exec_ms, inferred, tentative, maybe_threaded, exited_at, exit_code,
     container, role, managed, previous) = row[:BASE_FIELDS]  # fmt: skip
    # Saved since ended_gone was: a process the /proc sweep ended (its container-gone says so).
    ended_gone = _flag(row[BASE_FIELDS]) if len(row) > BASE_FIELDS else False
    # Saved since proc_start_ms was: /proc's start of a live process, which tells a pid
    # reused while the tree keeper was stopped exactly (ProcessTable._same_start).
    proc_start_ms = _opt_int(row[BASE_FIELDS + 1]) if len(row) > BASE_FIELDS + 1 else None
    return Process(
        pid=_int(pid),
        start_ms=_int(start_ms),
        entity_id=_str(eid),
        ppid=_int(ppid),
        parent=_key(parent),
        creator=_key(creator),
        executable=_opt_str(exe),
        name=_opt_str(name),
        args=_opt_strs(args),
        cwd=_opt_str(cwd),
        title=_opt_str(title),
        started_at=_opt_int(started_at),
        first_seen=_int(first_seen),
        image_ms=_int(image_ms),
        exec_ms=_opt_int(exec_ms),
        inferred=_flag(inferred),
        tentative=_flag(tentative),
        maybe_threaded=_flag(maybe_threaded),
        exited_at=_opt_int(exited_at),
        exit_code=_opt_int(exit_code),
        container=_ref(container),
        role=RuntimeRole(role),
        managed=_ref(managed),
        previous=_key(previous),
        ended_gone=ended_gone,
        proc_start_ms=proc_start_ms,
    )


def save(
    table: ProcessTable,
    path: str | os.PathLike[str],
    now_ms: int | None = None,
    *,
    node: str | None = None,
) -> None:
    """Write the table to ``path`` atomically; ``node``: the audit node its records name
    (a recording's table, treekeeper/recording_tree.py)."""
    saved_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    body: dict[str, Any] = {
        "version": STATE_VERSION,
        "saved_ms": saved_ms,
        "host": table.config.host,
        "processes": [_pack(p) for p in table.processes.values()],
    }
    if node is not None:
        body["node"] = node
    # A temporary file of a random name, created exclusively (mode 0600: it holds command
    # lines), then renamed: a link planted at a fixed name in a shared directory (a
    # recording's, /tmp) is replaced, never written through.
    write_atomically(Path(path), msgpack.packb(body, use_bin_type=True))


def load(
    path: str | os.PathLike[str],
    max_age_ms: int,
    config: TableConfig | None = None,
    now_ms: int | None = None,
) -> ProcessTable | None:
    """The saved table; None if there is no file; a fresh table if it is stale or corrupt."""
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("treekeeper state %s unreadable (%s); starting with an empty table", path, err)
        return ProcessTable(config)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    try:
        body = _body(raw)
        age = now - int(body["saved_ms"])
        if age > max_age_ms:
            log.warning(
                "treekeeper state %s is %d ms old (max %d); starting with an empty table",
                path, age, max_age_ms,
            )  # fmt: skip
            return ProcessTable(config)
        processes = [_unpack(row) for row in body["processes"]]
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as err:
        log.warning("treekeeper state %s is corrupt (%s); starting with an empty table", path, err)
        return ProcessTable(config)
    _note_newer_rows(path, body["processes"])
    return _table_of(processes, config)


def _note_newer_rows(path: str | os.PathLike[str], rows: list[list[Any]]) -> None:
    """Say so when rows hold fields of a newer auditstream: their values were left out."""
    newer = sum(1 for row in rows if len(row) > KNOWN_FIELDS)
    if newer:
        log.warning(
            "treekeeper state %s: %d process rows hold fields of a newer auditstream "
            "(more than %d); those fields are left out",
            path, newer, KNOWN_FIELDS,
        )  # fmt: skip


def load_recorded(
    path: str | os.PathLike[str], config: TableConfig
) -> tuple[str, ProcessTable] | None:
    """(node, table) of a recording's table (saved with ``node``), of any age: the
    recording it belongs to is replayed whenever its user likes. None, logged, when it
    cannot be read or is not such a file."""
    try:
        body = _body(Path(path).read_bytes())
        node = body["node"]
        if type(node) is not str:
            raise ValueError("no audit node named")
        processes = [_unpack(row) for row in body["processes"]]
        _note_newer_rows(path, body["processes"])
    except (OSError, ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as err:
        log.warning(
            "the recording's process table %s cannot be used (%s): the replay starts without it",
            path,
            getattr(err, "strerror", None) or err,
        )
        return None
    return node, _table_of(processes, replace(config, host=host_name(node)))


def _body(raw: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if not isinstance(body, dict) or body.get("version") != STATE_VERSION:
        raise ValueError(f"not a treekeeper state file of version {STATE_VERSION}")
    return body


def _table_of(processes: list[Process], config: TableConfig | None) -> ProcessTable:
    table = ProcessTable(config)
    for proc in processes:
        table.insert_restored(proc)
    for proc in processes:  # children sets are derived, not stored
        parent = table.get(proc.parent)
        if parent is not None:
            parent.children.add(proc.key)
    return table
