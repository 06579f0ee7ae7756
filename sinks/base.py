"""What every sink is: a noun that takes batches of events and accounts for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# One event as the treekeeper hands it over (see docs/internals.md):
# {"key": [node, sec, msec, serial], "raw": [[type, data, node], ...], "doc": {...ECS...}}
# ("raw" is the number of records instead when no sink of the run writes raw records)
Event = Mapping[str, Any]


class SinkError(Exception):
    """A sink could not be configured or opened; the message says why."""


@dataclass(slots=True)
class SinkStats:
    """Vector's component counters for one sink.

    ``skipped_events``: events the sink has nothing to write for (the ``file`` sink's events
    without raw records), neither sent nor lost: received == sent + discarded + skipped."""

    received_events: int = 0
    sent_events: int = 0
    discarded_events: int = 0
    skipped_events: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, error_type: str, count: int = 1) -> None:
        self.errors[error_type] = self.errors.get(error_type, 0) + count


class Sink(Protocol):
    """A destination for events. Not thread-safe: one caller thread per sink."""

    name: str
    stats: SinkStats

    def write_batch(self, events: Sequence[Event]) -> None:
        """Deliver (or queue for delivery) these events, in order."""

    def flush(self) -> None:
        """Make everything written so far durable/delivered, or account for it as an error."""

    def close(self) -> None:
        """Flush and release resources; the sink is not used afterwards."""


class EncodingAhead(Protocol):
    """A sink that can encode a batch before its worker thread takes it.

    The fan-out calls :meth:`encode` in the thread that submits (the tree keeper's main
    loop, where the events were just made and are still in the CPU's caches) and hands
    the result to :meth:`write_encoded` in the sink's thread, which then only writes.
    Encoding there instead made the two threads take turns on the GIL over cold events:
    in the pipeline ~3 % of the tree keeper's CPU, in its bench's worst case a third
    (docs/performance.md, "Twenty-fifth pass")."""

    def encode(self, events: Sequence[Event]) -> Any:
        """The batch encoded (no sink state read or changed), or None to leave it to
        :meth:`Sink.write_batch`."""

    def write_encoded(self, encoded: Any, events: int) -> None:
        """Deliver the ``events`` events :meth:`encode` made ``encoded`` of, accounted as
        write_batch would account them."""
