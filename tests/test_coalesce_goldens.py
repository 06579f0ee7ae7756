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


def _entity(entity: EcsEntity) -> dict[str, str]:
    return _drop_empty({"name": entity.name, "id": entity.id})


def aucoalesce_view(c: Coalesced) -> dict[str, Any]:
    """Our coalesced event in the JSON shape of go-libaudit's aucoalesce.Event."""
    s = c.summary
    event: dict[str, Any] = {
        "@timestamp": _go_time(c.sec, c.msec),
        "sequence": c.serial,
        "category": c.category,
        "record_type": c.record_type,
        "session": c.session,
        "summary": _drop_empty(
            {
                "actor": _drop_empty({"primary": s.actor_primary, "secondary": s.actor_secondary}),
                "action": s.action,
                "how": s.how,
            }
        )
        | {
            "object": _drop_empty(
                {
                    "type": s.object_type,
                    "primary": s.object_primary,
                    "secondary": s.object_secondary,
                }
            )
        },
        "user": _drop_empty({"ids": c.user_ids, "selinux": c.user_selinux}),
        "process": _drop_empty(
            {
                "pid": c.process.pid,
                "ppid": c.process.ppid,
                "title": c.process.title,
                "name": c.process.name,
                "exe": c.process.exe,
                "cwd": c.process.cwd,
                "args": c.process.args,
            }
        ),
        "ecs": {
            "event": _drop_empty(
                {
                    "kind": c.ecs_kind,
                    "category": c.ecs_category,
                    "type": c.ecs_type,
                    "outcome": c.ecs_outcome,
                }
            ),
            "user": _entity(c.ecs_user.subject)
            | {
                "effective": _entity(c.ecs_user.effective),
                "target": _entity(c.ecs_user.target),
                "changes": _entity(c.ecs_user.changes),
            },
            "group": _entity(c.ecs_group),
        },
    }
    event |= _drop_empty({"result": c.result, "tags": c.tags, "data": c.data, "paths": c.paths})
    if c.file is not None:
        f = c.file
        event["file"] = _drop_empty(
            {
                "path": f.path,
                "device": f.device,
                "inode": f.inode,
                "mode": f.mode,
                "uid": f.uid,
                "gid": f.gid,
                "selinux": f.selinux,
            }
        )
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
