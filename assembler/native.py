"""The C implementations of the assembler's per-event work, when built and allowed.

``assembler/csrc/*.c`` implement :func:`assembler.parse.parse_record` (the usual header;
it hands anything else to the Python function) and :func:`assembler.batch.parse_batch`
with it, :func:`assembler.coalesce.coalesce` and :func:`assembler.ecs.build_doc` (for the events they know; for any other event they
return None and the Python functions do the work), ``write_doc``: build_doc's doc
written as JSON text for shipping (assembler/csrc/ecs_write.h), and ``EventCompleter``:
the stage's completion callback, which calls both C steps for an event and hands any
other to ``Assembly._complete`` (assembler/csrc/ecs_event.h). The Python functions stay the
reference; the differential tests hold the two equal (tests/test_native_*.py).

``AUDITSTREAM_NATIVE`` chooses (:mod:`auditstream.native`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from assembler.batch import BatchItem, Unparsed, parse_batch, push_items
from assembler.coalesced import Coalesced
from assembler.parse import Record
from auditstream.doc_text import WrittenDoc
from auditstream.native import load_native

CoalesceFn = Callable[[list[Record]], Coalesced | None]
BuildDocFn = Callable[[list[Record], Coalesced], dict[str, Any] | None]
WriteDocFn = Callable[[list[Record], Coalesced, str | None], WrittenDoc | None]
ParseBatchFn = Callable[[Sequence[Sequence[Any]], bool], list[BatchItem]]
PushItemsFn = Callable[
    [list[BatchItem], Any, int, bool, Callable[[Unparsed], None]], tuple[int, Record | None]
]
# EventCompleter(assembly, coalesce, fallback, completed_by) -> the completion callback
EventCompleterType = Callable[..., Callable[[list[Record], Any], None]]


def native_coalesce() -> CoalesceFn | None:
    """The C coalescer (None: not built or not allowed)."""
    function: CoalesceFn | None = load_native("assembler.native_coalesce", "coalesce")
    return function


def native_build_doc() -> BuildDocFn | None:
    """The C document builder (None: not built or not allowed)."""
    function: BuildDocFn | None = load_native("assembler.native_ecs", "build_doc")
    return function


def native_write_doc() -> WriteDocFn | None:
    """The C doc writer: the doc's JSON text and head, without the dict (None: not built or
    not allowed; there is no Python writer, the dict and orjson are the reference)."""
    function: WriteDocFn | None = load_native("assembler.native_ecs", "write_doc")
    return function


def native_event_completer() -> EventCompleterType | None:
    """The C completion callback's type (assembler/csrc/ecs_event.h): Assembly._complete
    for written docs without its Python frames (None: not built or not allowed)."""
    function: EventCompleterType | None = load_native("assembler.native_ecs", "EventCompleter")
    return function


def parse_batch_function() -> ParseBatchFn:
    """:func:`assembler.batch.parse_batch` in C where built and allowed, else the Python one."""
    function: ParseBatchFn | None = load_native("assembler.native_parse", "parse_batch")
    return parse_batch if function is None else function


def push_items_function() -> PushItemsFn:
    """:func:`assembler.batch.push_items` in C where built and allowed, else the Python one."""
    function: PushItemsFn | None = load_native("assembler.native_runs", "push_items")
    return push_items if function is None else function
