"""Live sources: the kernel over netlink (unicast or multicast), auditd's plugin stdin or af_unix socket."""

from __future__ import annotations

import json
import logging
import os
import select
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from auditstream import privilege, runtime
from auditstream.component_status import RECEIVING, ComponentStatus
from auditstream.config import Config
from auditstream.marker_records import (
    KERNEL_LOST_TYPE,
    SOCKET_OVERRUN_TYPE,
    SOURCE_RECONNECT_TYPE,
)
from auditstream.stage import StageContext, merge_stats, ms_until, write_status
from receiver.kernel import (
    AuditHeld,
    AuditStatus,
    KernelRefused,
    KernelSession,
    StoppedHolder,
    get_status,
    process_command,
)
from receiver.logsource import SourceError
from receiver.netlink import AuditNetlink, NetlinkSource
from receiver.rules import KernelSettings, Rule, load_rule_set
from receiver.shipper import RecordShipper
from receiver.stage import LineCounters, lines_to_records
from receiver.statuspoll import KernelStatusPoller
from receiver.streamsource import PluginStream

log = logging.getLogger("auditstream.receiver")
READ_MAX_RECORDS = 4096
# kauditd sends one datagram per record and each wakes the reader. After a read of fewer
# records than this the reader ticks: it sleeps batch_max_ms, letting the socket gather
# the records, then reads and sends them all, and again, until a tick reads nothing (back
# to waiting in poll) or at least QUIET_READ_RECORDS (a rate the batches' size bounds).
# A record waits at most batch_max_ms either way (in the socket rather than in a batch),
# and the reader wakes once per batch: each wakeup cost ~50 µs of CPU on these VMs, the
# larger part of a low rate's CPU (docs/performance.md, "Forty-third pass").
SMALL_READ_RECORDS = 64
QUIET_READ_RECORDS = 1024
SMALL_READ_BYTES = 16 << 10  # the plugin's stream: ~64 lines
QUIET_READ_BYTES = 256 << 10
WAITED_IN_POLL_NS = 1_000_000  # a poll that returned sooner found records already there
# The longest the reader sleeps or polls at once: a stop signal ends a wait only when it
# times out (PEP 475 retries it), whatever batch_max_ms is. With nothing batched or due, the
# reader waits that long (or until its status write): idle, it woke every batch_max_ms (50
# times a second), ~0.8 % of a core for nothing.
WAIT_MAX_MS = 500
# Synthetic record types (negative: never a kernel type) that ask the assembler for a marker.
CONTROL_RCVBUF_BYTES = 1 << 20
DRAIN_MAX_S = 20.0  # below the supervisor's 30 s stop grace
DRAIN_QUIET_S = 0.3
DRAIN_POLL_MS = 50
# auditd restarting: its af_unix socket is back within ~1 s; what it passes on before we
# connect again is lost to us, so try often (a connect to a missing path costs one syscall).
RECONNECT_INTERVAL_S = 0.1
RECONNECT_REPORT_S = 60.0  # while it stays away, say so this often
# A connection counts as made again once it has stayed open this long or brought data: a
# stopping auditd's socket still takes connections until it exits, then resets them.
RECONNECT_CONFIRM_MS = 1000


def rules_and_settings(cfg: Config) -> tuple[list[Rule], KernelSettings]:
    """The rules and kernel settings a unicast receiver loads (receiver/rules.py
    load_rule_set: SourceError names the file, line and reason); each rules-file line it
    does not follow is logged, as ``auditstream check-config`` prints it."""
    loaded = load_rule_set(cfg)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded.rules, loaded.settings


def held_message(pid: int, command: str) -> str:
    """Why a unicast run cannot start beside another holder of the audit PID."""
    return (
        f"the kernel audit PID is held by pid {pid} ({command}); stop it, "
        "use --source multicast to read beside it, or --takeover"
    )


def audit_pid_refusal() -> str | None:
    """Before anything starts: why a unicast run would be refused (another live process
    holds the audit PID), or None. The receiver checks again when it registers; this one
    only spares a doomed run opening its sinks. None too when the kernel cannot be asked
    (the receiver then says why)."""
    conn = AuditNetlink(rcvbuf_bytes=CONTROL_RCVBUF_BYTES)
    try:
        conn.open()
        holder = get_status(conn).pid
    except OSError:
        return None
    finally:
        conn.close()
    command = process_command(holder) if holder else None
    return held_message(holder, command) if command is not None else None


def record_takeover(cfg: Config, holder: StoppedHolder) -> None:
    """Write down who takeover stopped: the supervisor says it again at the stop."""
    try:
        write_status(runtime.takeover_path(cfg), asdict(holder))
    except OSError as err:
        log.error("cannot write down the stopped audit PID holder: %s", err)


def takeover_notice(record: Path) -> str | None:
    """The audit PID holder a takeover stopped (its ``record``, runtime.TAKEOVER_NAME), if it
    is not running again, as a sentence that says how to start it; None if none was stopped."""
    try:
        holder = StoppedHolder(**json.loads(record.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        return f"takeover stopped the audit PID's holder (unreadable record: {err})"
    name = holder.comm or "the audit PID's holder"
    again = [pid for pid in _pids_named(holder.comm) if pid != holder.pid] if holder.comm else []
    if again:
        log.info("%s (pid %d) was stopped by takeover; it runs again (pid %d)",
                 name, holder.pid, again[0])  # fmt: skip
        return None
    return (
        f"{name} (pid {holder.pid}, command {holder.command}) was stopped by takeover and is "
        f"not running; start it again with: {holder.start_hint()}"
    )


def _pids_named(comm: str) -> list[int]:
    """Processes whose comm is ``comm``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/comm"):
        try:
            if entry.read_text().strip() == comm:
                found.append(int(entry.parent.name))
        except (OSError, ValueError):
            continue
    return found


class KernelCounters:
    """Watches the kernel's lost counter; a rise becomes a marker record."""

    def __init__(self, first: AuditStatus) -> None:
        self.lost_at_start = first.lost
        self.last_lost = first.lost
        self.last = first
        self.taken_at = time.monotonic()

    def update(self, status: AuditStatus) -> int:
        risen = (status.lost - self.last_lost) & 0xFFFFFFFF
        self.last_lost = status.lost
        self.last = status
        self.taken_at = time.monotonic()
        return risen

    def lost_since_start(self) -> int:
        """Records lost since this receiver registered (the kernel's counter is a u32)."""
        return (self.last_lost - self.lost_at_start) & 0xFFFFFFFF


def receiver_status(
    cfg: Config,
    shipper: RecordShipper,
    *,
    socket_overruns: int = 0,
    bad_lines: int = 0,
    datagram_errors: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The source-independent part of ``status-receiver.json`` (counts are records)."""
    batched = sum(len(batch) for batch in shipper.batches)
    stats = shipper.stats
    component = ComponentStatus(
        "receiver",
        "source",
        cfg.receiver.source.partition(":")[0],
        received_events=stats.records,
        sent_events=stats.records - stats.dropped_records - batched,
        discarded_events={"queue_full": stats.dropped_records},
    )
    component.error(RECEIVING, "socket_overrun", socket_overruns)
    component.error(RECEIVING, "not_a_record", bad_lines)
    for error_type, count in (datagram_errors or {}).items():
        component.error(RECEIVING, error_type, count)
    return {
        "component": component.as_json(),
        "batched_records": batched,  # read, not yet sent: the receiver's own queue
        "frames_sent": stats.batches,
        "blocked_sends": stats.blocked_sends,
    }


def drop_privileges(source: str) -> int:
    """As root, keep only the capabilities this source still needs (auditstream/privilege.py).

    A step that fails is logged and counted (the returned number), never fatal.
    """
    result = privilege.keep_only(privilege.receiver_kept_caps(source))
    for error in result.errors:
        log.error("dropping privileges: %s", error)
    if not result.skipped:
        kept = ", ".join(privilege.cap_names(result.permitted)) or "none"
        log.info("capabilities kept: %s", kept)
    return len(result.errors)


def _marker_record(kind: int, text: str, node: str) -> tuple[int, bytes, str]:
    """A marker of this source: of its records' node, so that its doc names the host too."""
    return (kind, text.encode(), node)


def datagram_errors(source: NetlinkSource, control: AuditNetlink) -> dict[str, int]:
    """Datagrams without a usable record, summed over the records and the control socket.

    Anyone with CAP_NET_ADMIN can send to either socket; the status polls read and drop
    what was sent to the control one, so it is counted there and must be reported too.
    """
    return merge_stats(source.datagram_errors(), control.datagram_errors())


@dataclass(slots=True)
class KernelSockets:
    """The netlink sockets of a kernel source, opened before anything else starts."""

    session: KernelSession
    source: NetlinkSource
    # Used by the status thread (receiver/statuspoll.py) while it runs, by the reader
    # before it starts and after it stopped.
    control: AuditNetlink
    privilege_errors: int = 0


def open_kernel_sockets(cfg: Config) -> KernelSockets:
    """Open the records and control sockets (big buffers need CAP_NET_ADMIN), then drop to
    the audit capabilities -- before ZeroMQ starts its threads, which would otherwise keep
    every capability the process had when they were created (capabilities are per thread)."""
    multicast = cfg.receiver.source == "multicast"
    session = KernelSession(
        takeover=cfg.receiver.takeover,
        state_path=Path(cfg.runtime.dir) / "kernel-state.json",
        rcvbuf_bytes=cfg.receiver.rcvbuf_bytes,
    )
    try:
        if multicast:
            source = NetlinkSource(multicast=True, rcvbuf_bytes=cfg.receiver.rcvbuf_bytes)
            source.open()
        else:
            source = session.records_source()
        # Status polls go over a socket of their own: on the records socket the reply
        # would queue behind every record the kernel sent before it.
        control = AuditNetlink(rcvbuf_bytes=CONTROL_RCVBUF_BYTES)
        control.open()
    except OSError as err:
        session.close()
        raise SourceError(str(err)) from err
    # Needs CAP_SYS_NICE: before the drop.
    boost_errors = boost_priority(cfg.receiver.priority_boost)
    # Sockets open: from here on only AUDIT_SET/rules (CAP_AUDIT_CONTROL) and reading.
    errors = boost_errors + drop_privileges(cfg.receiver.source)
    return KernelSockets(session, source, control, errors)


def boost_priority(boost: int) -> int:
    """Lower our nice value by ``boost`` (auditd's ``priority_boost``); 1 if that failed.

    kauditd waits only HZ/10 for room in a full reader socket, then drops the record:
    on a busy machine the reader must be scheduled ahead of the audited load.
    """
    if boost <= 0:
        return 0
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, current - boost))
    except OSError as err:
        log.error("cannot raise the receiver's priority by %d: %s", boost, err.strerror or err)
        return 1
    log.info("receiver priority: nice %d", os.getpriority(os.PRIO_PROCESS, 0))
    return 0


def run_netlink(
    cfg: Config, ctx: StageContext, shipper: RecordShipper, sockets: KernelSockets
) -> dict[str, Any]:
    multicast = cfg.receiver.source == "multicast"
    session, source, control = sockets.session, sockets.source, sockets.control
    source.node = shipper.node  # kernel records name no node: this host's (auditstream/hostnode.py)
    privilege_errors = sockets.privilege_errors
    stats: dict[str, Any] = {}
    try:
        if multicast:
            log.info(
                "reading the kernel's multicast audit group (read-only; auditd keeps the audit PID)"
            )
        else:
            rules, settings = rules_and_settings(cfg)
            try:
                session.start(pid=os.getpid(), settings=settings, rules=rules)
            except AuditHeld as held:
                raise SourceError(held_message(held.pid, held.command)) from held
            except KernelRefused as refused:
                # Not restarted (EXIT_FATAL): it would be refused again. The session's
                # close below puts back what was changed before it.
                raise SourceError(
                    f"{refused.strerror}; auditing stays as it was before this run"
                ) from refused
            finally:
                if session.stopped_holder is not None:
                    record_takeover(cfg, session.stopped_holder)
            if session.immutable:
                log.warning(
                    "kernel audit configuration is immutable (enabled 2): rules and settings left as they are"
                )
            else:
                log.info(
                    "kernel audit: pid %d registered, %d rules loaded", os.getpid(), len(rules)
                )
        poller = KernelStatusPoller(lambda: get_status(control), cfg.receiver.status_poll_ms / 1000)
        try:
            counters = KernelCounters(get_status(control))
            poller.start()
            stats = _read_loop(cfg, ctx, shipper, sockets, poller, counters)
            stats["privilege_errors"] = privilege_errors
        finally:
            if poller.stop():
                control.close()  # else the held thread still uses it: it goes with the process
        source.close()
    finally:
        session.close()  # puts back exactly what we changed
    return stats


# Since Linux 5.15 (and its stable backports) kauditd waits only HZ/10 for room in our
# socket; after that the record takes the retry/hold path, where a kernel booted without
# audit=1 drops it without counting it as lost. So the reader must never stall: when the
# assemblers fall behind, batches wait in the receiver (unsent, in the replay buffers),
# and past the buffers' bound the reader only trickles -- at most 32 records per read (not
# per 10 ms: pacing it cost the other stages more than it saved, docs/design.md) keeps
# kauditd's send succeeding, the socket and the kernel backlog fill, and backlog_wait_time
# throttles the audited processes (lossless). Past 4x the bound reading stops (a stuck
# pipeline). A trickle throttles only where the kernel waits: with backlog_wait_time 0, or
# on the multicast group (kauditd never waits for it), it would only turn the delay into
# loss, so there the reader goes on at full speed into its buffers up to that 4x.
CONGESTED_TICK_MS = 10
TRICKLE_RECORDS = 32
STALL_FACTOR = 4


class ReadPacing:
    """How many records the netlink reader may take now, from the unsent backlog."""

    def __init__(self, shipper: RecordShipper, *, kernel_waits: bool = True) -> None:
        self.shipper = shipper
        # Whether a full socket makes the audited processes wait (unicast reader, the
        # kernel's backlog_wait_time > 0); kept current from the status polls.
        self.kernel_waits = kernel_waits
        self.trickle_ticks = 0
        self.buffered_ticks = 0  # reads at full speed past the bound (the kernel would not wait)
        self.stalled_ticks = 0

    def records_to_read(self) -> int:
        # The shipper's flush_due() at the end of each loop turn has just polled the guard
        # (acknowledgements in, queued batches out): its counts are current.
        guard = self.shipper.guard
        unsent, bound = guard.unsent_batches(), guard.capacity()
        if unsent < bound:
            return READ_MAX_RECORDS
        if unsent < STALL_FACTOR * bound:
            if not self.kernel_waits:
                self.buffered_ticks += 1
                return READ_MAX_RECORDS
            self.trickle_ticks += 1
            return TRICKLE_RECORDS
        if self.stalled_ticks == 0:
            log.error(
                "assemblers took nothing while %d batches waited: reading paused; the kernel "
                "may drop records now (reported as serial gaps)",
                unsent,
            )
        self.stalled_ticks += 1
        return 0


def sleep_until_tick(tick_s: float, read_at_ns: int, ctx: StageContext) -> None:
    """Sleep until ``tick_s`` after the last read (wall clock, ``read_at_ns``), at most
    ``tick_s``, in steps of WAIT_MAX_MS; at once when a stop is requested."""
    left = min(tick_s, max(0.0, tick_s - (time.time_ns() - read_at_ns) / 1e9))
    while left > 0 and not ctx.stop_requested:
        step = min(left, WAIT_MAX_MS / 1000)
        time.sleep(step)
        left -= step


def kernel_waits(status: AuditStatus, *, multicast: bool) -> bool:
    """Whether a reader that falls behind makes the audited processes wait (else they lose)."""
    return not multicast and status.backlog_wait_time > 0


def _read_loop(
    cfg: Config,
    ctx: StageContext,
    shipper: RecordShipper,
    sockets: KernelSockets,
    status_poller: KernelStatusPoller,
    counters: KernelCounters,
) -> dict[str, Any]:
    source = sockets.source
    poller = select.poll()
    poller.register(source.fileno(), select.POLLIN)
    poll_ms = max(1, cfg.receiver.batch_max_ms)
    tick_s = cfg.receiver.batch_max_ms / 1000
    ticking = False
    read_at_ns = time.time_ns()  # when the last read ended: what the next finds waited since
    source_reads = 0
    overruns = 0
    status_file = runtime.status_path(cfg, "receiver")
    multicast = cfg.receiver.source == "multicast"
    pacing = ReadPacing(shipper, kernel_waits=kernel_waits(counters.last, multicast=multicast))
    poll_errors = 0
    next_status = time.monotonic()
    while not ctx.stop_requested:
        limit = pacing.records_to_read()
        if ticking and limit == READ_MAX_RECORDS:
            # A tick after the last read: what it finds waited at most batch_max_ms.
            sleep_until_tick(tick_s, read_at_ns, ctx)
            records = source.read_records(limit)
            source_reads += 1
            if records:  # each may have waited in the socket since the last read
                shipper.add(records, waited_since_ns=read_at_ns)
            read_at_ns = time.time_ns()
            shipper.send_batched()  # each record waited up to a tick in the socket already
            ticking = 0 < len(records) < QUIET_READ_RECORDS
        elif limit:
            wait_ms = poll_ms if limit == READ_MAX_RECORDS else CONGESTED_TICK_MS
            if limit == READ_MAX_RECORDS and shipper.is_idle():  # nothing is due before the status
                wait_ms = max(wait_ms, ms_until(next_status))
            wait_ms = min(wait_ms, WAIT_MAX_MS)
            polled_ns = time.time_ns()
            if poller.poll(wait_ms):
                woke_ns = time.time_ns()
                records = source.read_records(limit)
                source_reads += 1
                if records:
                    # Found at once, they came after the last read; a poll that waited was
                    # woken by the first of them.
                    at_once = woke_ns - polled_ns < WAITED_IN_POLL_NS
                    shipper.add(records, waited_since_ns=read_at_ns if at_once else woke_ns)
                    ticking = len(records) < SMALL_READ_RECORDS and limit == READ_MAX_RECORDS
                    ticking = ticking and tick_s > 0
                read_at_ns = time.time_ns()
        else:
            time.sleep(CONGESTED_TICK_MS / 1000)
        shipper.flush_due()
        if source.overruns != overruns:
            shipper.add(
                [
                    _marker_record(
                        SOCKET_OVERRUN_TYPE, f"overruns={source.overruns - overruns}", source.node
                    )
                ]
            )
            overruns = source.overruns
            emptied = _empty_socket(source, shipper)
            log.warning("socket overrun: read the %d records it held at once", emptied)
        reading = status_poller.take()
        if reading is not None and reading.error is not None:
            poll_errors += 1
            log.error("kernel audit status: %s", reading.error)
        elif reading is not None and reading.status is not None:
            status = reading.status
            pacing.kernel_waits = kernel_waits(status, multicast=multicast)
            risen = counters.update(status)
            if risen:
                log.warning("kernel lost %d audit records (backlog %d)", risen, status.backlog)
                shipper.add(
                    [
                        _marker_record(
                            KERNEL_LOST_TYPE, f"lost={risen} backlog={status.backlog}", source.node
                        )
                    ]
                )
        now = time.monotonic()
        if now >= next_status:  # on its own clock: a poll held in the kernel must show
            next_status = now + cfg.receiver.status_poll_ms / 1000
            status = counters.last
            write_status(
                status_file,
                {
                    **receiver_status(
                        cfg,
                        shipper,
                        socket_overruns=source.overruns,
                        datagram_errors=datagram_errors(source, sockets.control),
                    ),
                    "kernel": {
                        "lost": status.lost,  # since boot, every reader's (as `status` shows)
                        "lost_since_start": counters.lost_since_start(),  # the metrics' counter
                        "backlog": status.backlog,
                        "enabled": status.enabled,
                        "pid": status.pid,
                        "backlog_limit": status.backlog_limit,
                    },
                    "records": shipper.stats.records,
                    "socket_overruns": source.overruns,
                    "unsent_batches": shipper.guard.unsent_batches(),
                    "source_reads": source_reads,
                    "trickle_ticks": pacing.trickle_ticks,
                    "buffered_ticks": pacing.buffered_ticks,
                    "stalled_ticks": pacing.stalled_ticks,
                    "status_polls_held": status_poller.slow_polls,
                    "status_poll_longest_ms": round(status_poller.longest_poll_s * 1000, 1),
                    "status_poll_errors": poll_errors,
                    "status_age_s": round(now - counters.taken_at, 1),
                },
            )
    drained = _drain(sockets, shipper, poller, status_poller)
    log.info("stopped: %d records read after the stop signal", drained)
    return {
        "kernel_lost": (counters.last_lost - counters.lost_at_start) & 0xFFFFFFFF,
        "socket_overruns": source.overruns,
        "source_reads": source_reads,
        "queued_sends": shipper.stats.queued_sends,
        "trickle_ticks": pacing.trickle_ticks,
        "buffered_ticks": pacing.buffered_ticks,
        "stalled_ticks": pacing.stalled_ticks,
        "status_polls_held": status_poller.slow_polls,
    }


def _empty_socket(source: NetlinkSource, shipper: RecordShipper) -> int:
    """Read everything the socket holds, whatever the pacing says.

    After an overrun netlink marks the socket congested and the kernel sends nothing
    more to it until its queue is empty, however much room there is: meanwhile each
    record kauditd tries to send times out (HZ/10) and is dropped. Trickling would keep
    it congested for good, so the queue (at most ``rcvbuf_bytes``) moves into our buffers.
    """
    emptied = 0
    while records := source.read_records(READ_MAX_RECORDS):
        emptied += len(records)
        shipper.add(records)
    return emptied


def _drain(
    sockets: KernelSockets,
    shipper: RecordShipper,
    poller: select.poll,
    status_poller: KernelStatusPoller,
) -> int:
    """Stop new records, then read what the kernel and the socket still hold.

    Unregistering the PID with records queued would lose them: the kernel hands
    them to printk instead. Bounded in time so a stuck pipeline cannot hold the stop.
    """
    source = sockets.source
    # The control socket is the reader's again once the status thread has stopped; if the
    # kernel still holds that thread's request, the session's own socket serves (its
    # reply queues behind records) and the drain ends on quiet alone.
    control = sockets.control if status_poller.stop() else None
    try:
        sockets.session.quiesce(control)
    except OSError as err:
        log.error("could not stop new audit records before draining: %s", err)
    drained = 0
    deadline = time.monotonic() + DRAIN_MAX_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if poller.poll(DRAIN_POLL_MS):
            records = source.read_records(READ_MAX_RECORDS)
            if records:
                drained += len(records)
                shipper.add(records)
                quiet_since = time.monotonic()
                continue
        if time.monotonic() - quiet_since >= DRAIN_QUIET_S and (
            control is None or get_status(control).backlog == 0
        ):
            break
    else:
        log.error("kernel still had audit records queued after %.0f s of draining", DRAIN_MAX_S)
    shipper.flush()
    return drained


def run_stream(cfg: Config, ctx: StageContext, shipper: RecordShipper) -> dict[str, Any]:
    """auditd plugin input: audit.log text lines on stdin or from auditd's af_unix socket.

    stdin ends when auditd stops us (its end of file); the socket goes away while auditd
    restarts: we connect again and a ``source-reconnected`` marker stands for what auditd
    passed on meanwhile. At a stop, what auditd already wrote to us is read first."""
    src = cfg.receiver.source
    stream = PluginStream.open(src)
    privilege_errors = drop_privileges(src)  # the source is open: nothing more is needed
    counters = LineCounters()
    feed = _StreamFeed(shipper, counters)
    reconnects = 0
    status_file = runtime.status_path(cfg, "receiver")
    next_status = time.monotonic()
    # auditd writes each record on its own: gathered in the pipe or socket as the netlink
    # reader gathers (SMALL_READ_RECORDS), one wakeup per batch_max_ms instead of per record.
    tick_s = cfg.receiver.batch_max_ms / 1000
    ticking = False
    read_at_ns = time.time_ns()
    source_reads = 0
    while not ctx.stop_requested:
        if ticking:
            sleep_until_tick(tick_s, read_at_ns, ctx)
            chunk = stream.read(0)
            source_reads += 1
            if chunk:
                feed.add(chunk, waited_since_ns=read_at_ns)
            read_at_ns = time.time_ns()
            shipper.send_batched()
            ticking = chunk is not None and 0 < len(chunk) < QUIET_READ_BYTES
        else:
            wait_ms = max(1, cfg.receiver.batch_max_ms)
            if shipper.is_idle():
                wait_ms = max(wait_ms, ms_until(next_status))
            wait_ms = min(wait_ms, WAIT_MAX_MS)
            polled_ns = time.time_ns()
            chunk = stream.read(wait_ms)
            source_reads += chunk is not None
            if chunk:
                woke_ns = time.time_ns()
                at_once = woke_ns - polled_ns < WAITED_IN_POLL_NS
                feed.add(chunk, waited_since_ns=read_at_ns if at_once else woke_ns)
                read_at_ns = time.time_ns()
                ticking = len(chunk) < SMALL_READ_BYTES and tick_s > 0
        if chunk is not None and not chunk:  # auditd closed it
            ticking = False
            feed.end_of_stream()
            first = _reconnect(stream, ctx, shipper) if stream.reconnectable else None
            if first is None:
                break
            reconnects += 1
            if first:
                feed.add(first)
        shipper.flush_due()
        if (now := time.monotonic()) >= next_status:
            next_status = now + cfg.receiver.status_poll_ms / 1000
            status = receiver_status(cfg, shipper, bad_lines=counters.bad_lines)
            write_status(
                status_file,
                {
                    **status,
                    "records": shipper.stats.records,
                    "reconnects": reconnects,
                    "source_reads": source_reads,
                },
            )
    if ctx.stop_requested and (stream.sock is not None or not stream.reconnectable):
        _drain_stream(stream, feed)
    feed.end_of_stream()
    stream.close()
    return {
        "lines": counters.lines,
        "bad_lines": counters.bad_lines,
        "privilege_errors": privilege_errors,
        "reconnects": reconnects,
        "source_reads": source_reads,
    }


class _StreamFeed:
    """Bytes of the stream to records: whole lines now, the unfinished one kept."""

    def __init__(self, shipper: RecordShipper, counters: LineCounters) -> None:
        self.shipper, self.counters = shipper, counters
        self.pending = b""

    def add(self, chunk: bytes, waited_since_ns: int | None = None) -> None:
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        records = lines_to_records(lines, self.counters, self.shipper.node)
        self.shipper.add(records, waited_since_ns=waited_since_ns)

    def end_of_stream(self) -> None:
        """The stream ended: an unfinished last line goes as it is (a bad line if cut)."""
        if self.pending:
            self.shipper.add(lines_to_records([self.pending], self.counters, self.shipper.node))
            self.pending = b""


def _drain_stream(stream: PluginStream, feed: _StreamFeed) -> None:
    """At a stop, read what auditd already wrote to us. stdin: up to its end of file or a
    quiet moment (auditd sends its plugin SIGTERM, then closes the pipe); the socket, which
    flows on while auditd runs: what is there now, for at most DRAIN_QUIET_S."""
    stdin = not stream.reconnectable
    wait_ms = int(DRAIN_QUIET_S * 1000) if stdin else 0
    deadline = time.monotonic() + (DRAIN_MAX_S if stdin else DRAIN_QUIET_S)
    while time.monotonic() < deadline:
        chunk = stream.read(wait_ms)
        if not chunk:
            return
        feed.add(chunk)
    if stdin:
        log.error("stdin still sent records after %.0f s of draining", DRAIN_MAX_S)


def _reconnect(stream: PluginStream, ctx: StageContext, shipper: RecordShipper) -> bytes | None:
    """Connect again to auditd's socket (it restarts) until a connection holds or we are
    stopped; then put a ``source-reconnected`` marker in the stream. Returns what the new
    connection brought first (b"": nothing yet), to go after the marker; None if stopped."""
    log.warning(
        "auditd closed %s (%s; auditd stopped or restarting): connecting again every %.1f s",
        stream.source, stream.closed_by, RECONNECT_INTERVAL_S,
    )  # fmt: skip
    stream.close()
    lost_at = time.monotonic()
    next_report = lost_at + RECONNECT_REPORT_S
    while not ctx.stop_requested:
        error = stream.connect()
        first = _first_read(stream) if error is None else None
        now = time.monotonic()
        if first is not None:
            down_ms = int((now - lost_at) * 1000)
            log.warning(
                "connected again to %s after %.1f s: what auditd passed on meanwhile is not "
                "here (marker source-reconnected; auditd's own log has it)",
                stream.source, down_ms / 1000,
            )  # fmt: skip
            marker = f"disconnected_ms={down_ms}"
            shipper.add([_marker_record(SOURCE_RECONNECT_TYPE, marker, shipper.node)])
            return first
        if now >= next_report:
            next_report = now + RECONNECT_REPORT_S
            reason = error.strerror or error if error is not None else stream.closed_by
            log.warning(
                "still cannot connect to %s after %.0f s: %s",
                stream.source, now - lost_at, reason,
            )  # fmt: skip
        shipper.flush_due()  # what came before the loss still leaves on time
        time.sleep(RECONNECT_INTERVAL_S)
    return None


def _first_read(stream: PluginStream) -> bytes | None:
    """A new connection's first data (b"": it stayed open RECONNECT_CONFIRM_MS with none),
    or None when it was closed at once: the socket of an auditd that was still stopping."""
    chunk = stream.read(RECONNECT_CONFIRM_MS)
    if chunk == b"":
        stream.close()
        return None
    return chunk or b""


def run_live_source(
    cfg: Config, ctx: StageContext, shipper: RecordShipper, sockets: KernelSockets | None
) -> dict[str, Any]:
    if sockets is not None:
        return run_netlink(cfg, ctx, shipper, sockets)
    return run_stream(cfg, ctx, shipper)
