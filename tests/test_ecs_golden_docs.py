"""Every corpus event's ECS document, compared with a golden taken before the speed work.

The golden (tests/golden/ecs-docs.json) pins ``event_from_records`` output for each event
of the corpus logs, the aucoalesce YAML cases, the laurel and linux-audit-parser inputs,
and tests/golden/ecs-docs-input.log (a slice of the benchmark log, enriched lines, and
hostile records). Regenerate it only on purpose:
``AUDITSTREAM_UPDATE_GOLDENS=1 python -m pytest tests/test_ecs_golden_docs.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from assembler.events import event_from_records
from assembler.parse import ParseError, Record, parse_record
from assembler.reassembler import CompletionReason
from auditstream.logline import LineError, split_log_line

HERE = Path(__file__).resolve()
GOLDEN = HERE.parent / "golden" / "ecs-docs.json"
LOCAL_INPUT = HERE.parent / "golden" / "ecs-docs-input.log"
CORPUS = HERE.parents[2] / "shared" / "corpus"
UPDATE = os.environ.get("AUDITSTREAM_UPDATE_GOLDENS") == "1"


def _inputs() -> dict[str, bytes]:
    """Name -> log text of every input the golden covers."""
    out = {"local:ecs-docs-input.log": LOCAL_INPUT.read_bytes()}
    for path in sorted(CORPUS.rglob("*.log")) + sorted(CORPUS.rglob("*.txt")):
        if path.name != "README.txt":
            out[str(path.relative_to(CORPUS))] = path.read_bytes()
    for path in sorted(CORPUS.rglob("aucoalesce/testdata/*.yaml")):
        for name, text in sorted(yaml.safe_load(path.read_text())["tests"].items()):
            out[f"{path.relative_to(CORPUS)}:{name}"] = text.encode()
    return out


def _events(text: bytes) -> list[list[Record]]:
    """Records grouped by (node, serial) in order of first appearance; bad lines skipped."""
    groups: dict[tuple[str, int], list[Record]] = {}
    for line in text.splitlines():
        try:
            type_, data, node = split_log_line(line)
            rec = parse_record(type_, data, node)
        except (LineError, ParseError):
            continue
        groups.setdefault((rec.node, rec.serial), []).append(rec)
    return list(groups.values())


def _docs() -> dict[str, Any]:
    """Input name -> list of docs (or the error text) for each event, from the current code."""
    out: dict[str, Any] = {}
    for name, text in _inputs().items():
        docs: list[Any] = []
        for records in _events(text):
            try:
                docs.append(event_from_records(records, CompletionReason.EOE)["doc"])
            except Exception as err:  # the stage turns these into markers; pin them too
                docs.append({"error": repr(err)})
        out[name] = docs
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    """The stored golden docs (written first when AUDITSTREAM_UPDATE_GOLDENS=1)."""
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS}")
    if UPDATE:
        GOLDEN.write_bytes(orjson.dumps(_docs(), option=orjson.OPT_INDENT_2))
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} missing: run with AUDITSTREAM_UPDATE_GOLDENS=1")
    loaded: dict[str, Any] = orjson.loads(GOLDEN.read_bytes())
    return loaded


def test_golden_covers_every_input(golden: dict[str, Any]) -> None:
    """The golden names exactly the current inputs, and holds hundreds of events."""
    assert sorted(golden) == sorted(_inputs())
    assert sum(len(docs) for docs in golden.values()) > 400


def test_docs_match_golden(golden: dict[str, Any]) -> None:
    """Each event's document equals the golden one, field for field and in key order."""
    current = _docs()
    for name, expected in golden.items():
        got = current[name]
        assert len(got) == len(expected), name
        for index, (doc, want) in enumerate(zip(got, expected, strict=True)):
            assert doc == want, f"{name} event {index}"
            # Key order is what a JSON consumer sees: keep it too.
            assert orjson.dumps(doc) == orjson.dumps(want), f"{name} event {index} (key order)"
