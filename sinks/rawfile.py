"""The ``file`` sink: each event's raw records as audit.log lines that ausearch reads.

Every raw record ``[type, data, node]`` becomes
``auditstream.logline.format_log_line(type, data, node) + b"\\n"``, in the event's
order, EOE included, so ``ausearch -if PATH`` finds the same events as in the
input. One event's lines are written (and rotated) together.

Decisions:
- Events without raw records (``raw == []``: markers, the tree keeper's lifecycle docs
  ``process-started``/``-exec``/``-exited``) have nothing to write here: they count as
  received and ``skipped_events``, neither sent nor discarded, so ``sent_events`` is
  the events whose records reached the file and received == sent + discarded + skipped.
- An event whose ``raw`` is not a list, or none of whose records could be written
  (all malformed, below), is discarded: it had records and none reached the file.
- Stdout whose reader exited (EPIPE: ``| head``) is gone for good, as for the jsonl
  sink: ``output_closed``, and the fan-out writes nothing more to it.
- A record of type 0 (a line the receiver could not split) is written as its
  original line, ``data``, so the archive keeps what the input had.
- Line forging: ``\\n`` and ``\\r`` inside a record would start a second record
  line, so each is replaced by a space and counted in ``errors["newline_escaped"]``.
  NUL would end the record early for C readers such as ausearch, so it is replaced
  by a space too (``errors["nul_escaped"]``). The kernel never sends these bytes
  (it hex-encodes untrusted text), so any of them means a forged or damaged record.
- A node name with whitespace or control characters would shift the ``type=``
  field; those characters become ``_`` (``errors["node_escaped"]``).
- Over-long lines: ausearch reads a line in pieces of ``MAX_LINE_BYTES`` (fgets into
  auditd's 8970-byte MAX_AUDIT_MESSAGE_LENGTH buffer) and takes each further piece for
  a record of its own, so text placed at that offset would forge a record. A longer
  line is cut to ``MAX_LINE_BYTES`` (``errors["line_truncated"]``); the jsonl sink's
  ``auditd.records`` keeps the whole record.
- A record that is not ``[int, bytes, str]`` is skipped and counted
  (``errors["malformed_record"]``); the rest of the event is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditstream.logline import format_log_line
from sinks.base import Event, SinkStats
from sinks.config import FileOutputConfig, SinkConfig, file_output_config
from sinks.rotation import RotatingWriter, SinkWriteError

_TO_SPACE = bytes.maketrans(b"\n\r\x00", b"   ")
# ausearch's fgets() buffer is 8970 bytes: a line of up to 8969 bytes arrives whole.
MAX_LINE_BYTES = 8969


class RawFileSink:
    """Write events' raw records as audit.log text to a file, a FIFO or stdout (``-``)."""

    def __init__(self, name: str, output: FileOutputConfig) -> None:
        self.name = name
        self.stats = SinkStats()
        self._writer = RotatingWriter(name, output, self.stats)

    @classmethod
    def from_config(cls, cfg: SinkConfig) -> RawFileSink:
        """Build from a validated :class:`SinkConfig` of type ``file``."""
        return cls(cfg.name, file_output_config(cfg))

    @property
    def output_closed(self) -> bool:
        """Stdout's reader exited: nothing written can arrive (the fan-out stops writing)."""
        return self._writer.output_closed

    def write_batch(self, events: Sequence[Event]) -> None:
        """Buffer each event's records in order; raise SinkWriteError after counting a loss."""
        self.stats.received_events += len(events)
        for done, event in enumerate(events):
            if _has_no_records(event):
                self.stats.skipped_events += 1  # a marker or lifecycle doc: nothing to write
                continue
            chunk = self._event_lines(event)
            if not chunk:  # it had records, none writable (counted in errors)
                self.stats.discarded_events += 1
                continue
            try:
                self._writer.append(chunk)
            except SinkWriteError:
                rest = events[done + 1 :]
                skipped = sum(1 for later in rest if _has_no_records(later))
                self.stats.skipped_events += skipped
                self.stats.discarded_events += len(rest) - skipped
                raise

    def flush(self) -> None:
        """Hand buffered lines to the OS (fsync when configured)."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the file (stdout stays open)."""
        self._writer.close()

    def _event_lines(self, event: Event) -> bytes:
        try:
            raw = event["raw"]
        except (KeyError, TypeError):
            self.stats.error("malformed_record")
            return b""
        if not isinstance(raw, list | tuple):
            self.stats.error("malformed_record")
            return b""
        lines = [line for record in raw if (line := self._record_line(record))]
        return b"".join(lines)

    def _record_line(self, record: object) -> bytes:
        if not isinstance(record, list | tuple) or len(record) != 3:
            self.stats.error("malformed_record")
            return b""
        number, data, node = record
        if isinstance(number, bool) or not isinstance(number, int):
            self.stats.error("malformed_record")
            return b""
        if not isinstance(data, bytes | bytearray) or not isinstance(node, str):
            self.stats.error("malformed_record")
            return b""
        text = bytes(data)
        if b"\n" in text or b"\r" in text or b"\x00" in text:
            newlines = text.count(b"\n") + text.count(b"\r")
            if newlines:
                self.stats.error("newline_escaped", newlines)
            nuls = text.count(b"\x00")
            if nuls:
                self.stats.error("nul_escaped", nuls)
            text = text.translate(_TO_SPACE)
        line = text if number == 0 else format_log_line(number, text, self._node(node))
        if len(line) > MAX_LINE_BYTES:
            self.stats.error("line_truncated")
            line = line[:MAX_LINE_BYTES]
        return line + b"\n"

    def _node(self, node: str) -> str:
        if node.isprintable() and " " not in node:
            return node
        self.stats.error("node_escaped")
        return "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in node)


def _has_no_records(event: Event) -> bool:
    """The event's ``raw`` is an empty list: a marker or lifecycle doc, nothing to write."""
    try:
        raw = event["raw"]
    except (KeyError, TypeError):
        return False
    return isinstance(raw, list | tuple) and not raw
