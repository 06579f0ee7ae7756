"""Which pid namespace a process is in, so that a fork's return value is read right.

clone, fork and vfork return the child's pid as numbered in the *caller's* pid
namespace, while audit's ``pid=``/``ppid=`` are always host (initial namespace) pids.
A fork made inside a container's pid namespace returns a small number (``exit=14``)
that may be the pid of an unrelated host process: the table must not create, link or
retire anything from it. The child shows up in its own records anyway, under its
host pid and with the caller as ``ppid``.

Live, /proc/PID/status ``NSpid:`` says it (one field: host; more: nested). From the log
alone the container attribution stands in for it: a process inside a container
(not the runtime's host-side helpers) is taken to be in the container's namespace,
which loses only the creator link of ``--pid=host`` containers' children.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from treekeeper.containers import ContainerRef, RuntimeRole
from treekeeper.procfs import ProcSource

if TYPE_CHECKING:
    from treekeeper.tree import Process, ProcessTable

CLONE_NEWPID = 0x20000000
# runc's last nsexec stage: already inside the container's pid namespace, before its exec.
# Its siblings runc:[0:PARENT] and runc:[1:CHILD] stay in the host's (unshare(CLONE_NEWPID)
# and setns move only their children).
RUNC_INIT_STAGE_COMM = "runc:[2:INIT]"
# /proc's start time is boot time (whole seconds) + ticks: a start later than the fork by
# more than this is a process that took the pid afterwards, not the caller.
PROBE_START_SLACK_MS = 1500


class PidNs(Enum):
    """The pid namespace a process lives in, as far as the table knows."""

    UNKNOWN = "unknown"
    HOST = "host"  # the initial namespace: its forks return host pids
    NESTED = "nested"  # a container's or sandbox's: its forks return that namespace's pids


def from_nspid(pid: int, nspid: tuple[int, ...]) -> PidNs:
    """Read an ``NSpid:`` line of process ``pid`` (host pid first, as the host's /proc shows it)."""
    if not nspid or nspid[0] != pid:
        return PidNs.UNKNOWN  # no NSpid (Linux < 4.1), or a /proc that is not the host's
    return PidNs.HOST if len(nspid) == 1 else PidNs.NESTED


def probe(source: ProcSource, pid: int, at_ms: int) -> PidNs:
    """Live: the pid namespace of the process that had ``pid`` at event time ``at_ms``."""
    reading = source.nspid(pid)
    if reading is None or reading.start_ms > at_ms + PROBE_START_SLACK_MS:
        return PidNs.UNKNOWN  # gone, or the pid already belongs to a newer process
    return from_nspid(pid, reading.nspid)


def in_container_pid_ns(container: ContainerRef | None, role: RuntimeRole, comm: str | None) -> bool:
    """From the log alone: is a process with this attribution inside a container's pid namespace?

    The container's own processes (its init and their descendants, ``docker exec``'d ones
    too) are; shims, runc/crun and runc's first two init stages run on the host side.
    """
    if comm == RUNC_INIT_STAGE_COMM:
        return True
    return container is not None and role is RuntimeRole.NONE


def fork_returns_namespaced_pid(
    table: ProcessTable, caller: Process, comm: str | None, at_ms: int
) -> bool:
    """Does a fork by ``caller`` return its child's pid in a non-host pid namespace?"""
    if caller.pid_ns is PidNs.UNKNOWN and table.proc_source is not None:
        caller.pid_ns = probe(table.proc_source, caller.pid, at_ms)
    if caller.pid_ns is not PidNs.UNKNOWN:
        return caller.pid_ns is PidNs.NESTED
    parent = table.get(caller.parent)
    if (parent is not None and parent.pid_ns is PidNs.NESTED) or in_container_pid_ns(
        caller.container, caller.role, comm
    ):
        # No process leaves its pid namespace: the verdict holds after an exec
        # (docker-in-docker's inner runc, a RUNTIME, is still in the outer container's).
        caller.pid_ns = PidNs.NESTED
        return True
    return False
