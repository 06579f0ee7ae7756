"""The kernel audit netlink socket: control requests and the record stream.

`AuditNetlink` is the socket: it sends requests and collects their replies; audit records
that arrive while it waits for a reply are kept in `pending` for the record reader.
`NetlinkSource` reads records: multicast (its own socket bound to AUDIT_NLGRP_READLOG) or
unicast (the socket that registered the audit pid, usually `KernelSession.records_source()`).
"""

from __future__ import annotations

import errno
import operator
import os
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

from receiver.mmsg import (
    AUDIT_FIRST_USER_MSG,
    AUDIT_REPLACE,
    MSG_TRUNC,
    DatagramBatch,
    RecvMmsg,
    find_recvmmsg,
)

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_TYPE = struct.Struct("=H")  # nlmsg_type, at offset 4 of the header
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
RECV_BUFFER_BYTES = 1 << 16  # records are at most 8970 bytes; replies are small
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33


RawRecord = tuple[int, bytes, str]  # (type, payload, node): the receiver's record
_NODE_OF = operator.itemgetter(2)


def all_of_node(records: list[RawRecord], node: str) -> bool:
    """Whether every one of ``records`` is of ``node`` (live: the one str the sources
    share, auditstream/hostnode.py; a file: "", a log without node=). list.count compares
    by identity first: ~13 ns a record, as ``any(map(_NODE_OF, records))`` for "" alone
    (a ``node.__ne__`` per record cost three times that)."""
    return list(map(_NODE_OF, records)).count(node) == len(records)


class NetlinkError(OSError):
    """The kernel refused a request (its negative errno) or did not answer."""


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    """One netlink message: its type, flags, sequence number and payload."""

    type: int
    flags: int
    seq: int
    payload: bytes


def split_datagram(datagram: bytes | memoryview) -> list[NetlinkMessage]:
    """Split one received datagram into messages.

    Records (type >= 1100) are one per datagram and their nlmsg_len is unreliable (unicast
    excludes the 16-byte header, multicast includes it), so their payload is the rest of
    the datagram. Control replies follow the netlink rules (aligned, nlmsg_len complete).
    """
    messages: list[NetlinkMessage] = []
    offset = 0
    while len(datagram) - offset >= NLMSG_HEADER.size:
        length, msg_type, flags, seq, _pid = NLMSG_HEADER.unpack_from(datagram, offset)
        if msg_type >= AUDIT_FIRST_USER_MSG:
            payload = bytes(datagram[offset + NLMSG_HEADER.size :])
            messages.append(NetlinkMessage(msg_type, flags, seq, payload.rstrip(b"\x00")))
            break
        if length < NLMSG_HEADER.size or offset + length > len(datagram):
            raise ValueError(f"malformed netlink message (nlmsg_len {length})")
        payload = bytes(datagram[offset + NLMSG_HEADER.size : offset + length])
        messages.append(NetlinkMessage(msg_type, flags, seq, payload))
        offset += (length + 3) & ~3
    return messages


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Ask for a big receive buffer; SO_RCVBUFFORCE passes rmem_max when we may (root)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class AuditNetlink:
    """A NETLINK_AUDIT socket: requests with replies, plus records kept aside in `pending`."""

    def __init__(self, *, rcvbuf_bytes: int = 64 << 20, groups: int = 0) -> None:
        self.rcvbuf_bytes = rcvbuf_bytes
        self.groups = groups
        self.pending: deque[NetlinkMessage] = deque()
        self.overruns = 0  # ENOBUFS: the kernel dropped messages for us
        self.foreign = 0  # datagrams not sent by the kernel (port id != 0), dropped
        self.malformed = 0
        self.truncated = 0  # datagrams longer than a batch slot (MSG_TRUNC): cut short
        self.batch_reads = 0  # recvmmsg calls that returned datagrams
        self.batched_datagrams = 0  # datagrams those calls returned
        # The node of the records read (live: this host's, auditstream/hostnode.py): one str
        # shared by all of them, so naming it costs nothing per record.
        self.record_node = ""
        self._sock: socket.socket | None = None
        self._seq = int(time.monotonic_ns()) & 0x7FFFFFFF
        self._buffer = bytearray(RECV_BUFFER_BYTES)
        # recvmmsg, found when the socket opens (None: one recvfrom_into per datagram);
        # its buffers are made on the first record read, so control sockets never have them.
        self._recvmmsg: RecvMmsg | None = None
        self._batch: DatagramBatch | None = None

    def open(self) -> None:
        """Create and bind the socket; OSError with a clear message if not allowed."""
        if self._sock is not None:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open NETLINK_AUDIT socket: {exc.strerror}") from None
        try:
            _set_rcvbuf(sock, self.rcvbuf_bytes)
            sock.bind((0, self.groups))
        except OSError as exc:
            sock.close()
            what = (
                "join the audit multicast group (needs CAP_AUDIT_READ)" if self.groups else "bind"
            )
            raise OSError(exc.errno, f"cannot {what}: {exc.strerror}") from None
        sock.setblocking(False)
        self._sock = sock
        self._recvmmsg = find_recvmmsg()

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise OSError(errno.EBADF, "audit netlink socket is not open")
        return self._sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def datagram_errors(self) -> dict[str, int]:
        """Datagrams this socket read that held no usable record, by reason (status, metrics)."""
        return {
            "foreign_datagram": self.foreign,  # not from the kernel: dropped
            "malformed_datagram": self.malformed,
            "truncated_datagram": self.truncated,
        }

    def send(self, msg_type: int, payload: bytes, flags: int = NLM_F_REQUEST) -> int:
        """Send one request to the kernel; returns its sequence number."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(payload), msg_type, flags, self._seq, 0)
        padding = b"\x00" * (-len(payload) % 4)
        self.sock.sendto(header + payload + padding, (0, 0))
        return self._seq

    def receive(self) -> list[NetlinkMessage] | None:
        """Read one datagram without blocking: its messages, or None if nothing is queued."""
        view = memoryview(self._buffer)
        while (size := self._recv_datagram()) >= 0:
            try:
                return split_datagram(view[:size])
            except ValueError:
                self.malformed += 1
        return None

    def _recv_datagram(self) -> int:
        """The size of the next datagram from the kernel, now in the buffer; -1: none queued.

        Overruns (ENOBUFS) are counted, datagrams of other senders counted and skipped.
        """
        recv_into, buffer = self.sock.recvfrom_into, self._buffer
        while True:
            try:
                size, (sender, _groups) = recv_into(buffer)
            except BlockingIOError:
                return -1
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            if sender == 0:
                return int(size)
            self.foreign += 1

    def receive_records(self, limit: int, others: list[NetlinkMessage]) -> list[RawRecord]:
        """Read up to ``limit`` records without blocking, as (type, payload, record_node).

        The record stream's fast path: one datagram is one record, so its payload is taken
        straight from the buffer (no message objects); anything else -- control replies,
        AUDIT_REPLACE -- is split as usual and appended to ``others``. With recvmmsg one
        system call reads up to 64 datagrams, never more than ``limit`` asks for, so
        nothing read waits in our buffers between calls.
        """
        records: list[RawRecord] = []
        if self._recvmmsg is not None:
            self._read_batches(limit, records, others)
            if self._recvmmsg is not None:
                return records
        # One datagram per call: no recvmmsg here, or the kernel has just refused it.
        view = memoryview(self._buffer)
        while len(records) < limit and (size := self._recv_datagram()) >= 0:
            self._take_datagram(view, 0, size, records, others)
        return records

    def _read_batches(
        self, limit: int, records: list[RawRecord], others: list[NetlinkMessage]
    ) -> None:
        """recvmmsg until ``limit`` records, an empty socket or a short batch."""
        batch = self._batch
        if batch is None and self._recvmmsg is not None:
            batch = self._batch = DatagramBatch(self._recvmmsg)
        while batch is not None and (wanted := min(batch.slots, limit - len(records))) > 0:
            count = self._recv_batch(batch, wanted)
            if count <= 0:
                return
            self.batch_reads += 1
            self.batched_datagrams += count
            # Whole records from the kernel in one call each run; any other slot here.
            slot = 0
            while (slot := batch.take_records(slot, count, records, self.record_node)) < count:
                size, flag, sender = batch.slot(slot)
                if sender:
                    self.foreign += 1
                else:
                    self.truncated += bool(flag & MSG_TRUNC)
                    offset = slot * batch.slot_bytes
                    self._take_datagram(batch.view, offset, size, records, others)
                slot += 1
            if count < wanted:
                # The socket ran dry (or an error waits for the next call, which the kernel
                # keeps for it): skip the call that would only say EAGAIN.
                return

    def _recv_batch(self, batch: DatagramBatch, wanted: int) -> int:
        """How many datagrams one recvmmsg put in the batch; 0: none queued (or no recvmmsg).

        Overruns (ENOBUFS) are counted as by `_recv_datagram`; ENOSYS (a seccomp filter, an
        old kernel) turns recvmmsg off for good and the caller reads one datagram per call.
        """
        receive, fd = batch.receive, self.sock.fileno()
        while True:
            try:
                return receive(fd, wanted)
            except BlockingIOError:
                return 0
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                if exc.errno == errno.ENOSYS:
                    self._recvmmsg = self._batch = None
                    return 0
                raise

    def _take_datagram(
        self, view: memoryview, start: int, size: int, records: list[RawRecord],
        others: list[NetlinkMessage],
    ) -> None:  # fmt: skip
        """The datagram at ``view[start:start + size]``: a record, or messages for ``others``."""
        header_size = NLMSG_HEADER.size
        if size < header_size:
            self.malformed += 1  # not even a netlink header
            return
        msg_type = NLMSG_TYPE.unpack_from(view, start + 4)[0]
        if msg_type >= AUDIT_FIRST_USER_MSG and msg_type != AUDIT_REPLACE:
            payload = bytes(view[start + header_size : start + size]).rstrip(b"\x00")
            records.append((msg_type, payload, self.record_node))
            return
        try:
            others.extend(split_datagram(view[start : start + size]))
        except ValueError:
            self.malformed += 1

    def request(
        self, msg_type: int, payload: bytes = b"", *, reply_type: int | None = None,
        multi: bool = False, timeout_s: float = 5.0,
    ) -> list[NetlinkMessage]:  # fmt: skip
        """Send a request and return its replies.

        With `reply_type` the kernel answers with data (AUDIT_GET; `multi` for lists that end
        with NLMSG_DONE), otherwise we ask for an ACK. A negative errno raises NetlinkError.
        """
        want_data = reply_type is not None
        seq = self.send(msg_type, payload, NLM_F_REQUEST | (0 if want_data else NLM_F_ACK))
        replies: list[NetlinkMessage] = []
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.receive()
            if messages is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NetlinkError(errno.ETIMEDOUT, f"no reply to audit request {msg_type}")
                select.select([self.sock], [], [], remaining)
                continue
            for message in messages:
                if message.type >= AUDIT_FIRST_USER_MSG:
                    if message.type != AUDIT_REPLACE:
                        self.pending.append(message)  # a record; the reader takes it later
                    continue
                if message.seq != seq:
                    continue  # a late answer to an earlier request that timed out
                if message.type == NLMSG_ERROR:
                    code = struct.unpack_from("=i", message.payload)[0] if message.payload else 0
                    if code != 0:
                        raise NetlinkError(-code, f"audit request {msg_type}: {os.strerror(-code)}")
                    if not want_data:
                        return replies
                elif message.type == NLMSG_DONE:
                    return replies
                elif message.type == reply_type:
                    replies.append(message)
                    if not multi:
                        return replies


class NetlinkSource:
    """Reads audit records from the kernel: (type, data, node) per record, never blocking;
    ``node`` is :attr:`node` ("" unless set: live, this host's, auditstream/hostnode.py)."""

    def __init__(
        self, *, multicast: bool, rcvbuf_bytes: int = 64 << 20,
        connection: AuditNetlink | None = None,
    ) -> None:  # fmt: skip
        """`connection`: read an existing socket (unicast: the one that set the audit pid)."""
        if multicast and connection is not None:
            raise ValueError("a multicast source opens its own socket")
        self.multicast = multicast
        self._borrowed = connection is not None
        groups = 1 << (AUDIT_NLGRP_READLOG - 1) if multicast else 0
        self._conn = connection or AuditNetlink(rcvbuf_bytes=rcvbuf_bytes, groups=groups)
        self.replace_requests = 0  # AUDIT_REPLACE probes: someone tried to take the pid over
        self.control_messages = 0  # stray control replies seen while reading records

    @property
    def overruns(self) -> int:
        """How many times the kernel could not queue for us (ENOBUFS): records were lost."""
        return self._conn.overruns

    def datagram_errors(self) -> dict[str, int]:
        """Datagrams that held no usable record, by reason (for the status file and metrics)."""
        return self._conn.datagram_errors()

    def open(self) -> None:
        """Unicast: open the socket only (registering the pid is KernelSession's job)."""
        self._conn.open()

    def fileno(self) -> int:
        return self._conn.fileno()

    @property
    def node(self) -> str:
        """The node each record read is of (kernel records name none: the reader says whose)."""
        return self._conn.record_node

    @node.setter
    def node(self, node: str) -> None:
        self._conn.record_node = node

    def read_records(self, max_records: int) -> list[tuple[int, bytes, str]]:
        """Drain up to `max_records` queued records without blocking."""
        records: list[tuple[int, bytes, str]] = []
        pending, node = self._conn.pending, self._conn.record_node
        while pending and len(records) < max_records:
            message = pending.popleft()
            records.append((message.type, message.payload, node))
        if len(records) < max_records:
            others: list[NetlinkMessage] = []
            records += self._conn.receive_records(max_records - len(records), others)
            for message in others:
                if message.type == AUDIT_REPLACE:
                    self.replace_requests += 1
                elif message.type < AUDIT_FIRST_USER_MSG:
                    self.control_messages += 1
                else:  # a record behind a control message in one datagram (never seen)
                    records.append((message.type, message.payload, node))
        return records

    def close(self) -> None:
        """Close our socket; a borrowed one stays open for its owner (the KernelSession)."""
        if not self._borrowed:
            self._conn.close()
