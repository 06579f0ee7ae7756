"""recvmmsg(2) through ctypes: up to 64 netlink datagrams per system call.

Python's socket module has no recvmmsg. A `DatagramBatch` holds a preallocated array of
mmsghdr, each with one iovec over its own fixed slot of one buffer and its own
sockaddr_nl, and fills it with one call; the reader then takes each slot's size, flags and
sender port id. Where libc has no recvmmsg, `find_recvmmsg` returns None and the reader
keeps to one `recvfrom_into` per datagram.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
from collections.abc import Callable
from typing import TypeAlias

from auditstream.native import load_native

BATCH_SLOTS = 64
# An audit record is at most 16 + 8970 bytes (the header + MAX_AUDIT_MESSAGE_LENGTH): any
# record fits a slot; only an outsized control reply can be cut (MSG_TRUNC).
SLOT_BYTES = 9 * 1024
MSG_TRUNC = 0x20
MSG_DONTWAIT = 0x40
RECVMMSG_SYMBOL = "recvmmsg"
NLMSG_HEADER_BYTES = 16
AUDIT_FIRST_USER_MSG = 1100  # types below are control messages, from here on records
AUDIT_REPLACE = 1329  # the kernel asking the pid holder whether it is alive; not a record

# recvmmsg(fd, msgvec address, vlen, flags, timeout address or None) -> count, or -1 + errno
RecvMmsg: TypeAlias = Callable[[int, int, int, int, None], int]
# take_records(buffer, headers, names, start, count, slot_bytes, records, node) -> slot (C)
TakeRecords: TypeAlias = Callable[
    [mmap.mmap, ctypes.Array["MmsgHdr"], ctypes.Array["SockaddrNl"], int, int, int,
     list[tuple[int, bytes, str]], str],
    int,
]  # fmt: skip


class SockaddrNl(ctypes.Structure):
    """struct sockaddr_nl: who sent the datagram (nl_pid 0: the kernel)."""

    _fields_ = [
        ("nl_family", ctypes.c_ushort),
        ("nl_pad", ctypes.c_ushort),
        ("nl_pid", ctypes.c_uint32),
        ("nl_groups", ctypes.c_uint32),
    ]


class IoVec(ctypes.Structure):
    """struct iovec."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    """struct msghdr (the kernel's user_msghdr: size_t iovlen and controllen)."""

    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MmsgHdr(ctypes.Structure):
    """struct mmsghdr: a msghdr and the size the kernel put in its buffer."""

    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


# Where the per-datagram results sit, in 32-bit words, so they can be read for a whole
# batch with one strided memoryview slice instead of a ctypes object per field.
_HEADER_WORDS = ctypes.sizeof(MmsgHdr) // 4
_LEN_WORD = MmsgHdr.msg_len.offset // 4
_FLAGS_WORD = (MmsgHdr.msg_hdr.offset + MsgHdr.msg_flags.offset) // 4
_NAME_WORDS = ctypes.sizeof(SockaddrNl) // 4
_PID_WORD = SockaddrNl.nl_pid.offset // 4
_NLMSG_TYPE_HALFWORD = 2  # struct nlmsghdr: u32 nlmsg_len, then u16 nlmsg_type


def _native_take_records() -> TakeRecords | None:
    """receiver/csrc/datagrams.c's take_records, where built for these structure sizes."""
    take: TakeRecords | None = load_native("receiver.native_datagrams", "take_records")
    sizes = load_native("receiver.native_datagrams", "struct_sizes")
    if take is None or sizes is None:
        return None
    if sizes() != (ctypes.sizeof(MmsgHdr), ctypes.sizeof(SockaddrNl)):
        return None  # C's struct mmsghdr is not the one ctypes lays out here
    return take


def find_recvmmsg() -> RecvMmsg | None:
    """libc's recvmmsg, or None if ctypes cannot find it."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), RECVMMSG_SYMBOL)
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    recvmmsg: RecvMmsg = function
    return recvmmsg


class DatagramBatch:
    """The recvmmsg arguments, built once: `slots` datagrams of up to `slot_bytes` each."""

    def __init__(
        self, recvmmsg: RecvMmsg, *, slots: int = BATCH_SLOTS, slot_bytes: int = SLOT_BYTES
    ) -> None:
        if slot_bytes % 4:
            raise ValueError("batch slots must be 4-byte aligned (netlink headers are)")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._recvmmsg = recvmmsg
        # Anonymous memory: a page is backed only once a datagram lands in it.
        self.buffer = mmap.mmap(-1, slots * slot_bytes)
        self.view = memoryview(self.buffer)
        self.headers = (MmsgHdr * slots)()
        self.names = (SockaddrNl * slots)()
        self._iovecs = (IoVec * slots)()
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        for slot in range(slots):
            iovec = self._iovecs[slot]
            iovec.iov_base, iovec.iov_len = base + slot * slot_bytes, slot_bytes
            header = self.headers[slot].msg_hdr
            header.msg_name = ctypes.addressof(self.names[slot])
            # The kernel writes the sender's length back: always 12 for netlink.
            header.msg_namelen = ctypes.sizeof(SockaddrNl)
            header.msg_iov, header.msg_iovlen = ctypes.addressof(iovec), 1
        self._headers_address = ctypes.addressof(self.headers)
        self._header_words = memoryview(self.headers).cast("B").cast("I")
        self._name_words = memoryview(self.names).cast("B").cast("I")
        self._halfwords = self.view.cast("H")
        self._slot_halfwords = slot_bytes // 2

    def receive(self, fd: int, count: int) -> int:
        """Fill up to ``count`` slots from socket ``fd`` without blocking; how many were filled.

        A failed call raises OSError with its errno, which Python maps to the same classes
        a socket method raises: BlockingIOError is "nothing queued", InterruptedError EINTR.
        """
        received = self._recvmmsg(
            fd, self._headers_address, min(count, self.slots), MSG_DONTWAIT, None
        )
        if received < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return received

    def filled(self, count: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """The first ``count`` slots' sizes, msg_flags, sender port ids and nlmsg_types.

        A slot's nlmsg_type (the u16 at offset 4) means something only if its size is at
        least a netlink header. One strided slice per field: no object per datagram.
        """
        words, names = self._header_words, self._name_words
        end = count * _HEADER_WORDS
        sizes = words[_LEN_WORD:end:_HEADER_WORDS].tolist()
        flags = words[_FLAGS_WORD:end:_HEADER_WORDS].tolist()
        senders = names[_PID_WORD : count * _NAME_WORDS : _NAME_WORDS].tolist()
        types = self._halfwords[
            _NLMSG_TYPE_HALFWORD : count * self._slot_halfwords : self._slot_halfwords
        ]
        return sizes, flags, senders, types.tolist()

    def take_records(
        self, start: int, count: int, records: list[tuple[int, bytes, str]], node: str = ""
    ) -> int:
        """Append the records of slots ``start``.. to ``records`` up to the first slot that
        is not one; return that slot's index (``count``: all were).

        A whole record from the kernel (at least a netlink header, sender port id 0, not
        cut, a record type other than AUDIT_REPLACE) is (type, payload without trailing
        NULs, ``node``: live, this host's, auditstream/hostnode.py). The slot returned (a control reply, a foreign sender, a cut or short
        datagram) is for the caller to take, with :meth:`slot`, before going on from the next.
        """
        if _TAKE_RECORDS is not None:
            return _TAKE_RECORDS(
                self.buffer, self.headers, self.names, start, count, self.slot_bytes, records, node
            )
        return self.python_take_records(start, count, records, node)

    def python_take_records(
        self, start: int, count: int, records: list[tuple[int, bytes, str]], node: str = ""
    ) -> int:
        """:meth:`take_records` in Python (the reference of receiver/csrc/datagrams.c)."""
        buffer, slot_bytes, append = self.buffer, self.slot_bytes, records.append
        sizes, flags, senders, types = self.filled(count)
        slots = zip(range(count), sizes, types, senders, flags, strict=True)
        for slot, size, msg_type, sender, flag in itertools.islice(slots, start, None):
            if not (
                msg_type >= AUDIT_FIRST_USER_MSG and msg_type != AUDIT_REPLACE
                and NLMSG_HEADER_BYTES <= size <= slot_bytes and not sender
                and not flag & MSG_TRUNC
            ):  # fmt: skip
                return slot
            offset = slot * slot_bytes
            payload = buffer[offset + NLMSG_HEADER_BYTES : offset + size].rstrip(b"\x00")
            append((msg_type, payload, node))
        return count

    def slot(self, index: int) -> tuple[int, int, int]:
        """Slot ``index``'s size, msg_flags and sender port id."""
        header = self.headers[index]
        return header.msg_len, header.msg_hdr.msg_flags, self.names[index].nl_pid


_TAKE_RECORDS = _native_take_records()
