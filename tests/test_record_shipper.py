"""The shipper cuts one assembler's records into batches of batch_max_records, in order.

Reads come in any size; each batch that fills is sent at once, the rest waits for the next
read or for flush. The guard, its replay buffers and the ZeroMQ inlet an assembler reads
are the real ones. Live batches carry their serial range only when no record has a node
(receiver/replaybuffer.py), so a node anywhere in a batch must clear it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from auditstream import runtime, wire
from auditstream.config import Config
from receiver.netlink import RawRecord
from receiver.redelivery import DeliveryGuard
from receiver.shipper import RecordShipper

BATCH_RECORDS = 10


Pipe = tuple[DeliveryGuard, wire.Inlet | None]


@pytest.fixture
def make_pipe(tmp_path: Path) -> Iterator[Callable[[bool], Pipe]]:
    """Makes a real DeliveryGuard for one assembler and, if asked, that assembler's inlet
    (without one, live batches stay in the replay buffer, unsent)."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    cfg.receiver.replay_buffer_batches = 100
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made: list[Pipe] = []

    def make(with_inlet: bool) -> Pipe:
        inlet = None
        if with_inlet:
            endpoint = runtime.assembler_endpoint(cfg, 0)
            inlet = wire.Inlet(zctx, endpoint, hwm=cfg.runtime.hwm_messages)
        made.append((DeliveryGuard(zctx, cfg, may_wait=False, reset_on_start=False), inlet))
        return made[-1]

    yield make
    for guard, inlet in made:
        guard.close(durable=False)
        if inlet is not None:
            inlet.close()
    zctx.term()


def records(first: int, count: int, node: str = "") -> list[RawRecord]:
    """``count`` SYSCALL records with serials from ``first``."""
    return [
        (1300, b"audit(1700000000.250:%d): syscall=2" % serial, node)
        for serial in range(first, first + count)
    ]


def received(inlet: wire.Inlet) -> list[list[RawRecord]]:
    """The records of each batch the assembler has been sent so far."""
    batches = []
    while (frame := inlet.recv(timeout_ms=200)) is not None:
        if frame.kind == wire.RECORDS:  # after a RESUME
            batches.append([tuple(rec) for rec in frame.body["recs"]])
    return batches


@pytest.mark.parametrize("live", [True, False], ids=["live", "file"])
def test_reads_of_any_size_become_full_batches_in_order(
    make_pipe: Callable[[bool], Pipe], live: bool
) -> None:
    """Reads of 7, 25, 1 and 0 records give batches of 10, 10, 10 and, at flush, 3: all in order."""
    guard, inlet = make_pipe(True)
    assert inlet is not None
    shipper = RecordShipper(
        guard, batch_max_records=BATCH_RECORDS, batch_max_ms=1000, never_block=live
    )
    sent: list[RawRecord] = []
    for first, count in [(1, 7), (8, 25), (33, 1), (34, 0)]:
        sent += records(first, count)
        shipper.add(records(first, count))
    batches = received(inlet)
    assert [len(recs) for recs in batches] == [10, 10, 10]
    shipper.flush()
    batches += received(inlet)
    assert [len(recs) for recs in batches] == [10, 10, 10, 3]
    assert [rec for recs in batches for rec in recs] == sent


def test_a_record_with_a_node_clears_its_batch_s_serial_range(
    make_pipe: Callable[[bool], Pipe],
) -> None:
    """Only the batch that holds a record of a node goes without a range; the next has one again."""
    guard, _ = make_pipe(False)
    shipper = RecordShipper(
        guard, batch_max_records=BATCH_RECORDS, batch_max_ms=1000, never_block=True
    )
    shipper.add(records(1, 12) + records(13, 1, node="web1") + records(14, 10))
    shipper.flush()
    ranges = [batch.serial_range for batch in guard.buffers[0].unsent()]
    assert ranges == [(1, 10, 10), None, (21, 23, 3)]
