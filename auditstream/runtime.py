"""The private runtime directory: where the stages' sockets, effective config and summary live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from auditstream.config import Config

LIVE_DEFAULT_DIR = "/run/auditstream"


def make_private_dir(cfg: Config, *, live: bool) -> Path:
    """Create (or take over) a 0700 directory and record it in ``cfg.runtime.dir``."""
    if cfg.runtime.dir:
        path = Path(cfg.runtime.dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    elif live and os.geteuid() == 0:
        path = Path(LIVE_DEFAULT_DIR)
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    else:
        path = Path(tempfile.mkdtemp(prefix="auditstream-"))  # mkdtemp makes it 0700
    cfg.runtime.dir = str(path)
    return path


def assembler_endpoint(cfg: Config, index: int) -> str:
    if index < len(cfg.runtime.assembler_endpoints):
        return cfg.runtime.assembler_endpoints[index]
    return f"ipc://{cfg.runtime.dir}/assembler-{index}.sock"


def treekeeper_endpoint(cfg: Config) -> str:
    return cfg.runtime.treekeeper_endpoint or f"ipc://{cfg.runtime.dir}/treekeeper.sock"


def summary_path(cfg: Config) -> Path:
    return Path(cfg.runtime.dir) / "summary.json"


def status_path(cfg: Config, stage: str) -> Path:
    return Path(cfg.runtime.dir) / f"status-{stage}.json"


def ready_path(cfg: Config) -> Path:
    """The tree keeper creates it once its sinks are open; upstream stages start after."""
    return Path(cfg.runtime.dir) / "treekeeper.ready"
