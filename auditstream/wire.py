"""Frames between stages: ``[kind, seq, body]`` over ZeroMQ PUSH/PULL.

``kind`` is a short ASCII tag, ``seq`` 8 bytes big endian (top 16 bits: the
sender's index, low 48 bits: its counter) so a receiver counts gaps per sender,
``body`` msgpack with bytes kept as bytes. Records and events travel in batches:
per-message overhead, not parsing, is what limits a Python pipeline.

An ``events`` frame carries its events' ECS docs as ONE JSON text (``docs_json``, a fourth
frame part: msgpack would copy it in and out, :meth:`Outlet.send_packed`, :meth:`Inlet.recv`):
the tree keeper decodes it with one ``orjson.loads``, ~30 % fewer instructions than
msgpack decoding the same nested dicts (:func:`pack_events_body`, :func:`events_of`).
``heads_json`` says where each doc is in that text and, for an audit event, where its
``process`` is and the few fields the tree keeper reads: a tree keeper that only writes
JSON lines decodes those and each ``process``, not the docs (:func:`events_with_heads`,
auditstream/doc_text.py).

Redelivery (docs/recovery.md) adds kinds: ``resume`` and ``stop`` (receiver to
assembler), ``hello`` and ``ack`` (tree keeper to receiver, on a hop of its own where
the tree keeper binds in its own directory and the receiver connects).
Its sockets set ZMQ_IMMEDIATE, so nothing queues for a peer that is not there, and
watch their connections (:class:`PeerWatch`) to learn that a peer came back.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import zmq

from auditstream.doc_text import DOC_TEXT, ENCODE_DOCS, HASH_PROBE, PROCESS_KEY, DocText
from auditstream.native import load_native

RECORDS = b"records"
EVENTS = b"events"
EOF_KIND = b"eof"
RESUME = b"resume"  # receiver -> assembler: the batch stream (re)starts here (docs/recovery.md)
STOP = b"stop"  # receiver -> assembler: everything is durable, exit
# receiver -> assembler, live with several assemblers: {"read_to": [ms, serial]}, the newest
# record read, when every record of that assembler read before it has been sent to it
TICK = b"tick"
HELLO = b"hello"  # tree keeper -> receiver: its token, on every (re)connect
ACK = b"ack"  # tree keeper -> receiver: batches below a number are durable in every sink

_SEQ = struct.Struct(">Q")
_COUNTER_BITS = 48
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1


DOCS_JSON = "docs_json"  # events body field: JSON list of the events' docs, null: doc in msgpack
# events body field: JSON list, per event: null (doc not in docs_json), [start, end] of its doc
# in docs_json, or [start, end, process start, process end, head] (auditstream/doc_text.py)
HEADS_JSON = "heads_json"
# events body field beside heads_json: the assembler's doc_text.HASH_PROBE. The heads' record
# hashes are fingerprints only for a tree keeper whose hash() agrees (one PYTHONHASHSEED).
HASH_PROBE_FIELD = "hash_probe"
# events body field, live: [event ms, serial] below which the assembler has sent every
# event it has seen (treekeeper/reorder.py releases on it)
SENT_BELOW = "sent_below"
# Ext types of the tolerant packer: a doc orjson refuses travels in msgpack, and must not
# break the frame even where msgpack alone would refuse it too.
_BIG_INT_EXT = 1  # an int beyond 64 bits, as hex text: comes back as the same int
_OPAQUE_EXT = 2  # an object neither can hold, as its repr: comes back as bytes (not JSON)


# pack_events_body in C for a batch of written docs (auditstream/csrc/wire.c; this
# module's Python is the reference): (body, docs_json), or None where it declines.
PACK_WRITTEN: (
    Callable[[list[dict[str, Any]], dict[str, Any], bool, int], tuple[bytes, bytes] | None] | None
) = load_native("auditstream.native_wire", "pack_written_events")
# msgpack.packb in C for None, bool, 64-bit int, str, bytes, list, tuple and dict values
# (None: anything else, which msgpack packs or refuses as before).
PACK_SIMPLE: Callable[[Any], bytes | None] | None = load_native(
    "auditstream.native_wire", "pack_simple"
)


class DocsError(ValueError):
    """An events frame whose ``docs_json`` does not decode to one entry per event."""


@dataclass(slots=True)
class PackedEvents:
    """An events frame ready to send, and which docs could not travel as JSON."""

    body: bytes  # msgpack, without docs_json
    docs_json: bytes  # the frame's last part (:meth:`Outlet.send_packed`)
    msgpack_docs: int  # docs that stayed in the msgpack part (not JSON-encodable)
    first_error: str  # why the first of them was refused ("" when none was)

    def unpacked(self) -> Any:
        """The body as the tree keeper's inlet reads it (:func:`events_body`)."""
        return events_body(self.body, self.docs_json)


def pack_events_body(
    events: list[dict[str, Any]], fields: dict[str, Any], *, heads: bool = True
) -> PackedEvents:
    """The msgpack body ``{"events": [...], "heads_json": bytes, **fields}`` of an events
    frame and its ``docs_json``, which travels as a frame part of its own (msgpack would
    copy its ~1 KB per event in and out).

    Each event's doc goes into one JSON list (auditstream/doc_text.py ``encode_docs``)
    and the event travels with ``"doc": None`` in its place; a doc orjson refuses (or one
    that is not a dict) stays in its event, as it always travelled, and gets ``null`` in
    the list. With ``heads`` (a tree keeper that reads them: sinks.sinks_take_doc_text)
    each audit doc's head and where its ``process`` is go in ``heads_json``. The events
    given are not changed.
    """
    if PACK_WRITTEN is not None:  # every doc written by the assembler's C writer: C here too
        written = PACK_WRITTEN(events, fields, heads, HASH_PROBE)
        if written is not None:
            return PackedEvents(written[0], written[1], 0, "")
    encoded = ENCODE_DOCS(events, heads)
    slim, refused = encoded.slim, encoded.refused
    for index in refused:
        if "doc" in events[index]:  # an event without one keeps having none
            slim[index]["doc"] = _transportable(events[index]["doc"])
    body: dict[str, Any] = {"events": slim, **fields}
    if encoded.heads is not None:
        # Cannot fail for docs that were encoded; if it did, the docs would travel whole.
        with contextlib.suppress(orjson.JSONEncodeError):
            body[HEADS_JSON] = orjson.dumps(encoded.heads)
            body[HASH_PROBE_FIELD] = HASH_PROBE
    try:
        packed = pack_body(body)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        packed = _pack_tolerant(body)
    first_error = next(iter(refused.values()), "")
    return PackedEvents(packed, encoded.docs_json, len(refused), first_error)


def events_body(body: bytes, docs_json: bytes | None) -> Any:
    """An events frame's body unpacked, with its ``docs_json`` part (if any) in it."""
    unpacked = unpack_body(body)
    if docs_json is not None and type(unpacked) is dict:
        unpacked[DOCS_JSON] = docs_json
    return unpacked


def _transportable(doc: Any) -> Any:
    """The doc itself when msgpack can carry it, else bytes naming why (the sinks mark it)."""
    if doc is None:
        return None
    try:  # there and back, nested as deep as in the body: the unpacker nests less deep
        unpack_body(_pack_tolerant({"events": [{"doc": doc}]}))
    except (ValueError, TypeError, OverflowError, msgpack.StackError) as err:
        reason = str(err) or "nested too deep"
        return f"doc not transportable: {type(err).__name__}: {reason}".encode()
    return doc


def _tolerant_default(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, int):
        return msgpack.ExtType(_BIG_INT_EXT, format(obj, "x").encode())
    return msgpack.ExtType(_OPAQUE_EXT, repr(obj).encode("utf-8", "backslashreplace"))


def _pack_tolerant(body: Any) -> bytes:
    """msgpack that also carries lone surrogates, ints beyond 64 bits and unknown objects."""
    return msgpack.packb(  # type: ignore[no-any-return]
        body, use_bin_type=True, unicode_errors="surrogatepass", default=_tolerant_default
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _BIG_INT_EXT:
        try:
            return int(data, 16)
        except ValueError:
            return data  # not what _tolerant_default wrote: keep the bytes, do not fail the frame
    if code == _OPAQUE_EXT:
        return data
    return msgpack.ExtType(code, data)


def events_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of an events frame body with their docs back in place (one ``orjson.loads``).

    A body without ``docs_json`` (an older assembler) is returned as it is. Raises
    :class:`DocsError` when ``docs_json`` is not a JSON list with one entry per event.
    """
    events: list[dict[str, Any]] = body["events"]
    docs_json = body.get(DOCS_JSON)
    if docs_json is None:
        return events
    docs = _json_list(docs_json, "docs_json", "docs", len(events))
    for event, doc in zip(events, docs, strict=True):
        if doc is not None:
            event["doc"] = doc
    return events


def _json_list(text: Any, field: str, noun: str, count: int) -> list[Any]:
    """``text`` decoded as a JSON list of ``count`` items; :class:`DocsError` naming ``field`` else."""
    try:
        items = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as err:
        raise DocsError(f"{field} does not decode: {err}") from None
    if not isinstance(items, list) or len(items) != count:
        found = f"{len(items)} {noun}" if isinstance(items, list) else type(items).__name__
        raise DocsError(f"{field} holds {found} for {count} events")
    return items


def events_with_heads(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of an events frame body, each audit event's doc as its head with its text.

    A split doc (auditstream/doc_text.py) becomes its head in ``event["doc"]`` (the fields
    the tree keeper reads, with the doc's ``process`` decoded from its text in place of
    the head's null) and its text in ``event["doc_text"]``;
    the jsonl sink writes the line from both. Other docs are decoded one by one. A body
    without ``heads_json``, or from a sender whose ``hash()`` differs from ours (its record
    hashes would never match: :func:`hashes_agree`), is read by :func:`events_of`. Raises
    :class:`DocsError` when ``heads_json`` does not fit ``docs_json`` or the events; no
    event is changed then.
    """
    heads_json = body.get(HEADS_JSON)
    docs_json = body.get(DOCS_JSON)
    if heads_json is None or type(docs_json) is not bytes or not hashes_agree(body):
        return events_of(body)
    events: list[dict[str, Any]] = body["events"]
    heads = _json_list(heads_json, "heads_json", "heads", len(events))
    if _NATIVE_PLACE is not None and _NATIVE_PLACE(events, heads, docs_json, orjson.loads):
        return events  # every entry fitted: placed in C (False: it changed nothing)
    placed = [_place(entry, docs_json) for entry in heads]
    for event, (doc, text) in zip(events, placed, strict=True):
        if doc is not None:
            event["doc"] = doc
        if text is not None:
            event[DOC_TEXT] = text
    return events


def hashes_agree(body: dict[str, Any]) -> bool:
    """The sender's hash() is ours: its heads' record hashes can be compared with ours."""
    return body.get(HASH_PROBE_FIELD) == HASH_PROBE


# The loop below over _place in C (auditstream/csrc/doc_text.c) where built and allowed;
# ~1 µs per event of the tree keeper. An event whose process text is its predecessor's gets
# a copy of that one's dict: a process's events come together, and decoding the text was
# ~0.6 µs per event. tests/test_native_doc_text.py holds the two equal.
_NATIVE_PLACE: Callable[[list[Any], list[Any], bytes, Callable[..., Any]], bool] | None = (
    load_native("auditstream.native_doc_text", "place_heads")
)
_NOTHING: tuple[None, None] = (None, None)
_OPEN_BRACE, _CLOSE_BRACE = ord("{"), ord("}")


def _place(entry: Any, docs_json: bytes) -> tuple[Any, DocText | None]:
    """(doc or head, its text or None) of one ``heads_json`` entry; DocsError if it does not fit."""
    if entry is None:
        return _NOTHING  # the doc travelled in the msgpack part (or there is none)
    try:
        start, end = entry[0], entry[1]
        if not (0 < start < end < len(docs_json)) or (
            docs_json[start] != _OPEN_BRACE or docs_json[end - 1] != _CLOSE_BRACE
        ):
            raise ValueError(f"no doc at {start}..{end}")
        if len(entry) == 2:
            return orjson.loads(memoryview(docs_json)[start:end]), None
        at, until, head = entry[2], entry[3], entry[4]
        if not (start < at <= until < end) or docs_json[at - len(PROCESS_KEY) : at] != PROCESS_KEY:
            raise ValueError(f"no process value at {at}..{until}")
        if type(head) is not dict or "process" not in head or head["process"] is not None:
            raise ValueError("a head without process's place (null)")
        process = orjson.loads(memoryview(docs_json)[at:until])
        if type(process) is not dict:
            raise ValueError(f"process at {at}..{until} is not an object")
        head["process"] = process
        return head, (docs_json[start:at], docs_json[until:end])
    except (ValueError, TypeError, IndexError, KeyError) as err:  # JSONDecodeError too
        raise DocsError(f"heads_json entry {str(entry)[:80]} does not fit: {err}") from None


def pack_body(body: Any) -> bytes:
    """``msgpack.packb(body, use_bin_type=True)``; in C where built for the plain values every
    frame holds (auditstream/csrc/wire.c; a records batch: ~85 → ~37 ns per record)."""
    if PACK_SIMPLE is not None:
        packed = PACK_SIMPLE(body)
        if packed is not None:
            return packed
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_body(raw: bytes, *, lists: bool = True) -> Any:
    """A frame's body; ``lists=False`` gives arrays as tuples (a records frame: a tuple row is
    one allocation instead of a list's two, ~13 ns less per record to make and free)."""
    # surrogatepass and the ext hook read what _pack_tolerant wrote; valid UTF-8 decodes as before.
    return msgpack.unpackb(
        raw,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogatepass",
        ext_hook=_ext_hook,
        use_list=lists,
    )


RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 1000


def connect_soon(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Connect, retrying every 10 ms at first (doubling up to 1 s) while nobody listens.

    Stages start together, so a connect usually comes before the peer binds its ipc
    path; ZeroMQ's default retry (every 100 ms) held every replay up to 100 ms."""
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.connect(endpoint)


class Outlet:
    """The sending end of one hop: a PUSH socket with a bounded queue."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        sender: int = 0,
        hwm: int = 64,
        immediate: bool = False,
        watch: bool = False,
        bind: bool = False,
    ) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        # -1: a finite source's tail is delivered before the process exits.
        self.sock.setsockopt(zmq.LINGER, -1)
        if immediate:  # queue only for a connected peer: a dead one must not swallow frames
            self.sock.setsockopt(zmq.IMMEDIATE, 1)
        # The monitor exists before connect(), so the first connection is seen too.
        self.watch = PeerWatch(self.sock) if watch else None
        if bind:  # the ack hop: the tree keeper binds in its own directory
            self.sock.bind(endpoint)
        else:
            connect_soon(self.sock, endpoint)
        self.endpoint = endpoint
        self._sender = sender << _COUNTER_BITS
        self._counter = 0

    def send(self, kind: bytes, body: Any, *, block: bool = True) -> bool:
        """Send one frame; with ``block=False`` return False if the peer is full."""
        seq = _SEQ.pack(self._sender | self._counter)
        flags = 0 if block else zmq.NOBLOCK
        try:
            self.sock.send_multipart([kind, seq, pack_body(body)], flags=flags, copy=False)
        except zmq.Again:
            return False
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return True

    def send_packed(
        self, kind: bytes, packed: bytes, *, tail: bytes | None = None, block: bool = True
    ) -> bool:
        """:meth:`send` for a body already packed (the receiver's replay buffer keeps bytes);
        ``tail``: an events frame's ``docs_json``, a part of its own."""
        seq = _SEQ.pack(self._sender | self._counter)
        parts = [kind, seq, packed] if tail is None else [kind, seq, packed, tail]
        try:
            self.sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return True

    def writable(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` until a frame can be sent without blocking."""
        return bool(self.sock.poll(timeout_ms, zmq.POLLOUT))

    def close(self, linger_ms: int | None = None) -> None:
        """Close; with ``linger_ms`` give up on undelivered frames after that long."""
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger=linger_ms)


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a ZeroMQ monitor message (its first frame: u16 event, u32 value).

    Read here rather than with zmq.utils.monitor, whose import pulls in asyncio (~25 ms
    of every stage's start)."""
    return int.from_bytes(frames[0][:2], sys.byteorder)


class PeerWatch:
    """Counts completed handshakes of a connecting socket: a new one means a peer (re)joined."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self.joins = 0
        self.leaves = 0
        self.connected = False

    def poll(self) -> int:
        """Read pending monitor events; return how many peers joined since the last call."""
        joined = 0
        while self._monitor.poll(0):
            event = monitor_event(self._monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                joined += 1
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.leaves += 1
                self.connected = False
        self.joins += joined
        return joined

    @property
    def monitor(self) -> zmq.Socket[bytes]:
        """The monitor socket, readable once an event waits for ``poll``: to wait on with others."""
        return self._monitor

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)


@dataclass(slots=True)
class Frame:
    kind: bytes
    sender: int
    counter: int
    body: Any


@dataclass(slots=True)
class InletStats:
    frames: int = 0
    gaps: int = 0  # frames missing between two received ones, per sender, added up
    sender_restarts: int = 0  # a sender started counting from 0 again
    expected: dict[int, int] = field(default_factory=dict)


class Inlet:
    """The receiving end of one hop: a bound PULL socket that counts sequence gaps."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        hwm: int = 64,
        connect: bool = False,
    ) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if connect:  # the ack hop: the receiver connects to the tree keeper
            connect_soon(self.sock, endpoint)
        else:
            self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.stats = InletStats()

    def recv(self, timeout_ms: int | None = None) -> Frame | None:
        """Next frame, or None when ``timeout_ms`` passes first."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            return None
        kind, seq_raw, body, *tail = self.sock.recv_multipart()
        (seq,) = _SEQ.unpack(seq_raw)
        sender, counter = seq >> _COUNTER_BITS, seq & _COUNTER_MASK
        expected = self.stats.expected.get(sender)
        if expected is not None and counter != expected:
            if counter == 0:
                self.stats.sender_restarts += 1
            else:
                self.stats.gaps += (counter - expected) & _COUNTER_MASK
        self.stats.expected[sender] = (counter + 1) & _COUNTER_MASK
        self.stats.frames += 1
        if tail:  # an events frame's docs_json
            return Frame(kind, sender, counter, events_body(body, tail[0]))
        return Frame(kind, sender, counter, unpack_body(body, lists=kind != RECORDS))

    def close(self) -> None:
        self.sock.close()
