"""Generated audit logs for tests (bench/gen_log.py: process trees, file opens, connects)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_generated_log(path: Path, lines: int, *options: str) -> Path:
    """Write ``lines`` lines of bench/gen_log.py's log to ``path`` and return it."""
    command = [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", str(lines)]
    subprocess.run(
        [*command, "--out", str(path), *options],
        check=True,
        capture_output=True,
    )
    return path
