"""No silent loss across SIGKILL: real pipelines with stages killed at random moments.

Each run replays (or pipes, for the live path) a large generated log while stages are
SIGKILLed at random (seeded) moments; the supervisor restarts them and redelivery
fills in. Then every input event (its ``audit(...)`` key) must be in the output exactly
once, or inside a reported events-lost range, and the two counts must add up to the
input's event count. Unit tests for the pieces (buffer, watermark, acknowledgements,
dedupe, checkpoint, fan-out durability) follow.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from generated_logs import write_generated_log
from live_helpers import feed_slowly, stage_pids
from supervisor_helpers import effective_config

from assembler.reassembler import CompletionReason, Reassembler
from assembler.redelivery import BatchStream, replay_gap_events, restart_gap_event
from auditstream.config import Config
from auditstream.hostnode import local_host_name
from auditstream.supervisor import RestartPolicy, Supervisor
from receiver.checkpoint import CheckpointKeeper, SerialMark, load_checkpoint
from receiver.logsource import LogSource
from receiver.replaybuffer import ShardBuffer
from sinks.config import sink_config_from_table
from sinks.fanout import FanOut
from treekeeper.acks import AckTracker
from treekeeper.dedupe import Dedupe, doc_fingerprints, recover_sink_tails

REPO = Path(__file__).resolve().parents[1]
LOG_LINES = 100_000  # long enough for the kills to land while a replay runs: it gets faster
# A replay too quick for the kills runs again on a log this many times as long (at most twice).
LONGER_LOG_FACTOR = 3
FEED_SECONDS = 4.0  # the stdin test's pipe flows at LOG_LINES / 2 per this many seconds
KEY = re.compile(rb"^(?:node=(\S+) )?type=\S+ msg=audit\((\d+)\.(\d+):(\d+)\)", re.M)
DOC_KEY = re.compile(r"audit\((\d+)\.(\d+):(\d+)\)")
MAX_KILLS_PER_STAGE = 3  # the supervisor gives up after 5 deaths of one stage in 60 s

EventKey = tuple[str, int, int, int]


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exec-heavy generated audit.log large enough that a replay lasts a few seconds."""
    return write_generated_log(tmp_path_factory.mktemp("crash") / "big.log", LOG_LINES)


def input_keys(log: bytes, here: str = "") -> list[EventKey]:
    """Every event's (node, sec, msec, serial) in order of first appearance; ``here``: the
    host.name of lines without node= (live: this host's, auditstream/hostnode.py)."""
    seen: dict[EventKey, None] = {}
    for node, sec, msec, serial in KEY.findall(log):
        seen[(node.decode() or here, int(sec), int(msec), int(serial))] = None
    return list(seen)


@dataclass
class Outcome:
    """What a run wrote: audit events by key (with counts) and the reported serial gaps."""

    counts: Counter[EventKey] = field(default_factory=Counter)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    parse_errors: int = 0

    def in_gap(self, key: EventKey) -> bool:
        node, _, _, serial = key
        for gap in self.gaps:
            stride = gap.get("serial_stride", 1)
            first, last = gap["first_serial"], gap["last_serial"]
            if gap["node"] == node and first <= serial <= last and (serial - first) % stride == 0:
                return True
        return False


def read_outcome(path: Path) -> Outcome:
    outcome = Outcome()
    for line in path.read_bytes().splitlines():
        doc = json.loads(line)
        action = doc["event"].get("action")
        if action == "events-lost":
            marker = dict(doc["auditstream"]["marker"])
            marker["node"] = doc.get("host", {}).get("name", "")
            outcome.gaps.append(marker)
        elif action == "parse-error":
            outcome.parse_errors += 1
        elif records := doc.get("auditd", {}).get("records"):
            sec, msec, serial = DOC_KEY.search(records[0]).groups()  # type: ignore[union-attr]
            node = doc.get("host", {}).get("name", "")
            outcome.counts[(node, int(sec), int(msec), int(serial))] += 1
    return outcome


def assert_exactly_once_or_in_gap(keys: list[EventKey], outcome: Outcome) -> tuple[int, int]:
    """Every input event once in the output or inside a gap; the two counts add up."""
    duplicated = [k for k, n in outcome.counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} events written twice, e.g. {duplicated[:3]}"
    unknown = set(outcome.counts) - set(keys)
    assert not unknown, f"events that are not in the input: {sorted(unknown)[:3]}"
    present = sum(1 for k in keys if k in outcome.counts)
    in_gap = sum(1 for k in keys if k not in outcome.counts and outcome.in_gap(k))
    silently_gone = [k for k in keys if k not in outcome.counts and not outcome.in_gap(k)]
    assert not silently_gone, f"{len(silently_gone)} events silently lost, e.g. {silently_gone[:3]}"
    assert present + in_gap == len(keys)
    return present, in_gap


def kill_at_random(
    proc: subprocess.Popen[bytes], rng: random.Random, kills: int, pause: tuple[float, float]
) -> list[str]:
    """SIGKILL a random stage after each random pause, while the run lasts; return the victims."""
    victims: list[str] = []
    for _ in range(kills):
        time.sleep(rng.uniform(*pause))
        alive = stage_pids(proc.pid)
        choices = sorted(n for n in alive if victims.count(n) < MAX_KILLS_PER_STAGE)
        if proc.poll() is not None or not choices:
            break
        victim = rng.choice(choices)
        try:
            os.kill(alive[victim], signal.SIGKILL)
        except ProcessLookupError:
            continue
        victims.append(victim)
    return victims


def run_pipeline(
    argv: list[str], *, stdin: Path | None, seed: int, kills: int, pause: tuple[float, float]
) -> tuple[subprocess.CompletedProcess[bytes], list[str]]:
    """Run `auditstream ARGV`, killing stages meanwhile; return the result and the victims."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", *argv],
        cwd=REPO,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    feeder = None
    if stdin is not None:
        assert proc.stdin is not None
        pipe, proc.stdin = proc.stdin, None  # the feeder owns it; communicate() must not

        # A live source flows for FEED_SECONDS, whatever the machine's speed.
        feeder = threading.Thread(target=feed_slowly, args=(pipe, stdin, FEED_SECONDS), daemon=True)
        feeder.start()
    deadline = time.monotonic() + 30
    while "receiver" not in stage_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # every stage runs before the first victim is picked
    victims = kill_at_random(proc, random.Random(seed), kills, pause)
    _, stderr = proc.communicate(timeout=240)
    if feeder is not None:
        feeder.join(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr), victims


def recovery_line(stderr: bytes) -> dict[str, int]:
    match = re.search(
        rb"recovery: (\d+) stage restarts, (\d+) batches redelivered, (\d+) duplicates dropped, "
        rb"(\d+) gap markers",
        stderr,
    )
    assert match, stderr.decode(errors="replace")
    names = ("restarts", "redelivered", "duplicates", "gap_markers")
    return dict(zip(names, map(int, match.groups()), strict=True))


@pytest.mark.parametrize(("assemblers", "seed"), [(1, 11), (2, 23)])
def test_replay_survives_random_sigkills_exactly_once(
    big_log: Path, tmp_path: Path, assemblers: int, seed: int
) -> None:
    """Replay with every stage SIGKILLed at random moments: each input event is written exactly once."""
    log = big_log
    for attempt in range(3):  # a machine fast enough to end the replay first: a longer log
        out = tmp_path / f"events-{attempt}.jsonl"
        result, victims = run_pipeline(
            ["replay", str(log), "--sink", f"jsonl:{out}", "--assemblers", str(assemblers)],
            stdin=None, seed=seed, kills=6, pause=(0.25, 0.6),
        )  # fmt: skip
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 0, stderr
        if len(victims) >= 5 or attempt == 2:
            break
        lines = LOG_LINES * LONGER_LOG_FACTOR ** (attempt + 1)
        log = write_generated_log(tmp_path / f"big-{lines}.log", lines)
    assert len(victims) >= 5, f"the replay ended before enough kills landed: {victims}"
    keys = input_keys(log.read_bytes())
    outcome = read_outcome(out)
    present, in_gap = assert_exactly_once_or_in_gap(keys, outcome)
    # A file can always be read again: nothing needs to be reported lost.
    assert (present, in_gap) == (len(keys), 0), outcome.gaps
    recovery = recovery_line(result.stderr)
    # A stage killed after the receiver finished is not restarted: it had nothing left.
    late = stderr.count("after the receiver had finished")
    assert recovery["restarts"] + late == len(victims), stderr
    assert outcome.parse_errors == 0


def test_live_stdin_source_survives_random_sigkills(big_log: Path, tmp_path: Path) -> None:
    """`run --source stdin` with stages SIGKILLed: events are once in the output or inside a gap marker."""
    out = tmp_path / "events.jsonl"
    head = tmp_path / "head.log"  # half the log: a live source flows, it does not rush
    head.write_bytes(b"".join(big_log.read_bytes().splitlines(keepends=True)[: LOG_LINES // 2]))
    conf = tmp_path / "live.toml"
    conf.write_text(
        f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nsource = "stdin"\n'
        "[assembler]\nevent_timeout_ms = 500\n"
    )
    result, victims = run_pipeline(
        ["run", "-c", str(conf), "--sink", f"jsonl:{out}"],
        stdin=head, seed=5, kills=5, pause=(0.25, 0.6),
    )  # fmt: skip
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert len(victims) >= 3, f"the run ended before enough kills landed: {victims}"
    keys = input_keys(head.read_bytes(), local_host_name())
    outcome = read_outcome(out)
    present, in_gap = assert_exactly_once_or_in_gap(keys, outcome)
    # Only a dead receiver loses (what it had read and not yet sent): the kernel, or a
    # pipe, cannot give it again. Assembler and tree keeper crashes are redelivered.
    assert in_gap == 0 or "receiver" in victims, (victims, outcome.gaps)
    # A receiver killed after it read the whole pipe can take everything with it (then
    # all of it is inside its restart marker); otherwise events must come through.
    assert present > 0 or "receiver" in victims


def test_orderly_stop_mid_replay_loses_nothing(big_log: Path, tmp_path: Path) -> None:
    """SIGTERM during `replay --follow`: every event of the lines read is written, once."""
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "replay", "--follow", str(big_log),
         "--sink", f"jsonl:{out}"],
        cwd=REPO, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Mid-replay: once the first events are written (the tree keeper is ready and the
    # receiver reading); a stop while the stages still start up reads nothing at all.
    deadline = time.monotonic() + 60
    while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    written_at_stop = out.read_bytes().count(b"\n") if out.exists() else 0
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    match = re.search(rb"auditstream: (\d+) records read", stderr)
    assert match, stderr.decode(errors="replace")
    read = int(match.group(1))
    lines = big_log.read_bytes().splitlines(keepends=True)
    assert 0 < read <= len(lines)
    expected = input_keys(b"".join(lines[:read]))
    outcome = read_outcome(out)
    # The stop came while events were still in flight (else it proves nothing).
    assert written_at_stop < out.read_bytes().count(b"\n"), "make the log larger"
    assert not outcome.gaps and max(outcome.counts.values()) == 1
    assert set(outcome.counts) == set(expected)


def test_supervisor_gives_up_on_a_flapping_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stage that keeps dying is restarted with backoff, then the supervisor gives up with an error."""
    conf = effective_config(tmp_path)
    policy = RestartPolicy(enabled=True, max_restarts=2, window_s=60)
    supervisor = Supervisor(conf, assemblers=1, receiver_stdin=False, policy=policy)
    waits = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)"
    for stage in supervisor.stages:
        crash = stage.name == "receiver"
        stage.argv = [sys.executable, "-c", "import sys; sys.exit(3)" if crash else waits]
    started = time.monotonic()
    with caplog.at_level("ERROR", logger="auditstream.supervisor"):
        assert supervisor.run() == 1
    assert supervisor.gave_up and supervisor.restarts == 2
    assert "receiver died 3 times within 60 s; giving up" in caplog.text
    assert 1.4 < time.monotonic() - started < 30  # backoff 0.5 s, then 1 s


# -- the pieces ---------------------------------------------------------------------------


def records_body(serials: list[int]) -> dict[str, object]:
    recs = [[1300, f"audit(1.000:{s}): x=1".encode(), ""] for s in serials]
    return {"recs": recs, "recv_ns": 0, "epoch": 7}


def test_shard_buffer_keeps_until_acked_and_resends_in_order() -> None:
    """Batches are numbered, kept until acknowledged, and a rewind resends from the oldest kept."""
    buf = ShardBuffer(0, capacity=4)
    for n in range(3):
        buf.add(records_body([n]), 1)
    for batch in list(buf.unsent()):
        buf.mark_sent(batch)
    assert buf.caught_up() and len(buf) == 3
    assert [b.last for b in buf.ack(2)] == [("", 0), ("", 1)]
    assert len(buf) == 1 and buf.acked_below == 2
    assert buf.ack(1) == []  # acknowledgements never go back
    start, gaps = buf.rewind()
    assert start == 2 and gaps == []
    assert [b.number for b in buf.unsent()] == [2]
    buf.mark_sent(next(buf.unsent()))
    assert buf.stats.redelivered_batches == 1


def test_shard_buffer_eviction_reports_the_serial_range_unless_acked_later() -> None:
    """A full live buffer stops protecting its oldest batch; a resend then reports its serials."""
    buf = ShardBuffer(0, capacity=2)
    for serials in ([10, 11], [12, 13], [14]):
        if buf.is_full():
            assert buf.oldest_is_sent()
            buf.evict_oldest()
        batch = buf.add(records_body(serials), len(serials))
        buf.mark_sent(batch)
    assert buf.stats.evicted_batches == 1
    start, gaps = buf.rewind()
    assert start == 1
    assert [(g.first_serial, g.last_serial, g.count) for g in gaps] == [(10, 11, 2)]
    events = replay_gap_events({"gaps": [g.as_wire() for g in gaps]})
    marker = events[0]["doc"]["auditstream"]["marker"]
    assert marker["cause"] == "replay_buffer_overflow" and marker["first_serial"] == 10
    again = ShardBuffer(0, capacity=1)
    again.mark_sent(again.add(records_body([1]), 1))
    again.evict_oldest()
    again.ack(1)  # it turned out durable: nothing to report
    assert again.rewind()[1] == []


def test_batch_stream_takes_batches_in_order_after_a_resume() -> None:
    """Numbered batches count only after a resume, in order; stale, repeated and early ones are refused."""
    stream = BatchStream()
    assert not stream.accept({"batch": 0, "epoch": 7})  # no resume yet
    assert stream.resume({"epoch": 7, "from": 3, "reset": True, "token": 9})
    assert not stream.accept({"batch": 4, "epoch": 7})  # out of order
    assert stream.accept({"batch": 3, "epoch": 7})
    assert not stream.accept({"batch": 3, "epoch": 7})  # repeated
    assert not stream.accept({"batch": 4, "epoch": 8})  # another receiver's
    assert stream.accept({"recs": []})  # unnumbered (a sender without redelivery)
    assert stream.durable_below(None) == 4
    assert stream.durable_below(2) == 2
    assert stream.frame_fields(None) == {"epoch": 7, "durable_below": 4, "token": 9}


def test_a_resume_of_the_same_stream_does_not_take_batches_twice() -> None:
    """Resumed without a reset by the receiver it already reads, batches it took are duplicates."""
    stream = BatchStream()
    assert not stream.resume({"epoch": 7, "from": 0, "reset": False, "token": None})
    assert stream.accept({"batch": 0, "epoch": 7}) and stream.accept({"batch": 1, "epoch": 7})
    # The receiver noticed our connection late and sends from batch 0 again.
    assert not stream.resume({"epoch": 7, "from": 0, "reset": False, "token": 9})
    assert not stream.accept({"batch": 0, "epoch": 7})
    assert not stream.accept({"batch": 1, "epoch": 7})
    assert stream.accept({"batch": 2, "epoch": 7})
    assert stream.stats.duplicate_batches == 2
    # A reset, or another receiver (a restart: new epoch), starts where the resume says.
    assert stream.resume({"epoch": 7, "from": 0, "reset": True, "token": 9})
    assert stream.accept({"batch": 0, "epoch": 7})
    assert not stream.resume({"epoch": 8, "from": 0, "reset": False, "token": 9})
    assert stream.accept({"batch": 0, "epoch": 8})


@dataclass(frozen=True)
class Rec:
    type: int
    node: str
    sec: int
    msec: int
    serial: int


def test_reassembler_knows_the_batch_of_its_oldest_open_event() -> None:
    """The durable watermark: the batch of the oldest open event's first record."""
    done: list[int] = []
    reasm: Reassembler[Rec] = Reassembler(
        lambda recs, _why: done.append(recs[0].serial), lambda _lost: None
    )
    reasm.batch = 5
    reasm.push(Rec(1300, "", 1, 0, 1), 0)
    reasm.batch = 6
    reasm.push(Rec(1300, "", 1, 0, 2), 0)
    assert reasm.oldest_open_batch() == 5
    reasm.push(Rec(1320, "", 1, 0, 1), 0)  # EOE completes serial 1
    assert done == [1] and reasm.oldest_open_batch() == 6
    reasm.renumber_open(0)
    assert reasm.oldest_open_batch() == 0
    reasm.close()
    assert reasm.oldest_open_batch() is None
    assert CompletionReason.CLOSED.value == "closed"


def test_ack_tracker_acknowledges_in_order_after_window_and_sinks() -> None:
    """A frame is acknowledged once its events left the window and the sinks flushed them, in order."""
    tracker = AckTracker(token=1)
    first, second = [{"n": 1}], [{"n": 2}]
    tracker.frame_arrived(0, {"epoch": 7, "durable_below": 3, "token": 1}, first, submitted=0)
    tracker.frame_arrived(0, {"epoch": 7, "durable_below": 5, "token": 1}, second, submitted=0)
    tracker.released(second)  # the window let the later frame's event out first
    tracker.submitted(1)
    assert tracker.done(durable_seq=1) == []  # the first frame still waits in the window
    tracker.released(first)
    tracker.submitted(2)
    assert tracker.done(durable_seq=1) == []  # not yet flushed by every sink
    assert tracker.done(durable_seq=2) == [(0, 7, 5)]
    tracker.frame_arrived(0, {"epoch": 7, "durable_below": 9, "token": 2}, [], submitted=2)
    assert tracker.done(durable_seq=2) == [] and tracker.foreign_frames == 1


def audit_doc(*records: str) -> dict[str, Any]:
    return {"doc": {"auditd": {"records": list(records)}}, "raw": [[1300, b"", ""]]}


def test_dedupe_drops_repeats_and_parts_but_not_late_records() -> None:
    """An event whose records were all written is dropped; a LATE record with the same key is not."""
    dedupe = Dedupe(capacity=100)
    full = audit_doc("type=SYSCALL msg=audit(1.0:5): a", "type=EOE msg=audit(1.0:5): ")
    part = audit_doc("type=EOE msg=audit(1.0:5): ")
    late = audit_doc("type=PATH msg=audit(1.0:5): item=1")
    lost = {"doc": {"event": {"action": "events-lost"},
                    "auditstream": {"marker": {"first_serial": 1, "last_serial": 2}}}, "raw": []}  # fmt: skip
    parse = {"doc": {"event": {"action": "parse-error"}}, "raw": []}
    assert dedupe.filter([full, lost, parse]) == [full, lost, parse]
    assert dedupe.filter([full, part, late, lost, parse]) == [late, parse]
    assert dedupe.dropped == 3
    small = Dedupe(capacity=1)
    small.filter([audit_doc("a"), audit_doc("b")])
    assert small.filter([audit_doc("a")]) != []  # forgotten: the set is bounded
    assert doc_fingerprints({"event": {"action": "kernel-lost"}}) is None


def test_restart_reads_back_the_sinks_and_cuts_a_half_line(tmp_path: Path) -> None:
    """A restarted tree keeper learns what jsonl and file sinks hold and cuts a half-written line."""
    jsonl, raw = tmp_path / "e.jsonl", tmp_path / "copy.log"
    record = "type=SYSCALL msg=audit(1.000:5): arch=c000003e syscall=59"
    jsonl.write_text(json.dumps({"auditd": {"records": [record]}}) + "\n" + '{"half": ')
    raw.write_text("type=SYSCALL msg=audit(1.000:6): arch=c000003e syscall=59\n")
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": str(jsonl)}, {"type": "file", "path": str(raw)}]
    dedupe = Dedupe(capacity=100)
    assert recover_sink_tails(cfg, dedupe) == 2
    assert jsonl.read_text().endswith("}\n")
    again = [audit_doc(record), audit_doc(raw.read_text().strip()), audit_doc("new")]
    assert dedupe.filter(again) == again[2:]


def test_checkpoint_moves_only_over_acknowledged_reads(tmp_path: Path) -> None:
    """The checkpoint is the newest read position whose batches are all acknowledged, for this run only."""
    log = tmp_path / "a.log"
    log.write_text("x\n")
    path = tmp_path / "cp.json"
    keeper = CheckpointKeeper(path, [str(log)])
    keeper.chunk_read((0, 100), [2, 1], {"lines": 10})
    keeper.chunk_read((0, 200), [4, 3], {"lines": 20})
    keeper.update([2, 0], force=True)
    assert not path.exists()
    keeper.update([3, 1], force=True)
    checkpoint = load_checkpoint(path, [str(log)])
    assert checkpoint is not None and checkpoint.position == (0, 100)
    assert checkpoint.counters == {"lines": 10}
    assert load_checkpoint(path, [str(log), "other.log"]) is None
    data = json.loads(path.read_text())
    data["owner"] += 1  # another supervisor's run
    path.write_text(json.dumps(data))
    assert load_checkpoint(path, [str(log)]) is None


def test_serial_mark_names_what_a_dead_live_receiver_may_have_lost(tmp_path: Path) -> None:
    """A restarted live receiver reports the serials between the durable mark and its first record."""
    path = tmp_path / "serials.json"
    first = SerialMark(path)
    assert not first.inherit()
    assert first.records_read([(1300, b"audit(1.000:100): x", "")]) == []
    assert json.loads(path.read_text())["durable"] == {"": 99}  # nothing durable yet
    first.acked({"": 120})
    first.records_read([(1300, b"audit(1.000:140): x", "n2")])
    successor = SerialMark(path)
    assert successor.inherit()
    markers = successor.records_read([(-1, b"lost=1", ""), (1300, b"audit(1.000:150): x", "")])
    assert markers == [(-3, b"first_serial=121 last_serial=150 count=30", "")]
    assert successor.records_read([(1300, b"audit(1.000:200): x", "")]) == []  # once only
    # Node n2 never shows again: what the predecessor read of it is reported at the end.
    assert successor.leftover_markers() == [(-3, b"first_serial=140 last_serial=140 count=1", "n2")]
    event = restart_gap_event(markers[0][1], "")
    marker = event["doc"]["auditstream"]["marker"]
    assert marker["cause"] == "receiver_restart"
    assert (marker["first_serial"], marker["last_serial"], marker["count"]) == (121, 150, 30)


@pytest.mark.parametrize("compressed", [False, True])
def test_log_source_resumes_at_a_checkpointed_offset(tmp_path: Path, compressed: bool) -> None:
    """Reading starts at (file, offset) and the position after each chunk is where the next begins."""
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(b"a1\na2\n")
    text = b"b1\nb2\nb3\n"
    second.write_bytes(gzip.compress(text) if compressed else text)
    source = LogSource([str(first), str(second)])
    lines = [line for chunk in source.chunks() for line in chunk]
    assert lines == [b"a1\n", b"a2\n", b"b1\n", b"b2\n", b"b3\n"]
    assert source.position == (1, len(text))
    resumed = LogSource([str(first), str(second)], start=(1, 3))
    assert [line for chunk in resumed.chunks() for line in chunk] == [b"b2\n", b"b3\n"]


class SlowSink:
    """A sink whose writes wait for a gate, to watch durability lag behind submissions."""

    def __init__(self) -> None:
        from sinks.base import SinkStats

        self.name = "slow"
        self.stats = SinkStats()
        self.gate = threading.Event()
        self.flushed = 0

    def write_batch(self, events: Any) -> None:
        self.gate.wait(10)
        self.stats.sent_events += len(events)

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        pass


def test_fanout_durable_seq_follows_writes_and_flushes() -> None:
    """durable_seq reaches a batch only after every sink wrote and flushed it (drops count as done)."""
    slow = SlowSink()
    configs = [sink_config_from_table({"type": "jsonl", "name": "slow", "path": "-"})]
    fan = FanOut([slow], configs)
    seq = fan.submit([{"key": ["", 1, 0, 1], "raw": [], "doc": {}}])
    assert seq == 1 and fan.durable_seq() == 0
    slow.gate.set()
    deadline = time.monotonic() + 5
    while fan.durable_seq() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fan.durable_seq() == 1 and slow.flushed >= 1
    assert fan.submit([]) == 1  # nothing new to number
    fan.close()


def test_records_body_round_trips_through_the_buffer() -> None:
    """What the buffer keeps is exactly the frame body sent, with its number and epoch."""
    buf = ShardBuffer(1, capacity=2)
    batch = buf.add(records_body([42]), 1)
    body = msgpack.unpackb(batch.body, raw=False)
    assert body["batch"] == 0 and body["epoch"] == 7
    assert body["recs"][0][1] == b"audit(1.000:42): x=1"
