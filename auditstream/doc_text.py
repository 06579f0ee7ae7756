"""An event doc as the JSON text the assembler wrote, around a ``process`` the tree keeper edits.

The tree keeper reads a dozen fields of a doc and changes only ``process`` (and adds
``container``, treekeeper/enrich.py), yet decoding the whole doc was ~40 % of its CPU.
So the assembler marks, in each doc's JSON text, where the value of the top-level
``process`` key is, and sends a *head*: a small dict of the fields the tree keeper
reads (:data:`HEAD_FIELDS`). The tree keeper decodes only the heads; a jsonl line is
the text before ``process``, the enriched ``process``, and the text after it
(:func:`doc_line`), the same bytes ``orjson.dumps`` of the whole enriched doc gives.

A doc is split only when that is exact: ``process`` is a dict, there is no
``container`` yet (enrichment appends it as the last key), ``auditd.records`` is a
non-empty list (dedupe reads it; markers are never split) and the text
``"process":{...}`` occurs once in the doc's text.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from auditstream.native import load_native

PROCESS_KEY = b'"process":'
_CONTAINER_KEY = b',"container":'
# What the tree keeper reads of an audit event doc (tree.py, enrich.py, dedupe.py, pipeline.py).
HEAD_AUDITD = ("result", "records")
HEAD_DATA = ("syscall", "exit", "a0")

DocText = tuple[bytes, bytes]  # (text before process's value, text after it): doc_line()
DOC_TEXT = "doc_text"  # the event field that holds a split doc's DocText (in the tree keeper)


def split_at_process(doc: dict[str, Any], text: bytes) -> tuple[int, int, dict[str, Any]] | None:
    """(start, end) of ``process``'s value in ``text`` (``orjson.dumps(doc)``) and the doc's
    head, or None when the doc must travel whole."""
    process = doc.get("process")
    if type(process) is not dict or "container" in doc:
        return None
    auditd = doc.get("auditd")
    if type(auditd) is not dict:
        return None
    records = auditd.get("records")
    if type(records) is not list or not records:
        return None
    value = orjson.dumps(process)
    at = text.find(PROCESS_KEY)  # a short needle: several times faster to find
    if at >= 0 and text.find(PROCESS_KEY, at + 1) < 0:  # once: the top-level key
        if text[at + len(PROCESS_KEY) : at + len(PROCESS_KEY) + len(value)] != value:
            return None
    else:  # nested "process" keys too: the top-level one is where its whole value follows
        at = text.find(PROCESS_KEY + value)
        # Twice (a nested section that looks the same): which one is the top level is unknown.
        if at < 0 or text.find(PROCESS_KEY + value, at + 1) >= 0:
            return None
    head_auditd = {name: auditd[name] for name in HEAD_AUDITD if name in auditd}
    data = auditd.get("data")
    if type(data) is dict:
        head_auditd["data"] = {name: data[name] for name in HEAD_DATA if name in data}
    head: dict[str, Any] = {"process": process, "auditd": head_auditd}
    if "@timestamp" in doc:
        head["@timestamp"] = doc["@timestamp"]
    start = at + len(PROCESS_KEY)
    return start, start + len(value), head


def _native_split() -> Callable[[dict[str, Any], bytes], tuple[int, int, dict[str, Any]] | None]:
    """:func:`split_at_process` in C where built (auditstream/csrc/doc_text.c: it finds the
    end of ``process`` by scanning the text instead of encoding it again), else Python."""
    function = load_native("auditstream.native_doc_text", "split_at_process")
    if function is None:
        return split_at_process
    # C calls the Python function for what it does not do itself (nested "process" keys).
    native: Callable[[dict[str, Any], bytes], tuple[int, int, dict[str, Any]] | None]
    native = partial(function, split_at_process)
    return native


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
SPLIT_AT_PROCESS = _native_split()
