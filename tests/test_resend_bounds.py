"""What a restart can send again stays within what the tree keeper remembers.

A replay killed at random (tests/test_crash_recovery.py) wrote 2,818 events twice: the
receiver's checkpoint had not moved for ~160,000 records, and the restarted tree keeper
read back only the last 64 MiB of its jsonl sink (~47,000 lines of ~1.4 KB), not the
events the receiver then sent again. Now the checkpoint is also written every
``checkpoint_lag_records`` records, and the read-back goes on, newest line first, until
the dedupe set's capacity is covered, whatever the size of a line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from supervisor_helpers import effective_config

from auditstream.config import (
    GROWN_REPLAY_BUFFER_RECORDS,
    MIN_REPLAY_BUFFER_RECORDS,
    Config,
)
from auditstream.redelivery import buffered_records, checkpoint_lag_records, resendable_records
from auditstream.supervisor import RestartPolicy, Supervisor
from receiver.checkpoint import CheckpointKeeper, load_checkpoint
from treekeeper import dedupe as dedupe_mod
from treekeeper.dedupe import Dedupe, recover_sink_tails


def record(serial: int, pad: int = 0) -> str:
    """One record of event ``serial``, ``pad`` bytes longer than the plain one."""
    return f"type=SYSCALL msg=audit(1.000:{serial}): arch=c000003e syscall=59 x={'a' * pad}"


def doc_line(serial: int, pad: int) -> bytes:
    """A jsonl sink's line holding event ``serial`` with two records."""
    records = [record(serial, pad), f"type=EOE msg=audit(1.000:{serial}): "]
    return json.dumps({"auditd": {"records": records}}).encode() + b"\n"


def event(serial: int, pad: int) -> dict[str, Any]:
    """Event ``serial`` as it would come again from an assembler."""
    records = [record(serial, pad), f"type=EOE msg=audit(1.000:{serial}): "]
    return {"doc": {"auditd": {"records": records}}, "raw": [[1300, b"", ""]]}


@pytest.mark.parametrize("block", [64, 1000, 8 << 20])
def test_read_back_covers_the_capacity_whatever_the_line_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """The newest lines holding ``capacity`` fingerprints are learnt, across blocks; older ones are not."""
    monkeypatch.setattr(dedupe_mod, "READ_BACK_BLOCK_BYTES", block)
    sink = tmp_path / "events.jsonl"
    pads = [(serial * 37) % 3000 for serial in range(400)]  # lines of ~100 B to ~3 KB
    sink.write_bytes(b"".join(doc_line(s, pads[s]) for s in range(400)) + b'{"half')
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": str(sink)}]
    dedupe = Dedupe(capacity=300)  # 150 events of two records
    assert recover_sink_tails(cfg, dedupe) == 300
    assert sink.read_bytes().endswith(b"}\n")  # the half-written line is cut
    # Sent again from serial 200 on (fewer new ones than the capacity: none is forgotten).
    passed = dedupe.filter([event(s, pads[s]) for s in range(200, 400)])
    assert [e["doc"]["auditd"]["records"][0] for e in passed] == [
        record(s, pads[s]) for s in range(200, 250)
    ]


def test_read_back_of_a_sink_without_a_whole_line(tmp_path: Path) -> None:
    """A sink holding only half a line is cut to nothing and teaches nothing."""
    sink = tmp_path / "events.jsonl"
    sink.write_bytes(b'{"auditd": {"records": ["type=SYS')
    cfg = Config()
    cfg.sinks = [{"type": "jsonl", "path": str(sink)}]
    assert recover_sink_tails(cfg, Dedupe(capacity=10)) == 0
    assert sink.read_bytes() == b""


def test_tree_keeper_remembers_what_a_restarted_receiver_sends_again() -> None:
    """The dedupe set holds more than the buffers plus the checkpoint's lag, for any shape."""
    shapes = [(256, 512, 1), (256, 512, 2), (4, 2048, 3), (4, 8, 3), (1, 1, 1)]
    for source in ("netlink", "file"):
        for batches, records, instances in shapes:
            cfg = Config()
            cfg.receiver.source = source
            cfg.receiver.replay_buffer_batches = batches
            cfg.receiver.batch_max_records = records
            cfg.assembler.instances = instances
            _check_resend_bounds(cfg, batches, records, instances)


def _check_resend_bounds(cfg: Config, batches: int, records: int, instances: int) -> None:
    # At least MIN_REPLAY_BUFFER_RECORDS kept; a file source's may grow to the default's.
    per_shard = max(batches * records, MIN_REPLAY_BUFFER_RECORDS)
    if cfg.receiver.source == "file":
        per_shard = max(per_shard, GROWN_REPLAY_BUFFER_RECORDS)
    buffered = per_shard * instances
    assert buffered_records(cfg) >= buffered
    assert buffered_records(cfg) < buffered + records * instances  # batches round up
    assert resendable_records(cfg) == buffered_records(cfg) + checkpoint_lag_records(cfg)
    assert 1 <= checkpoint_lag_records(cfg) <= max(1, buffered_records(cfg) // 8)
    assert Dedupe.for_config(cfg).seen.capacity > resendable_records(cfg)


def test_checkpoint_is_written_after_its_lag_in_records_not_only_in_time(tmp_path: Path) -> None:
    """Within WRITE_EVERY_S, the checkpoint moves once the durable position is that far ahead."""
    log = tmp_path / "a.log"
    log.write_text("x\n")
    path = tmp_path / "cp.json"
    keeper = CheckpointKeeper(path, [str(log)], max_lag_records=100)
    for i in range(1, 5):
        keeper.chunk_read((0, i * 10), [i], {"records": i * 60})
    keeper.update([1])  # the first write: no write yet, so not too early
    first = load_checkpoint(path, [str(log)])
    assert first is not None and first.position == (0, 10)
    keeper.update([2])  # 60 records past the written one: waits for the time
    again = load_checkpoint(path, [str(log)])
    assert again is not None and again.position == (0, 10)
    keeper.update([3])  # 120 past: written now, well within WRITE_EVERY_S
    moved = load_checkpoint(path, [str(log)])
    assert moved is not None and moved.position == (0, 30)
    assert moved.counters == {"records": 180}


def test_stage_killed_after_the_receiver_finished_is_not_a_failure(tmp_path: Path) -> None:
    """After the receiver exited 0, a killed stage is not restarted, the rest stop, and the run succeeds."""
    conf = effective_config(tmp_path)
    ready = tmp_path / "treekeeper.ready"
    supervisor = Supervisor(
        conf,
        assemblers=1,
        receiver_stdin=False,
        policy=RestartPolicy(enabled=True),
        ready_file=ready,
    )
    py = sys.executable
    treekeeper, assembler, receiver = supervisor.stages
    # Stand-ins, real processes: the tree keeper is ready and runs until told to stop.
    treekeeper.argv = [
        py,
        "-c",
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(3)",
    ]
    assembler.argv = [py, "-c", "import time; time.sleep(60)"]
    receiver.argv = [py, "-c", "import time; time.sleep(0.3)"]

    def kill_the_assembler_once_the_source_is_done() -> None:
        deadline = time.monotonic() + 30
        while not supervisor.source_done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert assembler.proc is not None
        assembler.proc.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_the_assembler_once_the_source_is_done)
    killer.start()
    started = time.monotonic()
    code = supervisor.run()
    killer.join()
    assert code == 0
    assert supervisor.failed == []
    assert supervisor.killed_late == ["assembler-0"]
    assert supervisor.restarts == 0
    assert treekeeper.exit_code == 0  # stopped by the supervisor's SIGTERM, not after 60 s
    assert time.monotonic() - started < 30
