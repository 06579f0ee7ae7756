"""``auditstream status``: the kernel's audit status and the running pipeline's counters."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from auditstream import runtime


def _kernel_status() -> dict[str, Any] | str:
    from receiver.kernel import get_status, process_command
    from receiver.netlink import AuditNetlink, NetlinkError

    conn = AuditNetlink(rcvbuf_bytes=1 << 20)
    try:
        conn.open()
        status = get_status(conn)
    except (OSError, NetlinkError) as err:
        return f"unavailable ({err}; reading the kernel's audit status needs root)"
    finally:
        conn.close()
    fields = {name: getattr(status, name) for name in status.__dataclass_fields__}
    if status.pid:
        fields["pid_command"] = process_command(status.pid) or "?"
    return fields


def _pipeline_status(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in runtime.status_files(run_dir):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["age_s"] = round(time.time() - path.stat().st_mtime, 1)
        out[path.stem.removeprefix("status-")] = data
    return out


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.runtime_dir)
    pipeline = _pipeline_status(run_dir)
    report = {"kernel": _kernel_status(), "pipeline": pipeline}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    kernel = report["kernel"]
    print("kernel audit:")
    if isinstance(kernel, str):
        print(f"  {kernel}")
    else:
        for key in (
            "enabled",
            "pid",
            "pid_command",
            "lost",
            "backlog",
            "backlog_limit",
            "backlog_wait_time",
            "rate_limit",
            "failure",
        ):
            if key in kernel:
                print(f"  {key:18} {kernel[key]}")
    print(f"pipeline ({run_dir}):")
    if not pipeline:
        print(
            "  not running (no status files)"
            if os.access(run_dir, os.R_OK)
            else f"  cannot read {run_dir}"
        )
    for stage, data in pipeline.items():
        print(f"  {stage}: {json.dumps(data, sort_keys=True)}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="kernel audit status and pipeline counters")
    p.add_argument(
        "--runtime-dir", default=runtime.LIVE_DEFAULT_DIR, help="the running pipeline's runtime dir"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
