"""``auditstream status``: the kernel's audit status and the running pipeline's counters.

Exit status as ``systemctl status``: 0 running, 3 no pipeline running (none, or the status
files of one that stopped), 4 the runtime dir cannot be read (its state is unknown).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from auditstream import runtime

log = logging.getLogger("auditstream.status")
EXIT_NOT_RUNNING = 3
EXIT_STATE_UNKNOWN = 4
# Files that hold the supervisor's pid: the runtime dir's lock (written at start) and the
# tree keeper's first-start mark (auditstream/redelivery.py is_restart).
SUPERVISOR_PID_FILES = (runtime.LOCK_NAME, "treekeeper.started")
# A pid counts as the writer only if it started before the file was written (not reused);
# /proc's start time has clock-tick precision and btime whole seconds.
START_TIME_SLACK_S = 1.0


@dataclass(frozen=True, slots=True)
class PipelineState:
    """Whether a pipeline runs in a runtime dir, and the sentence that says so."""

    state: str  # running | stopped | absent | unreadable
    message: str
    supervisor_pid: int | None = None
    stale_since: float | None = None  # stopped: when its last status file was written

    @property
    def exit_code(self) -> int:
        return {"running": 0, "unreadable": EXIT_STATE_UNKNOWN}.get(self.state, EXIT_NOT_RUNNING)


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


def _pipeline_status(run_dir: Path) -> tuple[dict[str, Any], float | None]:
    """Each stage's status file, with its age; and when the newest was written."""
    out: dict[str, Any] = {}
    newest: float | None = None
    for path in runtime.status_files(run_dir):
        try:
            data = json.loads(path.read_text())
            written = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        data["age_s"] = round(time.time() - written, 1)
        out[path.stem.removeprefix("status-")] = data
        newest = written if newest is None else max(newest, written)
    return out, newest


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def started_by_then(pid: int, written: float) -> bool:
    """``pid`` is a live process (not a zombie) that started before ``written`` (the mtime
    of the file that names it): the writer itself, not a later process given its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return False
    return fields[0] != b"Z" and started <= written + START_TIME_SLACK_S


def _recorded_supervisors(run_dir: Path) -> list[tuple[int, float]]:
    """(pid, when written) of each supervisor pid file in the runtime dir, newest first."""
    found = []
    for directory in dict.fromkeys([run_dir, runtime.stage_dir_of(run_dir)]):
        for name in SUPERVISOR_PID_FILES:
            path = directory / name
            try:
                pid = int(path.read_text().split()[0])
                found.append((pid, path.stat().st_mtime))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(found, key=lambda item: item[1], reverse=True)


def _when(seconds: float) -> str:
    ago = max(0.0, time.time() - seconds)
    stamp = datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return f"{stamp} ({ago:.0f} s ago)"


def pipeline_state(run_dir: Path, last_status: float | None) -> PipelineState:
    """Running if the supervisor named in the runtime dir is alive; else stopped (status
    files left, stale) or absent; unreadable if the dir cannot be listed (not root)."""
    try:
        os.listdir(run_dir)
    except FileNotFoundError:
        return PipelineState("absent", f"no auditstream pipeline running in {run_dir}")
    except OSError as err:
        return PipelineState(
            "unreadable",
            f"cannot read {run_dir}: {err.strerror or err} (a live run's runtime dir is "
            "root's: run status as root)",
        )
    supervisors = _recorded_supervisors(run_dir)
    for pid, written in supervisors:
        if started_by_then(pid, written):
            return PipelineState("running", f"running, supervisor pid {pid}", pid)
    last_pid = supervisors[0][0] if supervisors else None
    gone = f" (supervisor pid {last_pid} has exited)" if last_pid else ""
    if last_status is None:
        return PipelineState("absent", f"no auditstream pipeline running in {run_dir}{gone}")
    return PipelineState(
        "stopped",
        f"stopped{gone}: the counters below are its last, stale since {_when(last_status)}",
        last_pid,
        last_status,
    )


def takeover_warning(run_dir: Path, state: PipelineState) -> str | None:
    """What the runtime dir's takeover record says: the audit PID holder a run stopped and
    how to start it again (said at that run's stop, or, killed, at the next start)."""
    if state.state == "unreadable":
        return None
    notice = runtime.takeover_notice_in(run_dir)
    if notice and state.state == "running":  # it cannot register while we hold the PID
        return f"{notice} (once this run has stopped)"
    return notice


def _status_dir(args: argparse.Namespace) -> Path:
    """``--runtime-dir``, else the config's ``[runtime] dir`` (``-c``), else a live run's."""
    if args.runtime_dir:
        return Path(args.runtime_dir)
    if args.config:
        from auditstream import config as config_mod

        return Path(config_mod.load(args.config).runtime.dir or runtime.LIVE_DEFAULT_DIR)
    return Path(runtime.LIVE_DEFAULT_DIR)


def _print_text(report: dict[str, Any], run_dir: Path, state: PipelineState) -> None:
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
    if state.state in ("absent", "unreadable"):
        print(f"pipeline: {state.message}")
    else:
        print(f"pipeline ({run_dir}): {state.message}")
    for stage, data in report["pipeline"].items():
        print(f"  {stage}: {json.dumps(data, sort_keys=True)}")


def cmd_status(args: argparse.Namespace) -> int:
    from auditstream.cli import EXIT_OUTPUT_CLOSED

    run_dir = _status_dir(args)
    pipeline, last_status = _pipeline_status(run_dir)
    state = pipeline_state(run_dir, last_status)
    takeover = takeover_warning(run_dir, state)
    report = {
        "kernel": _kernel_status(),
        "pipeline": pipeline,
        "pipeline_state": {"runtime_dir": str(run_dir), **asdict(state)},
        "takeover": takeover,
    }
    try:
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            print()
        else:
            _print_text(report, run_dir, state)
        sys.stdout.flush()
        if takeover:  # on stderr, so that --json stays one document
            log.warning("%s", takeover)
    except BrokenPipeError:
        # The reader left (`status | head`): stop quietly, as the replay does (128 + SIGPIPE);
        # stdout goes to /dev/null so that the flush at exit does not fail again.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return EXIT_OUTPUT_CLOSED
    return state.exit_code


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="kernel audit status and pipeline counters (exit 0 running, 3 not running)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="the pipeline of this config ([runtime] dir)")
    where.add_argument(
        "--runtime-dir", help=f"the pipeline's runtime dir (default {runtime.LIVE_DEFAULT_DIR})"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
