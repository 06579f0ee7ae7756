"""The C split_at_process (auditstream/csrc/doc_text.c) gives doc_text.split_at_process's result.

The reference is the Python function: hand-made docs at the edges, hypothesis-made docs
whose strings and nested keys look like the ``"process":`` key, and every doc of a
generated log go through both; the (start, end, head) or None must be equal.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib
from test_doc_text import RECORD, audit_doc

from assembler.stage import Assembly
from auditstream.config import Config
from auditstream.doc_text import split_at_process
from auditstream.logline import split_log_line

REPO = Path(__file__).resolve().parents[1]
Split = Callable[[dict[str, Any], bytes], Any]


def c_split() -> Split:
    """The C function with the Python one as its fallback; skipped when not built."""
    function = native_module("auditstream.native_doc_text").split_at_process
    return lambda doc, text: function(split_at_process, doc, text)


def assert_same(doc: dict[str, Any]) -> None:
    """C and Python split orjson.dumps(doc) the same way."""
    text = orjson.dumps(doc)
    assert c_split()(doc, text) == split_at_process(doc, text), text


def test_hand_made_docs_split_the_same() -> None:
    """First and last key, refusals, nested look-alikes and strings holding the key's text."""
    nested = {"a": {"process": {"pid": 10}}, **audit_doc()}
    nested["process"] = {"pid": 10}
    docs = [
        audit_doc(),
        {"process": {"pid": 1}, "auditd": {"records": [RECORD]}},
        {"auditd": {"records": [RECORD]}, "process": {"pid": 1}},
        {"auditd": {"records": [RECORD], "data": "not a dict"}, "process": {}, "x": 1},
        {"auditd": {"records": [RECORD]}},
        audit_doc(process=[1, 2]),
        audit_doc(container={"id": "c0"}),
        {"process": {"pid": 1}, "auditd": {"result": "success"}},
        audit_doc(auditd={"records": []}),
        nested,
        audit_doc(a={"process": {"pid": 11}}),  # a nested key with another value
        audit_doc(note='"process":{"pid":10}', process={"title": '\\"process\\":{}}"', "pid": 3}),
        audit_doc(process={"args": ["}", "{", "]", "\\", '"']}),
    ]
    for doc in docs:
        assert_same(doc)


_KEYISH = st.sampled_from(["process", "auditd", "records", "container", "a", "@timestamp", "data"])
_TEXTISH = st.lists(
    st.sampled_from(['"process":', "process", '"', "\\", "{", "}", "[", "]", ":", ",", "é", "x"]),
    max_size=6,
).map("".join)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), _TEXTISH),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_KEYISH, children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=2000, deadline=None)
@given(
    process=st.dictionaries(_KEYISH, _JSON, max_size=3),
    extra=st.dictionaries(
        _KEYISH.filter(lambda k: k not in ("process", "auditd")), _JSON, max_size=3
    ),
    records=st.lists(_TEXTISH, max_size=2),
    process_last=st.booleans(),
)
def test_any_doc_splits_the_same(
    process: dict[str, Any], extra: dict[str, Any], records: list[str], process_last: bool
) -> None:
    """Docs with look-alike keys and strings, at any position, split the same in C and Python."""
    doc: dict[str, Any] = {"auditd": {"result": "success", "records": records}, **extra}
    doc = {**doc, "process": process} if process_last else {"process": process, **doc}
    assert_same(doc)


def test_generated_log_docs_split_the_same(tmp_path: Path) -> None:
    """Every doc the assembler makes of a generated log splits the same in C and Python."""
    log = tmp_path / "gen.log"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "3000", "--out", str(log)],
        check=True,
    )
    assembly = Assembly(Config(), event_time=True)
    assembly.push_batch([list(split_log_line(line)) for line in log.read_bytes().splitlines()])
    assembly.close()
    split = 0
    for event in assembly.out:
        doc = event["doc"]
        text = orjson.dumps(doc)
        got = c_split()(doc, text)
        assert got == split_at_process(doc, text)
        split += got is not None
    assert split > 500


def test_many_calls_do_not_leak() -> None:
    """200k splits (split, refused, fallback) keep RSS within 20 MB."""
    nested = {"a": {"process": {"pid": 1}}, "process": {"pid": 1}, "auditd": {"records": ["r"]}}
    cases = [(doc, orjson.dumps(doc)) for doc in (audit_doc(), audit_doc(container={}), nested)]
    split = c_split()
    for _ in range(2000):
        for doc, text in cases:
            split(doc, text)
    before = rss_kib()
    for _ in range(70_000):
        for doc, text in cases:
            split(doc, text)
    assert rss_kib() - before < 20 * 1024
