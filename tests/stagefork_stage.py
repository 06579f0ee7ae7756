"""A stand-in stage for tests/test_stagefork.py: what a forked stage sees, written down."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from auditstream.config import Config
from auditstream.stage import StageContext

# Set by the test before it forks; the child inherits them.
REPORT: dict[str, Path] = {}
BEHAVIOUR: dict[str, str] = {"mode": "report"}


def run(cfg: Config, ctx: StageContext) -> int:
    """Report what the process looks like; raise or wait for a stop as told."""
    mode = BEHAVIOUR["mode"]
    if mode == "raise":
        raise RuntimeError("the stand-in stage failed on purpose")
    if mode == "wait":
        while not ctx.stop_requested:
            time.sleep(0.01)
        return 0
    seen = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "comm": Path("/proc/self/comm").read_text().strip(),
        "stdin": os.readlink("/proc/self/fd/0"),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }
    REPORT["path"].write_text(json.dumps(seen))
    return 7
