"""/proc behind a seam: the tree's live start and its pid namespace checks read ``ProcSource``.

``LiveProcSource`` reads the real /proc; ``FakeProcSource`` serves a dict, for tests.
Processes come and go while /proc is read, so every read of one process may find
it gone: that is ``None``, never an exception.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
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

    def iter_pids(self) -> Iterator[int]:
        """The pids present, read as they are taken, in pid order (the /proc sweep takes a
        slice a step). A pid present from the first to the last is in it; one that came or
        went meanwhile may or may not be. OSError if the listing cannot be read to its end."""

    def clock_shift_ms(self) -> int:
        """What to add to a ``start_ms`` of this source to have it on the wall clock as it
        is set now (the audit records' clock): 0 for a source whose boot time is exact."""

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

    def iter_pids(self) -> Iterator[int]:
        # os.scandir reads the directory as it is iterated (glibc: getdents of 32 KiB, ~1,000
        # pids each), where os.listdir reads it whole: ~1 us a pid, 20 ms for 20,000 at once.
        with os.scandir(self._root_text) as entries:
            for entry in entries:
                if entry.name.isdigit():
                    yield int(entry.name)

    def clock_shift_ms(self) -> int:
        # /proc/stat's btime is whole seconds, read once: the wall clock's offset from the
        # boot clock now (ns) corrects both the cut fraction and any slew or step since.
        offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        return offset_ns // 1_000_000 - self.boot_ms

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
    """A /proc made of ``ProcInfo`` values, for tests; it counts its start reads."""

    def __init__(self, processes: list[ProcInfo], clock_shift_ms: int = 0) -> None:
        self.processes = {info.pid: info for info in processes}
        self.shift_ms = clock_shift_ms  # a test moves it to step the wall clock
        self.start_reads = 0  # start_ms() calls: the sweep's reads of /proc/PID/stat

    def pids(self) -> list[int]:
        return sorted(self.processes)

    def iter_pids(self) -> Iterator[int]:
        return iter(self.pids())

    def clock_shift_ms(self) -> int:
        return self.shift_ms

    def read(self, pid: int) -> ProcInfo | None:
        return self.processes.get(pid)

    def nspid(self, pid: int) -> NsPidReading | None:
        info = self.processes.get(pid)
        return NsPidReading(info.nspid, info.start_ms) if info is not None else None

    def start_ms(self, pid: int) -> int | None:
        self.start_reads += 1
        info = self.processes.get(pid)
        return info.start_ms if info is not None else None
