"""The tree keeper's per-batch work: tree update and enrichment, then the sinks' fan-out."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from typing import Any

from auditstream.config import Config
from sinks import build_sink
from sinks.config import sink_configs_from_tables
from sinks.fanout import FanOut
from treekeeper.tree import ProcessTable, TableConfig

log = logging.getLogger("auditstream.treekeeper")
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
    return FanOut(sinks, configs)


def fanout_stats(fanout: FanOut) -> dict[str, Any]:
    return {name: dataclasses.asdict(m) for name, m in fanout.stats().items()}


class TreeStep:
    """Feeds each event to the process table and enriches it; emits lifecycle events."""

    def __init__(self, cfg: Config) -> None:
        t = cfg.treekeeper
        self.enabled = t.enabled
        self.event_time = cfg.receiver.source == "file"
        host = "" if self.event_time else socket.gethostname()
        self.table = ProcessTable(
            TableConfig(
                host=host,
                exit_grace_ms=t.exit_grace_ms,
                max_processes=t.max_processes,
                ancestry_max_depth=t.ancestry_max_depth,
            )
        )
        self.clock_ms = 0
        self.events_out = 0
        self.lifecycle_events = 0
        if self.enabled and not self.event_time:
            from treekeeper.procfs import LiveProcSource

            found = self.table.scan(LiveProcSource())
            log.info("process table started from /proc: %d processes", found)

    def _now(self) -> int:
        return self.clock_ms if self.event_time else time.time_ns() // 1_000_000

    def process(self, events: list[Event]) -> list[Event]:
        if not self.enabled:
            self.events_out += len(events)
            return events
        out: list[Event] = []
        table = self.table
        for event in events:
            doc = event["doc"]
            if event["raw"]:  # markers carry no process
                lifecycle = table.observe(doc)
                table.enrich(doc)
                if self.event_time:
                    stamp = table.event_ms(doc)
                    if stamp > self.clock_ms:
                        self.clock_ms = stamp
            else:
                lifecycle = []
            out.append(event)
            out.extend({"key": event["key"], "raw": [], "doc": life} for life in lifecycle)
        self.lifecycle_events += len(out) - len(events)
        self.events_out += len(out)
        return out

    def maintain(self) -> list[Event]:
        if not self.enabled:
            return []
        return self._wrap(self.table.maintain(self._now()))

    def close(self) -> list[Event]:
        return []

    def _wrap(self, docs: list[dict[str, Any]]) -> list[Event]:
        self.lifecycle_events += len(docs)
        self.events_out += len(docs)
        return [{"key": ["", 0, 0, 0], "raw": [], "doc": d} for d in docs]

    def stats(self) -> dict[str, Any]:
        tree = dataclasses.asdict(self.table.stats) if self.enabled else {}
        return {"events_out": self.events_out, "lifecycle_events": self.lifecycle_events, "tree": tree}
