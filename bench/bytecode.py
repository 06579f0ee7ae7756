"""Compile the packages' bytecode before a timed run, as installing a wheel does.

Each stage is a fresh interpreter: without ``__pycache__`` (a new checkout, or
``PYTHONDONTWRITEBYTECODE`` set, as on these machines) every start compiles every module
from source, ~0.1 s per process that a user's installed copy does not pay.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("auditstream", "receiver", "assembler", "treekeeper", "sinks")


def compile_packages() -> bool:
    """Write the bytecode of every package module (quietly); False if one failed."""
    return all(compileall.compile_dir(REPO / name, quiet=1) for name in PACKAGES)
