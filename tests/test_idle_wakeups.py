"""An idle assembler and tree keeper sleep until their next timed work (at most ~1 s), not
every IDLE_POLL_MS: on a quiet host each wakeup cost CPU for nothing. What is in flight (an
open event, events in the reorder window or the sinks, a held ack), a stop, a deadline of
the process table and `auditstream tree` still get the loop at once, as before.

Real `auditstream run --source stdin` with nothing written (no kernel needed), and the
stages' own objects for the deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
from live_helpers import main_thread_sleeps, stage_pids, stdin_run
from test_tree import BASE_MS, execve, exit_group, fork

from assembler import stage as assembler_stage
from assembler.stage import Assembly
from auditstream import config, wire
from auditstream.cmd_tree import fetch
from auditstream.stage import StageContext
from treekeeper import stage as treekeeper_stage
from treekeeper.acks import ACK_EVERY_S, HELLO_EVERY_S, AckSender
from treekeeper.control import ControlServer
from treekeeper.pipeline import TreeStep

IDLE_S = 3.0
# Each stage writes its status every second and the tree keeper says hello every two:
# about 1.5 and 1 sleeps a second; every IDLE_POLL_MS (10 a second) before.
MAX_SLEEPS_PER_S = 4


@contextlib.contextmanager
def idle_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`run --source stdin`, stdin an open pipe with nothing written, once every stage has
    written its status and its start-up is over: (supervisor, runtime dir)."""
    with stdin_run(tmp_path, stages=("receiver", "assembler-0", "treekeeper")) as run:
        time.sleep(1.0)  # the start-up scan's lifecycle docs written and acknowledged
        yield run, tmp_path / "run"


def test_an_idle_assembler_and_tree_keeper_sleep_a_few_times_a_second(tmp_path: Path) -> None:
    """Over 3 idle seconds each main thread sleeps at most 4 times a second (~10 before),
    each rewrites its status file meanwhile (`auditstream status`, the metrics' status age),
    and a stop signal still ends the run cleanly."""
    with idle_run(tmp_path) as (run, run_dir):
        pids = stage_pids(run.pid)
        stages = {name: pids[name] for name in ("assembler-0", "treekeeper")}
        before = {name: main_thread_sleeps(pid) for name, pid in stages.items()}
        files: dict[str, set[int]] = {name: set() for name in stages}
        end = time.monotonic() + IDLE_S
        while time.monotonic() < end:
            for name in stages:  # write_status replaces the file: a new inode each time
                with contextlib.suppress(FileNotFoundError):
                    files[name].add((run_dir / f"status-{name}.json").stat().st_ino)
            time.sleep(0.1)
        sleeps = {name: main_thread_sleeps(pid) - before[name] for name, pid in stages.items()}
        assert all(count <= MAX_SLEEPS_PER_S * IDLE_S for count in sleeps.values()), sleeps
        assert all(len(inodes) >= 2 for inodes in files.values()), files
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0
        stderr = run.stderr.read().decode() if run.stderr else ""
        assert "Traceback" not in stderr, stderr


def test_an_idle_tree_keeper_answers_auditstream_tree_at_once(tmp_path: Path) -> None:
    """20 `auditstream tree` requests to an idle tree keeper take well under the ~10 s they
    would if each waited for its next turn (up to a second): the control socket wakes it."""
    with idle_run(tmp_path) as (_, run_dir):
        start = time.monotonic()
        for _ in range(20):
            processes = fetch(str(run_dir))
            assert any(proc["pid"] == os.getpid() for proc in processes)
        assert time.monotonic() - start < 5.0


# ---- the deadlines the idle wait is cut to ------------------------------------------------


def follow_step(exit_grace_ms: int) -> TreeStep:
    """The tree keeper's step of a followed log (its clock: event time, then the wall clock
    while the log is quiet), with a fixed clock of its own: :func:`set_now`."""
    cfg = config.from_dict(
        {
            "receiver": {"source": "file", "follow": True, "files": ["/nonexistent/audit.log"]},
            "treekeeper": {"exit_grace_ms": exit_grace_ms, "reorder_window_ms": 100},
        }
    )
    step = TreeStep(cfg)
    set_now(step, BASE_MS)
    return step


def set_now(step: TreeStep, now_ms: int) -> None:
    step._now = lambda: now_ms  # type: ignore[method-assign]


def frame(at_ms: int, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    """Events of one frame, as the tree keeper decodes them, their keys at ``at_ms``."""
    sec, msec = divmod(at_ms, 1000)
    return [
        {"key": ["", sec, msec, serial], "raw": [[1300]], "doc": doc}
        for serial, doc in enumerate(docs, 1)
    ]


def test_the_tree_keepers_idle_wait_ends_when_an_exit_grace_does() -> None:
    """Following a quiet log: while the window holds events the loop polls as before; once it
    is empty, it waits exactly until the exited process's grace ends (at most the longest
    wait), and maintain() then deletes the process."""
    step = follow_step(exit_grace_ms=600)
    docs = fork(0, 100, 1, 200), execve(10, 200, 100, "/bin/true", ["true"])
    step.process(frame(BASE_MS + 20, *docs, exit_group(20, 200, 100)))  # the window holds them
    assert step.held == 3
    assert step.idle_poll_ms(100, 1000) == 100  # the window's release is not timed here
    set_now(step, BASE_MS + 500)
    step.maintain()  # the window lets them go
    assert step.held == 0
    exited = step.table.lookup(200, BASE_MS + 20)
    assert exited is not None and exited.exited_at is not None
    due = exited.exited_at + 600 + 1
    assert step.next_due_ms() == due
    assert step.idle_poll_ms(100, 1000) == due - (BASE_MS + 500)
    assert step.idle_poll_ms(10, 50) == 50  # never longer than the longest wait
    set_now(step, due - 1)
    step.maintain()
    assert step.table.lookup(200, BASE_MS + 20) is exited  # not yet
    assert step.idle_poll_ms(100, 1000) == 1
    set_now(step, due)
    step.maintain()
    assert step.table.lookup(200, BASE_MS + 20) is None
    assert step.next_due_ms() is None and step.idle_poll_ms(100, 1000) == 1000


def test_a_replays_clock_does_not_move_while_idle_so_nothing_is_timed() -> None:
    """A replay of a finite log: held events keep the old poll; an empty window waits the
    longest (its event time moves only with events); every event released is counted out."""
    cfg = config.from_dict({"receiver": {"source": "file", "files": ["/nonexistent/a.log"]}})
    step = TreeStep(cfg)
    marker = {"key": ["", 0, 0, 0], "raw": [], "doc": {"event": {"action": "marker"}}}
    events = frame(BASE_MS, fork(0, 100, 1, 200), exit_group(20, 200, 100))
    step.process([events[0], marker, events[1]])
    assert step.held == 2 and step.idle_poll_ms(100, 1000) == 100
    assert step.next_due_ms() is None
    assert len(step.close()) >= 2 and step.held == 0
    assert step.idle_poll_ms(100, 1000) == 1000


def test_a_held_ack_and_the_next_hello_bound_the_wait(tmp_path: Path) -> None:
    """Nothing held: the next hello; an ack held for coalescing: its time; one no receiver
    took (its time past): again after ACK_EVERY_S, never a busy loop."""
    cfg = config.Config()
    cfg.runtime.dir = str(tmp_path)
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sender = AckSender(zctx, cfg)
    try:
        now = time.monotonic()
        sender.service(0)  # no receiver: the hello waits, nothing else is due
        assert sender.next_due(now) <= now
        sender._hello_due, sender._next_hello = False, now + HELLO_EVERY_S
        assert sender.next_due(now) == now + HELLO_EVERY_S
        body = {"epoch": 1, "durable_below": 1, "token": sender.token}
        sender.tracker.frame_arrived(0, body, [], submitted=0)
        assert sender.tracker.outstanding  # not yet through service(): the loop polls
        sender._next_ack = now + 0.05
        sender.service(0)  # held: not due before _next_ack, and no receiver anyway
        assert not sender.tracker.outstanding
        assert sender.next_due(now) == now + 0.05
        later = now + 0.06  # due, but no receiver took it: retried, not at once and again
        assert sender.next_due(later) == later + ACK_EVERY_S
    finally:
        sender.close(linger_ms=0)
        zctx.term()


def test_the_assembler_waits_long_only_with_nothing_open_or_unshipped() -> None:
    """An open event (its timeout) or events not shipped keep IDLE_POLL_MS; a stop asked too;
    nothing of that: until the status is due, at most IDLE_MAX_MS."""
    assembly = Assembly(config.Config(), event_time=False)
    ctx = StageContext("assembler")
    head = b"audit(1700000000.001:7): "
    syscall = head + b'arch=c000003e syscall=59 success=yes exit=0 pid=11 ppid=10 comm="ls"'
    assembly.push_batch([[1300, syscall, ""]])
    far = time.monotonic() + 60
    assert assembly.reassembler.stats.in_flight == 1
    assert assembler_stage.idle_wait_ms(assembly, ctx, far) == assembler_stage.IDLE_POLL_MS
    assembly.push_batch([[1320, head, ""]])  # its EOE: complete, not shipped yet
    assert assembly.out and assembly.reassembler.stats.in_flight == 0
    assert assembler_stage.idle_wait_ms(assembly, ctx, far) == assembler_stage.IDLE_POLL_MS
    assembly.out = []  # shipped; its serial may yet show a gap below it, until its timeout:
    assert assembler_stage.idle_wait_ms(assembly, ctx, far) == assembler_stage.IDLE_POLL_MS
    assembly.reassembler.maintain(assembly.clock_ms + 3_600_000)  # settled
    assert assembler_stage.idle_wait_ms(assembly, ctx, far) == assembler_stage.IDLE_MAX_MS
    assert assembler_stage.idle_wait_ms(assembly, ctx, time.monotonic() - 1) == 0
    ctx.stop_requested = True
    assert assembler_stage.idle_wait_ms(assembly, ctx, far) == assembler_stage.IDLE_POLL_MS


def test_the_tree_keepers_wait_wakes_for_a_control_request(tmp_path: Path) -> None:
    """The idle wait (up to a second) ends at once for a request on the control socket, and
    for a frame, which it returns."""
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    cfg = config.Config()
    cfg.runtime.dir = str(tmp_path)
    inlet = wire.Inlet(zctx, f"ipc://{tmp_path}/in.sock")
    control = ControlServer(zctx, str(tmp_path))
    acks = AckSender(zctx, cfg)
    asker = zctx.socket(zmq.REQ)
    asker.setsockopt(zmq.LINGER, 0)
    pusher = zctx.socket(zmq.PUSH)
    pusher.setsockopt(zmq.LINGER, 0)
    try:
        wakers = treekeeper_stage.FrameWait(inlet, control, acks)
        asker.connect(f"ipc://{tmp_path}/treekeeper-control.sock")
        asker.send_json({"get": "nothing"})
        assert wakers.recv(60_000) is None  # woken, no frame: the loop's turn serves it
        assert control.sock.poll(0)
        control.sock.recv()
        control.sock.send_json({})
        pusher.connect(f"ipc://{tmp_path}/in.sock")
        pusher.send_multipart([wire.TICK, (0).to_bytes(8, "big"), wire.pack_body({})])
        got = wakers.recv(60_000)
        assert got is not None and got.kind == wire.TICK
    finally:
        for sock in (asker, pusher):
            sock.close()
        control.close()
        acks.close(linger_ms=0)
        inlet.close()
        zctx.term()
