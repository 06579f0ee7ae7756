"""What a replay waits for at its start and end: connects, the first hello, child exits.

Every replay used to wait up to 100 ms for ZeroMQ's retry of a connect made before the
peer bound, up to 100 ms more for the tree keeper's first hello, and up to 50 ms for the
supervisor to notice the last exit (docs/performance.md, "Twenty-third pass"). These
tests pin the means; `bench/replay.py` measures the effect.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from generated_logs import write_generated_log
from supervisor_helpers import effective_config

from auditstream import wire
from auditstream.config import Config
from auditstream.exitwatch import ExitWatch
from auditstream.redelivery import acks_endpoint
from auditstream.supervisor import RestartPolicy, Supervisor
from treekeeper.acks import AckSender

REPO = Path(__file__).resolve().parents[1]


def test_connecting_sockets_retry_soon_then_back_off(tmp_path: Path) -> None:
    """Both connecting ends of the pipeline retry after 10 ms at first and 1 s at most."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path}/hop"
        outlet = wire.Outlet(ctx, endpoint)
        inlet = wire.Inlet(ctx, f"ipc://{tmp_path}/acks", connect=True)
        for sock in (outlet.sock, inlet.sock):
            assert sock.getsockopt(zmq.RECONNECT_IVL) == wire.RECONNECT_IVL_MS == 10
            assert sock.getsockopt(zmq.RECONNECT_IVL_MAX) == wire.RECONNECT_IVL_MAX_MS
        outlet.close(linger_ms=0)
        inlet.close()
    finally:
        ctx.term()


def test_frame_sent_before_the_peer_binds_arrives(tmp_path: Path) -> None:
    """A frame queued on a connect made before anyone listened is delivered once one binds."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path}/late"
        outlet = wire.Outlet(ctx, endpoint)
        assert outlet.send(b"records", {"n": 1})
        time.sleep(0.2)  # several failed retries, so the back-off has grown
        inlet = wire.Inlet(ctx, endpoint)
        frame = inlet.recv(10_000)
        assert frame is not None and frame.body == {"n": 1}
        outlet.close(linger_ms=0)
        inlet.close()
    finally:
        ctx.term()


def test_tree_keeper_hello_is_due_until_a_receiver_hears_it(tmp_path: Path) -> None:
    """The hello stays due (the stage polls every 10 ms) until a connected receiver got it."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        acks = AckSender(ctx, cfg)
        acks.service(-1)
        assert acks.hello_due  # nobody is connected: the send found no peer
        receiver = wire.Inlet(ctx, acks_endpoint(cfg), connect=True)
        deadline = time.monotonic() + 10
        while acks.hello_due and time.monotonic() < deadline:
            time.sleep(0.005)
            acks.service(-1)
        assert not acks.hello_due
        frame = receiver.recv(10_000)
        assert frame is not None and frame.kind == wire.HELLO
        assert frame.body == {"token": acks.token}
        receiver.close()
        acks.close(linger_ms=0)
    finally:
        ctx.term()


def test_exit_watch_wakes_when_a_child_exits() -> None:
    """A wait with a long timeout ends as soon as a watched child exits."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    watch = ExitWatch()
    if not watch.available:
        pytest.skip("no os.pidfd_open here (Linux 5.3+): the supervisor sleeps its interval")
    try:
        started = time.monotonic()
        watch.wait([child.pid], 60.0)
        assert child.poll() == 0
        assert time.monotonic() - started < 30.0  # woken by the exit, not by the timeout
    finally:
        watch.close()
        child.wait()


def test_exit_watch_sleeps_its_timeout_while_children_live() -> None:
    """Living children, or an exited one no longer passed in, do not end a wait early."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    watch = ExitWatch()
    try:
        started = time.monotonic()
        watch.wait([sleeper.pid], 0.2)
        assert time.monotonic() - started >= 0.2
        watch.wait([sleeper.pid, done.pid], 0.0)  # done's pid is reaped: no pidfd for it
        started = time.monotonic()
        watch.wait([sleeper.pid], 0.2)  # ... and it is not watched any more
        assert time.monotonic() - started >= 0.2
    finally:
        watch.close()
        sleeper.kill()
        sleeper.wait()


def test_tree_keeper_done_before_the_supervisor_saw_it_ready_is_no_failure(tmp_path: Path) -> None:
    """A tree keeper that exited 0 (its ready file removed) between two looks did start."""
    conf = effective_config(tmp_path)
    supervisor = Supervisor(
        conf,
        assemblers=1,
        receiver_stdin=False,
        policy=RestartPolicy(enabled=True),
        ready_file=tmp_path / "treekeeper.ready",
    )
    for stage in supervisor.stages:  # real processes, each done at once
        stage.argv = [sys.executable, "-c", "pass"]
    assert supervisor.run() == 0
    assert supervisor.failed == []
    # The others exit 0 too, or die of the SIGTERM the supervisor sends what still runs once
    # the tree keeper has exited (a stand-in has no handler): a clean stop either way.
    codes = [s.exit_code for s in supervisor.stages]
    assert codes[0] == 0 and all(code in (0, -signal.SIGTERM) for code in codes[1:]), codes


def test_short_replays_exit_0(tmp_path: Path) -> None:
    """Replays of 20 lines end faster than the supervisor looks for the ready file: all exit 0."""
    log = write_generated_log(tmp_path / "short.log", 20)
    for i in range(5):
        out = tmp_path / f"events-{i}.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", f"jsonl:{out}"],
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert out.read_bytes().count(b"\n") >= 1
