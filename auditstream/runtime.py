"""The private runtime directory: where the stages' sockets, effective config and summary live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from auditstream import privilege
from auditstream.config import Config

LIVE_DEFAULT_DIR = "/run/auditstream"
STAGES_SUBDIR = "stages"


def make_private_dir(cfg: Config, *, live: bool) -> Path:
    """Create (or take over) a 0700 directory and record it in ``cfg.runtime.dir``.

    With ``[runtime] user`` (as root) it is 0750 ``root:<group>`` and holds the stages'
    own directory, `stage_dir`, 0750 ``<user>:<group>``: the unprivileged stages create
    their sockets and files there, and never in a directory root writes to.
    """
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
    if cfg.runtime.user:
        stages = stage_dir(cfg)
        stages.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            account = privilege.resolve_account(cfg.runtime.user, cfg.runtime.group)
            privilege.share_with_group(path, account, 0o750)
            os.chown(stages, account.uid, account.gid)
            os.chmod(stages, 0o750)
    # Files a killed run left must not count for this start (ready, capturing).
    ready_path(cfg).unlink(missing_ok=True)
    status_path(cfg, "receiver").unlink(missing_ok=True)
    return path


def stage_dir(cfg: Config) -> Path:
    """Where assembler(s) and tree keeper bind their sockets and write their files.

    The runtime directory itself, or with ``[runtime] user`` its subdirectory ``stages``.
    """
    base = Path(cfg.runtime.dir)
    return base / STAGES_SUBDIR if cfg.runtime.user else base


def stage_dir_of(run_dir: Path) -> Path:
    """The stage dir of a running pipeline known by its runtime dir only (status, tree)."""
    stages = run_dir / STAGES_SUBDIR
    return stages if stages.is_dir() else run_dir


def status_files(run_dir: Path) -> list[Path]:
    """Every stage's ``status-*.json`` of the pipeline whose runtime dir is ``run_dir``."""
    found = set(run_dir.glob("status-*.json")) | set(stage_dir_of(run_dir).glob("status-*.json"))
    return sorted(found, key=lambda path: path.name)


def assembler_endpoint(cfg: Config, index: int) -> str:
    if index < len(cfg.runtime.assembler_endpoints):
        return cfg.runtime.assembler_endpoints[index]
    return f"ipc://{stage_dir(cfg)}/assembler-{index}.sock"


def treekeeper_endpoint(cfg: Config) -> str:
    return cfg.runtime.treekeeper_endpoint or f"ipc://{stage_dir(cfg)}/treekeeper.sock"


def summary_path(cfg: Config) -> Path:
    return stage_dir(cfg) / "summary.json"


def status_path(cfg: Config, stage: str) -> Path:
    """The receiver's in the runtime dir (root's), every other stage's in `stage_dir`."""
    base = Path(cfg.runtime.dir) if stage == "receiver" else stage_dir(cfg)
    return base / f"status-{stage}.json"


def output_closed_path(cfg: Config) -> Path:
    """The tree keeper creates it once every sink's output is gone (stdout's reader exited)."""
    return stage_dir(cfg) / "output-closed"


def ready_path(cfg: Config) -> Path:
    """The tree keeper creates it once its sinks are open; upstream stages start after."""
    return stage_dir(cfg) / "treekeeper.ready"
