"""Shared by the tests that run a Supervisor in-process: the effective config it reads."""

from __future__ import annotations

from pathlib import Path

from auditstream.config import Config, write_json


def effective_config(tmp_path: Path, run_dir: Path | None = None) -> Path:
    """``tmp_path/effective-config.json``: a default Config whose runtime dir is ``run_dir``
    (``tmp_path`` when None), as the supervisor reads it."""
    cfg = Config()
    cfg.runtime.dir = str(run_dir or tmp_path)
    conf = tmp_path / "effective-config.json"
    write_json(cfg, conf)
    return conf
