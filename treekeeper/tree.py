"""The process table: who forked whom, what each process runs, which container it is in.

A process is keyed by (pid, start identity) so PID reuse never merges two
processes. Start identity is the event time (ms) of the fork/clone that created
it, the /proc start time for scanned ones, or the time of the first event seen
from it for placeholders (``inferred``: the log showed the pid before its fork).

Decisions (see also DESIGN.md §4):
- ``parent`` is the kernel's current parent (it changes when the parent exits);
  ``creator`` is who forked it and never changes. Ancestry follows creators
  (laurel's SPAWNED_BY), falling back to the current parent where the creator is
  unknown or already deleted.
- clone3 hides its flags. Its child is ``tentative``: kept, but announced
  (``process-started``) only once an event shows that pid acting as a process.
  Audit's ``pid=`` is the thread-group id, so a thread's tid never shows up; an
  unconfirmed child is dropped after ``tentative_ttl_ms``.
- ``exit`` ends a process only if it is known to be single-threaded (glibc's
  pthread_exit also calls ``exit``); ``exit_group`` always ends it.
- Events that arrive late (sharded assemblers) are matched by event time: an
  event that predates a process's exit still belongs to it; a fork that arrives
  after events of its child merges into the child's placeholder.
- A fork inside a container's (any non-host) pid namespace returns a pid of that
  namespace, not a host pid: it creates nothing (namespaces.py); the child is
  learned from its own records.
"""

from __future__ import annotations

import base64
import heapq
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

import orjson

from auditstream.escape import escape
from treekeeper import containers, namespaces
from treekeeper.containers import ContainerRef, RuntimeRole
from treekeeper.enrich import enrich_doc, lifecycle_doc
from treekeeper.namespaces import CLONE_NEWPID, PidNs
from treekeeper.native import (
    EnrichFn,
    LifecycleFn,
    ObserveFn,
    native_enrich,
    native_lifecycle_doc,
    native_observe,
)
from treekeeper.procfs import ProcSource

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (pid, start identity in ms)
Doc = dict[str, Any]

CLONE_PARENT = 0x8000
CLONE_THREAD = 0x10000
# NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: a runtime entering a container.
CLONE_NEW_NAMESPACES = 0x7E020000
FORK_SYSCALLS = frozenset({"fork", "vfork", "clone", "clone3"})
EXEC_SYSCALLS = frozenset({"execve", "execveat"})
# Names of processes that commonly act as subreapers besides containerd shims.
SUBREAPER_NAMES = frozenset({"systemd", "tini", "dumb-init", "conmon", "s6-svscan"})


def entity_id(host: str, pid: int, start_ms: int) -> str:
    """A stable id for one process: the same host, pid and start give the same id."""
    # Imported here, and CPython's own SHA-256 rather than hashlib's: hashlib starts OpenSSL,
    # ~3 ms of every stage start, and of a replay's first events that the C table leaves to
    # this (its own SHA-256: treekeeper/csrc/sha256.h). The digests are the same.
    try:
        from _sha256 import sha256
    except ImportError:  # an interpreter built without it
        from hashlib import sha256

    digest = sha256(f"{host}|{pid}|{start_ms}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(slots=True)
class TableConfig:
    """Knobs of the process table."""

    host: str = ""
    exit_grace_ms: int = 1000
    max_processes: int = 131072
    ancestry_max_depth: int = 16
    tentative_ttl_ms: int = 10000
    # process.ancestry entries as their JSON text (orjson.Fragment, Process.entry_fragment)
    # rather than dicts: only where every sink writes the docs' text, which is then the same.
    ancestry_fragments: bool = False


@dataclass(slots=True)
class TreeStats:
    """Counters a supervisor exports as metrics."""

    processes_created: int = 0
    placeholders: int = 0
    merged_placeholders: int = 0
    threads_ignored: int = 0
    namespaced_forks: int = 0  # forks whose return value is a pid of another pid namespace
    tentative_dropped: int = 0
    reparented: int = 0
    missed_exits: int = 0
    deleted: int = 0
    evicted_exited: int = 0
    evicted_inferred: int = 0
    evicted_live: int = 0
    bad_docs: int = 0
    bad_times: int = 0
    proc_sweeps: int = 0  # live: listings of /proc (proc_sweep_ms)
    # Listings without pid 1 (not the host's whole /proc: hidepid), or not read to their end.
    proc_sweeps_skipped: int = 0
    gone_from_proc: int = 0  # processes ended because /proc no longer had them


# Every event repeats its ancestors' args: without a cap, one process started with
# megabytes of arguments would make each descendant's event megabytes long.
ANCESTRY_ARGS_MAX_CHARS = 1024


@dataclass(slots=True, eq=False)
class Process:
    """One process as the table knows it; None means unknown."""

    pid: int
    start_ms: int
    entity_id: str
    ppid: int = 0
    parent: Key | None = None
    creator: Key | None = None
    executable: str | None = None
    name: str | None = None
    args: list[str] | None = None
    cwd: str | None = None
    title: str | None = None
    started_at: int | None = None
    first_seen: int = 0
    image_ms: int = 0
    exec_ms: int | None = None
    inferred: bool = False
    tentative: bool = False
    maybe_threaded: bool = False
    exited_at: int | None = None
    exit_code: int | None = None
    container: ContainerRef | None = None
    role: RuntimeRole = RuntimeRole.NONE
    managed: ContainerRef | None = None
    pid_ns: PidNs = PidNs.UNKNOWN  # not saved in the state file: live, /proc tells again
    previous: Key | None = None
    # The parent whose exit handed this process to a reaper. The kernel writes a
    # process's exit record before it reparents the children (the last thread's
    # exit_notify), so for a few ms their records still name it as ppid.
    reaped_from: Key | None = None
    children: set[Key] = field(default_factory=set)
    # Live: its start as /proc gave it (the scan, or the first sweep that found its pid), so a
    # later sweep tells a reused pid exactly, whatever the wall clock did meanwhile.
    proc_start_ms: int | None = None
    # Live: when a sweep found it gone from /proc: the time it had ended by (its end, if no
    # exit record comes: _end_gone).
    gone_at: int | None = None
    ended_gone: bool = False  # ended by the sweep (no exit record): no exit code
    ancestry_entry: dict[str, Any] | None = None
    ancestry_fragment: orjson.Fragment | None = None  # entry_fragment(): of fragment_of
    fragment_of: dict[str, Any] | None = None

    @property
    def key(self) -> Key:
        return (self.pid, self.start_ms)

    def entry(self) -> dict[str, Any]:
        """This process as one ``process.ancestry`` element (cached; replaced, never mutated)."""
        if self.ancestry_entry is None:
            entry: dict[str, Any] = {"pid": self.pid, "entity_id": self.entity_id}
            if self.executable is not None:
                entry["executable"] = self.executable
            if self.args is not None:
                args, truncated = _capped_args(self.args, ANCESTRY_ARGS_MAX_CHARS)
                entry["args"] = args
                if truncated:
                    entry["args_truncated"] = True
            self.ancestry_entry = entry
        return self.ancestry_entry

    def entry_fragment(self) -> orjson.Fragment:
        """:meth:`entry` as its JSON text, made again only when the entry was replaced: each
        event repeats its ancestry, and encoding the entries each time was ~0.9 of ~1.1 µs
        of a deep ancestry's ``orjson.dumps`` (docs/performance.md)."""
        entry = self.entry()
        if self.fragment_of is not entry or self.ancestry_fragment is None:
            self.ancestry_fragment = orjson.Fragment(orjson.dumps(entry))
            self.fragment_of = entry
        return self.ancestry_fragment


def _capped_args(args: list[str], budget: int) -> tuple[list[str], bool]:
    """At most ``budget`` characters of ``args`` (the last one cut short), and whether any were cut."""
    total = sum(len(arg) for arg in args)
    if total <= budget:
        return args, False
    kept: list[str] = []
    for arg in args:
        if len(arg) >= budget:
            kept.append(arg[:budget])
            break
        kept.append(arg)
        budget -= len(arg)
    return kept, True


# "000".."999" -> int: the usual fraction of @timestamp without str.isdigit + int per event.
_MS_OF_FRACTION = {f"{ms:03d}": ms for ms in range(1000)}

# Live: a process /proc no longer lists is ended this long (or exit_grace_ms, if longer) after
# the sweep that found it gone, unless its exit record comes first (it was on its way).
GONE_CONFIRM_MIN_MS = 1000
# The /proc sweep runs in steps between the tree keeper's frames (ProcessTable.sweep_step),
# none holding its loop more than ~2 ms whatever the host's size: events wait meanwhile.
SWEEP_LIST_PER_STEP = 1024  # pids listed a step: ~one getdents of /proc, 0.5-1 ms
SWEEP_READS_PER_STEP = 128  # /proc/PID/stat reads a step: 8-16 us each
SWEEP_VISITS_PER_STEP = 4096  # table entries looked at a step (most need no read: ~0.3 us)
SWEEP_STEP_NS = 2_000_000  # and a step ends after 2 ms, whatever it did (a slow /proc)
# A process the table learned from an event of its own (a placeholder, an exec) was running
# then: /proc giving its pid a start later than that by more than this is a later process,
# the pid reused before the first sweep saw it. The kernel stamps audit records with its
# coarse clock (up to a tick early); /proc's start is in ticks; the wall clock slews ~0.5 ms
# a second at most: 1 s is ~50x those. A fork's own time is not used: the child's start is
# stamped after the parent's memory is copied (26-70 ms for 2 GiB measured here; seconds
# for the biggest processes), so a child known from its fork alone is never judged so.
REUSE_START_SLACK_MS = 1000
# The wall clock's offset from the boot clock moving more than this between two sweeps is a
# step (NTP, an admin): events from before it are not compared with /proc's starts.
CLOCK_STEP_MS = 100
# ``auditstream.lifecycle_source`` of lifecycle docs learned from /proc, not from records.
LIFECYCLE_FROM_SCAN = "proc_scan"  # container-first-seen of a container running at start
LIFECYCLE_FROM_SWEEP = "proc_sweep"  # process-exited (and container-gone) of one found gone


def _from_source(doc: Doc, source: str) -> Doc:
    """``doc``, saying that /proc, not an audit record, told what it announces."""
    doc["auditstream"] = {"lifecycle_source": source}
    return doc


def _swept(doc: Doc) -> Doc:
    return _from_source(doc, LIFECYCLE_FROM_SWEEP)


@dataclass(slots=True)
class ProcSweep:
    """One /proc sweep under way: its listing read in slices, then the processes the table
    had when the listing began, checked in slices (ProcessTable.sweep_step)."""

    keys: list[Key]  # the table's processes when the listing began: only these are judged
    listing: Iterator[int] | None  # what is left of the listing; None once read whole
    present: set[int] = field(default_factory=set)
    listed_ms: int = 0  # when the listing was read whole: the absent had ended by then
    at: int = 0  # keys[at] is the next process to check


# Older processes of one pid that lookup() walks back through; real chains are a few long.
PREVIOUS_CHAIN_MAX = 64

# The kernel's PROCTITLE holds 128 bytes of the command line; a title of this many bytes (a
# character cut in two is escaped, longer) may be a longer command line cut short.
PROCTITLE_CUT_BYTES = 125

# runc names its setup stages runc:[0:PARENT], runc:[1:CHILD], runc:[2:INIT] (comm).
RUNC_INIT_COMM = "runc:["


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            return None
    return None


def _pid(value: Any) -> int | None:
    """pid fields are ints in the doc (docs/internals.md); anything else is not a pid."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
        return value
    return None


def _hex(value: Any) -> int | None:
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _args(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return value
    return None


def _take_forked_image(child: Process, parent: Process) -> None:
    """Give ``child``, known from its own events only, the command line it inherited from
    ``parent``, as a fork's child gets it: if it has not exec'd (same executable, no exec
    seen) and its PROCTITLE (``title``, from its own events), where it has one, is that
    command line. A child that renamed itself (``nginx: worker process``) gets no args."""
    if (
        child.args is not None
        or child.exec_ms is not None
        or child.executable is None
        or child.executable != parent.executable
        or parent.args is None
    ):
        return
    title = child.title
    if title is not None and title != parent.title:
        # Not the parent's title alone: the kernel keeps the PROCTITLE of a task's first
        # record across its execs (a container's sh logs "runc init"), a child's is fresh.
        line = " ".join(parent.args)
        cut = len(title.encode("utf-8", "surrogateescape")) >= PROCTITLE_CUT_BYTES
        if title != line and not (cut and line.startswith(title)):
            return
    child.args = parent.args
    if child.title is None:
        child.title = parent.title
    if child.cwd is None:
        child.cwd = parent.cwd
    child.ancestry_entry = None


class ProcessTable:
    """The live process table of one host, fed with event docs in (roughly) event order."""

    def __init__(self, config: TableConfig | None = None) -> None:
        self.config = config or TableConfig()
        self.processes: dict[Key, Process] = {}
        self.current: dict[int, Key] = {}
        self.container_members: dict[str, int] = {}
        self.stats = TreeStats()
        self.last_ms = 0
        self._exited: list[tuple[int, Key]] = []  # heap by exit time
        self._tentative: deque[tuple[int, Key]] = deque()
        self._inferred: deque[Key] = deque()
        self._gone: deque[tuple[int, Key]] = deque()  # found gone from /proc, by when: to end
        self._sweep: ProcSweep | None = None  # live: the /proc sweep under way
        # Live: (when, clock_shift_ms) of the last reading of the wall clock's offset from the
        # boot clock (scan, sweeps), and since when it has held (None: a step was just seen).
        self._clock: tuple[int, int] | None = None
        self._clock_steady_since: int | None = None
        self._listing_failed = False  # a /proc listing that broke off was logged once
        self._ts_head = ""
        self._ts_base = 0
        self._ts_last: object = None
        self._ts_last_ms = 0
        # Live only: /proc, asked which pid namespace a forking process is in.
        self.proc_source: ProcSource | None = None

    def __len__(self) -> int:
        return len(self.processes)

    # -- time ---------------------------------------------------------------

    def event_ms(self, doc: dict[str, Any]) -> int:
        """The event's time in ms from ``@timestamp``; the last good time if it has none."""
        ts = doc.get("@timestamp")
        if ts is self._ts_last:  # observe and enrich of one doc ask twice
            return self._ts_last_ms
        if isinstance(ts, str) and len(ts) >= 20 and ts.endswith("Z"):
            head = ts[:19]
            if head != self._ts_head:
                try:
                    base = datetime.fromisoformat(head + "+00:00")
                except ValueError:
                    self.stats.bad_times += 1
                    return self.last_ms
                self._ts_head, self._ts_base = head, int(base.timestamp()) * 1000
            frac = ts[20:-1] if ts[19] == "." else ""
            part = _MS_OF_FRACTION.get(frac)  # "SS.mmmZ", as the assembler writes it
            if part is None:
                part = int((frac + "00")[:3]) if frac.isdigit() else 0
            ms = self._ts_base + part
            if ms > self.last_ms:
                self.last_ms = ms
            self._ts_last, self._ts_last_ms = ts, ms
            return ms
        self.stats.bad_times += 1
        return self.last_ms

    # -- lookups ------------------------------------------------------------

    def get(self, key: Key | None) -> Process | None:
        return self.processes.get(key) if key is not None else None

    def former_parent(self, proc: Process, ppid: int) -> Process | None:
        """The creator, or the parent whose exit handed ``proc`` to a reaper, if it has ``ppid``.

        A record naming either is a late one, from before a reparenting the table already
        made: the kernel writes a process's exit record before it reparents the children,
        and a CLONE_PARENT child (runc's init) was created by a process not its parent.
        """
        for key in (proc.creator, proc.reaped_from):
            former = self.get(key)
            if former is not None and former.pid == ppid:
                return former
        return None

    def lookup(self, pid: int, at_ms: int) -> Process | None:
        """The process that had ``pid`` at time ``at_ms``, if the table knows it."""
        key = self.current.get(pid)
        # A deleted process's key can be taken again, so a stale ``previous`` may lead
        # back into the chain (a hostile log whose time jumps back made a cycle and hung
        # the stage): walk at most PREVIOUS_CHAIN_MAX incarnations.
        for _ in range(PREVIOUS_CHAIN_MAX):
            if key is None:
                return None
            proc = self.processes.get(key)
            if proc is None:
                return None
            if proc.started_at is not None and proc.started_at > at_ms:
                key = proc.previous  # the event predates this process: an older one
                continue
            if proc.exited_at is not None and at_ms > proc.exited_at:
                return None  # a newer process whose fork we have not seen
            return proc
        return None

    def lineage(self, proc: Process, depth: int) -> list[Process]:
        """Ancestors nearest first: creators, else current parents; at most ``depth``."""
        out: list[Process] = []
        seen = {proc.key}
        node = proc
        while len(out) < depth:
            up = self.processes.get(node.creator) if node.creator is not None else None
            if up is None and node.parent is not None:
                up = self.processes.get(node.parent)
            if up is None or up.key in seen:
                break
            seen.add(up.key)
            out.append(up)
            node = up
        return out

    # -- public entry points ------------------------------------------------

    def observe(self, doc: dict[str, Any]) -> list[Doc]:
        """Update the table from one event doc; return the lifecycle docs it causes."""
        try:
            if _NATIVE_OBSERVE is not None:
                taken = _NATIVE_OBSERVE(self, doc)
                if taken is True:
                    return []  # a known process's plain event: only bookkeeping, done in C
                if isinstance(taken, tuple):  # a fork, exec or exit of a process C resolved
                    out: list[Doc] = []
                    self._act(doc, taken[0], taken[1], out)
                    return out
                if taken is not False:
                    return taken  # a fork, exec or exit done whole in C: its lifecycle docs
            return self._observe(doc)
        except (TypeError, ValueError, AttributeError) as err:  # hostile doc shapes
            self.stats.bad_docs += 1
            log.debug("treekeeper: unusable doc skipped: %s", err)
            return []

    def enrich(self, doc: dict[str, Any]) -> None:
        """Add process/parent/ancestry/container fields the table knows to ``doc``."""
        try:
            if _NATIVE_ENRICH is None or not _NATIVE_ENRICH(self, doc):
                enrich_doc(self, doc)
        except (TypeError, ValueError, AttributeError) as err:
            self.stats.bad_docs += 1
            log.debug("treekeeper: doc not enriched: %s", err)

    def maintain(self, now_ms: int) -> list[Doc]:
        """Delete processes exited more than ``exit_grace_ms`` before ``now_ms``."""
        out: list[Doc] = []
        if self._gone:  # live only: what /proc sweeps found gone (sweep_proc)
            self._end_gone(now_ms, out)
        limit = now_ms - self.config.exit_grace_ms
        while self._exited and self._exited[0][0] < limit:
            _, key = heapq.heappop(self._exited)
            proc = self.processes.get(key)
            if proc is not None and proc.exited_at is not None and proc.exited_at < limit:
                self._delete(proc, out)
        ttl_limit = now_ms - self.config.tentative_ttl_ms
        while self._tentative and self._tentative[0][0] < ttl_limit:
            _, key = self._tentative.popleft()
            proc = self.processes.get(key)
            if proc is not None and proc.tentative:
                self.stats.tentative_dropped += 1
                self._delete(proc, out)
        return out

    def next_due_ms(self) -> int | None:
        """The clock ms from which maintain() has work (an exit grace, a tentative TTL or a
        /proc sweep's confirmation ends); None: none until more events come."""
        dues = []
        if self._exited:
            dues.append(self._exited[0][0] + self.config.exit_grace_ms + 1)
        if self._tentative:
            dues.append(self._tentative[0][0] + self.config.tentative_ttl_ms + 1)
        if self._gone:
            dues.append(self._gone[0][0] + max(self.config.exit_grace_ms, GONE_CONFIRM_MIN_MS))
        return min(dues, default=None)

    @property
    def sweeping(self) -> bool:
        """A /proc sweep is under way: sweep_step() has more to do."""
        return self._sweep is not None

    def sweep_proc(self, source: ProcSource, now_ms: int) -> None:
        """Live: a whole /proc sweep at once: start_sweep(), then each of its steps. The tree
        keeper's loop runs the steps between frames instead (treekeeper/pipeline.py)."""
        self.start_sweep(source, now_ms)
        while self.sweep_step(source, now_ms):
            pass

    def start_sweep(self, source: ProcSource, now_ms: int) -> None:
        """Live: begin noting the processes /proc no longer has; maintain() ends them a while
        later. Nothing is read yet; sweep_step() does it. Not while a sweep is under way.

        A process killed by a signal (``docker stop``, SIGKILL, the end of its pid namespace)
        makes no exit syscall: no record says it ended. Cost: one listing of /proc, and one
        read of /proc/PID/stat (its start: was the pid reused?) per live process it lists,
        in steps of at most SWEEP_*_PER_STEP. Only the processes the table has now are
        judged: one it learns of later may have begun after the listing passed its pid.
        """
        if self._sweep is not None:
            return
        self._note_clock(source, now_ms)
        self._sweep = ProcSweep(list(self.processes), source.iter_pids())

    def sweep_step(self, source: ProcSource, now_ms: int) -> bool:
        """One bounded step of the sweep under way; False once it is over (or none is)."""
        sweep = self._sweep
        if sweep is None:
            return False
        if sweep.listing is not None:
            more = self._list_step(sweep, sweep.listing, now_ms)
        else:
            more = self._check_step(sweep, source, now_ms)
        if not more:
            self._sweep = None
        return more

    def _list_step(self, sweep: ProcSweep, listing: Iterator[int], now_ms: int) -> bool:
        """A slice of the listing; at its end, whether it can tell who is gone at all.

        A listing without pid 1 is not the host's whole /proc (``hidepid``, another pid
        namespace's), and one that broke off lacks pids that are there: neither says anything
        of who is gone; each is only counted (proc_sweeps_skipped).
        """
        try:
            chunk = list(islice(listing, SWEEP_LIST_PER_STEP))
        except OSError as err:
            self.stats.proc_sweeps_skipped += 1
            if not self._listing_failed:
                self._listing_failed = True
                log.warning(
                    "/proc sweep: listing /proc failed (%s): that sweep judges no process "
                    "gone (counted in proc_sweeps_skipped; logged once)",
                    err,
                )
            return False
        sweep.present.update(chunk)
        if len(chunk) == SWEEP_LIST_PER_STEP:
            return True
        sweep.listing = None
        if 1 not in sweep.present:
            self.stats.proc_sweeps_skipped += 1
            return False
        self.stats.proc_sweeps += 1
        sweep.listed_ms = now_ms
        return True

    def _check_step(self, sweep: ProcSweep, source: ProcSource, now_ms: int) -> bool:
        """Check a slice of the processes the listing judges; False once all are checked."""
        keys, present, processes, current = sweep.keys, sweep.present, self.processes, self.current
        deadline = time.monotonic_ns() + SWEEP_STEP_NS
        at, reads = sweep.at, 0
        end = min(len(keys), at + SWEEP_VISITS_PER_STEP)
        while at < end and reads < SWEEP_READS_PER_STEP:
            key = keys[at]
            at += 1
            proc = processes.get(key)
            if proc is None or proc.exited_at is not None or proc.gone_at is not None:
                continue  # deleted or ended since the listing began
            if proc.tentative:
                continue  # a clone3 child not yet confirmed may be a thread: /proc lists no tids
            if proc.pid not in present:
                self._found_gone(proc, sweep.listed_ms, now_ms)
                continue
            if current.get(proc.pid) != key:
                continue  # an older process of the pid (its fork came late): not its pid now
            reads += 1
            started = source.start_ms(proc.pid)
            if started is None or not self._same_start(proc, started):
                self._found_gone(proc, now_ms, now_ms)  # gone, or its pid reused, by now
            if time.monotonic_ns() >= deadline:
                break
        sweep.at = at
        return at < len(keys)

    def _same_start(self, proc: Process, started: int) -> bool:
        """Is the process /proc has under ``proc``'s pid, started at ``started``, ``proc``?

        /proc's own start must stay the one first seen, whatever the wall clock did. The first
        sighting records it, unless an event of ``proc``'s own came clearly before that start:
        then its pid was reused before any sweep saw it (_reused_before_seen).
        """
        if proc.proc_start_ms is not None:
            return proc.proc_start_ms == started
        if self._reused_before_seen(proc, started):
            return False
        proc.proc_start_ms = started
        return True

    def _reused_before_seen(self, proc: Process, started: int) -> bool:
        """Did /proc's process with ``proc``'s pid start after an event ``proc`` made itself?

        Its own events: a placeholder's first (the log showed it before any fork), else its
        exec. Not its fork's: the child's start is stamped later (REUSE_START_SLACK_MS).
        Only events since the wall clock last held steady are compared (_note_clock).
        """
        own = proc.exec_ms
        if proc.started_at is None or proc.first_seen > proc.started_at:
            own = proc.first_seen
        steady = self._clock_steady_since
        if own is None or steady is None or own < steady or self._clock is None:
            return False
        return started + self._clock[1] > own + REUSE_START_SLACK_MS

    def _note_clock(self, source: ProcSource, now_ms: int) -> None:
        """Read the wall clock's offset from the boot clock (scan, each sweep): a step since
        the last reading makes the events before now incomparable with /proc's starts."""
        shift = source.clock_shift_ms()
        last = self._clock
        steady = last is not None and abs(shift - last[1]) <= CLOCK_STEP_MS and now_ms >= last[0]
        self._clock_steady_since = last[0] if last is not None and steady else None
        self._clock = (now_ms, shift)

    def _found_gone(self, proc: Process, gone_ms: int, found_ms: int) -> None:
        """``proc`` had ended by ``gone_ms``; _end_gone ends it a confirmation after ``found_ms``."""
        proc.gone_at = gone_ms
        self._gone.append((found_ms, proc.key))

    def _end_gone(self, now_ms: int, out: list[Doc]) -> None:
        """End the processes found gone at least GONE_CONFIRM_MIN_MS (or exit_grace_ms) ago
        whose exit record has not come since: one that exited just before the sweep may have
        its record still on the way, and then the record ends it, with its exit code."""
        confirmed = now_ms - max(self.config.exit_grace_ms, GONE_CONFIRM_MIN_MS)
        while self._gone and self._gone[0][0] <= confirmed:
            _, key = self._gone.popleft()
            proc = self.processes.get(key)
            if proc is None or proc.exited_at is not None or proc.gone_at is None:
                continue
            self.stats.gone_from_proc += 1
            # It ended before the sweep found it gone: no later event is its. It is kept
            # exit_grace_ms from now, as after an exit, for events still on the way.
            proc.exited_at = proc.gone_at
            proc.ended_gone = True
            heapq.heappush(self._exited, (now_ms, key))
            self._reparent_children(proc, proc.gone_at, out)
            out.append(_swept(_lifecycle_doc(self, "process-exited", proc, proc.gone_at)))

    def scan(self, proc_source: ProcSource, out: list[Doc] | None = None, at_ms: int = 0) -> int:
        """Fill the table from /proc (live start); return how many processes were read.

        With ``out``: a ``container-first-seen`` doc at ``at_ms`` for each container found,
        naming its oldest process (its init, but for a ``--pid=host`` one)."""
        found: list[Process] = []
        self._note_clock(proc_source, at_ms)  # the sweeps' first reading: the clock at start
        for pid in proc_source.pids():
            info = proc_source.read(pid)
            if info is None:
                continue
            args = [escape(a) for a in info.cmdline] or None
            exe = escape(info.exe) if info.exe is not None else None
            proc = Process(
                pid=info.pid,
                start_ms=info.start_ms,
                entity_id=entity_id(self.config.host, info.pid, info.start_ms),
                ppid=info.ppid,
                executable=exe,
                name=escape(info.comm),
                args=args,
                cwd=escape(info.cwd) if info.cwd is not None else None,
                title=" ".join(args) if args else None,
                started_at=info.start_ms,
                first_seen=info.start_ms,
                maybe_threaded=info.threads > 1,
            )
            proc.role, proc.managed = containers.classify(exe, args)
            if info.cgroup is not None:
                proc.container = containers.from_cgroup(info.cgroup)
            proc.pid_ns = namespaces.from_nspid(info.pid, info.nspid)
            proc.proc_start_ms = info.start_ms
            found.append(proc)
        for proc in found:
            self.current[proc.pid] = proc.key
            self.processes[proc.key] = proc
            if proc.container is not None:
                self._count_member(proc.container, [], proc.start_ms)
        for proc in found:
            parent = self.processes.get(self.current.get(proc.ppid, (0, 0)))
            if parent is not None and parent is not proc:
                proc.parent = parent.key
                parent.children.add(proc.key)
        self.stats.processes_created += len(found)
        if out is not None:
            oldest: dict[str, Process] = {}
            for proc in found:
                ref = proc.container
                if ref is not None:
                    known = oldest.get(ref.id)
                    if known is None or (proc.start_ms, proc.pid) < (known.start_ms, known.pid):
                        oldest[ref.id] = proc
            for proc in oldest.values():
                doc = _lifecycle_doc(self, "container-first-seen", proc, at_ms)
                out.append(_from_source(doc, LIFECYCLE_FROM_SCAN))
        return len(found)

    # -- observing ----------------------------------------------------------

    def _observe(self, doc: dict[str, Any]) -> list[Doc]:
        process = _section(doc, "process")
        pid = _pid(process.get("pid"))
        if pid is None or pid <= 0:
            return []
        at_ms = self.event_ms(doc)
        ppid = _pid(_section(process, "parent").get("pid"))
        out: list[Doc] = []
        actor = self._actor(pid, ppid, at_ms, process, out)
        self._act(doc, actor, at_ms, out)
        return out

    def _act(self, doc: dict[str, Any], actor: Process, at_ms: int, out: list[Doc]) -> None:
        """The fork, exec or exit that ``actor``'s event records, if it is one."""
        process = _section(doc, "process")
        auditd = _section(doc, "auditd")
        data = _section(auditd, "data")
        syscall = data.get("syscall")
        if syscall in FORK_SYSCALLS:
            child_pid = _int(data.get("exit"))
            if auditd.get("result") != "fail" and child_pid is not None and child_pid > 0:
                # Only clone's a0 is its flags; fork/vfork take no arguments (a0 is
                # whatever the register held) and clone3's a0 points to a struct.
                flags = _hex(data.get("a0")) if syscall == "clone" else None
                comm = _str(process.get("name"))
                self._fork(actor, child_pid, syscall, flags, comm, at_ms, out)
        elif syscall in EXEC_SYSCALLS:
            if auditd.get("result") == "success":
                self._exec(actor, process, at_ms, out)
        elif syscall == "exit_group" or (syscall == "exit" and not actor.maybe_threaded):
            code = _hex(data.get("a0"))
            self._exit(actor, None if code is None else code & 0xFF, at_ms, out)

    def _actor(
        self, pid: int, ppid: int | None, at_ms: int, process: dict[str, Any], out: list[Doc]
    ) -> Process:
        """The process an event comes from; a placeholder if the table did not know it."""
        proc = self.lookup(pid, at_ms)
        if proc is None:
            return self._placeholder(pid, ppid, at_ms, process, out)
        if proc.tentative:  # a clone3 child seen acting as a process: it is one
            proc.tentative = False
            out.append(_lifecycle_doc(self, "process-started", proc, at_ms))
        if ppid is not None and ppid != proc.ppid:
            proc = self._ppid_changed(proc, ppid, at_ms, process, out)
        if proc.executable is None or (at_ms >= proc.image_ms and proc.inferred):
            self._take_image(proc, process, at_ms, with_args=False)
        return proc

    def _placeholder(
        self, pid: int, ppid: int | None, at_ms: int, process: dict[str, Any], out: list[Doc]
    ) -> Process:
        key = (pid, at_ms)
        while key in self.processes:
            key = (pid, key[1] + 1)
        proc = Process(
            pid=pid,
            start_ms=key[1],
            entity_id=entity_id(self.config.host, pid, key[1]),
            first_seen=at_ms,
            inferred=True,
            maybe_threaded=True,  # unknown: do not end it on a plain exit
            previous=self.current.get(pid),
        )
        self._take_image(proc, process, at_ms, with_args=False)
        proc.role, proc.managed = containers.classify(proc.executable, None)
        if proc.name is not None and proc.name.startswith(RUNC_INIT_COMM):
            proc.role = RuntimeRole.RUNTIME_INIT  # runc's nsexec stages, seen before any exec
        self.current[pid] = key
        self._insert(proc, out)
        self._inferred.append(key)
        self.stats.placeholders += 1
        if ppid is not None:
            self._set_parent(proc, ppid, self.lookup(ppid, at_ms), at_ms, out)
            parent = self.get(proc.parent)
            if parent is not None and parent.container is not None and proc.container is None:
                self._set_container(proc, parent.container, at_ms, out)
            if parent is not None and parent.pid_ns is PidNs.NESTED:
                proc.pid_ns = PidNs.NESTED  # a child is in its parent's pid namespace or below
                # Its fork returned a pid of the namespace (nothing was copied then): a child
                # still running its parent's image has the parent's command line, as ps shows.
                _take_forked_image(proc, parent)
        return proc

    def _take_image(
        self, proc: Process, process: dict[str, Any], at_ms: int, *, with_args: bool
    ) -> None:
        exe = _str(process.get("executable"))
        if exe is None and not with_args:
            return
        if exe != proc.executable or with_args:
            proc.args = _args(process.get("args")) if with_args else None
            proc.title = _str(process.get("title"))
        proc.executable = exe
        proc.name = _str(process.get("name")) or proc.name
        cwd = _str(process.get("working_directory"))
        if cwd is not None:
            proc.cwd = cwd
        proc.image_ms = at_ms
        proc.ancestry_entry = None

    def _ppid_changed(
        self, proc: Process, ppid: int, at_ms: int, process: dict[str, Any], out: list[Doc]
    ) -> Process:
        new_parent = self.lookup(ppid, at_ms)
        if proc.ppid == 0:
            self._set_parent(proc, ppid, new_parent, at_ms, out)
            return proc
        if self.former_parent(proc, ppid) is not None or (
            new_parent is not None
            and new_parent.exited_at is not None
            and new_parent.exited_at >= at_ms
        ):
            return proc  # a late event from before the reparenting we already did
        old_parent = self.get(proc.parent)
        reparented = (
            ppid == 1
            or old_parent is None
            or old_parent.exited_at is not None
            or any(a.pid == ppid for a in self.lineage(old_parent, 64))
        )
        if reparented:
            self.stats.reparented += 1
            self._set_parent(proc, ppid, new_parent, at_ms, out)
            return proc
        # Same pid, unrelated parent: the pid was reused and we missed exit and fork.
        self._retire(proc, at_ms, out)
        return self._placeholder(proc.pid, ppid, at_ms, process, out)

    def _set_parent(
        self, proc: Process, ppid: int, parent: Process | None, at_ms: int, out: list[Doc]
    ) -> None:
        old = self.get(proc.parent)
        if old is not None:
            old.children.discard(proc.key)
            if proc.creator is None:
                proc.creator = old.key  # its first known parent stays in its lineage
        proc.ppid = ppid
        proc.parent = parent.key if parent is not None else None
        if parent is None:
            return
        parent.children.add(proc.key)
        # A shim's children are its container's processes, unless they run the runtime or
        # were only handed to it (a subreaper) by a dead parent: a runc hook's orphans.
        if (
            proc.container is None
            and proc.reaped_from is None
            and proc.role is RuntimeRole.NONE
            and parent.role is RuntimeRole.SHIM
            and parent.managed is not None
        ):
            self._set_container(proc, parent.managed, at_ms, out)

    def _fork(
        self,
        caller: Process,
        child_pid: int,
        syscall: str,
        flags: int | None,
        comm: str | None,
        at_ms: int,
        out: list[Doc],
    ) -> None:
        if syscall == "clone" and flags is not None and flags & CLONE_THREAD:
            caller.maybe_threaded = True
            self.stats.threads_ignored += 1
            return
        tentative = syscall == "clone3"
        if tentative:
            caller.maybe_threaded = True
        if namespaces.fork_returns_namespaced_pid(self, caller, comm, at_ms):
            # Not a host pid: it may name an unrelated host process. The child's own
            # records (host pid, ppid = the caller) make it a placeholder instead.
            self.stats.namespaced_forks += 1
            return
        if flags is not None and flags & CLONE_PARENT:
            ppid, parent = caller.ppid, self.get(caller.parent)
        else:
            ppid, parent = caller.pid, caller
        container = caller.container
        if (
            container is None
            and caller.role is RuntimeRole.RUNTIME
            and flags is not None
            and flags & CLONE_NEW_NAMESPACES
        ):
            container = caller.managed  # crun clones the container's init into new namespaces
        existing = self.get(self.current.get(child_pid))
        make_current = True
        if existing is not None:
            if self._is_forked_child(existing, caller, ppid, at_ms):
                self._merge(existing, caller, ppid, parent, container, at_ms, out)
                return
            if existing.tentative:
                self._delete(existing, out)
                existing = None
            elif (existing.started_at is not None and existing.started_at > at_ms) or (
                existing.inferred and existing.started_at is None and existing.first_seen > at_ms
            ):
                make_current = False  # a late fork of an older process with this pid
            elif existing.exited_at is None:
                self._retire(existing, at_ms, out)
        key = (child_pid, at_ms)
        while key in self.processes:
            key = (child_pid, key[1] + 1)
        child = Process(
            pid=child_pid,
            start_ms=key[1],
            entity_id=entity_id(self.config.host, child_pid, key[1]),
            creator=caller.key,
            executable=caller.executable,
            name=caller.name,
            args=caller.args,
            cwd=caller.cwd,
            title=caller.title,
            started_at=at_ms,
            first_seen=at_ms,
            image_ms=at_ms,
            tentative=tentative,
            role=caller.role,
            managed=caller.managed,
            pid_ns=PidNs.NESTED if flags is not None and flags & CLONE_NEWPID else PidNs.UNKNOWN,
        )
        if make_current:
            child.previous = existing.key if existing is not None else None
            self.current[child_pid] = child.key
        self._insert(child, out)
        self.stats.processes_created += 1
        self._set_parent(child, ppid, parent, at_ms, out)
        if container is not None:
            self._set_container(child, container, at_ms, out)
        if tentative:
            self._tentative.append((at_ms, child.key))
        else:
            out.append(_lifecycle_doc(self, "process-started", child, at_ms))

    @staticmethod
    def _is_forked_child(proc: Process, caller: Process, ppid: int, at_ms: int) -> bool:
        """Is ``proc`` a placeholder made from events of the child this fork creates?

        vfork suspends the parent until the child execs, and a fork's child may run
        and exec before the parent's syscall returns: the kernel then emits the
        child's events first. Such a placeholder was first seen at or after the fork
        and has no fork of its own. Its recorded ppid is the caller, the caller's
        parent (CLONE_PARENT) or a reaper if the caller died meanwhile; any other
        ppid means a later process reusing the pid, which must stay separate.
        """
        return (
            proc.inferred
            and proc.started_at is None
            and proc.first_seen >= at_ms
            and proc.ppid in (0, 1, ppid, caller.pid, caller.ppid)
        )

    def _merge(
        self,
        proc: Process,
        caller: Process,
        ppid: int,
        parent: Process | None,
        container: ContainerRef | None,
        at_ms: int,
        out: list[Doc],
    ) -> None:
        """A fork that arrives after events of its child: the placeholder is that child.

        Only the links are filled in. The child's own events are newer than the fork,
        so its image (an exec's executable, args, cwd) and the ppid they recorded win.
        """
        self.stats.merged_placeholders += 1
        proc.inferred = False
        proc.creator = caller.key
        proc.started_at = at_ms
        if proc.ppid == 0:
            self._set_parent(proc, ppid, parent, at_ms, out)
        elif proc.parent is None:
            recorded = caller if caller.pid == proc.ppid else None
            if recorded is None and parent is not None and parent.pid == proc.ppid:
                recorded = parent
            if recorded is None:
                recorded = self.lookup(proc.ppid, at_ms)
            if recorded is not None:
                self._set_parent(proc, proc.ppid, recorded, at_ms, out)
        if proc.executable is None:
            proc.executable, proc.name = caller.executable, caller.name
            proc.args, proc.cwd, proc.title = caller.args, caller.cwd, caller.title
            proc.ancestry_entry = None
        else:
            _take_forked_image(proc, caller)  # events before its fork, none an exec
        if proc.container is None and container is not None:
            self._set_container(proc, container, at_ms, out)
        out.append(_lifecycle_doc(self, "process-started", proc, at_ms))

    def _exec(self, proc: Process, process: dict[str, Any], at_ms: int, out: list[Doc]) -> None:
        if proc.exec_ms is not None and at_ms < proc.exec_ms:
            return  # an older exec arriving late: the newer image stays
        proc.exec_ms = at_ms
        previous_role, previous_managed = proc.role, proc.managed
        self._take_image(proc, process, at_ms, with_args=True)
        proc.maybe_threaded = False  # execve ends every other thread
        proc.role, proc.managed = containers.classify(proc.executable, proc.args)
        if proc.role is RuntimeRole.RUNTIME_INIT and proc.container is None:
            target = None
            if previous_role in (RuntimeRole.RUNTIME, RuntimeRole.SHIM):
                target = previous_managed
            else:
                parent = self.get(proc.parent)
                if parent is not None and parent.role is RuntimeRole.SHIM:
                    target = parent.managed
            if target is not None:
                self._set_container(proc, target, at_ms, out)
        elif proc.role is RuntimeRole.NONE and proc.container is None:
            parent = self.get(proc.parent)
            # A shim's child, or runc init (docker exec: parent is `runc exec ID`) turning
            # into the container's command. A runc hook is a plain fork of runc, not init.
            if (
                parent is not None
                and parent.managed
                and (
                    parent.role is RuntimeRole.SHIM
                    or (
                        parent.role is RuntimeRole.RUNTIME
                        and previous_role is RuntimeRole.RUNTIME_INIT
                    )
                )
            ):
                self._set_container(proc, parent.managed, at_ms, out)
        out.append(_lifecycle_doc(self, "process-exec", proc, at_ms))

    def _exit(self, proc: Process, code: int | None, at_ms: int, out: list[Doc]) -> None:
        if proc.exited_at is not None:
            return
        proc.exited_at = at_ms
        proc.exit_code = code
        heapq.heappush(self._exited, (at_ms, proc.key))
        self._reparent_children(proc, at_ms, out)
        out.append(_lifecycle_doc(self, "process-exited", proc, at_ms))

    def _retire(self, proc: Process, at_ms: int, out: list[Doc]) -> None:
        """End a process whose exit we missed (its pid now belongs to another)."""
        self.stats.missed_exits += 1
        proc.exited_at = at_ms
        heapq.heappush(self._exited, (at_ms, proc.key))
        self._reparent_children(proc, at_ms, out)

    def _reaper(self, dead: Process, at_ms: int) -> Process | None:
        """Who inherits a dead process's children: a subreaper above it, the container's
        init, or init."""
        for anc in self._parents(dead):
            if anc.exited_at is not None:
                continue
            if anc.role is RuntimeRole.SHIM or anc.name in SUBREAPER_NAMES:
                return anc
            if dead.container is not None and anc.container == dead.container:
                above = self.get(anc.parent)
                if above is None or above.container != dead.container:
                    return anc
        return self.lookup(1, at_ms)

    def _parents(self, proc: Process) -> list[Process]:
        out: list[Process] = []
        node: Process | None = self.get(proc.parent)
        while node is not None and len(out) < 64 and node is not proc:
            out.append(node)
            node = self.get(node.parent)
        return out

    def _reparent_children(self, dead: Process, at_ms: int, out: list[Doc]) -> None:
        live = [self.processes[k] for k in dead.children if k in self.processes]
        live = [c for c in live if c.exited_at is None and c.parent == dead.key]
        if not live:
            return
        reaper = self._reaper(dead, at_ms)
        for child in live:
            self.stats.reparented += 1
            child.reaped_from = dead.key
            self._set_parent(child, reaper.pid if reaper is not None else 1, reaper, at_ms, out)

    # -- containers ---------------------------------------------------------

    def adopt_cgroup(self, pid: int, at_ms: int, cgroup_text: str) -> list[Doc]:
        """Live: attribute ``pid`` from its /proc cgroup when the log alone did not."""
        out: list[Doc] = []
        proc = self.lookup(pid, at_ms)
        if proc is not None and proc.container is None:
            ref = containers.from_cgroup(cgroup_text)
            if ref is not None:
                self._set_container(proc, ref, at_ms, out)
        return out

    def _set_container(self, proc: Process, ref: ContainerRef, at_ms: int, out: list[Doc]) -> None:
        if proc.container is not None:
            return
        proc.container = ref
        self._count_member(ref, out, at_ms, proc)

    def _count_member(
        self, ref: ContainerRef, out: list[Doc], at_ms: int, proc: Process | None = None
    ) -> None:
        count = self.container_members.get(ref.id, 0)
        self.container_members[ref.id] = count + 1
        if count == 0 and proc is not None:
            out.append(_lifecycle_doc(self, "container-first-seen", proc, at_ms))

    # -- storage ------------------------------------------------------------

    def insert_restored(self, proc: Process) -> None:
        """Put back a process read from a state file (state.py)."""
        self.processes[proc.key] = proc
        if proc.pid not in self.current or self.current[proc.pid][1] < proc.start_ms:
            self.current[proc.pid] = proc.key
        if proc.exited_at is not None:
            heapq.heappush(self._exited, (proc.exited_at, proc.key))
        if proc.tentative:
            self._tentative.append((proc.first_seen, proc.key))
        if proc.inferred:
            self._inferred.append(proc.key)
        if proc.container is not None:
            self.container_members[proc.container.id] = (
                self.container_members.get(proc.container.id, 0) + 1
            )

    def _insert(self, proc: Process, out: list[Doc]) -> None:
        self.processes[proc.key] = proc
        # Ends when only ``proc`` is left too: with max_processes 0 (a table built in
        # code; the config refuses below MIN_TREE_PROCESSES) this spun for ever.
        while len(self.processes) > self.config.max_processes and self._evict_one(proc, out):
            pass

    def _evict_one(self, keep: Process, out: list[Doc]) -> bool:
        """Delete one process other than ``keep``: exited first, then inferred, then the
        oldest; False if ``keep`` is all there is."""
        while self._exited:
            _, key = heapq.heappop(self._exited)
            victim = self.processes.get(key)
            if victim is not None and victim.exited_at is not None and victim is not keep:
                self.stats.evicted_exited += 1
                self._delete(victim, out)
                return True
        while self._inferred:
            victim = self.processes.get(self._inferred.popleft())
            if victim is not None and victim.inferred and victim is not keep:
                self.stats.evicted_inferred += 1
                self._delete(victim, out)
                return True
        for victim in self.processes.values():  # oldest inserted first
            if victim is not keep:
                self.stats.evicted_live += 1
                self._delete(victim, out)
                return True
        return False

    def _delete(self, proc: Process, out: list[Doc]) -> None:
        key = proc.key
        if self.processes.pop(key, None) is None:
            return
        self.stats.deleted += 1
        if self.current.get(proc.pid) == key:
            del self.current[proc.pid]
        parent = self.get(proc.parent)
        if parent is not None:
            parent.children.discard(key)
        if proc.exited_at is None:
            self._reparent_children(proc, self.last_ms, out)
        if proc.container is not None:
            left = self.container_members.get(proc.container.id, 1) - 1
            if left <= 0:
                self.container_members.pop(proc.container.id, None)
                gone = _lifecycle_doc(self, "container-gone", proc, self.last_ms)
                out.append(_swept(gone) if proc.ended_gone else gone)
            else:
                self.container_members[proc.container.id] = left


# Last: the C module reads the classes above when it is imported (treekeeper/native.py).
_NATIVE_ENRICH: EnrichFn | None = native_enrich()
_NATIVE_OBSERVE: ObserveFn | None = native_observe()
# The C lifecycle_doc calls the Python one itself wherever it declines.
_lifecycle_doc: LifecycleFn = native_lifecycle_doc() or lifecycle_doc
