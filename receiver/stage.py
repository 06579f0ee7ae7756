"""The receiver process: read the source, batch raw records, push them to the assembler(s)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from typing import Any, BinaryIO

import zmq

from auditstream import runtime, wire
from auditstream.config import Config
from auditstream.logline import LineError, split_log_line
from auditstream.stage import EXIT_FATAL, StageContext
from receiver.logsource import LogSource, SourceError
from receiver.shipper import RawRecord, RecordShipper

log = logging.getLogger("auditstream.receiver")
EXIT_LINGER_MS = 30_000  # at exit, wait this long for the assembler to take what we sent


class LineCounters:
    __slots__ = ("bad_lines", "blank_lines", "comment_lines", "lines")

    def __init__(self) -> None:
        self.lines = 0
        self.bad_lines = 0
        self.blank_lines = 0
        self.comment_lines = 0


def lines_to_records(lines: list[bytes], counters: LineCounters) -> list[RawRecord]:
    """Split log lines; a line that is not a record travels as type 0 so it is reported."""
    out: list[RawRecord] = []
    append = out.append
    for line in lines:
        try:
            append(split_log_line(line))
        except LineError:
            stripped = line.strip()
            if not stripped:
                counters.blank_lines += 1
                continue
            if stripped.startswith(b"#"):
                counters.comment_lines += 1
                continue
            counters.bad_lines += 1
            append((0, line.rstrip(b"\r\n"), ""))
    counters.lines += len(lines)
    return out


class ProgressBar:
    """One self-overwriting line on stderr: file, percent, lines/s."""

    def __init__(self, source: LogSource, counters: LineCounters) -> None:
        self.source = source
        self.counters = counters
        self.started = time.monotonic()
        self.last = 0.0

    def tick(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.25:
            return
        self.last = now
        p = self.source.progress
        pct = f"{100 * p.done_bytes / p.total_bytes:5.1f}%" if p.total_bytes else "  -  "
        rate = self.counters.lines / max(now - self.started, 1e-6)
        sys.stderr.write(
            f"\r{pct} {self.counters.lines:>10} lines {rate:>9.0f} lines/s  {p.name[-40:]}"
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_log_source(cfg: Config, ctx: StageContext, shipper: RecordShipper) -> dict[str, Any]:
    source = LogSource(cfg.receiver.files, follow=cfg.receiver.follow)
    counters = LineCounters()
    bar = ProgressBar(source, counters) if cfg.receiver.progress else None
    for lines in source.chunks():
        shipper.add(lines_to_records(lines, counters))
        if bar:
            bar.tick()
        if ctx.stop_requested:
            source.stop = True
            break
        if cfg.receiver.follow:
            shipper.flush_due()
    if bar:
        bar.tick(final=True)
    if counters.bad_lines:
        log.warning(
            "%d lines were not audit records; they are reported as parse-error events",
            counters.bad_lines,
        )
    return {
        "lines": counters.lines,
        "bad_lines": counters.bad_lines,
        "blank_lines": counters.blank_lines,
        "comment_lines": counters.comment_lines,
    }


def run(cfg: Config, ctx: StageContext) -> int:
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    outlets = [
        wire.Outlet(zctx, runtime.assembler_endpoint(cfg, i), hwm=cfg.runtime.hwm_messages)
        for i in range(cfg.assembler.instances)
    ]
    code = 0
    with ExitStack() as stack:
        record_to: BinaryIO | None = None
        if cfg.receiver.record:
            record_to = stack.enter_context(open(cfg.receiver.record, "ab"))
        shipper = RecordShipper(
            outlets,
            batch_max_records=cfg.receiver.batch_max_records,
            batch_max_ms=cfg.receiver.batch_max_ms,
            drop_when_full=cfg.receiver.when_full == "drop_newest",
            record_to=record_to,
        )
        stats: dict[str, Any] = {}
        try:
            if cfg.receiver.source == "file":
                stats = run_log_source(cfg, ctx, shipper)
            else:
                from receiver.live import run_live_source

                stats = run_live_source(cfg, ctx, shipper)
        except SourceError as err:
            log.error("%s", err)
            code = EXIT_FATAL
        except Exception:
            # Downstream stays up (no eof): the supervisor restarts us live, or stops the run.
            log.exception("receiver failed")
            for outlet in outlets:
                outlet.close(linger_ms=EXIT_LINGER_MS)
            zctx.term()
            return 1
        stats.update(
            records=shipper.stats.records,
            batches=shipper.stats.batches,
            blocked_sends=shipper.stats.blocked_sends,
            dropped_records=shipper.stats.dropped_records,
        )
        # eof travels even after an error so downstream drains and exits cleanly.
        shipper.send_eof({"receiver": stats, "failed": code != 0})
    for outlet in outlets:
        outlet.close(linger_ms=EXIT_LINGER_MS)
    zctx.term()
    return code
