"""The keys of the events completed last, for telling a late record from a new event.

A dict for membership and a ring of the same keys for their age: adding one drops the
oldest once ``capacity`` are held. An OrderedDict did this with a ``popitem()`` per event,
~5 % of the assembler's time (docs/performance.md, forty-fifth pass). This class is the
reference; assembler/csrc/recent.c is the same in C (assembler.native_recent), which
assembler/csrc/runs.c adds to without a Python call (tests/test_recent_keys.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator


class RecentKeys:
    """The last ``capacity`` keys added, without repeats; the oldest goes first."""

    __slots__ = ("_at", "_keys", "_ring")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._keys: dict[Hashable, None] = {}
        self._ring: list[Hashable | None] = [None] * capacity
        self._at = 0  # the ring's next slot: its oldest key once it is full

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Hashable]:
        """The keys held, oldest first."""
        ring, at = self._ring, self._at
        return (key for key in ring[at:] + ring[:at] if key is not None)

    def add(self, key: Hashable) -> None:
        """Hold ``key`` (a key held already keeps its age); the oldest goes beyond capacity."""
        keys = self._keys
        if key in keys:
            return
        keys[key] = None
        ring, at = self._ring, self._at
        old = ring[at]
        if old is not None:
            del keys[old]
        ring[at] = key
        self._at = at + 1 if at + 1 < len(ring) else 0
