"""The C implementation of the tree keeper's per-event enrichment, when built and allowed.

``treekeeper/csrc/enrich.c`` implements :func:`treekeeper.enrich.enrich_doc` (``enrich``)
and the preamble of ``ProcessTable._observe`` (``observe``: event time and the actor, when
that is a known process needing no change; all of it when the event is no fork, exec or
exit). ``enrich`` returns True when it did the work exactly as the Python code would;
``observe`` True, the lifecycle docs of a fork, exec or exit it did whole (the common
cases: treekeeper/csrc/enrich_fork.h, enrich_exec.h, enrich_exit.h), or ``(actor, at_ms)``
for ``ProcessTable._act`` to finish.
Both return False, having changed nothing, when they leave the event to Python, which
stays the reference; tests/test_native_enrich.py holds the two equal. ``lifecycle_doc`` makes
:func:`treekeeper.enrich.lifecycle_doc`'s doc, and calls that function where it declines.

The C module reads treekeeper.tree's classes when it is imported, so tree.py loads it on
its last line. ``AUDITSTREAM_NATIVE`` chooses (:mod:`auditstream.native`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from auditstream.native import load_native

if TYPE_CHECKING:
    from treekeeper.tree import Process, ProcessTable

EnrichFn = Callable[["ProcessTable", dict[str, Any]], bool]
LifecycleFn = Callable[["ProcessTable", str, "Process", int], dict[str, Any]]
# True: done; a list: done, these lifecycle docs (a fork, exec or exit); (actor, at_ms):
# _act does the rest; False: _observe does it all.
ObserveFn = Callable[
    ["ProcessTable", dict[str, Any]], "bool | list[dict[str, Any]] | tuple[Process, int]"
]


def native_enrich() -> EnrichFn | None:
    """The C ``enrich_doc`` (None: not built or not allowed)."""
    function: EnrichFn | None = load_native("treekeeper.native_enrich", "enrich")
    return function


def native_observe() -> ObserveFn | None:
    """The C preamble of ProcessTable._observe (None: not built or not allowed)."""
    function: ObserveFn | None = load_native("treekeeper.native_enrich", "observe")
    return function


ApplyFn = Callable[[Any, Any, list[Any], list[Any], Callable[[Any], list[Any]] | None], None]


def native_apply_ready() -> ApplyFn | None:
    """The C loop of TreeStep._apply (treekeeper/csrc/enrich_apply.h; None: not built or not
    allowed)."""
    function: ApplyFn | None = load_native("treekeeper.native_enrich", "apply_ready")
    return function


def native_lifecycle_doc() -> LifecycleFn | None:
    """The C ``lifecycle_doc`` (None: not built or not allowed)."""
    function: LifecycleFn | None = load_native("treekeeper.native_enrich", "lifecycle_doc")
    return function
