"""The receiver's sockets for redelivery: numbered batches out, acknowledgements in.

:class:`DeliveryGuard` owns the PUSH sockets to the assemblers (ZMQ_IMMEDIATE, and a
monitor that tells when an assembler (re)joined), one :class:`ShardBuffer` per
assembler, and the PULL socket on which the tree keeper says ``hello`` (its token)
and ``ack`` (batches below a number are durable). What happens when (docs/recovery.md):

- an assembler joins again (it restarted): ``resume`` (reset) to it, then every
  batch its buffer still holds, in order;
- a tree keeper says hello with a new token (it restarted): ``resume`` (reset, new
  token) to every assembler and everything buffered again;
- the receiver itself restarted: the first resume resets the assemblers for a file
  source (it resumes from its checkpoint) and keeps their state live (the kernel
  cannot resend; what died with us shows as a serial gap).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from auditstream import runtime, wire
from auditstream.config import GROWN_REPLAY_BUFFER_RECORDS, Config, batching
from auditstream.logs import RateLimitedLog
from auditstream.redelivery import acks_endpoint
from receiver.replaybuffer import ShardBuffer

log = logging.getLogger("auditstream.receiver")
WAIT_STEP_MS = 50
# A file source waits this long for acknowledgements when a buffer is full, with every
# assembler connected, before it stops protecting its oldest batch (a log so dense that
# the buffer holds less event time than the assembler's timeout and the tree keeper's
# reorder window would otherwise wait forever).
ACK_WAIT_MAX_S = 10.0
# A replay's batch is acknowledged once later batches moved event time past the tree
# keeper's reorder window: a buffer holding less of the log than that waits each time.
WAITED_HINT = (
    f", after {ACK_WAIT_MAX_S:.0f} s without an acknowledgement (a buffer holding more than "
    "[treekeeper] reorder_window_ms of this log's event time avoids the wait)"
)
ACKS_HWM = 10_000
EXIT_LINGER_MS = 30_000  # at exit, wait this long for the assemblers to take what we sent


@dataclass(slots=True)
class GuardStats:
    hellos: int = 0
    acks: int = 0
    stale_acks: int = 0  # for another epoch (an earlier receiver)
    rewinds: int = 0
    waits_for_acks: int = 0
    grown_batches: int = 0  # kept past a full buffer's bound, as no wait could help (file)


class DeliveryGuard:
    """Numbered, buffered batches to N assemblers; resends when a peer comes back."""

    def __init__(
        self,
        zctx: zmq.Context[zmq.Socket[bytes]],
        cfg: Config,
        *,
        may_wait: bool,
        reset_on_start: bool,
    ) -> None:
        shards = cfg.assembler.instances
        self.outlets = [
            wire.Outlet(
                zctx,
                runtime.assembler_endpoint(cfg, i),
                hwm=cfg.runtime.hwm_messages,
                immediate=True,
                watch=True,
            )
            for i in range(shards)
        ]
        self.acks = wire.Inlet(zctx, acks_endpoint(cfg), hwm=ACKS_HWM, connect=True)
        capacity = max(1, batching(cfg.receiver).replay_buffer_batches)
        self.buffers = [ShardBuffer(i, capacity) for i in range(shards)]
        self.epoch = int.from_bytes(os.urandom(6), "big")  # this receiver's batch numbering
        self.token: int | None = None  # the tree keeper's, from its hello
        self.may_wait = may_wait  # a file can wait for acknowledgements; the kernel cannot
        self.reorder_window_ms = cfg.treekeeper.reorder_window_ms
        self.reset_on_start = reset_on_start
        self.protected = False  # True once a tree keeper said hello: it will acknowledge
        self.sent_unprotected = False
        self._joined = [False] * shards
        self._resume: list[dict[str, Any] | None] = [None] * shards
        self._eof: dict[str, Any] | None = None
        self._eof_sent = [False] * shards
        self.stats = GuardStats()
        self.warn = RateLimitedLog(log)
        # Called after acknowledgements arrived (the file source moves its checkpoint).
        self.on_acks: Callable[[list[int]], None] | None = None
        # Per node, the newest serial in an acknowledged batch (a live restart reports from it).
        self.durable_serials: dict[str, int] = {}
        # True once the supervisor is gone: no stage will be restarted, so the receiver
        # waits for no room in a buffer, and for acknowledgements only while they come
        # (at most ACK_WAIT_MAX_S apart): it must not outlive the run.
        self.orphaned: Callable[[], bool] = lambda: False

    # -- inputs: acknowledgements, hellos, peers joining -------------------------------

    def poll(self) -> None:
        """Take acknowledgements and hellos, notice rejoined assemblers, send what is due."""
        acked = self.stats.acks
        while (frame := self.acks.recv(0)) is not None:
            if frame.kind == wire.ACK:
                self._on_ack(frame.body)
            elif frame.kind == wire.HELLO:
                self._on_hello(frame.body)
        if self.stats.acks != acked and self.on_acks is not None:
            self.on_acks(self.acked_below())
        for shard, outlet in enumerate(self.outlets):
            assert outlet.watch is not None
            if outlet.watch.poll():
                # A first connection after our own restart follows reset_on_start; any
                # later one is an assembler that restarted empty.
                reset = self.reset_on_start if not self._joined[shard] else True
                self._joined[shard] = True
                self._rewind(shard, reset=reset)
        for shard in range(len(self.outlets)):
            self.pump(shard)

    def wait_for_hello(self, timeout_s: float, should_stop: Callable[[], bool]) -> bool:
        """Wait until the tree keeper said hello (it will acknowledge); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.token is None and time.monotonic() < deadline and not should_stop():
            self.acks.sock.poll(WAIT_STEP_MS)
            self.poll()
        if self.token is None:
            log.warning(
                "no hello from the tree keeper within %.0f s: sending without redelivery", timeout_s
            )
        return self.token is not None

    def _on_hello(self, body: dict[str, Any]) -> None:
        self.stats.hellos += 1
        token = body.get("token")
        if token is None or token == self.token:
            return
        first = self.token is None
        self.token = int(token)
        self.protected = True
        # A new tree keeper lost what it had not written: everything buffered goes again,
        # and the assemblers drop what they hold (it is part of what goes again).
        reset = self.reset_on_start and not self.sent_unprotected if first else True
        if not first:
            log.warning("the tree keeper restarted: sending every unacknowledged batch again")
        for shard in range(len(self.outlets)):
            self._rewind(shard, reset=reset)

    def _on_ack(self, body: dict[str, Any]) -> None:
        self.stats.acks += 1
        shard = body.get("shard")
        if body.get("epoch") != self.epoch or not isinstance(shard, int):
            self.stats.stale_acks += 1
            return
        if 0 <= shard < len(self.buffers):
            for batch in self.buffers[shard].ack(int(body["durable_below"])):
                if batch.last is not None:
                    node, serial = batch.last
                    self.durable_serials[node] = max(serial, self.durable_serials.get(node, 0))

    def _rewind(self, shard: int, *, reset: bool) -> None:
        start, gaps = self.buffers[shard].rewind()
        self._resume[shard] = {
            "epoch": self.epoch,
            "from": start,
            "reset": reset,
            "token": self.token,
            "gaps": [gap.as_wire() for gap in gaps],
        }
        self._eof_sent[shard] = False
        self.stats.rewinds += 1
        if gaps:
            log.error(
                "assembler-%d needs batches that were no longer buffered: %d serial ranges "
                "reported as possibly lost",
                shard,
                len(gaps),
            )

    # -- output ------------------------------------------------------------------------

    def pump(self, shard: int) -> bool:
        """Send what is due to one assembler without blocking; True when all is sent."""
        outlet, buf = self.outlets[shard], self.buffers[shard]
        resume = self._resume[shard]
        if resume is not None:
            if not outlet.send(wire.RESUME, resume, block=False):
                return False
            self._resume[shard] = None
        for batch in buf.unsent():
            if not outlet.send_packed(wire.RECORDS, batch.body, block=False):
                return False
            buf.mark_sent(batch)
        if not self.protected:
            self.sent_unprotected = self.sent_unprotected or buf.next_number > 0
            buf.forget_all()
        if self._eof is not None and not self._eof_sent[shard]:
            if not outlet.send(wire.EOF_KIND, self._eof, block=False):
                return False
            self._eof_sent[shard] = True
        return True

    def send_batch(
        self, shard: int, body: dict[str, Any], records: int, *, drop: bool, wait: bool = True,
        serials: list[int] | None = None,
    ) -> str:  # fmt: skip
        """Number, keep and send one records batch: "sent", "blocked" (then sent), "dropped",
        or with ``wait=False`` "queued" (kept unsent; later polls send it). ``serials``: see
        :meth:`ShardBuffer.add`."""
        self.poll()
        if drop and not self.pump(shard):
            return "dropped"  # the assembler is full or away: drop_newest, before numbering
        self._make_room(shard, wait=wait)
        body["epoch"] = self.epoch
        self.buffers[shard].add(body, records, serials)
        if self.pump(shard):
            return "sent"
        if drop:
            return "sent"  # numbered already: it goes as soon as the assembler takes frames
        if not wait:
            return "queued"
        while not self.pump(shard):  # backpressure reaches the source
            self.outlets[shard].writable(WAIT_STEP_MS)
            self.poll()
            if self.orphaned():
                return "queued"  # the source stops right after: nothing more comes
        return "blocked"

    def send_tick(self, shard: int, body: dict[str, Any]) -> bool:
        """Send a TICK to one assembler if nothing of its stream waits here (it must not
        overtake a batch); never blocks. False: not sent (it is only a hint)."""
        buf = self.buffers[shard]
        if self._resume[shard] is not None or buf.next_number != buf.cursor:
            return False
        return self.outlets[shard].send(wire.TICK, body, block=False)

    def has_nothing_to_send(self) -> bool:
        """No batch, resume or eof waits here to go out (acknowledgements may still come)."""
        return (
            self.unsent_batches() == 0
            and all(r is None for r in self._resume)
            and (self._eof is None or all(self._eof_sent))
        )

    def unsent_batches(self) -> int:
        """Batches numbered but not yet taken by their assembler, over all shards."""
        return sum(buf.next_number - buf.cursor for buf in self.buffers)

    def capacity(self) -> int:
        """Batches the replay buffers hold before they count as full, over all shards."""
        return sum(buf.capacity for buf in self.buffers)

    def _make_room(self, shard: int, *, wait: bool = True) -> None:
        buf = self.buffers[shard]
        waited_since: float | None = None
        while buf.is_full():
            self.poll()
            if not buf.is_full():
                return
            if self.orphaned():
                return  # the source stops after this chunk: the buffer grows past its bound
            if not buf.oldest_is_sent():  # a resend is under way: let it go out first
                if not wait:
                    return  # the caller must not block: the buffer grows past its bound
                self.outlets[shard].writable(WAIT_STEP_MS)
                continue
            all_joined = all(o.watch is not None and o.watch.connected for o in self.outlets)
            if self.may_wait and all_joined and self._cannot_be_acked_yet(buf):
                self.stats.grown_batches += 1
                return
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
                self.stats.waits_for_acks += 1
            # An assembler away is waited for: the supervisor restarts it.
            if self.may_wait and (now - waited_since < ACK_WAIT_MAX_S or not all_joined):
                self.acks.sock.poll(WAIT_STEP_MS)
                continue
            buf.evict_oldest()
            self.warn.warning(
                "evict",
                "replay buffer of assembler-%d full (%d batches, [receiver] "
                "replay_buffer_batches): its oldest batch is no longer protected against a crash%s",
                shard,
                buf.capacity,
                WAITED_HINT if self.may_wait else "",
            )

    def _cannot_be_acked_yet(self, buf: ShardBuffer) -> bool:
        """The full buffer spans no more event time than the reorder window: no wait helps
        (it grows, up to GROWN_REPLAY_BUFFER_RECORDS: auditstream/config.py)."""
        held_ms = buf.event_ms_kept()
        return (
            held_ms is not None
            and held_ms <= self.reorder_window_ms
            and buf.kept_records < GROWN_REPLAY_BUFFER_RECORDS
        )

    def finish(self, eof_body: dict[str, Any]) -> None:
        """The source ended: after its batches, each assembler gets the eof (again on a resend)."""
        self._eof = eof_body
        self.poll()

    def all_durable(self) -> bool:
        """Every batch acknowledged and every eof sent (or nothing is protected)."""
        if not all(self._eof_sent) or any(r is not None for r in self._resume):
            return False
        if not self.protected:
            return True
        return all(buf.acked_below >= buf.next_number for buf in self.buffers)

    def wait_durable(self, should_give_up: Callable[[], bool]) -> bool:
        """Serve resends until everything is acknowledged; False if told to give up first."""
        last_ack, acks = time.monotonic(), self.stats.acks
        while not self.all_durable():
            if should_give_up():
                return False
            self.acks.sock.poll(WAIT_STEP_MS)
            self.poll()
            now = time.monotonic()
            if self.stats.acks != acks:
                last_ack, acks = now, self.stats.acks
            elif now - last_ack > ACK_WAIT_MAX_S and self.orphaned():
                log.warning(
                    "supervisor gone and no acknowledgement for %.0f s: exiting", now - last_ack
                )
                return False
        return True

    def send_stop(self) -> None:
        """Tell the assemblers that nothing more will be resent (best effort)."""
        for outlet in self.outlets:
            outlet.send(wire.STOP, {}, block=False)

    def counters(self) -> dict[str, int]:
        return {
            "numbered_batches": sum(b.stats.batches for b in self.buffers),
            "redelivered_batches": sum(b.stats.redelivered_batches for b in self.buffers),
            "unprotected_batches": sum(b.stats.evicted_batches for b in self.buffers),
            "gap_ranges_reported": sum(b.stats.reported_gaps for b in self.buffers),
            "rewinds": self.stats.rewinds,
            "acks": self.stats.acks,
            "waits_for_acks": self.stats.waits_for_acks,
            "grown_batches": self.stats.grown_batches,
        }

    def acked_below(self) -> list[int]:
        return [buf.acked_below for buf in self.buffers]

    def next_numbers(self) -> list[int]:
        return [buf.next_number for buf in self.buffers]

    def close(self, *, durable: bool) -> None:
        # Everything acknowledged: nothing is left to deliver but a stop frame.
        linger = 1000 if durable else EXIT_LINGER_MS
        for outlet in self.outlets:
            outlet.close(linger_ms=linger)
        self.acks.close()
