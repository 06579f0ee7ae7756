"""The coalesced event: what :mod:`assembler.coalesce` makes of one event's records.

One flat object per event (the summary, the acting process and the ECS categorisation
are plain attributes, not nested objects): it is built once and read once, by
:func:`assembler.ecs.build_doc` and by the aucoalesce golden test. Every string is
JSON-safe: text from the records is escaped by :mod:`assembler.interpret`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNSET = "unset"

# The ECS user/group slots a normalization's ``ecs_copy`` can fill, in document order.
ECS_SLOTS = ("user", "user.effective", "user.target", "user.changes", "group")


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
class Coalesced:
    """One event, summarised (aucoalesce's Event, flattened)."""

    sec: int
    msec: int
    serial: int
    node: str
    category: str
    record_type: str
    result: str = "unknown"
    session: str = ""
    tags: list[str] = field(default_factory=list)
    # Fields not lifted elsewhere (auditd.data), in record order.
    data: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    user_selinux: dict[str, str] = field(default_factory=dict)
    # The summary: who did what to which object, and how.
    actor_primary: str = ""
    actor_secondary: str = ""
    action: str = ""
    object_type: str = ""
    object_primary: str = ""
    object_secondary: str = ""
    how: str = ""
    # The acting process (all values text).
    pid: str = ""
    ppid: str = ""
    title: str = ""
    name: str = ""
    exe: str = ""
    cwd: str = ""
    args: tuple[str, ...] = ()
    # The file object, already in its ECS shape: non-empty path, device, inode, mode,
    # uid, gid, selinux (in that order); None when the event names no file.
    file: dict[str, Any] | None = None
    source: Address | None = None
    destination: Address | None = None
    direction: str = ""
    # Every PATH record's data (shared with the interpreter's memo: read, never change).
    paths: list[dict[str, str]] = field(default_factory=list)
    ecs_kind: str = ""
    ecs_category: tuple[str, ...] = ()
    ecs_type: tuple[str, ...] = ()
    ecs_outcome: str = ""
    # ECS slot (see ECS_SLOTS) -> entity, for normalizations that copy ids there.
    ecs_entities: dict[str, EcsEntity] | None = None
    warnings: list[str] = field(default_factory=list)

    def entity(self, slot: str) -> EcsEntity:
        """The ECS entity of ``slot`` (``user``, ``user.effective``…), created on first use."""
        entities = self.ecs_entities
        if entities is None:
            entities = self.ecs_entities = {}
        found = entities.get(slot)
        if found is None:
            if slot not in ECS_SLOTS:
                raise KeyError(slot)
            found = entities[slot] = EcsEntity()
        return found
