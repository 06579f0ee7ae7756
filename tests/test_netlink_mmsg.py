"""recvmmsg batch reads: the filled mmsghdr array is read as the one-by-one path reads datagrams.

Unit tests fill the array by hand (a scripted recvmmsg), then real sockets: an AF_UNIX pair
standing in for the kernel, two NETLINK_AUDIT sockets (a foreign sender), and the kernel
itself -- a burst of 2000 audited opens read with no serial gap, through both paths.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from live_helpers import KernelState, kernel_clean, kernel_unusable_reason

from receiver import mmsg
from receiver.kernel import KernelSession, get_status
from receiver.live import datagram_errors
from receiver.mmsg import MSG_TRUNC, DatagramBatch, find_recvmmsg
from receiver.netlink import (
    AUDIT_REPLACE,
    NLMSG_ERROR,
    NLMSG_HEADER,
    AuditNetlink,
    NetlinkMessage,
    NetlinkSource,
    RawRecord,
)
from receiver.replaybuffer import serial_of
from receiver.rules import KernelSettings, parse_rules

__all__ = ["kernel_clean"]  # the fixture is used by name
AUDIT_SYSCALL, AUDIT_EOE = 1300, 1320


def record_datagram(msg_type: int, body: bytes) -> bytes:
    """A record as the kernel sends it; nlmsg_len 0 because readers must not trust it."""
    return NLMSG_HEADER.pack(0, msg_type, 0, 0, 0) + body


def ack_datagram(seq: int, code: int) -> bytes:
    """An NLMSG_ERROR reply (code 0: an ACK) with a complete nlmsg_len."""
    payload = code.to_bytes(4, "little", signed=True) + NLMSG_HEADER.pack(16, 1001, 5, seq, 0)
    return NLMSG_HEADER.pack(16 + len(payload), NLMSG_ERROR, 0, seq, 0) + payload


MIXED = [
    record_datagram(1300, b"audit(1790000000.003:7): arch=c000003e syscall=257\x00\x00"),
    record_datagram(AUDIT_REPLACE, b"\x01\x00\x00\x00"),
    ack_datagram(41, 0),
    record_datagram(1302, b'audit(1790000000.003:7): item=0 name="/tmp/x"'),
    NLMSG_HEADER.pack(400, NLMSG_ERROR, 0, 1, 0) + b"\x00" * 4,  # nlmsg_len past the end
    b"\x01\x02",  # shorter than a header
    record_datagram(1320, b"audit(1790000000.003:7): "),
]


Steps = list[int | list[tuple[bytes, int, int]]]  # errnos, or (datagram, flags, sender)s


@dataclass
class ScriptedRecvmmsg:
    """Stands in for libc's recvmmsg: fills the batch as the kernel does, one step per call.

    A step is an errno (the call fails with it) or datagrams as (bytes, msg_flags, sender).
    """

    steps: Steps
    batch: DatagramBatch | None = None
    calls: list[int] = field(default_factory=list)  # vlen of each call

    def __call__(self, fd: int, address: int, vlen: int, flags: int, timeout: None) -> int:
        assert self.batch is not None and flags & mmsg.MSG_DONTWAIT and timeout is None
        self.calls.append(vlen)
        step = self.steps.pop(0) if self.steps else errno.EAGAIN
        if isinstance(step, int):
            ctypes.set_errno(step)
            return -1
        assert len(step) <= vlen
        for slot, (data, msg_flags, sender) in enumerate(step):
            start = slot * self.batch.slot_bytes
            kept = data[: self.batch.slot_bytes]
            self.batch.buffer[start : start + len(kept)] = kept
            self.batch.headers[slot].msg_len = len(kept)
            self.batch.headers[slot].msg_hdr.msg_flags = msg_flags
            self.batch.names[slot].nl_pid = sender
        return len(step)


Scripted = Callable[..., tuple[AuditNetlink, ScriptedRecvmmsg]]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """Makes AuditNetlinks whose recvmmsg is scripted (their socket is real, never read)."""
    made: list[AuditNetlink] = []

    def make(steps: Steps, *, slots: int = 8) -> tuple[AuditNetlink, ScriptedRecvmmsg]:
        script = ScriptedRecvmmsg(steps)
        conn = AuditNetlink()
        conn._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        conn._recvmmsg = script
        script.batch = conn._batch = DatagramBatch(script, slots=slots, slot_bytes=512)
        made.append(conn)
        return conn, script

    yield make
    for conn in made:
        conn.close()


def test_filled_array_gives_records_others_and_counts(scripted: Scripted) -> None:
    """Each slot is taken by its msg_len, flags and sender, as the one-by-one path takes datagrams."""
    kernel = [(data, 0, 0) for data in MIXED]
    cut = record_datagram(1309, b"audit(1790000000.003:7): argc=1 a0=" + b"A" * 600)
    conn, script = scripted(
        [[*kernel[:4], (record_datagram(1300, b"audit(1.0:9): forged"), 0, 4242)],
         [*kernel[4:], (cut, MSG_TRUNC, 0)]],
        slots=5,
    )  # fmt: skip
    others: list[NetlinkMessage] = []
    records = conn.receive_records(100, others)
    assert records == [
        (1300, b"audit(1790000000.003:7): arch=c000003e syscall=257", ""),
        (1302, b'audit(1790000000.003:7): item=0 name="/tmp/x"', ""),
        (1320, b"audit(1790000000.003:7): ", ""),
        (1309, cut[16:512], ""),  # cut at the slot's end, and counted
    ]
    assert [(m.type, m.seq) for m in others] == [(AUDIT_REPLACE, 0), (NLMSG_ERROR, 41)]
    assert (conn.foreign, conn.malformed, conn.truncated, conn.overruns) == (1, 2, 1, 0)
    assert (conn.batch_reads, conn.batched_datagrams) == (2, 9)
    assert script.calls == [5, 5]  # the second batch was short: no call just to hear EAGAIN


def test_records_keep_their_order_around_slots_taken_one_by_one(scripted: Scripted) -> None:
    """A cut record between whole ones is read in its place; foreign and control slots are skipped."""
    cut = record_datagram(1309, b"audit(1790000000.003:8): argc=1 a0=" + b"A" * 600)
    whole = [record_datagram(1300 + n, b"audit(1790000000.003:8): n=%d" % n) for n in range(4)]
    conn, _ = scripted(
        [[(whole[0], 0, 0), (cut, MSG_TRUNC, 0), (whole[1], 0, 0), (whole[2], 0, 99),
          (ack_datagram(3, 0), 0, 0), (whole[3], 0, 0)]],
        slots=6,
    )  # fmt: skip
    others: list[NetlinkMessage] = []
    records = conn.receive_records(100, others)
    assert [type_ for type_, _, _ in records] == [1300, 1309, 1301, 1303]
    assert (conn.foreign, conn.truncated, len(others)) == (1, 1, 1)


def test_never_reads_past_the_limit(scripted: Scripted) -> None:
    """A call asks the kernel for no more datagrams than records still wanted."""
    steps: Steps = [
        [(record_datagram(1300, b"audit(1.0:%d): x" % i), 0, 0) for i in range(n)]
        for n in (8, 2, 3)
    ]
    conn, script = scripted(steps)
    first = conn.receive_records(10, [])
    second = conn.receive_records(5, [])
    assert len(first) == 10 and len(second) == 3
    assert script.calls == [8, 2, 5]


def test_errors_eintr_enobufs_eagain_and_others(scripted: Scripted) -> None:
    """EINTR is retried, ENOBUFS counted then reading goes on, EAGAIN is nothing, EBADF raises."""
    record = (record_datagram(1300, b"audit(1.0:1): x"), 0, 0)
    conn, script = scripted(
        [errno.EINTR, [record], errno.ENOBUFS, errno.ENOBUFS, [record, record]], slots=2
    )
    assert len(conn.receive_records(1, [])) == 1
    assert conn.overruns == 0
    assert len(conn.receive_records(10, [])) == 2
    assert conn.overruns == 2
    assert conn.receive_records(10, []) == []
    script.steps = [errno.EBADF]
    with pytest.raises(OSError) as raised:
        conn.receive_records(10, [])
    assert raised.value.errno == errno.EBADF


class KernelLikeSocket:
    """An AF_UNIX datagram socket that reports the kernel (port id 0) as every sender."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom_into(self, buffer: bytearray) -> tuple[int, tuple[int, int]]:
        size, _ = self.sock.recvfrom_into(buffer)
        return size, (0, 0)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, AuditNetlink]]:
    """A sending socket and an AuditNetlink reading the other end (no recvmmsg yet)."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    right.setblocking(False)
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    conn = AuditNetlink()
    conn._sock = KernelLikeSocket(right)  # type: ignore[assignment]
    yield left, conn
    left.close()
    right.close()


def read_all(
    conn: AuditNetlink, limit: int, records: list[RawRecord], others: list[NetlinkMessage]
) -> None:
    """Call receive_records with ``limit`` until the socket is empty."""
    while got := conn.receive_records(limit, others):
        assert len(got) <= limit
        records += got


@pytest.mark.parametrize("limit", [1, 7, 64, 4096])
def test_real_recvmmsg_equals_recvfrom_into(
    socket_pair: tuple[socket.socket, AuditNetlink], limit: int
) -> None:
    """Through the real system call, the batch path returns what the one-by-one path returns."""
    left, conn = socket_pair
    datagrams = [
        record_datagram(1300 + i % 20, b"audit(1790000000.%03d:%d): n=%d" % (i % 1000, i, i))
        for i in range(300)
    ]
    datagrams[100:100] = MIXED
    datagrams.append(record_datagram(1306, b"audit(1.0:400): " + b"z" * 8970))  # the largest
    results = []
    for recvmmsg in (None, find_recvmmsg()):
        conn._recvmmsg, conn._batch = recvmmsg, None
        conn.malformed = 0
        records: list[RawRecord] = []
        others: list[NetlinkMessage] = []
        # An AF_UNIX socket queues only net.unix.max_dgram_qlen (often 10) datagrams.
        for chunk in range(0, len(datagrams), 10):
            for data in datagrams[chunk : chunk + 10]:
                left.send(data)
            read_all(conn, limit, records, others)
        results.append((records, [(m.type, m.seq, m.payload) for m in others], conn.malformed))
    assert conn._batch is not None and conn.batch_reads > 0  # the second pass used recvmmsg
    assert results[0] == results[1]
    records, other_messages, malformed = results[1]
    assert len(records) == 300 + 4 and len(other_messages) == 2 and malformed == 2
    assert records[-1][1] == b"audit(1.0:400): " + b"z" * 8970
    assert conn.truncated == 0


def test_kernel_refusing_recvmmsg_falls_back_for_good(
    socket_pair: tuple[socket.socket, AuditNetlink],
) -> None:
    """ENOSYS (a seccomp filter) turns recvmmsg off; the same call reads one datagram at a time."""
    left, conn = socket_pair
    script = ScriptedRecvmmsg([errno.ENOSYS])
    conn._recvmmsg = script
    script.batch = conn._batch = DatagramBatch(script, slots=4, slot_bytes=512)
    left.send(record_datagram(1300, b"audit(1.0:1): x"))
    assert conn.receive_records(10, []) == [(1300, b"audit(1.0:1): x", "")]
    assert conn._recvmmsg is None and script.calls == [4]
    left.send(record_datagram(1320, b"audit(1.0:1): "))
    assert conn.receive_records(10, []) == [(1320, b"audit(1.0:1): ", "")]
    assert script.calls == [4]


def test_missing_libc_symbol_means_no_recvmmsg(monkeypatch: pytest.MonkeyPatch) -> None:
    """When ctypes cannot find recvmmsg the socket opens without it (one datagram per call)."""
    assert find_recvmmsg() is not None
    monkeypatch.setattr(mmsg, "RECVMMSG_SYMBOL", "recvmmsg_not_in_any_libc")
    assert find_recvmmsg() is None


def needs_root_netlink() -> None:
    """Skip unless we may open NETLINK_AUDIT sockets and send between them (CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: user-to-user NETLINK_AUDIT sends need CAP_NET_ADMIN")


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom_into"])
def test_datagrams_from_another_socket_are_foreign(batched: bool) -> None:
    """A forged record sent by a user socket (port id != 0) is counted and dropped."""
    needs_root_netlink()
    reader, forger = AuditNetlink(rcvbuf_bytes=1 << 20), AuditNetlink(rcvbuf_bytes=1 << 20)
    reader.open()
    forger.open()
    try:
        if not batched:
            reader._recvmmsg = None
        port = reader.sock.getsockname()[0]
        for serial in range(5):
            forger.sock.sendto(record_datagram(1300, b"audit(1.0:%d): forged" % serial), (port, 0))
        assert reader.receive_records(100, []) == []
        assert reader.foreign == 5
        assert (reader.batched_datagrams == 5) is batched
    finally:
        reader.close()
        forger.close()


def test_foreign_datagrams_on_the_control_socket_are_reported() -> None:
    """Forged records sent to the control socket, dropped by a status poll, count as well."""
    reason = kernel_unusable_reason()  # AUDIT_GET only: no kernel lock needed
    if reason:
        pytest.skip(reason)
    records, control = AuditNetlink(rcvbuf_bytes=1 << 20), AuditNetlink(rcvbuf_bytes=1 << 20)
    forger = AuditNetlink(rcvbuf_bytes=1 << 20)
    source = NetlinkSource(multicast=False, connection=records)
    try:
        for conn in (records, control, forger):
            conn.open()
        for conn, count in ((records, 3), (control, 2)):
            port = conn.sock.getsockname()[0]
            for serial in range(count):
                datagram = record_datagram(1300, b"audit(1.0:%d): forged" % serial)
                forger.sock.sendto(datagram, (port, 0))
        assert source.read_records(100) == []
        # The poll skips (and counts) the forged datagrams queued ahead of the kernel's reply.
        get_status(control)
        assert not control.pending
        assert source.datagram_errors()["foreign_datagram"] == 3
        assert datagram_errors(source, control) == {
            "foreign_datagram": 5, "malformed_datagram": 0, "truncated_datagram": 0,
        }  # fmt: skip
    finally:
        for conn in (records, control, forger):
            conn.close()


BURST_OPENS = 2000
OPENER = """
import os, sys
path, count = sys.argv[1], int(sys.argv[2])
for _ in range(count):
    os.close(os.open(path, os.O_RDONLY))
"""


def open_file(path: Path, count: int) -> None:
    """A child process opens `path` `count` times."""
    subprocess.run([sys.executable, "-c", OPENER, str(path), str(count)], check=True)


def read_until_quiet(source: NetlinkSource, quiet_s: float = 1.0) -> list[RawRecord]:
    """Read records every 20 ms (so they pile up into batches) until none came for quiet_s."""
    records: list[RawRecord] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        if got := source.read_records(4096):
            records += got
            last = time.monotonic()
        time.sleep(0.02)
    return records


def start_open_rule(session: KernelSession, target: Path, key: str) -> None:
    """Register our pid and audit the opens of `target` (key `key`), backlog 8192."""
    target.write_bytes(b"")
    rule = f"-a always,exit -F arch=b64 -S openat -F path={target} -k {key}"
    session.start(
        pid=os.getpid(),
        settings=KernelSettings(backlog_limit=8192),
        rules=parse_rules([rule.encode()]).rules,
    )


def events_of(records: list[RawRecord], key: str) -> set[int]:
    """The serials of the SYSCALL records carrying `key`."""
    return {
        serial_of(data)
        for kind, data, _ in records
        if kind == AUDIT_SYSCALL and key.encode() in data
    }


@pytest.mark.kernel
@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom_into"])
def test_burst_of_real_records_read_once_without_gap(
    kernel_clean: KernelState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    """2000 audited opens by a child: every record read once, serials contiguous, whole events."""
    if not batched:
        monkeypatch.setattr(mmsg, "RECVMMSG_SYMBOL", "recvmmsg_not_in_any_libc")
    target, key = tmp_path / "target", f"mmsg-{os.getpid()}"
    session = KernelSession()
    try:
        start_open_rule(session, target, key)
        source = session.records_source()
        read_until_quiet(source, 0.3)  # the configuration changes of start()
        open_file(target, BURST_OPENS)
        records = read_until_quiet(source)
        conn = source._conn
        lost = session.status().lost
    finally:
        session.close()
    assert len(records) == len(set(records)), "a record was read twice"
    ours = events_of(records, key)
    assert len(ours) == BURST_OPENS
    seen = [serial_of(data) for _, data, _ in records]
    window = [serial for serial in seen if min(ours) <= serial <= max(ours)]
    assert sorted(set(window)) == list(range(min(ours), max(ours) + 1)), f"serial gap (lost {lost})"
    ends = {serial_of(data) for kind, data, _ in records if kind == AUDIT_EOE}
    assert ours <= ends, "an event without its EOE"
    assert conn.overruns == 0
    if batched:
        # Every datagram came through recvmmsg, and calls returned several at once.
        assert conn.batched_datagrams >= len(window)
        assert conn.batched_datagrams > conn.batch_reads > 0
    else:
        assert conn._recvmmsg is None and conn.batch_reads == 0


@pytest.mark.kernel
@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom_into"])
def test_multicast_overrun_is_counted_and_reading_goes_on(
    kernel_clean: KernelState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    """A small multicast socket overruns under a burst: ENOBUFS is counted, later records come."""
    if not batched:
        monkeypatch.setattr(mmsg, "RECVMMSG_SYMBOL", "recvmmsg_not_in_any_libc")
    target, key = tmp_path / "target", f"mmsg-{os.getpid()}"
    multicast = NetlinkSource(multicast=True, rcvbuf_bytes=64 << 10)
    multicast.open()
    session = KernelSession()
    try:
        start_open_rule(session, target, key)
        unicast = session.records_source()
        open_file(target, BURST_OPENS)
        during = read_until_quiet(multicast)
        overruns = multicast.overruns
        open_file(target, 3)
        after = read_until_quiet(multicast)
        everything = read_until_quiet(unicast)
    finally:
        session.close()
        multicast.close()
    assert overruns >= 1 and multicast.overruns == overruns
    assert len(events_of(during, key)) < BURST_OPENS <= len(events_of(everything, key))
    assert len(events_of(after, key)) == 3
    read = during + after
    assert len(read) == len(set(read)) and set(read) <= set(everything)
    assert (multicast._conn.batch_reads > 0) is batched
