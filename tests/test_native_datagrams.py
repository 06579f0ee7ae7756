"""The C batch reader (receiver/csrc/datagrams.c) takes a filled recvmmsg batch as Python does.

The reference is DatagramBatch.python_take_records. Slots are filled by hand, as the kernel
fills them (msg_len, msg_flags, the sender's port id, the datagram), with hypothesis-made
types, sizes, flags, senders and payloads; both must append the same records and stop at
the same slot.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module

from receiver.mmsg import AUDIT_REPLACE, MSG_TRUNC, DatagramBatch, MmsgHdr, SockaddrNl

SLOT_BYTES = 256
Slot = tuple[int, bytes, int, int, int]  # nlmsg_type, payload, msg_len change, flags, sender
TakeRecords = Callable[..., int]


def c_take_records() -> TakeRecords:
    """The C take_records; skipped when not built, unless CI requires it."""
    module = native_module("receiver.native_datagrams")
    assert module.struct_sizes() == (ctypes.sizeof(MmsgHdr), ctypes.sizeof(SockaddrNl))
    return module.take_records  # type: ignore[no-any-return]


def never_called(fd: int, address: int, vlen: int, flags: int, timeout: None) -> int:
    raise AssertionError("the slots are filled by hand")


def filled_batch(slots: list[Slot]) -> DatagramBatch:
    """A batch whose first slots hold ``slots`` as recvmmsg would have left them."""
    batch = DatagramBatch(never_called, slots=max(1, len(slots)), slot_bytes=SLOT_BYTES)
    for index, (msg_type, payload, len_change, flags, sender) in enumerate(slots):
        datagram = (len(payload) + 16).to_bytes(4, "little") + msg_type.to_bytes(2, "little")
        datagram = (datagram + bytes(10) + payload)[:SLOT_BYTES]
        start = index * SLOT_BYTES
        batch.buffer[start : start + len(datagram)] = datagram
        batch.headers[index].msg_len = max(0, len(datagram) + len_change)
        batch.headers[index].msg_hdr.msg_flags = flags
        batch.names[index].nl_pid = sender
    return batch


def both_ways(slots: list[Slot], start: int = 0) -> tuple[int, list[tuple[int, bytes, str]]]:
    """Assert C and Python take the same records and stop at the same slot; return those."""
    take = c_take_records()
    batch = filled_batch(slots)
    python_records: list[tuple[int, bytes, str]] = []
    c_records: list[tuple[int, bytes, str]] = [(1, b"already there", "")]
    stop = batch.python_take_records(start, len(slots), python_records)
    assert (
        take(batch.buffer, batch.headers, batch.names, start, len(slots), SLOT_BYTES, c_records)
        == stop
    )
    assert c_records == [(1, b"already there", ""), *python_records]
    return stop, python_records


record_types = st.sampled_from(
    [1099, 1100, 1300, 1302, 1320, AUDIT_REPLACE, 1400, 2999, 3200, 65535]
)
slots = st.tuples(
    st.one_of(record_types, st.integers(0, 65535)),
    st.binary(max_size=300),
    st.sampled_from([0, 0, 0, -20, -1, 1, 300]),  # msg_len: as filled, short, past the slot
    st.sampled_from([0, 0, MSG_TRUNC, 0x80]),
    st.sampled_from([0, 0, 0, 4242]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(slots, max_size=12), st.integers(0, 12))
def test_hypothesis_batches_are_taken_the_same(batch_slots: list[Slot], start: int) -> None:
    """Any mix of records, control types, cut, short, oversized and foreign slots: same records, same stop."""
    both_ways(batch_slots, min(start, len(batch_slots)))


def test_a_batch_of_records_is_taken_whole_without_trailing_nuls() -> None:
    """Kernel records (payloads NUL-padded as the kernel sends them) all become records."""
    payloads = [
        b"audit(1.0:1): a=b\x00\x00",
        b"audit(1.0:1): ",
        b"\x00",
        b"audit(1.0:1): x=\x00y\x00",
    ]
    stop, records = both_ways([(1300 + n, p, 0, 0, 0) for n, p in enumerate(payloads)])
    assert stop == 4
    assert records == [
        (1300, b"audit(1.0:1): a=b", ""),
        (1301, b"audit(1.0:1): ", ""),
        (1302, b"", ""),
        (1303, b"audit(1.0:1): x=\x00y", ""),
    ]


@pytest.mark.parametrize(
    "odd",
    [
        (1000, b"\x00" * 4, 0, 0, 0),  # a control message
        (AUDIT_REPLACE, b"\x01\x00\x00\x00", 0, 0, 0),
        (1300, b"audit(1.0:2): forged", 0, 0, 4242),  # not from the kernel
        (1300, b"audit(1.0:2): cut", 0, MSG_TRUNC, 0),
        (1300, b"", -10, 0, 0),  # shorter than a netlink header
        (1300, b"audit(1.0:2): a", 300, 0, 0),  # msg_len past the slot
    ],
    ids=["control", "replace", "foreign", "truncated", "short", "oversized"],
)
def test_the_first_slot_that_is_not_a_record_stops_the_take(odd: Slot) -> None:
    """Records before the odd slot are taken, it is returned, and the next call goes on after it."""
    record = (1300, b"audit(1.0:2): ok", 0, 0, 0)
    stop, records = both_ways([record, odd, record])
    assert (stop, len(records)) == (1, 1)
    assert both_ways([record, odd, record], start=2) == (3, [(1300, b"audit(1.0:2): ok", "")])


def test_slots_beyond_the_arrays_are_refused() -> None:
    """A count past the batch's slots is a ValueError, not a read past its memory."""
    take = c_take_records()
    batch = filled_batch([(1300, b"audit(1.0:2): ok", 0, 0, 0)])
    for start, count in [(0, 2), (-1, 1), (2, 1)]:
        with pytest.raises(ValueError, match="beyond the batch"):
            take(batch.buffer, batch.headers, batch.names, start, count, SLOT_BYTES, [])
    with pytest.raises(ValueError, match="beyond the batch"):
        take(batch.buffer, batch.headers, batch.names, 0, 1, SLOT_BYTES * 2, [])
