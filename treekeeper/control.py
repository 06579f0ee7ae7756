"""The tree keeper's control socket: `auditstream tree` asks it for the live process tree."""

from __future__ import annotations

import logging
from typing import Any

import zmq

from treekeeper.namespaces import PROBE_START_SLACK_MS
from treekeeper.procfs import ProcSource
from treekeeper.tree import Process, ProcessTable

log = logging.getLogger("auditstream.treekeeper")


def control_endpoint(run_dir: str) -> str:
    return f"ipc://{run_dir}/treekeeper-control.sock"


def gone_from_proc(source: ProcSource, proc: Process) -> bool:
    """Live: has ``proc`` left /proc (its pid is gone or now names a later process)?

    A process killed by a signal (``docker stop``/``restart``, SIGKILL, the end of its pid
    namespace) makes no exit syscall, so the audit log never says it ended; the /proc sweep
    (ProcessTable.sweep_proc) ends it within ``proc_sweep_ms``, this covers the time between.
    """
    started = source.start_ms(proc.pid)  # the table's start is never before the real one
    return started is None or started > proc.start_ms + PROBE_START_SLACK_MS


def snapshot(table: ProcessTable) -> list[dict[str, Any]]:
    """Every live process (not exited, and live: still in /proc), with what a tree view needs."""
    out = []
    source = table.proc_source  # None in a replay: the log is all there is
    for proc in table.processes.values():
        if proc.exited_at is not None or proc.tentative:
            continue
        if source is not None and gone_from_proc(source, proc):
            continue
        parent = table.get(proc.parent) if proc.parent else None
        out.append(
            {
                "pid": proc.pid,
                "ppid": proc.ppid,
                "entity_id": proc.entity_id,
                "parent_entity_id": parent.entity_id if parent else None,
                "executable": proc.executable,
                "name": proc.name,
                "args": proc.args,
                "container_id": proc.container.id if proc.container else None,
                "container_runtime": proc.container.runtime if proc.container else None,
                "inferred": proc.inferred,
            }
        )
    return out


class ControlServer:
    """A REP socket polled from the tree keeper's loop (no thread: the table is not shared)."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], run_dir: str) -> None:
        self.sock = zctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(control_endpoint(run_dir))

    def serve(self, table: ProcessTable) -> None:
        """Answer pending requests without blocking."""
        while self.sock.poll(0):
            request = self.sock.recv_json()
            if isinstance(request, dict) and request.get("get") == "tree":
                self.sock.send_json({"processes": snapshot(table)})
            else:
                self.sock.send_json({"error": f"unknown request {request!r}"})

    def close(self) -> None:
        self.sock.close()
