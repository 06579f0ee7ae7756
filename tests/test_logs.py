"""Every process's logging: JSON lines when asked, and no JSON library loaded when not."""

from __future__ import annotations

import json
import logging
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
    assert "@timestamp" in record


def test_text_logging_leaves_the_json_library_unloaded() -> None:
    """The CLI and every stage module start without python-json-logger (~10 ms of a start)."""
    code = (
        "import sys, auditstream.cli, auditstream.stagefork as f; f.preload(); "
        "from auditstream import logs; logs.setup('cli'); "
        "print(sorted(m for m in sys.modules if m.startswith('pythonjsonlogger')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
