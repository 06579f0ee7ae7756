"""The project's own strictness settings hold: ruff and mypy --strict pass on the whole tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["auditstream", "receiver", "assembler", "treekeeper", "sinks"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_passes() -> None:
    """ruff check finds nothing in the repository."""
    result = subprocess.run(["ruff", "check", "."], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_packages() -> None:
    """mypy --strict, run bare as the README says, checks the five packages and finds nothing."""
    pytest.importorskip("mypy", reason="mypy not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"in {len(list_sources())} source files" in result.stdout, result.stdout


def list_sources() -> list[Path]:
    """The .py files of the five packages (what mypy must have checked)."""
    return [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]


def test_readme_top_gives_the_command_ci_runs() -> None:
    """The README's test command is the one .ci/run executes (tests/README-command)."""
    command = (REPO / "tests" / "README-command").read_text().strip()
    readme = (REPO / "README.md").read_text()
    assert command in readme.split("## ")[0], "README's top must show the test command CI runs"
    assert "tests/README-command" in (REPO / ".ci" / "run").read_text()
