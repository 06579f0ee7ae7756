"""A whole replay gives the same JSON lines with the C event building as with pure Python.

The per-function differential tests (tests/test_native_*.py) compare each C function with
its Python reference; this one runs the real three-process pipeline twice on the same logs,
with ``AUDITSTREAM_NATIVE=0`` and ``=1``, and compares the output bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from native_helpers import native_module

from auditstream.native import MODE_ENV

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO / "tests" / "corpus"
SHARED_CORPUS = REPO.parent / "shared" / "corpus"


def require_native() -> None:
    """Skip when the C modules are not built, unless CI requires them."""
    for name in ("assembler.native_parse", "assembler.native_coalesce", "assembler.native_ecs", "receiver.native_lines"):
        native_module(name)


def replay_lines(logs: list[Path], out: Path, mode: str) -> list[bytes]:
    """`auditstream replay LOGS` with AUDITSTREAM_NATIVE=mode: the output lines, markers' clock masked."""
    env = {**os.environ, MODE_ENV: mode}
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", *map(str, logs), "--sink", f"jsonl:{out}"],
        cwd=REPO, env=env, capture_output=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = []
    for line in out.read_bytes().splitlines():
        doc = orjson.loads(line)
        if "auditstream-marker" in doc.get("tags", ()):
            doc["@timestamp"] = "(the replay's clock)"  # markers are stamped when made
            line = orjson.dumps(doc)
        lines.append(line)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("enriched", [False, True], ids=["raw", "enriched"])
def test_a_generated_log_replays_to_the_same_bytes(tmp_path: Path, enriched: bool) -> None:
    """40k exec-heavy lines (bench/gen_log.py) give byte-identical output with and without C."""
    require_native()
    log = tmp_path / "gen.log"
    command = [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "40000", "--out", str(log)]
    subprocess.run(command + (["--enriched"] if enriched else []), check=True)
    python_out = replay_lines([log], tmp_path / "python.jsonl", "0")
    native_out = replay_lines([log], tmp_path / "native.jsonl", "1")
    assert len(python_out) > 8000
    assert native_out == python_out


def test_the_corpus_logs_replay_to_the_same_bytes(tmp_path: Path) -> None:
    """Every corpus log and laurel record file, replayed in one run, gives the same lines with and without C."""
    require_native()
    roots = [CORPORA, *([SHARED_CORPUS] if SHARED_CORPUS.is_dir() else [])]
    found = [path for root in roots for suffix in ("*.log", "*.txt") for path in sorted(root.rglob(suffix))]
    by_content = {path.read_bytes(): path for path in found if "type=" in path.read_text(errors="replace")}
    logs = list(by_content.values())
    assert len(logs) >= 10
    python_out = replay_lines(logs, tmp_path / "python.jsonl", "0")
    native_out = replay_lines(logs, tmp_path / "native.jsonl", "1")
    assert len(python_out) > 200
    assert native_out == python_out
