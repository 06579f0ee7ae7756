"""The live reader's pacing past its buffers' bound: a trickle only where the kernel waits.

With the kernel's backlog_wait_time > 0 a trickling reader makes the audited processes
wait (lossless); with wait time 0, or on the multicast group, a trickle would only turn
the delay into kernel loss, so the reader goes on at full speed into its buffers up to
the stall bound (4x). The shipper and its replay buffers are the real ones, with no
assembler taking batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from test_status_poll import status

from auditstream.config import Config
from receiver.live import (
    READ_MAX_RECORDS,
    STALL_FACTOR,
    TRICKLE_RECORDS,
    ReadPacing,
    kernel_waits,
)
from receiver.redelivery import DeliveryGuard
from receiver.shipper import RecordShipper

BUFFER_BATCHES = 4
BATCH_RECORDS = 10


@pytest.fixture
def shipper(tmp_path: Path) -> Iterator[RecordShipper]:
    """A live shipper over a real DeliveryGuard whose assembler never takes a batch."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    cfg.receiver.replay_buffer_batches = BUFFER_BATCHES
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    guard = DeliveryGuard(zctx, cfg, may_wait=False, reset_on_start=False)
    try:
        yield RecordShipper(
            guard, batch_max_records=BATCH_RECORDS, batch_max_ms=0, never_block=True
        )
    finally:
        guard.close(durable=False)
        zctx.term()


def ship_batch(shipper: RecordShipper, first_serial: int) -> None:
    records = [
        (1300, b"audit(1700000000.250:%d): arch=c000003e syscall=2 pid=7" % serial, "")
        for serial in range(first_serial, first_serial + BATCH_RECORDS)
    ]
    shipper.add(records)
    shipper.flush_due()


def reads_while_filling(pacing: ReadPacing, batches: int) -> list[tuple[int, int]]:
    """(unsent batches, records the reader may take) after each batch shipped."""
    seen = []
    for n in range(batches):
        ship_batch(pacing.shipper, 1 + n * BATCH_RECORDS)
        seen.append((pacing.shipper.guard.unsent_batches(), pacing.records_to_read()))
    return seen


def expected(unsent: int, past_bound: int) -> int:
    if unsent < BUFFER_BATCHES:
        return READ_MAX_RECORDS
    return past_bound if unsent < STALL_FACTOR * BUFFER_BATCHES else 0


def test_a_reader_the_kernel_waits_for_trickles_past_the_bound(shipper: RecordShipper) -> None:
    """Backlog wait time > 0: full reads below the bound, a trickle past it, a stall at 4x."""
    pacing = ReadPacing(shipper, kernel_waits=True)
    seen = reads_while_filling(pacing, STALL_FACTOR * BUFFER_BATCHES + 2)
    assert [(u, expected(u, TRICKLE_RECORDS)) for u, _ in seen] == seen
    assert pacing.trickle_ticks > 0 and pacing.buffered_ticks == 0 and pacing.stalled_ticks > 0


def test_a_reader_the_kernel_does_not_wait_for_reads_on_into_its_buffers(
    shipper: RecordShipper,
) -> None:
    """Backlog wait time 0: full reads up to the stall bound, never a trickle."""
    pacing = ReadPacing(shipper, kernel_waits=False)
    seen = reads_while_filling(pacing, STALL_FACTOR * BUFFER_BATCHES + 2)
    assert [(u, expected(u, READ_MAX_RECORDS)) for u, _ in seen] == seen
    assert pacing.trickle_ticks == 0 and pacing.buffered_ticks > 0 and pacing.stalled_ticks > 0


def test_a_status_poll_changes_the_pacing_from_then_on(shipper: RecordShipper) -> None:
    """The wait time is followed as the polls report it (someone may run auditctl meanwhile)."""
    pacing = ReadPacing(shipper, kernel_waits=True)
    reads_while_filling(pacing, BUFFER_BATCHES + 1)
    assert pacing.records_to_read() == TRICKLE_RECORDS
    pacing.kernel_waits = False
    assert pacing.records_to_read() == READ_MAX_RECORDS


@pytest.mark.parametrize(
    ("wait_time", "multicast", "waits"),
    [(60000, False, True), (1, False, True), (0, False, False), (60000, True, False)],
)
def test_kernel_waits_only_for_a_unicast_reader_with_a_wait_time(
    wait_time: int, multicast: bool, waits: bool
) -> None:
    """kauditd waits for the unicast reader for backlog_wait_time; never for the multicast group."""
    polled = dataclasses.replace(status(), backlog_wait_time=wait_time)
    assert kernel_waits(polled, multicast=multicast) is waits
