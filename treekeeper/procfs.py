"""/proc behind a seam: the tree's live start and its pid namespace checks read ``ProcSource``.

``LiveProcSource`` reads the real /proc; ``FakeProcSource`` serves a dict, for tests.
Processes come and go while /proc is read, so every read of one process may find
it gone: that is ``None``, never an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(slots=True)
class ProcInfo:
    """What /proc says about one process (bytes as the kernel gives them)."""

    pid: int
    ppid: int
    start_ms: int  # epoch ms: boot time + starttime ticks
    comm: bytes
    exe: bytes | None = None
    cmdline: list[bytes] = field(default_factory=list)
    cwd: bytes | None = None
    cgroup: bytes | None = None
    threads: int = 1
    # NSpid of /proc/PID/status: its pid in each pid namespace, outermost first; () unknown.
    nspid: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class NsPidReading:
    """One process's NSpid line and start time, read together when a fork needs them."""

    nspid: tuple[int, ...]
    start_ms: int


class ProcSource(Protocol):
    """Where process facts come from: /proc on a live host, a dict in tests."""

    def pids(self) -> list[int]:
        """The pids (thread-group ids) present now."""

    def read(self, pid: int) -> ProcInfo | None:
        """One process, or None if it is gone or unreadable."""

    def nspid(self, pid: int) -> NsPidReading | None:
        """The pid namespaces ``pid`` is numbered in, or None if it is gone or unreadable."""

    def start_ms(self, pid: int) -> int | None:
        """When the process that has ``pid`` now started (epoch ms), or None if it is gone."""


def parse_stat(text: bytes, boot_ms: int, ticks_per_s: int) -> tuple[int, int, bytes, int] | None:
    """Return (ppid, start_ms, comm, threads) from /proc/PID/stat, or None if malformed.

    comm sits in parentheses and may itself contain ``)`` or spaces, so the fields
    are split after the last ``)``.
    """
    open_at = text.find(b"(")
    close_at = text.rfind(b")")
    if open_at < 0 or close_at < open_at:
        return None
    fields = text[close_at + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, num_threads 20, starttime 22.
    if len(fields) < 20:
        return None
    try:
        ppid = int(fields[1])
        threads = int(fields[17])
        start_ticks = int(fields[19])
    except ValueError:
        return None
    start_ms = boot_ms + start_ticks * 1000 // max(ticks_per_s, 1)
    return ppid, start_ms, text[open_at + 1 : close_at], threads


def parse_nspid(status: bytes) -> tuple[int, ...]:
    """The ``NSpid:`` line of /proc/PID/status as ints; () if absent (Linux < 4.1) or malformed."""
    for line in status.splitlines():
        if line.startswith(b"NSpid:"):
            try:
                return tuple(int(field) for field in line[6:].split())
            except ValueError:
                return ()
    return ()


def _boot_ms(root: Path) -> int:
    try:
        for line in (root / "stat").read_bytes().splitlines():
            if line.startswith(b"btime "):
                return int(line.split()[1]) * 1000
    except (OSError, ValueError, IndexError):
        pass
    return 0


READ_CHUNK_BYTES = 65536


def read_file(path: str) -> bytes | None:
    """The whole file at ``path``; None if it cannot be read (the process is gone).

    os.open/os.read on a str path: /proc files are read on every fork and exec live, and
    pathlib's joins and open() took 2.5-3.4x as long (15-17 against 4-7 us a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, READ_CHUNK_BYTES):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class LiveProcSource:
    """Reads the real /proc (or another procfs mount given as ``root``)."""

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self.root = Path(root)
        self._root_text = os.fspath(root)
        self.boot_ms = _boot_ms(self.root)
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")

    def pids(self) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(self.root) if name.isdigit())
        except OSError:
            return []

    def _read_bytes(self, pid: int, name: str) -> bytes | None:
        return read_file(f"{self._root_text}/{pid}/{name}")

    def _readlink(self, pid: int, name: str) -> bytes | None:
        try:
            return os.readlink(os.fsencode(f"{self._root_text}/{pid}/{name}"))
        except OSError:
            return None

    def read(self, pid: int) -> ProcInfo | None:
        stat = self._read_bytes(pid, "stat")
        if stat is None:
            return None
        parsed = parse_stat(stat, self.boot_ms, self.ticks_per_s)
        if parsed is None:
            return None
        ppid, start_ms, comm, threads = parsed
        raw_cmdline = self._read_bytes(pid, "cmdline") or b""
        cmdline = raw_cmdline.rstrip(b"\0").split(b"\0") if raw_cmdline else []
        return ProcInfo(
            pid=pid,
            ppid=ppid,
            start_ms=start_ms,
            comm=comm,
            exe=self._readlink(pid, "exe"),
            cmdline=cmdline,
            cwd=self._readlink(pid, "cwd"),
            cgroup=self._read_bytes(pid, "cgroup"),
            threads=threads,
            nspid=parse_nspid(self._read_bytes(pid, "status") or b""),
        )

    def nspid(self, pid: int) -> NsPidReading | None:
        # status first: a pid reused between the two reads then shows the later start.
        status = self._read_bytes(pid, "status")
        stat = self._read_bytes(pid, "stat")
        if stat is None or status is None:
            return None
        parsed = parse_stat(stat, self.boot_ms, self.ticks_per_s)
        if parsed is None:
            return None
        return NsPidReading(parse_nspid(status), parsed[1])

    def start_ms(self, pid: int) -> int | None:
        # stat only (the /proc sweep, per live process): status as well (nspid) costs ~2x.
        stat = self._read_bytes(pid, "stat")
        parsed = parse_stat(stat, self.boot_ms, self.ticks_per_s) if stat is not None else None
        return parsed[1] if parsed is not None else None


class FakeProcSource:
    """A /proc made of ``ProcInfo`` values, for tests."""

    def __init__(self, processes: list[ProcInfo]) -> None:
        self.processes = {info.pid: info for info in processes}

    def pids(self) -> list[int]:
        return sorted(self.processes)

    def read(self, pid: int) -> ProcInfo | None:
        return self.processes.get(pid)

    def nspid(self, pid: int) -> NsPidReading | None:
        info = self.processes.get(pid)
        return NsPidReading(info.nspid, info.start_ms) if info is not None else None

    def start_ms(self, pid: int) -> int | None:
        info = self.processes.get(pid)
        return info.start_ms if info is not None else None
