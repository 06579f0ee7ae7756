"""What the process table adds to an event doc, and the lifecycle docs it emits.

Enrichment never overwrites a field the event's own records set and never guesses:
what the table does not know stays absent. Ancestry elements are shared between
docs of the same process (they are replaced, never mutated, when a process execs),
and the C loop gives a run of events that would be enriched alike one shared
``process`` dict (treekeeper/csrc/enrich_memo.h), so sinks must treat docs as read-only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from treekeeper.tree import Process, ProcessTable


_iso_cache: list[Any] = [-1, ""]  # last whole second formatted: strftime is slow
_MS_SUFFIX = [f".{ms:03d}Z" for ms in range(1000)]  # a format spec per call cost ~2x this


def iso_ms(ms: int) -> str:
    """Event time in ms as RFC 3339 UTC with milliseconds, like ``@timestamp``."""
    seconds = ms // 1000
    if seconds != _iso_cache[0]:
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_cache[0], _iso_cache[1] = seconds, text
    second_text: str = _iso_cache[1]
    return second_text + _MS_SUFFIX[ms % 1000]


def _set_absent(target: dict[str, Any], name: str, value: Any) -> None:
    if value is not None and name not in target:
        target[name] = value


def _resolve_parent(
    table: ProcessTable, proc: Process, ppid: int | None, at_ms: int
) -> Process | None:
    """The process that was the parent at the event: the recorded ppid decides."""
    if ppid is None:
        return table.get(proc.parent)
    known = table.get(proc.parent)
    if known is not None and known.pid == ppid:
        return known
    former = table.former_parent(proc, ppid)
    return former if former is not None else table.lookup(ppid, at_ms)


def enrich_doc(table: ProcessTable, doc: dict[str, Any]) -> None:
    """Set process.entity_id/start, process.parent.*, process.ancestry and container.*."""
    process = doc.get("process")
    if not isinstance(process, dict):
        return
    pid = process.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return
    at_ms = table.event_ms(doc)
    proc = table.lookup(pid, at_ms)
    if proc is None:
        return
    process["entity_id"] = proc.entity_id
    if proc.started_at is not None:
        process["start"] = iso_ms(proc.started_at)
    _set_absent(process, "executable", proc.executable)
    _set_absent(process, "name", proc.name)
    _set_absent(process, "args", proc.args)

    parent_section = process.get("parent")
    if not isinstance(parent_section, dict):
        parent_section = {}
    ppid = parent_section.get("pid")
    ppid = ppid if isinstance(ppid, int) and not isinstance(ppid, bool) else None
    parent = _resolve_parent(table, proc, ppid, at_ms)
    if parent is not None:
        _set_absent(parent_section, "pid", parent.pid)
        parent_section["entity_id"] = parent.entity_id
        _set_absent(parent_section, "executable", parent.executable)
        _set_absent(parent_section, "name", parent.name)
        _set_absent(parent_section, "args", parent.args)
    elif ppid is None and proc.ppid:
        parent_section["pid"] = proc.ppid
    if parent_section:
        process["parent"] = parent_section

    ancestry = table.lineage(proc, table.config.ancestry_max_depth)
    if ancestry:
        if table.config.ancestry_fragments:
            process["ancestry"] = [anc.entry_fragment() for anc in ancestry]
        else:
            process["ancestry"] = [anc.entry() for anc in ancestry]

    if proc.container is not None:
        container = doc.get("container")
        if not isinstance(container, dict):
            container = {}
            doc["container"] = container
        container.setdefault("id", proc.container.id)
        if proc.container.runtime is not None:
            container.setdefault("runtime", proc.container.runtime)


_LIFECYCLE_TYPE = {
    "process-started": "start",
    "process-exec": "change",
    "process-exited": "end",
    "container-first-seen": "start",
    "container-gone": "end",
}


def lifecycle_doc(table: ProcessTable, action: str, proc: Process, at_ms: int) -> dict[str, Any]:
    """A minimal ECS doc announcing a process or container lifecycle step."""
    process: dict[str, Any] = {"pid": proc.pid, "entity_id": proc.entity_id}
    for name, value in (
        ("executable", proc.executable),
        ("name", proc.name),
        ("args", proc.args),
        ("working_directory", proc.cwd),
    ):
        if value is not None:
            process[name] = value
    if proc.started_at is not None:
        process["start"] = iso_ms(proc.started_at)
    parent = table.get(proc.parent)
    if parent is not None:
        process["parent"] = {"pid": parent.pid, "entity_id": parent.entity_id}
    elif proc.ppid:
        process["parent"] = {"pid": proc.ppid}
    if action == "process-exited":
        process["end"] = iso_ms(at_ms)
        if proc.exit_code is not None:
            process["exit_code"] = proc.exit_code
    doc: dict[str, Any] = {
        "@timestamp": iso_ms(at_ms),
        "event": {
            "kind": "event",
            "category": ["process"],
            "type": [_LIFECYCLE_TYPE[action]],
            "action": action,
        },
        "process": process,
    }
    if table.config.host:
        doc["host"] = {"name": table.config.host}
    if proc.container is not None:
        container: dict[str, Any] = {"id": proc.container.id}
        if proc.container.runtime is not None:
            container["runtime"] = proc.container.runtime
        doc["container"] = container
    return doc
