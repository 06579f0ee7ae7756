"""The receiver process: read the source, batch raw records, push them to the assembler(s)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zmq

from auditstream import runtime
from auditstream.config import Config, batching
from auditstream.hostnode import local_node
from auditstream.logline import LineError, split_log_line
from auditstream.marker_records import DAMAGED_INPUT_TYPE
from auditstream.native import load_native
from auditstream.redelivery import (
    HELLO_WAIT_S,
    checkpoint_lag_records,
    checkpoint_path,
    serial_mark_path,
)
from auditstream.stage import EXIT_FATAL, StageContext, write_status
from receiver.checkpoint import (
    CheckpointKeeper,
    SerialMark,
    checkpoint_counters,
    load_checkpoint,
)
from receiver.logsource import DamagedInput, LogSource, SourceError, rereadable
from receiver.position import Resume, resume_position
from receiver.redelivery import DeliveryGuard
from receiver.shipper import RawRecord, RecordShipper

if TYPE_CHECKING:
    from receiver.live import KernelSockets

log = logging.getLogger("auditstream.receiver")
# receiver/csrc/lines.c: split_log_line over a chunk in C where built (auditstream/native.py).
_SPLIT_LINES = load_native("receiver.native_lines", "split_lines")


class LineCounters:
    __slots__ = ("bad_lines", "blank_lines", "comment_lines", "damaged_files", "lines")

    def __init__(self) -> None:
        self.lines = 0
        self.bad_lines = 0
        self.blank_lines = 0
        self.comment_lines = 0
        self.damaged_files = 0  # read only up to a damage (logsource.DamagedInput)


def lines_to_records(lines: list[bytes], counters: LineCounters, node: str = "") -> list[RawRecord]:
    """Split log lines; a line that is not a record travels as type 0 so it is reported.

    ``node``: the node of the lines without ``node=`` (live: this host's, auditstream/hostnode.py;
    a file replay: "", an unknown host's)."""
    counters.lines += len(lines)
    if _SPLIT_LINES is not None:  # C for the usual lines, odd_line for the rest
        odd = partial(odd_line, counters=counters, node=node)
        records: list[RawRecord] = _SPLIT_LINES(lines, odd, node)
        return records
    return [record for line in lines if (record := odd_line(line, counters, node)) is not None]


def odd_line(line: bytes, counters: LineCounters, node: str = "") -> RawRecord | None:
    """One line as a record (of ``node`` if it names none); a blank or comment line counted
    and None; anything else type 0."""
    try:
        record = split_log_line(line)
        return record if record[2] or not node else (record[0], record[1], node)
    except LineError:
        stripped = line.strip()
        if not stripped:
            counters.blank_lines += 1
            return None
        if stripped.startswith(b"#"):
            counters.comment_lines += 1
            return None
        counters.bad_lines += 1
        return (0, line.rstrip(b"\r\n"), node)


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


def run_log_source(
    cfg: Config, ctx: StageContext, shipper: RecordShipper, keeper: CheckpointKeeper | None
) -> dict[str, Any]:
    files = cfg.receiver.files
    counters = LineCounters()
    start = (0, 0)
    resume: Resume | None = None  # a followed log's position file: where the last follow stopped
    if keeper is not None and keeper.position_file is not None:
        resume = resume_position(keeper.position_file, files[-1])
        files, start = resume.files, resume.start
        keeper.files = files
        saved = checkpoint_counters(keeper.path)  # restarted in this run: the summary stays exact
        if saved is not None:
            restore_counters(saved, counters, shipper)
        keeper.resumed_at(start, resume.reading, counter_values(counters, shipper))
    elif keeper is not None:
        resumed = load_checkpoint(keeper.path, files)
        if resumed is not None:
            start = resumed.position
            restore_counters(resumed.counters, counters, shipper)
            log.warning(
                "restarted: resuming %s at byte %d from the checkpoint",
                files[resumed.file_index],
                resumed.offset,
            )
    source = LogSource(files, follow=cfg.receiver.follow, start=start)
    source.resumable = resume is not None
    bar = ProgressBar(source, counters) if cfg.receiver.progress else None
    if keeper is not None:
        shipper.guard.on_acks = keeper.update

    def idle() -> bool:  # follow mode, nothing new: keep acknowledgements and resends moving
        shipper.flush_due()
        if keeper is not None:  # the last acknowledgement's position written within 0.25 s
            keeper.update(shipper.guard.acked_below())
        report_following()
        return ctx.stop_requested

    next_status = 0.0

    def report_following(*, final: bool = False) -> None:
        """Followed: status-receiver.json every status_poll_ms, as a live source writes it."""
        nonlocal next_status
        if not cfg.receiver.follow or (not final and time.monotonic() < next_status):
            return
        next_status = time.monotonic() + cfg.receiver.status_poll_ms / 1000
        from receiver.live import receiver_status  # a cycle; a followed replay only

        status = receiver_status(cfg, shipper, bad_lines=counters.bad_lines)
        status |= {"lines": counters.lines, "followed_rotations": source.rotations}
        if resume is not None:
            status |= position_stats(resume, keeper)
        write_status(runtime.status_path(cfg, "receiver"), status)

    source.on_idle = idle

    def damaged(damage: DamagedInput) -> None:  # in the stream where the file's lines end
        counters.damaged_files += 1
        shipper.add([(DAMAGED_INPUT_TYPE, damage.marker_data(), "")])
        shipper.stats.records -= 1  # a marker, not a record read

    source.on_damaged = damaged
    for lines in source.chunks():
        shipper.add(lines_to_records(lines, counters))
        if keeper is not None:
            keeper.chunk_read(
                source.position,
                shipper.batches_needed(),
                counter_values(counters, shipper),
                source.reading,
            )
            keeper.update(shipper.guard.acked_below())
        if bar:
            bar.tick()
        if ctx.stop_requested and not cfg.receiver.follow:
            source.stop = True  # followed: the source reads what the file holds, then ends
            break
        if cfg.receiver.follow:
            shipper.flush_due()
            report_following()
    if bar:
        bar.tick(final=True)
    report_following(final=True)
    if counters.bad_lines:
        log.warning(
            "%d lines were not audit records; they are reported as parse-error events",
            counters.bad_lines,
        )
    stats = {
        "lines": counters.lines,
        "bad_lines": counters.bad_lines,
        "blank_lines": counters.blank_lines,
        "followed_rotations": source.rotations,
        "stop_unended_events": source.stop_unended_events,
        "comment_lines": counters.comment_lines,
        "damaged_files": counters.damaged_files,
        "damaged_inputs": [[d.path, d.error, d.read_lines, d.read_bytes] for d in source.damaged],
    }
    if resume is not None:
        stats |= position_stats(resume, keeper)
    return stats


def position_stats(resume: Resume, keeper: CheckpointKeeper | None) -> dict[str, Any]:
    """A followed log's position file in the status and summary: how this follow started
    (``position_start``: resumed, resumed_rotated, resumed_copy, new, or truncated,
    not_found, unusable: read from the log's start, warned about) and failed writes."""
    return {
        "position_start": resume.outcome,
        "position_start_offset": resume.start[1],
        "position_write_errors": keeper.position_write_errors if keeper is not None else 0,
    }


def counter_values(counters: LineCounters, shipper: RecordShipper) -> dict[str, int]:
    """The counters a checkpoint keeps, so a restarted receiver's summary stays exact."""
    return {
        "lines": counters.lines,
        "bad_lines": counters.bad_lines,
        "blank_lines": counters.blank_lines,
        "comment_lines": counters.comment_lines,
        "damaged_files": counters.damaged_files,
        "records": shipper.stats.records,
    }


def restore_counters(saved: dict[str, int], counters: LineCounters, shipper: RecordShipper) -> None:
    counters.lines = saved.get("lines", 0)
    counters.bad_lines = saved.get("bad_lines", 0)
    counters.blank_lines = saved.get("blank_lines", 0)
    counters.comment_lines = saved.get("comment_lines", 0)
    counters.damaged_files = saved.get("damaged_files", 0)
    shipper.stats.records = saved.get("records", 0)


def run(cfg: Config, ctx: StageContext) -> int:
    sockets: KernelSockets | None = None
    early_error: SourceError | None = None
    if cfg.receiver.source in ("netlink", "multicast"):
        # Imported here (a cycle, and ~9 ms of a replay's start that a replay never uses).
        from receiver.live import open_kernel_sockets

        # Before the first ZeroMQ socket: its threads keep the capabilities of that moment.
        try:
            sockets = open_kernel_sockets(cfg)
        except SourceError as err:
            early_error = err  # reported below, after downstream can be told (eof)
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    file_source = cfg.receiver.source == "file"
    # A pipe (stdin, a FIFO, `<(zcat …)`) cannot be read again from a checkpoint.
    rereadable_files = file_source and all(rereadable(path) for path in cfg.receiver.files)
    guard = DeliveryGuard(
        zctx,
        cfg,
        may_wait=file_source,
        # A file source resumes from its checkpoint: the assemblers drop what they hold, as
        # it comes again. Live, what they hold is all there is (the kernel cannot resend).
        reset_on_start=rereadable_files,
    )
    guard.orphaned = ctx.orphaned
    code = 0
    with ExitStack() as stack:
        record_to: BinaryIO | None = None
        if cfg.receiver.record:
            record_to = stack.enter_context(open(cfg.receiver.record, "ab"))
        shipper = RecordShipper(
            guard,
            batch_max_records=batching(cfg.receiver).batch_max_records,
            batch_max_ms=cfg.receiver.batch_max_ms,
            drop_when_full=cfg.receiver.when_full == "drop_newest",
            record_to=record_to,
            never_block=cfg.receiver.source in ("netlink", "multicast"),
            # Live records that name no node are this host's, as auditd's name_format =
            # hostname makes them; a file's are an unknown host's (docs/design.md).
            node="" if file_source else local_node(),
        )
        guard.wait_for_hello(HELLO_WAIT_S, lambda: ctx.stop_requested)
        keeper: CheckpointKeeper | None = None
        # A followed log's position file (config.py allows it only there).
        position_file = cfg.receiver.position_file if cfg.receiver.follow else ""
        if position_file and not rereadable_files:
            log.warning("position file %s not used: a pipe cannot be read again", position_file)
        if rereadable_files:
            keeper = CheckpointKeeper(
                checkpoint_path(cfg),
                cfg.receiver.files,
                checkpoint_lag_records(cfg),
                position_file=Path(position_file) if position_file else None,
            )
        else:  # what a predecessor read and did not deliver is gone: say which serials
            mark = SerialMark(serial_mark_path(cfg))
            mark.inherit()
            shipper.serial_mark = mark
            guard.on_acks = lambda _acked: mark.acked(guard.durable_serials)
            stack.callback(mark.close)
        stats: dict[str, Any] = {}
        try:
            if early_error is not None:
                raise early_error
            if file_source:
                stats = run_log_source(cfg, ctx, shipper, keeper)
            else:
                from receiver.live import run_live_source  # cycle: imported when it runs

                stats = run_live_source(cfg, ctx, shipper, sockets)
        except SourceError as err:
            log.error("%s", err)
            code = EXIT_FATAL
        except Exception:
            # Downstream stays up (no eof): the supervisor restarts us, and our successor
            # resends what is not durable (file) or the gap shows as lost serials (live).
            log.exception("receiver failed")
            guard.close(durable=False)
            zctx.term()
            return 1
        stats.update(
            records=shipper.stats.records,
            batches=shipper.stats.batches,
            blocked_sends=shipper.stats.blocked_sends,
            dropped_records=shipper.stats.dropped_records,
            **guard.counters(),
        )
        # eof travels even after an error so downstream drains and exits cleanly.
        shipper.send_eof({"receiver": stats, "failed": code != 0})
        stop_signals = len(ctx.signals)

        def give_up() -> bool:
            # A signal after our eof went out: the supervisor is ending the run.
            return len(ctx.signals) > stop_signals

        durable = guard.wait_durable(give_up)
        if keeper is not None:  # what is acknowledged, even if not everything is
            keeper.update(guard.acked_below(), force=True)
            # After the drain: a clean stop then start gives no event twice, none lost.
            keeper.finish(clean_stop=durable)
        guard.send_stop()
    guard.close(durable=durable)
    zctx.term()
    return code
