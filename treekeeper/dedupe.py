"""Drop events that were already written: redelivery after a crash sends some twice.

An event's identity is the exact text of its raw records (``auditd.records``: each
holds the ``audit(SEC.MSEC:SERIAL)`` of the event) and its node (the ``node=`` of an
aggregated log, which the records' text leaves out), so this is the issue's (node,
timestamp, serial) key, refined to the record: an event is a duplicate when every one
of its records was already written for the same node (two hosts of an audisp-remote
log can write the very same records). So a part of an event sent again is dropped,
while a LATE record (same key, a record not seen yet) still gets through. A serial-gap
marker is identified by its range. Other markers (parse errors, kernel loss) carry
no stable identity and are never dropped: after a crash one may appear twice.

Memory is bounded: at least the newest ``capacity`` fingerprints are kept (at most
twice that), enough to cover everything the receiver can still resend. After a restart
of the tree keeper the set is rebuilt from the newest lines of each jsonl / file sink
that has a path, as many as hold ``capacity`` fingerprints (docs/recovery.md); stdout
and Kafka cannot be read back, so there a tree keeper crash can repeat events
(at-least-once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from auditstream.config import Config
from auditstream.doc_text import DOC_TEXT, RECORD_HASHES, hashes_of_text
from auditstream.escape import escape, unescape
from auditstream.logline import LineError, split_log_line, type_name
from auditstream.native import load_native
from auditstream.redelivery import resendable_records
from sinks.config import file_output_config, sink_configs_from_tables

log = logging.getLogger("auditstream.treekeeper")
READ_BACK_BLOCK_BYTES = 8 << 20
MIN_CAPACITY = 65_536
Event = dict[str, Any]


class Fingerprints(Protocol):
    """What Dedupe needs of a fingerprint set: :class:`RecentFingerprints` or its C twin."""

    capacity: int

    def __contains__(self, fingerprint: object) -> bool: ...
    def __len__(self) -> int: ...
    def add(self, fingerprint: int) -> None: ...
    def has_all(self, fingerprints: tuple[int, ...]) -> bool: ...
    def add_all(self, fingerprints: tuple[int, ...]) -> None: ...


class RecentFingerprints:
    """A set of ints that forgets its oldest members: at least the newest ``capacity`` stay.

    Two generations of sets: members go into ``_current``; when it holds ``capacity``,
    it becomes ``_previous`` and the one before is dropped. Adding is then one C-level
    ``set.update`` per event, not a loop over a deque per fingerprint, and at most
    ``2 * capacity`` members are held.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._current or fingerprint in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous - self._current)

    def add(self, fingerprint: int) -> None:
        self.add_all((fingerprint,))

    def has_all(self, fingerprints: tuple[int, ...]) -> bool:
        """Every one of them is a member."""
        current = self._current
        if current.issuperset(fingerprints):
            return True
        previous = self._previous
        if not previous:
            return False
        first = fingerprints[0]  # a new event's: in neither set (no generator for those)
        if first not in current and first not in previous:
            return False
        return all(fp in current or fp in previous for fp in fingerprints)

    def add_all(self, fingerprints: tuple[int, ...]) -> None:
        """Remember each of them as the newest."""
        current = self._current
        current.update(fingerprints)
        if len(current) >= self.capacity:
            self._previous, self._current = current, set()


def doc_fingerprints(doc: Any) -> tuple[int, ...] | None:
    """The identity of an event document, or None for events that are never deduplicated.

    Its records' hashes salted with the node its ``host.name`` names (:func:`node_salt`):
    a doc alone, read back from a sink, gives what its event gave in :meth:`Dedupe.filter`.
    """
    if not isinstance(doc, dict):
        return None
    auditd = doc.get("auditd")
    if isinstance(auditd, dict):
        records = auditd.get("records")
        if isinstance(records, list) and records:
            salt = node_salt(host_node(doc))
            if salt:
                return tuple([hash(record) ^ salt for record in records if isinstance(record, str)])
            return tuple([hash(record) for record in records if isinstance(record, str)])
    event = doc.get("event")
    if isinstance(event, dict) and event.get("action") == "events-lost":
        marker = doc.get("auditstream", {}).get("marker", {})
        host = doc.get("host", {})
        node = host.get("name", "") if isinstance(host, dict) else ""
        if isinstance(marker, dict):
            fields = ("cause", "first_serial", "last_serial", "serial_stride")
            return (hash(("events-lost", node, *(str(marker.get(f)) for f in fields))),)
    return None


def node_salt(node: str) -> int:
    """What a record's hash is XORed with to be its fingerprint: hash() of its event's node,
    0 (the hash itself) for a log without ``node=``. Two nodes' identical records then
    differ (aggregated logs: audisp-remote), and the C filter mixes it in per record with
    one XOR (treekeeper/csrc/fingerprints.c)."""
    return hash(node) if node else 0


def host_node(doc: dict[str, Any]) -> str:
    """The event key's node of a doc: its ``host.name`` with the assembler's escapes undone
    (auditstream/hostnode.py ``host_name``: exact, a plain name has no ``%``); "" when it
    has none."""
    host = doc.get("host")
    name = host.get("name") if isinstance(host, dict) else None
    if not isinstance(name, str):
        return ""
    if "%" not in name:
        return name
    try:
        return unescape(name).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate: no host_name() wrote it, it is its own node
        return name


def head_fingerprints(head: Any, node: str | None = "") -> tuple[int, ...] | None:
    """The identity of an event whose doc travelled as a head: the record hashes the
    assembler computed (auditstream/doc_text.py) salted with ``node``, the event key's
    (None: the event has no key, and so no identity); equal to :func:`doc_fingerprints`'s."""
    auditd = head.get("auditd") if isinstance(head, dict) else None
    hashes = auditd.get(RECORD_HASHES) if isinstance(auditd, dict) else None
    if type(hashes) is str:  # hashes_text's string; a list of ints from an older assembler
        hashes = hashes_of_text(hashes)
    if node is None or not isinstance(hashes, list) or not all(map(_is_int, hashes)):
        return None  # all(map(...)): no Python frame per item
    salt = node_salt(node)
    return tuple([h ^ salt for h in hashes]) if salt else tuple(hashes)


_is_int = int.__instancecheck__


def event_node(event: Event) -> str | None:
    """The node of an event's key ``[node, sec, msec, serial]``; None without such a key."""
    key = event.get("key")
    if isinstance(key, list | tuple) and key and isinstance(key[0], str):
        return key[0]
    return None


def line_fingerprint(line: bytes) -> int | None:
    """The fingerprint of one raw audit.log line (the ``file`` sink) as a record of a doc.

    The sink writes a node with spaces or control characters changed (sinks/rawfile.py):
    such a node's events read back do not match, and may be written again (at-least-once).
    """
    try:
        type_, data, node = split_log_line(line)
    except LineError:
        return None
    return hash(f"type={type_name(type_)} msg={escape(data)}") ^ node_salt(node)


# The C set and filter (treekeeper/csrc/fingerprints.c) where built and allowed; this
# module's stay the reference (tests/test_native_fingerprints.py holds them equal). The
# Python set of ~650k ints cost ~1.5 µs per event, a cache miss and a refcount per lookup.
_NATIVE_SET: Callable[[int], Fingerprints] | None = load_native(
    "treekeeper.native_fingerprints", "RecentFingerprints"
)
_NATIVE_FILTER: Callable[..., tuple[list[Event], int]] | None = load_native(
    "treekeeper.native_fingerprints", "filter_events"
)


class Dedupe:
    """Passes each event once; counts what it drops."""

    def __init__(self, capacity: int) -> None:
        self.seen: Fingerprints = (_NATIVE_SET or RecentFingerprints)(capacity)
        self.dropped = 0

    @classmethod
    def for_config(cls, cfg: Config) -> Dedupe:
        # Everything the receiver can send again: its buffers, full, for every assembler,
        # and what was acknowledged past its checkpoint; a quarter more for the records of
        # events still in the assemblers and the reorder window.
        resendable = resendable_records(cfg)
        return cls(max(MIN_CAPACITY, resendable + resendable // 4))

    def filter(self, events: list[Event]) -> list[Event]:
        """The events not written before, in order; remembers them as written."""
        if _NATIVE_FILTER is not None and type(self.seen) is _NATIVE_SET:
            passed, dropped = _NATIVE_FILTER(self.seen, events, doc_fingerprints)
            self.dropped += dropped
            return passed
        kept: list[Event] = []
        seen = self.seen
        for event in events:
            doc = event.get("doc")
            # A head (its text beside it) carries hashes of the records, its node in the key;
            # a whole doc the records, its node in host.name.
            fingerprints = (
                head_fingerprints(doc, event_node(event))
                if DOC_TEXT in event
                else doc_fingerprints(doc)
            )
            if fingerprints:
                if seen.has_all(fingerprints):
                    self.dropped += 1
                    continue
                seen.add_all(fingerprints)
            kept.append(event)
        return kept

    def learn(self, fingerprints: Iterable[int]) -> None:
        for fp in fingerprints:
            self.seen.add(fp)


def recover_sink_tails(cfg: Config, dedupe: Dedupe) -> int:
    """After a restart: cut a half-written last line, learn what the sinks already hold.

    Each sink is read back from its end until the newest ``dedupe.seen.capacity`` record
    fingerprints are known (everything a receiver can send again, whatever the size of
    a line), or its start. Returns the number of fingerprints learnt. Sinks without a
    readable path are skipped (stdout, Kafka: at-least-once after a tree keeper crash).
    """
    learnt = 0
    for sink_cfg in sink_configs_from_tables(cfg.sinks):
        if sink_cfg.type not in ("jsonl", "file"):
            continue
        path = file_output_config(sink_cfg).path
        if path == "-" or not Path(path).is_file():
            continue
        newest_first: list[tuple[int, ...]] = []
        wanted, found, lines = dedupe.seen.capacity, 0, 0
        try:
            for line in _lines_newest_first(Path(path)):
                lines += 1
                fingerprints = _line_fingerprints(line, raw=sink_cfg.type == "file")
                if fingerprints:
                    newest_first.append(fingerprints)
                    found += len(fingerprints)
                    if found >= wanted:
                        break
        except OSError as err:
            log.error("cannot read back %s for duplicate detection: %s", path, err)
            continue
        before = len(dedupe.seen)
        for fingerprints in reversed(newest_first):  # oldest first: the newest stay longest
            dedupe.learn(fingerprints)
        learnt += len(dedupe.seen) - before
        log.info("read back %d lines of %s: duplicates of them will be dropped", lines, path)
    return learnt


def _line_fingerprints(line: bytes, *, raw: bool) -> tuple[int, ...] | None:
    if raw:  # the file sink: one audit.log line is one record
        fp = line_fingerprint(line)
        return None if fp is None else (fp,)
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return doc_fingerprints(doc)


def _lines_newest_first(path: Path) -> Iterator[bytes]:
    """The whole lines of ``path`` from its last to its first, after cutting a half-written
    last one; read a block of READ_BACK_BLOCK_BYTES at a time from the end."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        end = _end_of_last_line(fh, size)
        if end < size:
            # A SIGKILL mid-write left half a line: cut it (its event was not acknowledged,
            # it comes again) so the next line does not glue onto it.
            fh.truncate(end)
            log.warning("%s: cut %d bytes of a half-written last line", path, size - end)
        carry = b""  # the start of a line that began in an earlier block
        while end > 0:
            start = max(0, end - READ_BACK_BLOCK_BYTES)
            fh.seek(start)
            lines = (fh.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""
            end = start
            yield from (line for line in reversed(lines) if line)


def _end_of_last_line(fh: BinaryIO, size: int) -> int:
    """The offset just past the file's last newline (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - READ_BACK_BLOCK_BYTES)
        fh.seek(start)
        newline = fh.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0
