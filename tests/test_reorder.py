"""The tree keeper's reorder window: by event time, and live by the assemblers' claims."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from assembler.stage import Assembly
from auditstream.config import Config
from treekeeper.pipeline import TreeStep
from treekeeper.reorder import BACKWARD_RUN, ReorderWindow

REPO = Path(__file__).resolve().parents[1]

# One step for the model test: ("push", time, serial), ("claim", time, serial),
# ("due", now) or ("flush",).
_SERIALS = st.sampled_from([0, 1, 2, 7, 2**31, 2**32 - 1])
_CLAIM_SERIALS = st.sampled_from([-3, 0, 1, 2, 8, 2**32 - 1, 2**32, 2**32 + 5])
_TIMES = st.integers(min_value=0, max_value=40)  # few times: claims meet held neighbours
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), _TIMES, _SERIALS),
        st.tuples(st.just("claim"), st.integers(min_value=-2, max_value=42), _CLAIM_SERIALS),
        st.tuples(st.just("due"), st.integers(min_value=-2, max_value=50)),
        st.tuples(st.just("flush")),
    ),
    max_size=60,
)


class _Model:
    """The window's order rule for one source whose time never goes back for good: what
    leaves, leaves sorted by (time, serial, arrival), compared as tuples."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.newest = -1
        self.claim: tuple[int, int] | None = None
        self.held: list[tuple[int, int, int, str]] = []

    def _take(self, leaves: object) -> list[str]:
        out = sorted(h for h in self.held if leaves(h))  # type: ignore[operator]
        self.held = [h for h in self.held if not leaves(h)]  # type: ignore[operator]
        return [h[3] for h in out]

    def push(self, at: int, serial: int, arrival: int) -> list[str]:
        self.newest = max(self.newest, at)
        self.held.append((at, serial, arrival, f"e{arrival}"))
        return self._take(lambda h: h[0] < self.newest - self.window_ms)

    def claim_to(self, order: tuple[int, int]) -> list[str]:
        return self._take(lambda h: (h[0], h[1]) < order)

    def due(self, now: int) -> list[str]:
        return self._take(lambda h: h[0] < now - self.window_ms)

    def flush(self) -> list[str]:
        return self._take(lambda h: True)


@settings(max_examples=300, deadline=None)
@given(_STEPS)
@example([("push", 11, 0), ("claim", 10, 2**32 + 5)])  # not the next time's serials
@example([("push", 9, 2**32 - 1), ("claim", 10, -3)])  # all of the time before
def test_release_order_is_tuple_order(steps: list[tuple[int | str, ...]]) -> None:
    """Whatever is pushed, claimed, due or flushed leaves as (time, serial, arrival) tuples
    sort, 32-bit serials, equal keys and claims of odd serials included."""
    window: ReorderWindow[str] = ReorderWindow(window_ms=5, jump_ms=10**9)
    model = _Model(window_ms=5)
    arrival = 0
    for step in steps:
        if step[0] == "push":
            arrival += 1
            at, serial = int(step[1]), int(step[2])
            assert window.push(f"e{arrival}", at, serial) == model.push(at, serial, arrival)
        elif step[0] == "claim":
            order = (int(step[1]), int(step[2]))
            assert window.claim(0, order) == model.claim_to(order)
        elif step[0] == "due":
            assert window.due(int(step[1])) == model.due(int(step[1]))
        else:
            assert window.flush() == model.flush()
    assert window.flush() == model.flush()


def test_reorder_window_releases_in_kernel_order() -> None:
    """Events pushed out of order leave the window sorted by time then serial."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100)
    out = w.push("c", 30, 3) + w.push("a", 10, 1) + w.push("b", 10, 2)
    assert out == []
    out = w.push("late", 500, 9)
    assert out == ["a", "b", "c"]
    assert w.flush() == ["late"]


def test_reorder_window_waits_for_the_slowest_source() -> None:
    """With two expected sources nothing leaves by time until both sent; then the slower one sets the pace."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100, sources=2)
    assert w.push("a0", 10, 1, source=0) + w.push("b0", 5000, 2, source=0) == []
    assert w.push("a1", 20, 3, source=1) == []  # source 1 is at 20: 5000 is far ahead
    assert w.push("b1", 300, 4, source=1) == ["a0", "a1"]  # both past 200 now
    w.close_source(1)  # source 1 ended: only source 0 holds the window
    assert w.push("c0", 5200, 5, source=0) == ["b1", "b0"]
    assert w.flush() == ["c0"]


def test_a_full_window_lets_the_oldest_go_and_counts_them() -> None:
    """Past max_held the oldest leave before their time, in order, each counted in released_full."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100, max_held=3, sources=2)
    out = [x for i in range(5) for x in w.push(f"e{i}", 1000 + i, i, source=0)]
    assert out == ["e0", "e1"]  # source 1 has sent nothing: only the bound releases
    assert w.released_full == 2
    # Older than what already left, and the window is still full: it goes at once.
    assert w.push("late", 10, 9, source=1) == ["late"]
    assert w.released_full == 3
    assert w.flush() == ["e2", "e3", "e4"]
    assert w.released_full == 3  # the end of input is not "full"


def test_time_that_goes_back_for_good_releases_what_was_held() -> None:
    """BACKWARD_RUN events in a row far behind a source's newest start a new timeline: what was held leaves at once, in order."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100, jump_ms=1000)
    assert w.push("a", 50_000, 1) + w.push("b", 50_050, 2) == []
    out: list[str] = []
    for i in range(BACKWARD_RUN - 1):  # an older file: events of its own, in time order
        out += w.push(f"old{i}", 1000 + i, 100 + i)
    assert "a" not in out and "b" not in out  # not yet: it might be isolated old events
    out += w.push("last", 1000 + BACKWARD_RUN, 200)
    assert out[-2:] == ["a", "b"]  # "last" is held: the new timeline's window applies
    assert w.timelines == 1 and w.last_jump_ms == 50_050 - (1000 + BACKWARD_RUN)
    assert w.push("next", 2000, 300) == ["last"]


def test_an_isolated_old_event_is_not_a_new_timeline() -> None:
    """Old events between events of normal time (syscalls that blocked long) leave at once and move nothing."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100, jump_ms=1000)
    w.push("a", 50_000, 1)
    for i in range(3 * BACKWARD_RUN):
        assert w.push(f"old{i}", 1000, 10 + i) == [f"old{i}"]  # below the horizon: out at once
        if i % (BACKWARD_RUN - 1) == 0:
            w.push(f"now{i}", 50_001 + i, 1000 + i)  # normal time again: the run starts over
    assert w.timelines == 0
    assert w.horizon() > 50_000


def test_seen_times_move_the_window_like_pushed_ones() -> None:
    """see() (an event dedupe dropped) moves a source's time and detects a step back, but releases only held events."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=100, jump_ms=1000)
    assert w.push("a", 50_000, 1) == []
    assert w.see(50_200) == ["a"]
    assert w.push("b", 50_300, 2) == []
    out = [x for i in range(BACKWARD_RUN) for x in w.see(1000 + i)]
    assert out == ["b"] and w.timelines == 1


def test_claim_releases_what_the_only_assembler_has_passed() -> None:
    """One assembler's sent_below releases, in order, every held event below it and nothing else."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=60_000, sources=1)
    assert w.push("b", 1000, 12) + w.push("a", 1000, 11) + w.push("c", 1001, 13) == []
    assert w.claim(0, (1000, 12)) == ["a"]  # event 12 is still open there
    assert w.claim(0, (1001, 14)) == ["b", "c"]
    assert w.released_by_claim == 3
    assert w.flush() == []


def test_claim_waits_for_every_assembler_still_sending() -> None:
    """With two assemblers nothing leaves by claim until both have claimed past it."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=60_000, sources=2)
    assert w.push("s0-101", 1000, 101, source=0) == []
    assert w.claim(0, (1000, 102)) == []  # assembler 1 has said nothing yet
    assert w.push("s1-100", 1000, 100, source=1) == []
    assert w.claim(1, (1000, 100)) == []  # its event 100 is still open
    assert w.claim(1, (1000, 103)) == ["s1-100", "s0-101"]  # kernel order across shards
    assert w.push("s0-104", 1000, 104, source=0) == []
    assert w.claim(0, (1000, 105)) == []  # assembler 1 is only at 103
    assert w.close_source(1) == ["s0-104"]  # it ended: assembler 0 alone decides


def test_claim_never_passes_the_time_order_of_held_events() -> None:
    """A claim releases by (time, serial), so an earlier-time event with a larger serial goes first."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=60_000, sources=1)
    w.push("late-serial", 999, 50)
    w.push("early-serial", 1000, 10)
    assert w.claim(0, (1000, 11)) == ["late-serial", "early-serial"]


def test_claims_of_a_closed_assembler_are_ignored() -> None:
    """A claim that arrives after its assembler's eof neither releases nor holds anything."""
    w: ReorderWindow[str] = ReorderWindow(window_ms=60_000, sources=2)
    w.push("x", 1000, 7, source=0)
    assert w.close_source(1) == []
    assert w.claim(1, (9999, 1)) == []
    assert w.claim(0, (1000, 8)) == ["x"]


def _syscall(serial: int) -> list[object]:
    return [
        1300,
        b"audit(1700000000.250:%d): arch=c000003e syscall=2 success=yes exit=3 pid=7" % serial,
        "",
    ]


def _eoe(serial: int) -> list[object]:
    return [1320, b"audit(1700000000.250:%d): " % serial, ""]


def test_a_live_assembler_claims_its_oldest_open_event() -> None:
    """sent_below is the open event that sorts first, or just past the last record when none is open."""
    assembly = Assembly(Config(), event_time=False)
    assert assembly.sent_below() is None  # nothing seen: no claim
    assembly.push_batch([_syscall(100), _syscall(101), _eoe(101)])
    assert [e["key"][3] for e in assembly.out] == [101]
    assert assembly.sent_below() == [1700000000250, 100]  # 100 is open
    assembly.push_batch([_eoe(100)])
    assert assembly.sent_below() == [1700000000250, 101]  # past the EOE of 100


def test_a_replaying_assembler_claims_nothing() -> None:
    """In replay only event time releases events, so a replay never depends on timing."""
    assembly = Assembly(Config(), event_time=True)
    assembly.push_batch([_syscall(100), _eoe(100)])
    assert len(assembly.out) == 1 and assembly.sent_below() is None


def _live_log(count: int) -> bytes:
    """``count`` open() events stamped now, each SYSCALL ahead of the previous event's EOE."""
    now = time.time()
    stamp = b"%d.%03d" % (int(now), int(now * 1000) % 1000)
    lines = []
    for serial in range(1, count + 1):
        head = b"msg=audit(%s:%d): " % (stamp, serial)
        lines.append(b"type=SYSCALL " + head + b"arch=c000003e syscall=2 success=yes exit=3 pid=7")
        if serial > 1:
            lines.append(b"type=EOE msg=audit(%s:%d): " % (stamp, serial - 1))
    lines.append(b"type=EOE msg=audit(%s:%d): " % (stamp, count))
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("assemblers", [1, 2])
def test_live_events_leave_long_before_the_window(tmp_path: Path, assemblers: int) -> None:
    """Live (here from stdin), events pass a 60 s reorder window as soon as every assembler has passed them."""
    conf = tmp_path / "live.toml"
    conf.write_text(
        f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nsource = "stdin"\n'
        f"[assembler]\ninstances = {assemblers}\n[treekeeper]\nreorder_window_ms = 60000\n"
    )
    out = tmp_path / "events.jsonl"
    count = 200
    stderr_file = tmp_path / "stderr"
    with stderr_file.open("wb") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "auditstream", "run", "-c", str(conf), "--sink", f"jsonl:{out}"],
            stdin=subprocess.PIPE, stderr=stderr, cwd=REPO,
        )  # fmt: skip
    assert run.stdin is not None
    try:
        run.stdin.write(_live_log(count))
        run.stdin.flush()  # and kept open: the run goes on

        def sequences() -> list[int]:
            if not out.exists():
                return []
            return [
                json.loads(line)["event"].get("sequence", 0)
                for line in out.read_bytes().splitlines()
            ]

        deadline = time.monotonic() + 30
        # The newest event waits for the window with two assemblers: the other one's claim
        # stops at its own last serial, just below it.
        while len(seen := sequences()) < count - 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(seen)[: count - 1] == list(range(1, count)), f"{len(seen)} events out"
        assert run.poll() is None
    finally:
        run.stdin.close()  # EOF: the run drains and ends
        assert run.wait(timeout=60) == 0, stderr_file.read_text(errors="replace")
    assert sorted(sequences()) == list(range(1, count + 1))


def test_a_marker_stays_after_the_events_released_before_it() -> None:
    """In one frame, events the window released before a marker reach the output before
    it, and those held past it after it, as the frame had them."""
    cfg = Config()
    cfg.receiver.source = "file"
    cfg.treekeeper.reorder_window_ms = 100

    def event(name: str, at_ms: int, serial: int) -> dict[str, Any]:
        sec, msec = divmod(at_ms, 1000)
        doc = {"event": {"action": name}, "process": {"pid": 1}}
        return {"key": ["", sec, msec, serial], "raw": [[1300, b"", ""]], "doc": doc}

    marker = {"key": ["", 0, 0, 0], "raw": [], "doc": {"event": {"action": "marker"}}}
    step = TreeStep(cfg)
    frame = [event("early", 1000, 1), event("late", 5000, 2), marker, event("last", 5001, 3)]
    out = step.process(frame) + step.close()
    actions = [e["doc"]["event"]["action"] for e in out if e["raw"] or e is marker]
    assert actions == ["early", "marker", "late", "last"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_step_counts_the_gap_markers_it_passes_on(enabled: bool) -> None:
    """Events-lost markers are counted once each as they pass, with or without the tree;
    other markers and events dedupe dropped are not."""
    from assembler.ecs import marker_doc

    cfg = Config()
    cfg.treekeeper.enabled = enabled
    step = TreeStep(cfg)
    lost = {"key": ["", 0, 0, 0], "raw": [], "doc": marker_doc("events-lost", "", 5, 0, {})}
    other = {"key": ["", 0, 0, 0], "raw": [], "doc": marker_doc("parse-error", "", 5, 0, {})}
    dropped = {"key": ["", 0, 0, 0], "raw": [], "doc": marker_doc("events-lost", "", 5, 0, {})}
    out = step.process([lost, other, dropped], 0, None, {id(dropped)})
    out += step.process([dict(lost)], 0)
    assert step.gap_markers == 2
    assert sum(1 for e in out if e["doc"]["event"]["action"] == "events-lost") == 2
