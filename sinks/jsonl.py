"""The ``jsonl`` sink: one ECS document per line, ``orjson.dumps(event["doc"]) + b"\\n"``.

An event that carries its doc's text (``doc_text``: the tree keeper decoded only the
doc's head, auditstream/doc_text.py) is written from that text with the head's
enriched ``process`` in place: the same bytes.

Docs are JSON-ready by contract and orjson escapes every control character, so a
hostile string can never start a second line. A doc orjson refuses (bytes, lone
surrogates, integers beyond 64 bits, nesting deeper than 254, or a doc that is not
an object) is counted as ``errors["encode"]`` and as discarded, and an
``encode-error`` marker line (event key and reason) takes its place, so the gap is
visible in the archive. Buffering, rotation and write-error accounting are
:class:`sinks.rotation.RotatingWriter`'s; the lines a pipe took before its reader went
away count as sent.

Stdout whose reader has exited (EPIPE: ``| head``) is gone for good: the sink says so
(``output_closed``) and the fan-out writes nothing more to it (sinks/fanout.py). A named
FIFO is not: the next write opens it again and waits for a new reader.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from auditstream.doc_text import DOC_TEXT, doc_line
from auditstream.native import load_native
from sinks.base import Event, SinkStats
from sinks.config import FileOutputConfig, SinkConfig, file_output_config
from sinks.fanout import event_key, marker_doc
from sinks.rotation import RotatingWriter, SinkWriteError

_ERROR_TEXT_MAX = 200
# _encode over a run of events in C (auditstream/csrc/doc_text.c) where built and allowed:
# ~0.5 µs per line of Python frames. It leaves any event it does not encode exactly as
# _encode would (an odd doc, a refusal) to _encode. tests/test_native_doc_text.py.
_NATIVE_LINES: Callable[..., tuple[bytes, int]] | None = load_native(
    "auditstream.native_doc_text", "encode_lines"
)


@dataclass(frozen=True, slots=True)
class EncodedLines:
    """A batch's lines, one per event in order, made ahead by :meth:`JsonlSink.encode`."""

    lines: bytes


class JsonlSink:
    """Write each event's ``doc`` as one JSON line to a file, a FIFO or stdout (``-``)."""

    def __init__(self, name: str, output: FileOutputConfig) -> None:
        self.name = name
        self.stats = SinkStats()
        self._writer = RotatingWriter(name, output, self.stats, events_in=_lines_in)

    @property
    def output_closed(self) -> bool:
        """Stdout's reader exited: nothing written can arrive (the fan-out stops writing)."""
        return self._writer.output_closed

    @classmethod
    def from_config(cls, cfg: SinkConfig) -> JsonlSink:
        """Build from a validated :class:`SinkConfig` of type ``jsonl``."""
        return cls(cfg.name, file_output_config(cfg))

    def write_batch(self, events: Sequence[Event]) -> None:
        """Encode and buffer the events in order; raise SinkWriteError after counting a loss."""
        self.stats.received_events += len(events)
        batch = events if type(events) is list else list(events)
        done = 0
        while done < len(batch):
            if _NATIVE_LINES is not None:
                most, enough = self._writer.room()
                lines, upto = _NATIVE_LINES(
                    orjson.dumps, orjson.OPT_APPEND_NEWLINE, batch, done, most, enough
                )
                if upto > done:
                    self._append(lines, upto - done, len(batch) - upto)
                    done = upto
                    continue
            line, counted_events = self._encode(batch[done])
            done += 1
            self._append(line, counted_events, len(batch) - done)

    def encode(self, events: Sequence[Event]) -> EncodedLines | None:
        """Every event's line, when the C encoder takes them all; None leaves the batch to
        :meth:`write_batch` (and its encode-error markers). Reads no state of the sink: the
        fan-out calls it from the submitting thread (:class:`sinks.base.EncodingAhead`)."""
        if _NATIVE_LINES is None or not events:
            return None
        batch = events if type(events) is list else list(events)
        lines, upto = _NATIVE_LINES(
            orjson.dumps, orjson.OPT_APPEND_NEWLINE, batch, 0, sys.maxsize, sys.maxsize
        )
        return EncodedLines(lines) if upto == len(batch) else None

    def write_encoded(self, encoded: EncodedLines, events: int) -> None:
        """Buffer the lines :meth:`encode` made of ``events`` events, cut after the last
        line that fits where the file rotates; as write_batch, raise SinkWriteError after
        counting a loss."""
        self.stats.received_events += events
        data, start, left = encoded.lines, 0, events
        while start < len(data):
            most, _ = self._writer.room()
            end = len(data)
            if end - start > most:  # one line alone when even the first does not fit
                cut = data.rfind(b"\n", start, start + max(most, 0))
                end = (cut if cut >= start else data.index(b"\n", start)) + 1
            whole = start == 0 and end == len(data)
            count = left if whole else data.count(b"\n", start, end)
            left -= count
            self._append(data if whole else data[start:end], count, left)
            start = end

    def _append(self, chunk: bytes, events: int, after: int) -> None:
        """Buffer ``chunk`` (``events`` events); when that fails, the ``after`` events behind
        it are discarded too (the writer counted the chunk's)."""
        try:
            self._writer.append(chunk, events=events)
        except SinkWriteError:
            self.stats.discarded_events += after
            raise

    def flush(self) -> None:
        """Hand buffered lines to the OS (fsync when configured)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the file (stdout stays open)."""
        self._writer.close()

    def _encode(self, event: Event) -> tuple[bytes, int]:
        """The event's line and 1, or an encode-error marker line and 0 (counted discarded)."""
        try:
            doc = event["doc"]
            if not isinstance(doc, dict):
                raise TypeError(f"doc is {type(doc).__name__}, not an object")
            text = event.get(DOC_TEXT)
            if text is not None:
                return doc_line(doc, text), 1
            return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), 1
        except (orjson.JSONEncodeError, KeyError, TypeError, ValueError) as err:
            self.stats.error("encode")
            self.stats.discarded_events += 1
            reason = f"{type(err).__name__}: {err}"[:_ERROR_TEXT_MAX]
            return self._encode_error_line(event, reason), 0

    def _encode_error_line(self, event: Event, reason: str) -> bytes:
        marker: dict[str, Any] = {
            "cause": "encode-error",
            "sink": self.name,
            "error": reason,
            "key": event_key(event),
        }
        doc = marker_doc("encode-error", marker)
        try:
            return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE, default=repr)
        except orjson.JSONEncodeError:  # the key itself is unencodable (e.g. a lone surrogate)
            marker["key"] = None
            return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE, default=repr)


def _lines_in(data: bytes) -> int:
    """The events in a start of what was written: its whole lines. An encode-error marker
    line stands for none but counts as one here: rare, and only when a write fails."""
    return data.count(b"\n")
