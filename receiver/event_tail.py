"""A followed log's last lines: do they leave an event unended (its EOE not yet written)?

At a follow's stop the source reads the log to its end, and auditd may be writing an
event's records just then. Stopping there completed that event with the records it had
and left the rest to the next follow, as a second, partial event. The source now lingers
(receiver/logsource.py) until the events its last lines began have their EOE, for at most
STOP_GRACE_S: auditd writes an event's records within milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditstream.logline import LineError, split_log_line
from auditstream.record_kinds import EOE_TYPE, completes_alone
from receiver.replaybuffer import serial_of

TAIL_LINES = 64  # an event's records are written together: its start is among these
STOP_GRACE_S = 1.0  # a stop waits at most this long for an unended event's other records
LINGER_POLL_S = 0.01  # how often the log is read again meanwhile

EventKey = tuple[str, int]  # (node, serial)


def unended_events(lines: Sequence[bytes]) -> set[EventKey]:
    """(node, serial) of each event that has, among ``lines``, a record that waits for an EOE
    (assembler/reassembler.py's rule) and not yet its EOE. Lines that are not records, and
    an EOE whose other records came before ``lines``, are passed over."""
    unended: set[EventKey] = set()
    for line in lines:
        try:
            record_type, data, node = split_log_line(line)
        except LineError:
            continue
        key = (node, serial_of(data))
        if record_type == EOE_TYPE:
            unended.discard(key)
        elif not completes_alone(record_type):
            unended.add(key)
    return unended


class EventTail:
    """The last TAIL_LINES lines passed on, kept without a step per line."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def saw(self, lines: list[bytes]) -> None:
        """``lines`` were passed on after the ones kept."""
        if len(lines) >= TAIL_LINES:
            self.lines = lines[-TAIL_LINES:]
        else:
            self.lines = (self.lines + lines)[-TAIL_LINES:]

    def unended(self) -> set[EventKey]:
        return unended_events(self.lines)
