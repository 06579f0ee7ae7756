"""assembler.native_recent.RecentKeys (C, assembler/csrc/recent.c) against assembler.recent_keys.RecentKeys."""

from __future__ import annotations

import random
from typing import Any

import pytest
from native_helpers import native_module
from test_native_runs import state
from test_reassembler import Collector, _kernel_like_rows

import assembler.reassembler as reassembler_module
from assembler.batch import parse_batch, push_items
from assembler.parse import Record
from assembler.reassembler import Reassembler
from assembler.recent_keys import RecentKeys

native_recent: Any = native_module("assembler.native_recent")
native_runs: Any = native_module("assembler.native_runs")


@pytest.mark.parametrize("capacity", [1, 2, 4, 7])
def test_c_and_python_hold_the_same_keys_in_the_same_order(capacity: int) -> None:
    """Random adds (repeats among them) leave both with the same keys, oldest first, the same length and the same answers to `in`."""
    rng = random.Random(capacity)
    ours, theirs = RecentKeys(capacity), native_recent.RecentKeys(capacity)
    for _ in range(2000):
        key = ("n", rng.randrange(12), rng.randrange(3))
        ours.add(key)
        theirs.add(key)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs) <= capacity
        probe = ("n", rng.randrange(12), rng.randrange(3))
        assert (probe in ours) == (probe in theirs)


def test_a_key_held_keeps_its_age_and_the_oldest_goes_first() -> None:
    """Adding a held key again does not make it younger; beyond capacity the oldest goes."""
    for keys in (RecentKeys(3), native_recent.RecentKeys(3)):
        for key in ("a", "b", "c", "a", "d"):
            keys.add(key)
        assert list(keys) == ["b", "c", "d"] and "a" not in keys


def test_bad_capacities_and_unhashable_keys_are_refused() -> None:
    """A capacity below 1 is a ValueError; an unhashable key a TypeError that changes nothing."""
    for make in (RecentKeys, native_recent.RecentKeys):
        with pytest.raises(ValueError, match="capacity"):
            make(0)
        keys = make(2)
        keys.add("a")
        with pytest.raises(TypeError):
            keys.add(["not", "hashable"])
        assert list(keys) == ["a"]


def test_a_reassembler_with_either_gives_the_same_events_and_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same kernel-like stream through a reassembler holding the Python RecentKeys (the Python push path) and one holding the C one (the C push path): same events, same state."""
    rows = _kernel_like_rows(random.Random(5), 3000)
    results = []
    for keys_class, push in (
        (RecentKeys, push_items),
        (native_recent.RecentKeys, native_runs.push_items),
    ):
        monkeypatch.setattr(reassembler_module, "RecentKeys", keys_class)
        collector = Collector()
        reassembler: Reassembler[Record] = Reassembler(
            collector.complete, collector.on_lost, max_recent=4
        )
        for start in range(0, len(rows), 100):
            items = parse_batch([list(row) for row in rows[start : start + 100]])
            push(items, reassembler, 0, True, lambda item: None)
        reassembler.close()
        results.append((collector.events, collector.lost, state(reassembler)))
    assert results[0] == results[1]
