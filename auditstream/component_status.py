"""The ``component`` block every stage puts in its status file, in Vector's component terms.

``auditstream.metrics`` turns it into ``component_received_events_total``,
``component_sent_events_total``, ``component_discarded_events_total{reason}`` and
``component_errors_total{error_type,stage}``. What an "event" is depends on the
stage: the receiver counts raw records, the assemblers count records in and
events out, the tree keeper and sinks count events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Vector's error stages.
RECEIVING = "receiving"
PROCESSING = "processing"
SENDING = "sending"


@dataclass(slots=True)
class ComponentStatus:
    """One stage's counters since it started (a restart starts them from 0)."""

    id: str  # receiver, assembler-0, treekeeper
    kind: str  # source | transform | sink (Vector's component_kind)
    type: str  # netlink, file, assembler, treekeeper ...
    received_events: int = 0
    sent_events: int = 0
    discarded_events: dict[str, int] = field(default_factory=dict)  # reason -> count
    errors: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> type -> count

    def error(self, stage: str, error_type: str, count: int) -> None:
        """Set one error counter (absolute value)."""
        self.errors.setdefault(stage, {})[error_type] = count

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "type": self.type,
            "received_events": self.received_events,
            "sent_events": self.sent_events,
            "discarded_events": dict(self.discarded_events),
            "errors": {stage: dict(types) for stage, types in self.errors.items()},
        }
