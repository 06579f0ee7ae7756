"""The C implementation of the tree keeper's per-event enrichment, when built and allowed.

``treekeeper/csrc/enrich.c`` implements :func:`treekeeper.enrich.enrich_doc` (``enrich``)
and the plain case of ``ProcessTable._observe`` (``observe_plain``: a known process doing
no fork, exec or exit). Each returns True when it did the work exactly as the Python code
would, and False, having changed nothing, when it leaves the event to Python, which stays
the reference; tests/test_native_enrich.py holds the two equal.

The C module reads treekeeper.tree's classes when it is imported, so tree.py loads it on
its last line. ``AUDITSTREAM_NATIVE`` chooses (:mod:`auditstream.native`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from auditstream.native import load_native

if TYPE_CHECKING:
    from treekeeper.tree import ProcessTable

EnrichFn = Callable[["ProcessTable", dict[str, Any]], bool]
ObserveFn = Callable[["ProcessTable", dict[str, Any]], bool]


def native_enrich() -> EnrichFn | None:
    """The C ``enrich_doc`` (None: not built or not allowed)."""
    function: EnrichFn | None = load_native("treekeeper.native_enrich", "enrich")
    return function


def native_observe_plain() -> ObserveFn | None:
    """The C check-and-bookkeeping of a plain event's observe (None: not built or not allowed)."""
    function: ObserveFn | None = load_native("treekeeper.native_enrich", "observe_plain")
    return function
