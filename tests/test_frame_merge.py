"""The tree keeper's replay merge: sharded assemblers' frames taken in event-time order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from generated_logs import write_generated_log
from test_event_transport import new_frame, sharded_frames

from auditstream import wire
from auditstream.config import Config
from sinks.config import FileOutputConfig
from sinks.jsonl import JsonlSink
from treekeeper import pipeline
from treekeeper.merge import IMMEDIATE, FrameMerge, frame_order_key
from treekeeper.pipeline import TreeStep
from treekeeper.stage import TransportErrors, frames_events


def frame(sender: int, *times_ms: int, name: str = "") -> wire.Frame:
    """An events frame of ``sender`` with one audit event per time (``name`` tells them apart)."""
    events = [
        {"key": ["", t // 1000, t % 1000, n], "raw": 1, "doc": None, "name": name}
        for n, t in enumerate(times_ms)
    ]
    return wire.Frame(wire.EVENTS, sender, 0, {"events": events, "name": name})


def eof(sender: int) -> wire.Frame:
    return wire.Frame(wire.EOF_KIND, sender, 0, {"stats": {}, "name": f"eof{sender}"})


def names(frames: list[wire.Frame]) -> list[str]:
    return [f.body["name"] for f in frames]


def test_frames_go_in_order_of_their_oldest_event_once_each_sender_has_one() -> None:
    """A frame waits until every sender has one parked; then the oldest first event goes."""
    merge = FrameMerge(2, max_events=1000)
    merge.add(frame(0, 100_000, 100_500, name="a1"))
    merge.add(frame(0, 300_000, name="a2"))
    assert merge.take() == []  # sender 1 may still send something older
    merge.add(frame(1, 150_000, 90_000, name="b1"))
    assert names(merge.take()) == ["b1"]  # its oldest event (90 s) is older than a1's
    merge.add(frame(1, 120_000, name="b2"))
    assert names(merge.take()) == ["a1", "b2"]
    assert merge.parked_frames == 1 and merge.parked_events == 1
    assert merge.taken_early == 0


def test_a_senders_frames_keep_their_order() -> None:
    """A sender's later frame with older events does not overtake its earlier frame."""
    merge = FrameMerge(2, max_events=1000)
    merge.add(frame(0, 500_000, name="a1"))
    merge.add(frame(0, 100_000, name="a2"))
    merge.add(frame(1, 200_000, name="b1"))
    merge.add(frame(1, 600_000, name="b2"))
    assert names(merge.take()) == ["b1", "a1", "a2"]


def test_frames_without_audit_events_and_eofs_go_at_once() -> None:
    """A frame of markers or fields only, and an eof, wait for nobody; an ended sender is not waited for."""
    merge = FrameMerge(2, max_events=1000)
    marker = {"key": ["", 1, 0, 0], "raw": [], "doc": {"marker": 1}}
    merge.add(wire.Frame(wire.EVENTS, 0, 0, {"events": [marker], "name": "markers"}))
    merge.add(wire.Frame(wire.EVENTS, 0, 1, {"events": [], "name": "fields"}))
    merge.add(frame(0, 100_000, name="a1"))
    assert names(merge.take()) == ["markers", "fields"]
    merge.add(eof(1))
    assert names(merge.take()) == ["eof1", "a1"]
    merge.add(frame(0, 200_000, name="a2"))
    assert names(merge.take()) == ["a2"]
    assert merge.taken_early == 0


def test_too_many_parked_events_let_the_oldest_go() -> None:
    """Past ``max_events`` parked, the oldest frame goes without waiting (counted)."""
    merge = FrameMerge(2, max_events=5)
    merge.add(frame(0, 100_000, 100_001, 100_002, name="a1"))
    merge.add(frame(0, 200_000, 200_001, 200_002, name="a2"))
    assert names(merge.take()) == ["a1"]
    assert merge.parked_events == 3 and merge.taken_early == 1


def test_a_stall_lets_exactly_one_frame_go() -> None:
    """No input for the patience: one frame goes (it may be what the quiet sender waits for)."""
    merge = FrameMerge(3, max_events=1000)
    merge.add(frame(0, 300_000, name="a1"))
    merge.add(frame(1, 200_000, name="b1"))
    merge.add(frame(1, 400_000, name="b2"))
    assert merge.take() == []
    assert names(merge.take(stalled=True)) == ["b1"]
    assert merge.take() == []
    assert names(merge.drain()) == ["a1", "b2"]
    assert merge.parked_frames == merge.parked_events == 0
    assert merge.taken_early == 3


def test_a_sender_beyond_the_expected_ones_is_not_held() -> None:
    """Frames of a sender numbered past the assemblers expected go at once, in their order."""
    merge = FrameMerge(1, max_events=1000)
    merge.add(frame(5, 100_000, name="x1"))
    merge.add(frame(5, 50_000, name="x2"))
    assert names(merge.take()) == ["x1", "x2"]


@pytest.mark.parametrize(
    "body",
    [
        None,
        [1, 2],
        {"events": "no"},
        {"events": [None, 3, {"raw": 1}, {"raw": 1, "key": "k"}, {"raw": 1, "key": [1, 2]}]},
        {"events": [{"raw": 1, "key": ["", "1", 2, 3]}, {"raw": 1, "key": ["", 1, None, 3]}]},
    ],
)
def test_a_malformed_body_orders_as_immediate(body: Any) -> None:
    """Bodies the tree keeper will refuse later go through at once, without an exception."""
    malformed = wire.Frame(wire.EVENTS, 0, 0, body)
    assert frame_order_key(malformed) == IMMEDIATE
    merge = FrameMerge(2, max_events=1000)
    merge.add(malformed)
    assert merge.take() == [malformed]


def tree_output(frames: list[wire.Frame], cfg: Config, path: Path, merge: FrameMerge | None) -> Any:
    """The jsonl lines (sorted) and window counters of the tree keeper over these frames."""
    step = TreeStep(cfg)
    sink = JsonlSink(path.name, FileOutputConfig(str(path)))
    errors = TransportErrors()

    def take(f: wire.Frame) -> None:
        if f.kind == wire.EOF_KIND:
            sink.write_batch(step.source_done(f.sender))
        else:
            sink.write_batch(step.process(frames_events(f, errors), f.sender))

    for f in frames:
        if merge is None:
            take(f)
            continue
        merge.add(f)
        for ready in merge.take():
            take(ready)
    for ready in merge.drain() if merge is not None else []:
        take(ready)
    sink.write_batch(step.close())
    sink.close()
    assert errors.frames == 0
    return sorted(path.read_bytes().splitlines()), step.window.released_full


def test_one_assembler_far_ahead_gives_the_documents_of_one_assembler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All of one shard's frames before the other's: with the merge, the very documents of a
    single assembler, though the reorder window holds fewer events than one shard has;
    without the merge, not."""
    log = write_generated_log(tmp_path / "audit.log", 12000)
    cfg = Config()
    cfg.receiver.source = "file"
    # A replay's window holds up to 10,000 events (a file source's buffer may grow to
    # 131,072 records): 512 here, fewer than one shard's events of this log.
    monkeypatch.setattr(pipeline, "MAX_HELD_EVENTS", 512)
    single = [
        wire.Frame(wire.EVENTS, 0, n, new_frame(events, {})[0])
        for n, events in enumerate(sharded_frames(log, 1))
    ]
    cfg.assembler.instances = 1
    expected, full = tree_output([*single, eof(0)], cfg, tmp_path / "one.jsonl", None)
    assert full == 0

    shard_frames = sharded_frames(log, 2)  # shard 0's, shard 1's, alternating
    skewed = [
        wire.Frame(wire.EVENTS, n % 2, n // 2, new_frame(events, {})[0])
        for n, events in enumerate(shard_frames)
    ]
    skewed = [f for f in skewed if f.sender == 0] + [f for f in skewed if f.sender == 1]
    skewed += [eof(0), eof(1)]
    cfg.assembler.instances = 2
    merged, full = tree_output(skewed, cfg, tmp_path / "merged.jsonl", FrameMerge(2, 10_000))
    assert full == 0
    assert merged == expected
    assert "reorder window full" not in caplog.text
    unmerged, full = tree_output(skewed, cfg, tmp_path / "unmerged.jsonl", None)
    assert full > 0
    assert "reorder window full (512 events held)" in caplog.text  # said, not silent
    assert unmerged != expected  # children reached the table before their fork
