"""go-libaudit's aucoalesce goldens: every YAML case coalesced and compared field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from assembler.coalesce import Coalesced, EcsEntity, coalesce
from assembler.parse import Record, parse_record
from auditstream.logline import split_log_line

HERE = Path(__file__).resolve()
_CANDIDATES = (
    HERE.parent / "corpus" / "go-libaudit" / "aucoalesce" / "testdata",
    HERE.parents[2] / "shared" / "corpus" / "go-libaudit" / "aucoalesce" / "testdata",
)
TESTDATA = next((path for path in _CANDIDATES if path.is_dir()), None)

# Differences on purpose: (file stem, case name, top-level field) -> why.
ALLOWED_DIFFERENCES: dict[tuple[str, str, str], str] = {}


def _go_time(sec: int, msec: int) -> str:
    """Go's RFC3339Nano in UTC: fraction trimmed of trailing zeros, none when zero."""
    text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{msec:03d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def _drop_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """Go's omitempty for strings, maps and slices."""
    return {key: value for key, value in fields.items() if value not in ("", None, [], {})}


def _entity(c: Coalesced, slot: str) -> dict[str, str]:
    entity = (c.ecs_entities or {}).get(slot, EcsEntity())
    return _drop_empty({"name": entity.name, "id": entity.id})


def aucoalesce_view(c: Coalesced) -> dict[str, Any]:
    """Our coalesced event in the JSON shape of go-libaudit's aucoalesce.Event."""
    event: dict[str, Any] = {
        "@timestamp": _go_time(c.sec, c.msec),
        "sequence": c.serial,
        "category": c.category,
        "record_type": c.record_type,
        "session": c.session,
        "summary": _drop_empty(
            {
                "actor": _drop_empty({"primary": c.actor_primary, "secondary": c.actor_secondary}),
                "action": c.action,
                "how": c.how,
            }
        )
        | {
            "object": _drop_empty(
                {
                    "type": c.object_type,
                    "primary": c.object_primary,
                    "secondary": c.object_secondary,
                }
            )
        },
        "user": _drop_empty({"ids": c.user_ids, "selinux": c.user_selinux}),
        "process": _drop_empty(
            {
                "pid": c.pid,
                "ppid": c.ppid,
                "title": c.title,
                "name": c.name,
                "exe": c.exe,
                "cwd": c.cwd,
                "args": list(c.args),
            }
        ),
        "ecs": {
            "event": _drop_empty(
                {
                    "kind": c.ecs_kind,
                    "category": list(c.ecs_category),
                    "type": list(c.ecs_type),
                    "outcome": c.ecs_outcome,
                }
            ),
            "user": _entity(c, "user")
            | {
                "effective": _entity(c, "user.effective"),
                "target": _entity(c, "user.target"),
                "changes": _entity(c, "user.changes"),
            },
            "group": _entity(c, "group"),
        },
    }
    event |= _drop_empty({"result": c.result, "tags": c.tags, "data": c.data, "paths": c.paths})
    if c.file is not None:
        # Already in its ECS shape: the non-empty fields of aucoalesce's file object.
        event["file"] = dict(c.file)
    for key, address in (("source", c.source), ("destination", c.destination)):
        if address is not None:
            event[key] = _drop_empty({"ip": address.ip, "port": address.port, "path": address.path})
    if c.direction:
        event["network"] = {"direction": c.direction}
    return event


def _cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    if TESTDATA is None:
        return []
    out = []
    for source in sorted(TESTDATA.glob("*.yaml")):
        tests = yaml.safe_load(source.read_text())["tests"]
        golden = json.loads(source.with_suffix(".json.golden").read_text())
        # Go sorts case names byte-wise; the golden array is in that order.
        names = sorted(tests, key=lambda name: name.encode())
        assert len(names) == len(golden), source.name
        for name, expected in zip(names, golden, strict=True):
            assert expected["test_name"] == name
            out.append((source.stem, name, tests[name], expected))
    return out


CASES = _cases()


def _records(text: str) -> list[Record]:
    records = []
    for line in text.encode().splitlines():
        if line.strip():
            records.append(parse_record(*split_log_line(line)))
    return records


@pytest.mark.skipif(TESTDATA is None, reason="go-libaudit aucoalesce testdata not found")
def test_every_yaml_case_has_a_golden() -> None:
    """All 48 aucoalesce cases across the 8 YAML files are collected."""
    assert len(CASES) == 48


@pytest.mark.parametrize(
    ("stem", "name", "text", "expected"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_coalesce_matches_golden(stem: str, name: str, text: str, expected: dict[str, Any]) -> None:
    """The coalesced event and its warnings equal go-libaudit's golden, field by field."""
    coalesced = coalesce(_records(text))
    ours = aucoalesce_view(coalesced)
    theirs = expected["event"]
    for key in sorted(set(ours) | set(theirs)):
        if (stem, name, key) in ALLOWED_DIFFERENCES:
            continue
        assert ours.get(key) == theirs.get(key), f"{stem}:{name}: field {key!r}"
    assert sorted(coalesced.warnings) == expected.get("warnings", [])
