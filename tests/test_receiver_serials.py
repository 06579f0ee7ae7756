"""The receiver parses each record's serial once: the shortcuts agree with the slow paths."""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.checkpoint import SerialMark
from receiver.netlink import NLMSG_HEADER, AuditNetlink
from receiver.replaybuffer import ShardBuffer, record_serials, serial_gaps, serial_of

HEADERS = [
    b"audit(1790000000.003:1003): arch=c000003e syscall=257",
    b"audit(1.0:0): x=1",
    b"audit(12:77): no dot",  # serial_of still finds 77
    b"audit(1790000000.003:): empty serial",
    b"audit(1790000000.003:12a): letters",
    b"not a header at all",
    b"",
    b"audit(1790000000.003:99999999999999999999): huge",
]


@pytest.mark.parametrize("data", HEADERS)
def test_record_serials_matches_serial_of(data: bytes) -> None:
    """The one-match fast path gives serial_of's answer for odd headers too."""
    assert record_serials([(1300, data, "")]) == [serial_of(data)]


def test_record_serials_gives_markers_zero() -> None:
    """Marker records (type <= 0) have no serial."""
    assert record_serials([(-3, b"audit(1.0:5): x", ""), (1300, b"audit(1.0:6): y", "")]) == [0, 6]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_record_serials_matches_serial_of_on_any_bytes(data: bytes) -> None:
    """Whatever the bytes, both paths agree."""
    assert record_serials([(1300, b"audit(" + data, "")]) == [serial_of(b"audit(" + data)]


def _records(serials: list[int], node: str = "") -> list[tuple[int, bytes, str]]:
    return [(1300, b"audit(1790000000.003:%d): x=1" % s, node) for s in serials]


def test_serial_mark_fast_path_equals_general_path(tmp_path: Path) -> None:
    """Reading with known serials moves the mark exactly as parsing each record does."""
    batches = [[5, 3, 9], [8, 10, 7], [2], [11, 12]]
    fast, slow = SerialMark(tmp_path / "a.json"), SerialMark(tmp_path / "b.json")
    for serials in batches:
        records = [*_records(serials), (-3, b"first_serial=1", "")]
        assert fast.records_read(records, record_serials(records)) == []
        assert slow.records_read(records) == []
        assert fast.read == slow.read
    assert fast.read == {"": 12}
    assert fast.durable == slow.durable == {"": 4}


def test_serial_mark_with_nodes_takes_the_general_path(tmp_path: Path) -> None:
    """Records of other nodes still get their own marks."""
    mark = SerialMark(tmp_path / "m.json")
    mark.records_read(_records([4]))
    records = _records([6], "web1") + _records([5])
    mark.records_read(records, record_serials(records))
    assert mark.read == {"": 5, "web1": 6}


def test_replay_buffer_range_equals_the_unpacked_one() -> None:
    """An evicted batch's serial range from the kept summary equals the one from its body."""
    records = [*_records([40, 38, 41, 41, 39]), (-2, b"lost=1", "")]
    with_range, without = ShardBuffer(0, 4), ShardBuffer(0, 4)
    a = with_range.add({"recs": list(records)}, len(records), record_serials(records))
    b = without.add({"recs": list(records)}, len(records))
    assert a.serial_range == (38, 41, 4)
    assert b.serial_range is None
    assert serial_gaps(a) == serial_gaps(b)
    assert msgpack.unpackb(a.body)["recs"] == msgpack.unpackb(b.body)["recs"]


def test_receive_records_reads_one_record_per_datagram() -> None:
    """The fast read path takes records straight from the buffer and leaves the rest."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    conn = AuditNetlink()
    right.setblocking(False)
    payload = b"audit(1790000000.003:7): arch=c000003e\x00\x00"

    def datagram(msg_type: int, body: bytes) -> bytes:
        # A record's nlmsg_len is unreliable: the reader must not use it.
        return NLMSG_HEADER.pack(0, msg_type, 0, 0, 0) + body

    left.send(datagram(1300, payload))
    left.send(datagram(1329, b"\x01\x00\x00\x00"))  # AUDIT_REPLACE: not a record
    left.send(datagram(1320, b"audit(1790000000.003:7): "))
    others: list[object] = []
    try:
        # An AF_UNIX socket reports no netlink sender: the kernel's (port id 0) is added.
        real_recv = right.recvfrom_into

        class Sock:
            def recvfrom_into(self, buffer: bytearray) -> tuple[int, tuple[int, int]]:
                size, _ = real_recv(buffer)
                return size, (0, 0)

        conn._sock = Sock()  # type: ignore[assignment]
        records = conn.receive_records(10, others)  # type: ignore[arg-type]
    finally:
        left.close()
        right.close()
    assert records == [
        (1300, b"audit(1790000000.003:7): arch=c000003e", ""),
        (1320, b"audit(1790000000.003:7): ", ""),
    ]
    assert [m.type for m in others] == [1329]  # type: ignore[attr-defined]
