"""The C reorder window (treekeeper/csrc/reorder.c) against treekeeper/reorder.py, the reference."""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treekeeper.reorder import ReorderWindow

native = pytest.importorskip(
    "treekeeper.native_reorder", reason="the C window is not built (pip install -e .)"
)


def counters(window: Any) -> tuple[Any, ...]:
    return (
        window.horizon(),
        window.timelines,
        window.last_jump_ms,
        window.released_by_claim,
        window.released_full,
    )


def random_operations(rng: random.Random, sources: int, count: int) -> list[tuple[Any, ...]]:
    """A mix of every call the tree keeper makes, with times that drift, jump back and
    repeat, serials that tie, claims, closes and whole frames with markers."""
    ops: list[tuple[Any, ...]] = []
    clock = rng.choice([0, 1_700_000_000_000, 2**63 - 5_000, 10**21])
    serial = 0
    for _ in range(count):
        kind = rng.random()
        source = rng.randrange(sources + 1)  # one more than expected: a late starter
        clock += rng.choice([0, 0, 1, 3, 20, 300])
        if rng.random() < 0.01:
            clock -= 200_000  # from here on far behind: files given newest first
        at = clock - rng.choice([0, 0, 5, 100, 400, 3_000, 50_000])  # out of order, far back
        serial += rng.choice([0, 1, 1, 2])
        if kind < 0.55:
            ops.append(("push_into", at, serial, source))
        elif kind < 0.65:
            frame = []
            for _ in range(rng.randrange(6)):
                serial += 1
                clock += rng.choice([0, 2])
                marker = rng.random() < 0.2
                key = ["node", clock // 1000, clock % 1000, serial]
                frame.append({"key": key, "raw": [] if marker else 1, "id": serial})
            ops.append(("push_frame", frame, source))
        elif kind < 0.72:
            ops.append(("see", at, source))
        elif kind < 0.82:
            ops.append(("claim", source, (clock - rng.choice([0, 50, 500]), serial)))
        elif kind < 0.86:
            ops.append(("close_source", source))
        elif kind < 0.95:
            ops.append(("due", clock + rng.choice([0, 200, 5_000])))
        elif kind < 0.97:
            ops.append(("flush",))
        else:
            ops.append(("horizon",))
    return ops


def run(window: Any, ops: list[tuple[Any, ...]]) -> list[Any]:
    """What each operation returned, with the window's counters after it."""
    seen: list[Any] = []
    item = 0
    for op in ops:
        name = op[0]
        if name == "push_into":
            out: list[Any] = []
            item += 1
            window.push_into(item, op[1], op[2], op[3], out)
            result: Any = out
        elif name == "push_frame":
            out = []
            frame, source = op[1], op[2]
            at = 0
            released = []
            while at < len(frame):  # as TreeStep.process: the caller takes each marker
                at = window.push_frame(frame, source, out, at)
                if at < len(frame):
                    released.append(("marker", at))
                    at += 1
            result = ([e["id"] if isinstance(e, dict) else e for e in out], released)
        elif name == "see":
            result = window.see(op[1], op[2])
        elif name == "claim":
            result = window.claim(op[1], op[2])
        elif name == "close_source":
            result = window.close_source(op[1])
        elif name == "due":
            result = window.due(op[1])
        elif name == "flush":
            result = window.flush()
        else:
            result = window.horizon()
        seen.append((name, result, counters(window)))
    return seen


@pytest.mark.parametrize("seed", range(60))
def test_random_operations_match_the_python_window(seed: int) -> None:
    """Every release, in order, and every counter after each call equal the reference's."""
    rng = random.Random(seed)
    sources = rng.randrange(4)
    window_ms = rng.choice([0, 5, 250])
    max_held = rng.choice([3, 50, 10_000])
    ops = random_operations(rng, sources, 400)
    kwargs = {"window_ms": window_ms, "max_held": max_held, "sources": sources}
    expected = run(ReorderWindow(**kwargs), ops)
    got = run(native.ReorderWindow(**kwargs), ops)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, (seed, step, ops[step])


def test_defaults_and_settings_read_back() -> None:
    """Constructor defaults and the jump rule are the reference's."""
    for kwargs in ({}, {"window_ms": 600}, {"window_ms": 10, "jump_ms": 77, "max_held": 5}):
        want, have = ReorderWindow(**kwargs), native.ReorderWindow(**kwargs)
        for name in ("window_ms", "max_held", "jump_ms"):
            assert getattr(have, name) == getattr(want, name), (kwargs, name)
        assert counters(have) == counters(want)


def test_times_past_int64_keep_their_order() -> None:
    """An audit header's seconds may have 18 digits: sec * 1000 passes int64 and still sorts."""
    huge = 999_999_999_999_999_999 * 1000
    for window in (native.ReorderWindow(window_ms=1000), ReorderWindow(window_ms=1000)):
        assert window.push("late", huge, 2) == []
        assert window.push("early", huge - 1, 1) == []
        assert window.push("old", huge - 5000, 1) == ["old"]
        assert window.horizon() == huge
        assert window.flush() == ["early", "late"]


def test_held_items_are_released_without_leaks() -> None:
    """Each held item is referenced once by the window and given back on release or at its end."""
    item = object()
    base = sys.getrefcount(item)
    window = native.ReorderWindow(window_ms=1_000)
    for at in range(5):
        window.push(item, at, at)
    assert sys.getrefcount(item) == base + 5
    assert window.flush() == [item] * 5
    assert sys.getrefcount(item) == base
    window.push(item, 1, 1)
    del window
    assert sys.getrefcount(item) == base


def test_what_it_cannot_order_is_a_type_error() -> None:
    """A time or source that is not an int, or a claim that is not a pair, raises TypeError."""
    window = native.ReorderWindow()
    with pytest.raises(TypeError):
        window.push("x", 1.5, 1)
    with pytest.raises(TypeError):
        window.push("x", 1, 1, "a")
    with pytest.raises(TypeError):
        window.claim(0, (1, 2, 3))
    with pytest.raises(TypeError):
        window.push_into("x", 1, 1, 0, ())  # out must be a list


def test_push_frame_leaves_odd_keys_to_the_caller() -> None:
    """A key that is not [node, int, int, int] stops push_frame at that event, as a marker does."""
    window = native.ReorderWindow(window_ms=0)
    frame = [
        {"key": ["n", 1, 0, 1], "raw": 1},
        {"key": ("n", 1, 0, 2), "raw": 1},  # a tuple: the Python loop takes it
        {"key": ["n", 1.0, 0, 3], "raw": 1},
        {"raw": 1},
    ]
    out: list[Any] = []
    assert window.push_frame(frame, 0, out, 0) == 1
    assert window.push_frame(frame, 0, out, 2) == 2
    assert window.push_frame(frame, 0, out, 3) == 3
    assert window.push_frame(frame, 0, out, 4) == 4
    assert window.flush() == [frame[0]]


def test_a_closed_source_moving_on_moves_the_horizon_when_all_are_closed() -> None:
    """With every source closed the horizon is the newest time of all, moved by a closed one's pushes."""
    for window in (
        native.ReorderWindow(window_ms=10, sources=2),
        ReorderWindow(window_ms=10, sources=2),
    ):
        window.push("a", 100, 1, 0)
        window.push("b", 200, 2, 1)
        window.close_source(0)
        window.close_source(1)
        assert window.horizon() == 200
        assert window.push("c", 500, 3, 1) == ["a", "b"]
        assert window.horizon() == 500


# ---- oldest_event_ms: treekeeper.merge.frame_order_key's loop -------------------------------

_INTS = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**64), 2**64),
    st.sampled_from(
        [-1, 0, 999, 1_790_000_000, 2**63 - 1, 2**63, 2**99, 2**100, -(2**100), 2**140]
    ),
)
_ODD = st.sampled_from([None, True, False, 1.5, "7", b"7", [], {}, (1,)])
_RAW = st.one_of(st.sampled_from([0, 1, 7, [], [b"r"], None, "", b"", "x"]), _ODD)
_KEY = st.one_of(
    st.lists(st.one_of(_INTS, _ODD, st.just("")), min_size=4, max_size=4),
    st.tuples(st.just(""), _INTS, _INTS, _INTS),  # a tuple is no key
    st.lists(_INTS, min_size=0, max_size=6),
    _ODD,
)
_EVENT = st.one_of(
    st.fixed_dictionaries({"raw": _RAW, "key": _KEY}),
    st.fixed_dictionaries({"key": _KEY}),
    st.fixed_dictionaries({"raw": _RAW}),
    st.builds(lambda raw, key: _DictKind({"raw": raw, "key": key}), _RAW, _KEY),
    _ODD,
)


class _DictKind(dict[str, Any]):
    """Not exactly a dict: the reference skips it."""


@given(st.lists(_EVENT, max_size=12))
@settings(max_examples=400, deadline=None)
def test_oldest_event_ms_matches_the_python_loop(events: list[Any]) -> None:
    """The C loop gives the Python loop's time for any frame's events, or declines (None)
    only for times past 2^100, which the caller then gives to the Python loop."""
    from treekeeper.merge import oldest_event_ms

    found = native.oldest_event_ms(events)
    expected = oldest_event_ms(events)
    if found is None:
        assert any(
            type(e) is dict
            and e.get("raw")
            and type(e.get("key")) is list
            and len(e["key"]) == 4
            and type(e["key"][1]) is int
            and type(e["key"][2]) is int
            and max(abs(e["key"][1]), abs(e["key"][2])) >= 2**100
            for e in events
        )
    else:
        assert found == expected and type(found) is int


def test_oldest_event_ms_reads_frames_as_frame_order_key_does() -> None:
    """Markers and odd keys are skipped, the smallest time wins, -1 when nothing is timed."""
    events: list[Any] = [
        {"raw": [], "key": ["", 1, 0, 1]},  # a marker
        {"raw": 3, "key": ["", 2, 5, 9]},
        {"raw": 3, "key": ["", 1, 999, 8]},
        {"raw": 3, "key": ["", True, 0, 7]},  # a bool is not an int here
        {"raw": 3, "key": ("", 0, 0, 6)},
    ]
    assert native.oldest_event_ms(events) == 1999
    assert native.oldest_event_ms(events[:1]) == -1
    assert native.oldest_event_ms([]) == -1
    assert native.oldest_event_ms([{"raw": 1, "key": ["", 2**120, 0, 1]}]) is None
    with pytest.raises(TypeError):
        native.oldest_event_ms(tuple(events))


def test_frame_order_key_uses_the_c_loop_where_built() -> None:
    """The merge calls the C loop when it is built and allowed (AUDITSTREAM_NATIVE)."""
    from treekeeper import merge

    if os.environ.get("AUDITSTREAM_NATIVE") == "0":
        pytest.skip("AUDITSTREAM_NATIVE=0: the Python loop is asked for")
    assert merge._NATIVE_OLDEST is native.oldest_event_ms
