"""Every process's logging: JSON lines when asked, and no JSON library loaded when not."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auditstream import logs

REPO = Path(__file__).resolve().parents[1]


def test_json_logging_writes_one_object_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    """``fmt="json"`` gives each record as one JSON object with ECS-style keys."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        log = logs.setup("cli", fmt="json", level="info")
        log.warning("kernel lost %d audit records", 3)
        line = capsys.readouterr().err.strip()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    record = json.loads(line)
    assert record["message"] == "kernel lost 3 audit records"
    assert record["log.level"] == "WARNING"
    assert record["log.logger"] == "auditstream.cli"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["@timestamp"])


def test_json_log_timestamps_are_iso_8601_utc() -> None:
    """A log record's time is written as ISO 8601 in UTC, with milliseconds and a Z."""
    assert logs.iso_utc_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert logs.iso_utc_ms(1795532350.9856) == "2026-11-24T14:59:10.985Z"


def test_text_logging_leaves_the_json_library_unloaded() -> None:
    """The CLI and every stage module start without python-json-logger (~10 ms of a start)."""
    code = (
        "import sys, auditstream.cli, receiver.stage, assembler.stage, treekeeper.stage; "
        "from auditstream import logs; logs.setup('cli'); "
        "print(sorted(m for m in sys.modules if m.startswith('pythonjsonlogger')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_log_json_makes_the_supervisors_own_lines_json(tmp_path: Path) -> None:
    """With ``--log-json`` every log line of a replay is a JSON object, the supervisor's too;
    only the closing summary (``auditstream: ...``) stays text."""
    log = REPO / "tests" / "corpus" / "go-libaudit" / "auparse" / "testdata" / "audit-rhel7.log"
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "--log-json",
         "--sink", f"jsonl:{tmp_path / 'out.jsonl'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if not line.startswith("auditstream: ")]
    assert any("stage pids" in line for line in lines)
    for line in lines:
        assert json.loads(line)["@timestamp"].endswith("Z"), line
