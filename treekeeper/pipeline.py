"""The tree keeper's per-batch work: tree update and enrichment, then the sinks' fan-out."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from auditstream.config import Config
from auditstream.hostnode import host_name, local_host_name, local_node
from auditstream.logs import RateLimitedLog
from auditstream.redelivery import buffered_records
from sinks import build_sink, sinks_take_ancestry_text
from sinks.config import sink_configs_from_tables
from sinks.fanout import FanOut
from treekeeper import recording_tree, state
from treekeeper.native import native_apply_ready
from treekeeper.procfs import LiveProcSource, read_file
from treekeeper.reorder import ReorderWindow, new_window
from treekeeper.tree import ProcessTable, TableConfig

log = logging.getLogger("auditstream.treekeeper")
# Replay: the audit nodes that get a process table of their own. A hostile log naming a new
# node on every line would otherwise make a table each; the nodes past this share one.
MAX_NODE_TABLES = 1024
EXEC_SYSCALLS = ("execve", "execveat")
_NATIVE_APPLY = native_apply_ready()  # _apply's loop (treekeeper/csrc/enrich_apply.h)
MAX_HELD_EVENTS = 10_000  # the reorder window's memory bound
MIN_HELD_EVENTS = 64
Event = dict[str, Any]


def build_fanout(cfg: Config) -> FanOut:
    """Open every configured sink (errors name the sink and key) behind its own queue."""
    configs = sink_configs_from_tables(cfg.sinks)
    sinks = []
    try:
        for sink_cfg in configs:
            sinks.append(build_sink(sink_cfg))
    except Exception:
        for sink in sinks:
            sink.close()
        raise
    return FanOut(sinks, configs, shutdown_timeout_ms=cfg.treekeeper.sinks_shutdown_timeout_ms)


def fanout_stats(fanout: FanOut) -> dict[str, Any]:
    return {name: dataclasses.asdict(m) for name, m in fanout.stats().items()}


class TreeStep:
    """Feeds each event to the process table and enriches it; emits lifecycle events.

    Events pass through a reorder window (treekeeper/reorder.py) so the table sees forks
    before the children's execs even when EOEs, or sharded assemblers, deliver them out
    of order: ``reorder_window_ms`` of event time at most, and live only until every
    assembler has claimed to have sent what precedes them. Markers skip the window.
    """

    def __init__(self, cfg: Config) -> None:
        t = cfg.treekeeper
        self.enabled = t.enabled
        self.event_time = cfg.receiver.source == "file"
        self.follow = cfg.receiver.follow
        self.input_at = time.monotonic()
        self.state_file = t.state_file
        table_cfg = TableConfig(
            host="" if self.event_time else local_host_name(),  # as live docs' host.name
            exit_grace_ms=t.exit_grace_ms,
            max_processes=t.max_processes,
            ancestry_max_depth=t.ancestry_max_depth,
            ancestry_fragments=sinks_take_ancestry_text(cfg.sinks),
        )
        restored = state.load(t.state_file, t.state_max_age_ms, table_cfg) if t.state_file else None
        # The table of records without ``node=``: the only one live. The state file and the
        # control server (`auditstream tree`) see this one only; other nodes' are replay's.
        self.table = restored or ProcessTable(table_cfg)
        self.table_cfg = table_cfg
        # Replay of an aggregated log (audisp-remote: ``node=NAME`` lines): one table per
        # audit node, the event key's node, so two hosts' pid 500 stay two processes.
        self.tables: dict[str, ProcessTable] = {"": self.table}
        self.shared_table: ProcessTable | None = None  # the nodes past MAX_NODE_TABLES
        self.shared_runs = 0  # runs of their events applied to it (warned, in stats)
        # A followed log's quiet shard may never send an event: wait for no one there.
        expected = 0 if self.follow else cfg.assembler.instances
        # Held events keep their batches in the receiver's replay buffers unacknowledged:
        # hold at most about a tenth of what those buffers take (each event >= 1 record).
        buffered = buffered_records(cfg)
        self.window: ReorderWindow[Event] = new_window(
            window_ms=t.reorder_window_ms,
            max_held=min(MAX_HELD_EVENTS, max(MIN_HELD_EVENTS, buffered // 10)),
            sources=expected,
        )
        self.held = 0  # events in the window (the C window does not say): the loop's idle wait
        self.clock_ms = 0
        self.lifecycle_events = 0
        self.gap_markers = 0  # events-lost markers passed on (counted here: the only path)
        self.timelines_warned = 0  # the window's count of steps back already logged
        self.full_warned = 0  # the window's count of events released full, already logged
        self.warn = RateLimitedLog(log)
        # Live: lifecycle docs of the start-up scan (containers already running), sent first.
        self.found_at_start: list[dict[str, Any]] = []
        self.proc_sweep_ms = 0  # live: how often /proc is listed for processes gone (0: never)
        self.next_sweep_ms = 0
        if self.enabled and not self.event_time:
            proc_source = LiveProcSource()
            # Live, /proc says which pid namespace a forking process is in (namespaces.py).
            self.table.proc_source = proc_source
            self.proc_sweep_ms = t.proc_sweep_ms
            now_ms = self._now()
            self.next_sweep_ms = now_ms + t.proc_sweep_ms
            if restored is None:
                found = self.table.scan(proc_source, self.found_at_start, now_ms)
                log.info("process table started from /proc: %d processes", found)
            if cfg.receiver.record:  # its replay then starts from this table too
                recording_tree.save_start(self.table, local_node(), cfg.receiver.record)
        elif self.enabled:
            self._load_recording_start(cfg, restored is not None)

    def _load_recording_start(self, cfg: Config, restored: bool) -> None:
        """Replay: the table the first file's recording started from, into its node's
        table (treekeeper/recording_tree.py); passed on to this replay's own recording."""
        started = recording_tree.load_start(cfg.receiver.files, self.table_cfg)
        if started is None:
            return
        node, table = started
        if node == "":
            if restored:  # the state file's table is the node-less one already
                log.warning("state_file loaded: the recording's process table is not used")
                return
            self.table = table
        self.tables[node] = table
        if cfg.receiver.record:
            recording_tree.save_start(table, node, cfg.receiver.record)

    def _now(self) -> int:
        if not self.event_time:
            return time.time_ns() // 1_000_000
        if self.follow:  # a quiet followed log: its time moves on with the wall clock
            return self.clock_ms + int((time.monotonic() - self.input_at) * 1000)
        return self.clock_ms

    def _apply_released(self, ready: list[Event], out: list[Event]) -> None:
        """Each released event, in order, into its node's table (replay) and then ``out``."""
        self.held -= len(ready)  # every event the window releases comes through here once
        if not self.event_time or not ready:  # live: kernel records name no node
            self._apply(ready, out)
            return
        nodes = [event["key"][0] for event in ready]
        if nodes.count(nodes[0]) == len(nodes):  # one node's batch: the common case, one call
            self._apply(ready, out, self._table_of(nodes[0]))
            return
        start = 0
        for at in range(1, len(nodes)):  # each run of one node's events, in order
            if nodes[at] != nodes[start]:
                self._apply(ready[start:at], out, self._table_of(nodes[start]))
                start = at
        self._apply(ready[start:], out, self._table_of(nodes[start]))

    def _table_of(self, node: str) -> ProcessTable:
        """The node's table; a new node's own gets its host.name (lifecycle docs, entity ids)."""
        table = self.tables.get(node)
        if table is None:
            if len(self.tables) > MAX_NODE_TABLES:  # not kept in tables: memory is bounded
                return self._shared_table(node)
            table = ProcessTable(dataclasses.replace(self.table_cfg, host=host_name(node)))
            self.tables[node] = table
        return table

    def _shared_table(self, node: str) -> ProcessTable:
        """The one table of every node past MAX_NODE_TABLES (memory stays bounded): their
        pids are no longer kept apart, which is said once and counted."""
        self.shared_runs += 1
        if self.shared_table is None:
            self.shared_table = ProcessTable(self.table_cfg)
            log.warning(
                "more than %d audit nodes in this log: from node %r on, the further nodes "
                "share one process table (their pids are not kept apart)",
                MAX_NODE_TABLES,
                node,
            )
        return self.shared_table

    def _apply(
        self, ready: list[Event], out: list[Event], table: ProcessTable | None = None
    ) -> None:
        """Each released event, in order, into ``table`` (the node-less one by default) and
        then ``out``, followed by the lifecycle docs it causes (in C where built, without
        three Python calls per event)."""
        table = self.table if table is None else table
        if _NATIVE_APPLY is not None and type(table) is ProcessTable:
            _NATIVE_APPLY(
                self, table, ready, out, None if self.event_time else self._live_container
            )
            return
        observe, enrich, append = table.observe, table.enrich, out.append
        live = not self.event_time
        for event in ready:
            doc = event["doc"]
            lifecycle = observe(doc)
            if live:
                lifecycle += self._live_container(doc)
            enrich(doc)
            append(event)
            if lifecycle:
                self.lifecycle_events += len(lifecycle)
                key = event["key"]
                for life in lifecycle:  # a loop, not a generator: ~60 % of events have one
                    append({"key": key, "raw": [], "doc": life})

    def _warn_timeline(self, source: int) -> None:
        self.timelines_warned = self.window.timelines
        # Rate-limited: merged logs of hosts whose clocks disagree may step back often.
        self.warn.warning(
            "time-went-back",
            "event time of assembler-%d went back %.1f s and stayed there (files given newest "
            "first? give them oldest first, e.g. ls -rv; or a clock step): the reorder window "
            "let go of what it held; processes of the earlier times are matched as well as "
            "they can be",
            source,
            self.window.last_jump_ms / 1000,
        )

    def _warn_full(self) -> None:
        self.full_warned = self.window.released_full
        self.warn.warning(
            "window-full",
            "reorder window full (%d events held): %d events so far went to the process "
            "table before an assembler behind had sent its earlier ones; processes of those "
            "may lack their parents (an assembler starved of CPU, or its shard of the log "
            "quiet for long: docs/design.md, the reorder window)",
            self.window.max_held,
            self.window.released_full,
        )

    def _live_container(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Live, an exec'd process's cgroup names its container (docker, containerd, CRI-O…)."""
        if doc.get("auditd", {}).get("data", {}).get("syscall") not in EXEC_SYSCALLS:
            return []
        pid = doc.get("process", {}).get("pid")
        if not isinstance(pid, int):
            return []
        raw = read_file(f"/proc/{pid}/cgroup")
        if raw is None:
            return []  # gone already: the log's own ancestry has to do
        text = raw.decode("utf-8", errors="replace")
        return self.table.adopt_cgroup(pid, self.table.event_ms(doc), text)

    def process(
        self,
        events: list[Event],
        source: int = 0,
        sent_below: list[int] | None = None,
        dropped: set[int] | None = None,
    ) -> list[Event]:
        """Events of one frame of assembler ``source``: through the window into the table.

        ``sent_below`` (live): the frame's claim, [event ms, serial] below which the
        assembler has sent every event it has seen (treekeeper/reorder.py). ``dropped``:
        ids of the events dedupe dropped; the window still learns their times, in frame
        order (a log given twice must not hold the end of its first copy until the end).
        """
        if not self.enabled:
            kept = [e for e in events if id(e) not in dropped] if dropped else events
            self.gap_markers += sum(1 for e in kept if not e["raw"] and is_gap_marker(e))
            return kept
        self.input_at = time.monotonic()
        out: list[Event] = []
        ready: list[Event] = []  # released by the window, in order: applied after the loop
        window = self.window
        at, count = 0, len(events)
        while at < count:
            if not dropped:  # the events up to the next marker in one call (C where built)
                start, at = at, window.push_frame(events, source, ready, at)
                self.held += at - start
                if at == count:
                    break
            event = events[at]
            at += 1
            if dropped and id(event) in dropped:
                if event["raw"]:
                    _, sec, msec, _ = event["key"]
                    ready += window.see(sec * 1000 + msec, source)
                continue
            if not event["raw"]:  # markers carry no process and need no order
                self._apply_released(ready, out)  # what was released before it goes first
                ready.clear()
                out.append(event)
                self.gap_markers += is_gap_marker(event)
                continue
            _, sec, msec, serial = event["key"]
            self.held += 1
            window.push_into(event, sec * 1000 + msec, serial, source, ready)
        self._apply_released(ready, out)
        if window.timelines != self.timelines_warned:
            self._warn_timeline(source)
        if window.released_full != self.full_warned:
            self._warn_full()
        if sent_below is not None and not self.event_time:
            claim = (int(sent_below[0]), int(sent_below[1]))
            self._apply_released(window.claim(source, claim), out)
        out.extend(self.maintain())
        return out

    def source_done(self, source: int) -> list[Event]:
        """Assembler ``source`` sent its eof: the window no longer waits for it."""
        if not self.enabled:
            return []
        out: list[Event] = []
        self._apply_released(self.window.close_source(source), out)
        return out + self.maintain()

    def maintain(self) -> list[Event]:
        """Release what the window holds past its time, delete processes past their grace."""
        if not self.enabled:
            return []
        # The table's event clock is the slowest assembler's: processes must not be
        # deleted (exit grace) while another assembler still has their earlier events.
        self.clock_ms = max(self.clock_ms, self.window.horizon())
        now = self._now()
        out: list[Event] = []
        if self.found_at_start:
            out += [{"key": ["", 0, 0, 0], "raw": [], "doc": d} for d in self.found_at_start]
            self.lifecycle_events += len(self.found_at_start)
            self.found_at_start = []
        self._apply_released(self.window.due(now), out)
        source = self.table.proc_source
        if self.proc_sweep_ms and source is not None:
            # One bounded step of the /proc sweep a call (between frames); the next sweep
            # begins proc_sweep_ms after this one began, and never before it ended.
            if not self.table.sweeping and now >= self.next_sweep_ms:
                self.next_sweep_ms = now + self.proc_sweep_ms
                self.table.start_sweep(source, now)
            self.table.sweep_step(source, now)  # what it finds gone, table.maintain ends later
        for node, table in self._every_table():
            gone = table.maintain(now)
            out.extend({"key": [node, 0, 0, 0], "raw": [], "doc": d} for d in gone)
            self.lifecycle_events += len(gone)
        return out

    def idle_poll_ms(self, idle_ms: int, longest_ms: int = 0) -> int:
        """How long the loop may wait for a frame before maintain(): not at all while a
        /proc sweep is under way, so that its steps run back to back when no frame comes;
        ``idle_ms`` while the window holds events; else until maintain() has timed work
        (:meth:`next_due_ms`), at most ``longest_ms``: an idle host's tree keeper sleeps."""
        if self.table.sweeping:
            return 0
        if longest_ms <= idle_ms or self.held or self.found_at_start:
            return idle_ms
        due = self.next_due_ms()
        if due is None:
            return longest_ms
        return max(0, min(longest_ms, due - self._now()))

    def next_due_ms(self) -> int | None:
        """The clock ms (:meth:`_now`) from which maintain() has timed work besides the
        window's: a table's exit grace or tentative TTL ends, the next /proc sweep begins.
        None: none while no event comes (a replay's clock moves only with its events)."""
        if not self.enabled or (self.event_time and not self.follow):
            return None
        dues = [table.next_due_ms() for _, table in self._every_table()]
        if self.proc_sweep_ms and self.table.proc_source is not None:
            dues.append(self.next_sweep_ms)
        return min((due for due in dues if due is not None), default=None)

    def _every_table(self) -> list[tuple[str, ProcessTable]]:
        """(node, table) of each table: the nodes' own, and the shared one under node ""."""
        shared = [("", self.shared_table)] if self.shared_table is not None else []
        return [*self.tables.items(), *shared]

    def close(self) -> list[Event]:
        if not self.enabled:
            return []
        out: list[Event] = []
        self._apply_released(self.window.flush(), out)
        if self.state_file:  # live restarts: the node-less table, live's only one
            state.save(self.table, self.state_file)
        return out

    def stats(self) -> dict[str, Any]:
        tree: dict[str, int] = {}
        for _, table in self._every_table() if self.enabled else ():  # every node's, summed
            for name, count in dataclasses.asdict(table.stats).items():
                tree[name] = tree.get(name, 0) + count
        return {
            "lifecycle_events": self.lifecycle_events,
            "released_by_claim": self.window.released_by_claim,
            "released_full": self.window.released_full,
            "time_went_back": self.window.timelines,
            "runs_in_the_shared_node_table": self.shared_runs,
            "tree": tree,
        }


def is_gap_marker(event: Event) -> bool:
    """An events-lost marker (serial gap, or batches a resend could no longer cover)."""
    action = event.get("doc", {}).get("event", {}).get("action")
    return bool(action == "events-lost")
