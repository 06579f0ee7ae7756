"""The shipper cuts each assembler's records into batches of batch_max_records, in order.

Reads come in any size; each batch that fills is sent at once, the rest waits for the next
read or for flush. With several assemblers each record goes to serial % assemblers
(receiver/csrc/shards.c deals a read; python_deal is its reference). The guard, its replay buffers and the ZeroMQ inlet an assembler reads
are the real ones. Live batches carry their serial range only when no record has a node
(receiver/replaybuffer.py), so a node anywhere in a batch must clear it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module

from auditstream import runtime, wire
from auditstream.config import Config
from receiver.netlink import RawRecord
from receiver.redelivery import DeliveryGuard
from receiver.replaybuffer import serial_of
from receiver.shipper import RecordShipper, python_deal

BATCH_RECORDS = 10


Pipe = tuple[DeliveryGuard, wire.Inlet | None]
MakePipe = Callable[..., Pipe]


@pytest.fixture
def make_pipe(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakePipe]:
    """Makes a real DeliveryGuard for one assembler and, if asked, that assembler's inlet
    (without one, live batches stay in the replay buffer, unsent)."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    cfg.receiver.replay_buffer_batches = 100
    cfg.assembler.instances = request.param if hasattr(request, "param") else 1
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made: list[Pipe] = []

    def make(with_inlet: bool, shard: int = 0) -> Pipe:
        inlet = None
        if with_inlet:
            endpoint = runtime.assembler_endpoint(cfg, shard)
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


def received(guard: DeliveryGuard, inlet: wire.Inlet) -> list[list[RawRecord]]:
    """The records of each batch numbered so far, as the assembler gets them (live batches
    numbered before the pipe connected wait in the guard: it sends them now)."""
    deadline = time.monotonic() + 10
    while guard.unsent_batches() and time.monotonic() < deadline:
        guard.pump(0)
        time.sleep(0.01)
    assert not guard.unsent_batches()
    batches = []
    while (frame := inlet.recv(timeout_ms=200)) is not None:
        if frame.kind == wire.RECORDS:  # after a RESUME
            batches.append([tuple(rec) for rec in frame.body["recs"]])
    return batches


@pytest.mark.parametrize("live", [True, False], ids=["live", "file"])
def test_reads_of_any_size_become_full_batches_in_order(make_pipe: MakePipe, live: bool) -> None:
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
    batches = received(guard, inlet)
    assert [len(recs) for recs in batches] == [10, 10, 10]
    shipper.flush()
    batches += received(guard, inlet)
    assert [len(recs) for recs in batches] == [10, 10, 10, 3]
    assert [rec for recs in batches for rec in recs] == sent


def test_a_record_with_a_node_clears_its_batch_s_serial_range(
    make_pipe: MakePipe,
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


@pytest.mark.parametrize("make_pipe", [3], indirect=True)
def test_several_assemblers_each_get_their_serials_in_full_batches(make_pipe: MakePipe) -> None:
    """Three assemblers: each gets the records of its serials (serial % 3), in order, in
    batches of 10 as reads of 7, 25 and 40 records fill them."""
    guard, _ = make_pipe(False)
    shipper = RecordShipper(
        guard, batch_max_records=BATCH_RECORDS, batch_max_ms=1000, never_block=True
    )
    for first, count in [(1, 7), (8, 25), (33, 40)]:
        shipper.add(records(first, count))
    shipper.flush()
    sent = records(1, 72)
    for shard in range(3):
        batches = list(guard.buffers[shard].unsent())
        chunks = [rec for rec in sent if serial_of(rec[1]) % 3 == shard]
        chunks = [chunks[at : at + BATCH_RECORDS] for at in range(0, len(chunks), BATCH_RECORDS)]
        got = [[tuple(rec) for rec in msgpack.unpackb(b.body)["recs"]] for b in batches]
        assert got == chunks
        assert [b.serial_range for b in batches] == [
            (serial_of(chunk[0][1]), serial_of(chunk[-1][1]), len(chunk)) for chunk in chunks
        ]


serials = st.one_of(st.integers(0, 2**32), st.integers(-(2**70), 2**70))


@settings(max_examples=300, deadline=None)
@given(st.lists(serials, max_size=40), st.integers(1, 5))
def test_c_deals_as_python_does(serial_list: list[int], shards: int) -> None:
    """Any serials (0, negative, beyond 64 bits) and 1-5 shards: the same parts, in order."""
    deal = native_module("receiver.native_shards").deal
    recs = [(1300, b"%d" % serial, "") for serial in serial_list]
    assert deal(recs, serial_list, shards) == python_deal(recs, serial_list, shards)


def test_c_deal_refuses_what_python_refuses() -> None:
    """Unequal lengths and a serial that is not an int are errors, as in Python."""
    deal = native_module("receiver.native_shards").deal
    with pytest.raises(ValueError):
        deal([(1300, b"", "")], [], 2)
    with pytest.raises(TypeError):
        deal([(1300, b"", "")], ["7"], 2)
    with pytest.raises(TypeError):
        python_deal([(1300, b"", "")], ["7"], 2)  # type: ignore[list-item]


def received_stamps(guard: DeliveryGuard, inlet: wire.Inlet) -> list[tuple[int, int]]:
    """(first serial, recv_ns) of each records batch the assembler gets."""
    deadline = time.monotonic() + 10
    while guard.unsent_batches() and time.monotonic() < deadline:
        guard.pump(0)
        time.sleep(0.01)
    stamps = []
    while (frame := inlet.recv(timeout_ms=200)) is not None:
        if frame.kind == wire.RECORDS:
            stamps.append((serial_of(frame.body["recs"][0][1]), frame.body["recv_ns"]))
    return stamps


def test_a_batch_s_receive_stamp_is_when_its_first_records_may_have_begun_to_wait(
    make_pipe: MakePipe,
) -> None:
    """recv_ns (where the latency starts) is the waited_since_ns of the read that began the
    batch, or that read's time without one; a batch begun by the rest of a read gets its."""
    guard, inlet = make_pipe(True)
    assert inlet is not None
    shipper = RecordShipper(
        guard, batch_max_records=BATCH_RECORDS, batch_max_ms=1000, never_block=True
    )
    shipper.add(records(1, 4), waited_since_ns=1_000)
    shipper.add(records(5, 10), waited_since_ns=2_000)  # fills 1..10; 11..14 begin the next
    shipper.flush()
    before = time.time_ns()
    shipper.add(records(15, 3))
    shipper.flush()
    stamps = received_stamps(guard, inlet)
    assert stamps[:2] == [(1, 1_000), (11, 2_000)]
    assert stamps[2][0] == 15 and before <= stamps[2][1] <= time.time_ns()
