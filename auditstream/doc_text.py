"""An event doc as the JSON text the assembler wrote, around a ``process`` the tree keeper edits.

The tree keeper reads a dozen fields of a doc and changes only ``process`` (and adds
``container``, treekeeper/enrich.py), yet decoding the whole doc was ~40 % of its CPU.
So the assembler marks, in each doc's JSON text, where the value of the top-level
``process`` key is, and sends a *head*: a small dict of the fields the tree keeper
reads (:data:`HEAD_AUDITD`, :data:`HEAD_DATA`, :data:`RECORD_HASHES`), ``process`` null
in it. The tree keeper decodes only the heads and each doc's ``process`` text, put in its
head's place (auditstream/wire.py); a jsonl line is the text before ``process``, the
enriched ``process``, and the text after it (:func:`doc_line`), the same bytes
``orjson.dumps`` of the whole enriched doc gives.

A doc is split only when that is exact: ``process`` is a dict and there is no
``container`` yet (enrichment appends it as the last key), and ``auditd.records`` is a
non-empty list (its hashes are dedupe's fingerprints; markers are never split). The
assembler encodes ``process`` alone and the rest of the doc with a mark in its place, so
it knows where ``process`` is without searching the text (:func:`encode_docs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from auditstream.native import load_native

PROCESS_KEY = b'"process":'
_CONTAINER_KEY = b',"container":'
# What the tree keeper reads of an audit event doc (tree.py, enrich.py, dedupe.py, pipeline.py).
HEAD_AUDITD = ("result",)
HEAD_DATA = ("syscall", "exit", "a0")
# In place of auditd.records: hash() of each record, dedupe's fingerprints. Decoding the
# records' text (~700 bytes per event) and hashing it were ~10 % of the tree keeper. The
# supervisor gives every stage of a run one PYTHONHASHSEED; the tree keeper reads the
# heads only from an assembler whose HASH_PROBE equals its own (auditstream/wire.py).
RECORD_HASHES = "record_hashes"
HASH_PROBE = hash("auditstream: stages of one run hash alike")
# The hashes travel as one string of 16 hex digits each (their 64 bits, two's complement):
# five JSON integers of ~19 digits made five ints and a list to decode and free per event,
# ~4 % of the tree keeper's instructions (docs/performance.md, forty-fifth pass). A list of
# ints (an older assembler's) is still read.
_HASH_DIGITS = 16
_BITS64 = (1 << 64) - 1
_SIGN64 = 1 << 63


def hashes_text(hashes: Iterable[int]) -> str:
    """``hash()`` values as a head carries them: 16 lowercase hex digits each."""
    return "".join([format(h & _BITS64, "016x") for h in hashes])


def hashes_of_text(text: str) -> list[int] | None:
    """The ``hash()`` values :func:`hashes_text` wrote; None when ``text`` is not such a
    string (then the event has no identity: dedupe keeps it)."""
    if len(text) % _HASH_DIGITS or not text.isascii():
        return None
    hashes = []
    for at in range(0, len(text), _HASH_DIGITS):
        digits = text[at : at + _HASH_DIGITS]
        if not all(c in "0123456789abcdef" for c in digits):
            return None
        value = int(digits, 16)
        hashes.append(value - (1 << 64) if value & _SIGN64 else value)
    return hashes


DocText = tuple[bytes, bytes]  # (text before process's value, text after it): doc_line()
DOC_TEXT = "doc_text"  # the event field that holds a split doc's DocText (in the tree keeper)


# orjson writes a Fragment's bytes as they are and escapes every control character in
# strings, so a NUL byte in its output is this mark and nothing else.
_MARK = orjson.Fragment(b"\0")
_NULL = b"null"


class WrittenDoc(NamedTuple):
    """An audit event's doc as the assembler wrote it in C (assembler/csrc/ecs_write.h), in
    an event's ``doc`` until it is shipped: the bytes ``orjson.dumps`` of the dict doc gives,
    where its ``process`` value is in them, and its head as JSON (:func:`encode_docs`)."""

    text: bytes
    at: int  # process's value is text[at:until]
    until: int
    head: bytes  # the head's JSON, ``"process":null`` in it


@dataclass(slots=True)
class EncodedDocs:
    """The docs of a batch of events as one JSON text, and what travels beside it."""

    docs_json: bytes  # the JSON list of the docs, ``null`` for each refused one
    heads: list[Any] | None  # per event: None, [start, end] or [start, end, at, until, head]
    slim: list[dict[str, Any]]  # the events with ``"doc": None`` (refused ones keep theirs)
    refused: dict[int, str]  # why orjson refused a doc, by event index


def encode_docs(events: list[dict[str, Any]], with_heads: bool) -> EncodedDocs:
    """The events' docs as one JSON list; with ``with_heads``, each audit doc split at its
    ``process`` (:func:`splittable`) with its head (``process`` null in it).

    A split doc's ``process`` is encoded alone and the rest of the doc with the mark in
    its place (the doc is put back as it was), so ``process`` is encoded once and found
    without a search: the bytes are those of ``orjson.dumps(doc)``.
    """
    pieces: list[bytes] = [b"["]
    heads: list[Any] = []
    slim: list[dict[str, Any]] = []
    refused: dict[int, str] = {}
    start = 1
    for index, event in enumerate(events):
        if index:
            pieces.append(b",")
            start += 1
        doc = event.get("doc")
        slim_event = dict(event)
        head: list[Any] | None = None
        if type(doc) is WrittenDoc:  # written already, and always splittable
            text = doc.text
            end = start + len(text)
            if with_heads and event.get("raw"):
                fragment = orjson.Fragment(doc.head)
                head = [start, end, start + doc.at, start + doc.until, fragment]
            else:
                head = [start, end]
            pieces.append(text)
            slim_event["doc"] = None
        elif type(doc) is not dict:  # missing or not an object: the sinks report it, as before
            refused[index] = "doc is missing" if doc is None else f"doc is {type(doc).__name__}"
        else:
            try:
                split = _encode_split(doc, start) if with_heads and event.get("raw") else None
                if split is None:
                    text = orjson.dumps(doc)
                    head = [start, start + len(text)]
                    pieces.append(text)
                else:
                    head, texts = split
                    pieces.extend(texts)
                slim_event["doc"] = None  # keeps the key's place in the dict
            except orjson.JSONEncodeError as err:
                refused[index] = str(err)
        if head is None:
            pieces.append(_NULL)
            start += len(_NULL)
        else:
            start = head[1]
        heads.append(head)
        slim.append(slim_event)
    pieces.append(b"]")
    return EncodedDocs(b"".join(pieces), heads if with_heads else None, slim, refused)


def splittable(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(process, auditd) of a doc that may travel split, else None: ``process`` is a dict,
    there is no ``container`` yet and ``auditd.records`` is a non-empty list."""
    process = doc.get("process")
    if type(process) is not dict or "container" in doc:
        return None
    auditd = doc.get("auditd")
    if type(auditd) is not dict:
        return None
    records = auditd.get("records")
    if type(records) is not list or not records:
        return None
    return process, auditd


def _encode_split(doc: dict[str, Any], start: int) -> tuple[list[Any], list[bytes]] | None:
    """(head entry, [text before process, process, text after]) of a doc at ``start`` in
    docs_json, or None when it does not split; raises what orjson raises."""
    found = splittable(doc)
    if found is None:
        return None
    process, auditd = found
    value = orjson.dumps(process)
    doc["process"] = _MARK  # the key keeps its place
    try:
        text = orjson.dumps(doc)
    finally:
        doc["process"] = process
    at = text.find(b"\0")
    if at < 0 or text.find(b"\0", at + 1) >= 0:  # the mark's bytes in a Fragment of the doc
        return None
    head_auditd = {name: auditd[name] for name in HEAD_AUDITD if name in auditd}
    head_auditd[RECORD_HASHES] = hashes_text(
        hash(r) for r in auditd["records"] if isinstance(r, str)
    )
    data = auditd.get("data")
    if type(data) is dict:
        head_auditd["data"] = {name: data[name] for name in HEAD_DATA if name in data}
    head: dict[str, Any] = {"process": None, "auditd": head_auditd}
    if "@timestamp" in doc:
        head["@timestamp"] = doc["@timestamp"]
    at += start
    entry = [start, start + len(text) - 1 + len(value), at, at + len(value), head]
    return entry, [text[: at - start], value, text[at - start + 1 :]]


EncodeDocsFn = Callable[[list[dict[str, Any]], bool], EncodedDocs]


def bind_native_encode(function: Callable[..., Any]) -> EncodeDocsFn:
    """The C ``encode_docs`` (auditstream/csrc/doc_text.c) as :func:`encode_docs` is called:
    orjson's functions and :class:`WrittenDoc` come as its first arguments."""

    def native(events: list[dict[str, Any]], with_heads: bool) -> EncodedDocs:
        return EncodedDocs(
            *function(
                orjson.dumps,
                orjson.Fragment,
                orjson.JSONEncodeError,
                WrittenDoc,
                events,
                with_heads,
            )
        )

    return native


def _native_encode() -> EncodeDocsFn:
    """:func:`encode_docs` in C where built, else Python."""
    function = load_native("auditstream.native_doc_text", "encode_docs")
    return encode_docs if function is None else bind_native_encode(function)


def doc_line(doc: dict[str, Any], text: DocText) -> bytes:
    """The JSON line of a split doc: its text with ``doc["process"]`` (and an added
    ``doc["container"]``) in place, byte for byte ``orjson.dumps`` of the whole doc + newline."""
    before, after = text
    process = orjson.dumps(doc["process"])
    container = doc.get("container")
    if container is None:
        return b"".join((before, process, after, b"\n"))
    # Enrichment appended "container" to a doc that had none: it is the doc's last key.
    return b"".join((before, process, after[:-1], _CONTAINER_KEY, orjson.dumps(container), b"}\n"))


# What the assembler calls (auditstream/wire.py): C where built.
ENCODE_DOCS = _native_encode()
