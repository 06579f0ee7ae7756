"""Apply aucoalesce's normalizations to a coalesced event: summary, object, ECS categories.

Which normalization applies (by syscall name, else by record type), then the summary
(actor, action, object, how), the file or socket object, the ECS kind/category/type and
the ECS user/group entities, as go-libaudit's ``aucoalesce.setNormalizedFields``.
"""

from __future__ import annotations

from typing import Any

from assembler.coalesced import Address, Coalesced
from assembler.normalizations import (
    RECORD_TYPE_NORMALIZATIONS,
    SYSCALL_NORMALIZATIONS,
    Normalization,
)

# Interpreters whose exe says little; their comm names the script instead.
_INTERPRETER_PREFIXES = ("/usr/bin/python", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/perl")
_FALLBACK_SYSCALL_NORMALIZATION = SYSCALL_NORMALIZATIONS.get("*")


def apply_normalization(event: Coalesced) -> None:
    """Fill the summary, object and ECS fields of ``event`` from its data."""
    data = event.data
    exe = data.get("exe", data.get("comm"))
    if exe is not None:
        event.how = exe
        if exe.startswith(_INTERPRETER_PREFIXES) and "comm" in data:
            event.how = data["comm"]
    norm, syscall_norm = _choose_normalization(event)
    if norm is None:
        event.warnings.append("no normalization found for event")
        return
    event.ecs_kind = norm.ecs_kind
    event.ecs_category = norm.ecs_category
    event.ecs_type = norm.ecs_type
    if syscall_norm is not None and syscall_norm is not norm:
        # A user-space or MAC record riding on a syscall gets both categorisations.
        event.ecs_category += syscall_norm.ecs_category
        event.ecs_type += syscall_norm.ecs_type
        if event.result == "fail":
            event.ecs_outcome = "failure"
    event.action = norm.action
    object_what = event.object_type = norm.object_what
    if object_what in ("file", "filesystem") and event.paths:
        _set_file_object(event, norm.object_path_index)
    elif object_what == "socket":
        _set_socket_object(event)
    _apply_summary_fields(norm, event)
    for source, target in norm.ecs_copy:
        event.entity(target).set(_ecs_source(source, event))


def _choose_normalization(event: Coalesced) -> tuple[Normalization | None, Normalization | None]:
    syscall_norm: Normalization | None = None
    syscall = event.data.get("syscall")
    if syscall is not None:
        syscall_norm = SYSCALL_NORMALIZATIONS.get(syscall, _FALLBACK_SYSCALL_NORMALIZATION)
    if event.record_type == "syscall":
        return syscall_norm, syscall_norm
    norm: Normalization | None = None
    for candidate in RECORD_TYPE_NORMALIZATIONS.get(event.record_type.upper(), ()):
        # Several entries for one record type: the last whose fields are all present.
        if all(name in event.data for name in candidate.has_fields):
            norm = candidate
    return norm, syscall_norm


def _first_present(keys: tuple[str, ...], event: Coalesced, what: str) -> str | None:
    data, ids = event.data, event.user_ids
    for key in keys:
        value = data.get(key)
        if value is None:
            value = ids.get(key)
        if value is not None:
            return value
    event.warnings.append(
        f"failed to set {what} using keys=[{' '.join(keys)}] because they were not found"
    )
    return None


def _apply_summary_fields(norm: Normalization, event: Coalesced) -> None:
    if norm.subject_primary:
        value = _first_present(norm.subject_primary, event, "subject primary")
        if value is not None:
            event.actor_primary = value
    if norm.subject_secondary:
        value = _first_present(norm.subject_secondary, event, "subject secondary")
        if value is not None:
            event.actor_secondary = value
    if norm.object_primary:
        value = _first_present(norm.object_primary, event, "object primary")
        if value is not None:
            event.object_primary = value
    if norm.object_secondary:
        value = _first_present(norm.object_secondary, event, "object secondary")
        if value is not None:
            event.object_secondary = value
    if norm.how:
        value = _first_present(norm.how, event, "how")
        if value is not None:
            event.how = value
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
    if reference == "subject.primary":
        return event.actor_primary
    if reference == "subject.secondary":
        return event.actor_secondary
    if reference == "object.primary":
        return event.object_primary
    if reference == "object.secondary":
        return event.object_secondary
    table, _, key = reference.partition(".")
    if table == "data":
        return event.data.get(key, "")
    if table == "uid":
        return event.user_ids.get(key, "")
    raise ValueError(f"unknown ECS mapping source {reference}")


def _set_file_object(event: Coalesced, index_hint: int) -> None:
    paths = event.paths
    start = index_hint if len(paths) > index_hint else 0
    chosen = paths[start]
    for candidate in paths[start:]:
        # Skip PARENT and UNKNOWN entries in case the index hint was off.
        if candidate.get("nametype") not in ("PARENT", "UNKNOWN"):
            chosen = candidate
            break
    # Built in its ECS order (path, device, inode, mode, uid, gid, selinux), empties left out.
    info: dict[str, Any] = {}
    event.file = info
    name = chosen.get("name")
    if name is not None:
        event.object_primary = name
        if name:
            info["path"] = name
    device = chosen.get("rdev")
    if device:
        info["device"] = device
    inode = chosen.get("inode")
    if inode:
        info["inode"] = inode
    mode_text = chosen.get("mode")
    if mode_text is not None:
        try:
            mode = int(mode_text, 8)
        except ValueError:
            event.warnings.append(
                f"failed to set file object: failed to parse file mode: {mode_text}"
            )
            return
        info["mode"] = f"{mode & 0o7777:04o}"
        # go-libaudit reads st_mode through Go's FileMode, where every st_mode
        # looks like a regular file; its goldens therefore always say "file".
        event.object_type = "file"
    uid = chosen.get("ouid")
    if uid:
        info["uid"] = uid
    gid = chosen.get("ogid")
    if gid:
        info["gid"] = gid
    if "\x00obj_" in "\x00" + "\x00".join(chosen):  # one C-level scan, usually absent
        selinux = {key[4:]: value for key, value in chosen.items() if key.startswith("obj_")}
        if selinux:
            info["selinux"] = selinux


def _set_socket_object(event: Coalesced) -> None:
    data = event.data
    primary = data.get("socket_addr", data.get("socket_path"))
    if primary is not None:
        event.object_primary = primary
    if "socket_port" in data:
        event.object_secondary = data["socket_port"]
