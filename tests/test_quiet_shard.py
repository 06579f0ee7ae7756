"""Live with two assemblers: the receiver tells a quiet assembler how far it has read."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from live_helpers import (
    Event,
    KernelState,
    LiveRun,
    is_audit_event,
    kernel_clean,
    wait_for_events,
    write_config,
)

from assembler.stage import Assembly
from auditstream import runtime, wire
from auditstream.config import Config
from receiver.redelivery import DeliveryGuard
from receiver.shipper import RecordShipper

__all__ = ["kernel_clean"]  # the fixture is used by name
STAMP = b"1700000000.250"


def record(serial: int, type_: int = 1300) -> tuple[int, bytes, str]:
    return (type_, b"audit(%s:%d): arch=c000003e syscall=2 pid=7" % (STAMP, serial), "")


@pytest.fixture
def two_shards(tmp_path: Path) -> Iterator[tuple[RecordShipper, list[wire.Inlet]]]:
    """A live shipper over a real DeliveryGuard, with two bound assembler inlets."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    cfg.assembler.instances = 2
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inlets = [wire.Inlet(zctx, runtime.assembler_endpoint(cfg, i), hwm=64) for i in range(2)]
    guard = DeliveryGuard(zctx, cfg, may_wait=False, reset_on_start=False)
    shipper = RecordShipper(guard, batch_max_records=100, batch_max_ms=0, never_block=True)
    try:
        # Both assemblers joined first (each gets its resume), so that no rejoin reorders
        # the frames the test looks at.
        deadline = time.monotonic() + 10
        while not all(o.watch is not None and o.watch.connected for o in guard.outlets):
            assert time.monotonic() < deadline, "the assembler inlets never connected"
            guard.poll()
            time.sleep(0.01)
        for inlet in inlets:
            assert [f.kind for f in frames(inlet)] == [wire.RESUME]
        yield shipper, inlets
    finally:
        guard.close(durable=False)
        for inlet in inlets:
            inlet.close()
        zctx.term()


def frames(inlet: wire.Inlet) -> list[wire.Frame]:
    out = []
    while (frame := inlet.recv(200)) is not None:
        out.append(frame)
    return out


def test_a_quiet_assembler_gets_a_tick_with_the_newest_record_read(
    two_shards: tuple[RecordShipper, list[wire.Inlet]],
) -> None:
    """Records for shard 0 only: shard 0 gets them with read_to, shard 1 a TICK with the same key."""
    shipper, inlets = two_shards
    shipper.add([record(10), record(11)])  # one each
    shipper.flush_due()
    for inlet in inlets:
        assert [f.kind for f in frames(inlet)] == [wire.RECORDS]
    shipper.add([record(12), record(14, type_=1320)])  # shard 0 only
    shipper.flush_due()
    (batch,) = frames(inlets[0])
    assert batch.kind == wire.RECORDS and tuple(batch.body["read_to"]) == (1700000000250, 14)
    (tick,) = frames(inlets[1])
    assert tick.kind == wire.TICK and tick.body == {"read_to": [1700000000250, 14]}
    shipper.flush_due()  # nothing new read: no second tick
    assert frames(inlets[1]) == []


def test_a_tick_moves_a_quiet_assemblers_claim() -> None:
    """An assembler with nothing open claims just past the receiver's read_to, not its own last record."""
    cfg = Config()
    cfg.assembler.instances = 2
    assembly = Assembly(cfg, event_time=False, index=1)
    assembly.push_batch([list(record(11)), [1320, b"audit(%s:11): " % STAMP, ""]])
    assert assembly.sent_below() == [1700000000250, 12]
    assembly.note_read_to([1700000000250, 14])
    assert assembly.sent_below() == [1700000000250, 15]
    assembly.note_read_to("hostile")  # not a key: ignored
    assert assembly.sent_below() == [1700000000250, 15]


@pytest.mark.kernel
def test_live_two_assemblers_release_the_last_event_long_before_the_window(
    kernel_clean: KernelState, tmp_path: Path
) -> None:
    """Live with 2 assemblers and a 60 s window, the last of 3 execs is written within seconds."""
    rules = tmp_path / "quiet.rules"
    rules.write_text(f"-a always,exit -F arch=b64 -S execve -F ppid={os.getpid()} -k quiet\n")
    config = write_config(tmp_path / "c.toml", tmp_path / "run", [rules])
    with config.open("a") as fh:
        fh.write("[assembler]\ninstances = 2\n[treekeeper]\nreorder_window_ms = 60000\n")
    out = tmp_path / "events.jsonl"
    run = LiveRun(["run", "-c", str(config), "--sink", f"jsonl:{out}"], tmp_path).start()
    try:
        run.wait_registered()
        pids = []
        for _ in range(3):
            child = subprocess.Popen(["/bin/true"])
            child.wait()
            pids.append(child.pid)
            time.sleep(0.3)

        # Without the receiver's tick the other assembler's claim stops below the last
        # exec, and it would wait the whole 60 s window.
        def ours(event: Event) -> bool:
            return is_audit_event(event) and event.get("process", {}).get("pid") in pids

        found = wait_for_events(out, ours, 3, 20)
        assert sorted(e["process"]["pid"] for e in found) == sorted(pids), run.read_stderr()
        assert run.stop(signal.SIGINT) == 0, run.stderr_text
    finally:
        if run.returncode is None:
            run.stop(signal.SIGINT)
