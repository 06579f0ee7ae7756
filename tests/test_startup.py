"""The fixed cost of every replay: what its start imports and what it waits for.

docs/performance.md, "Forty-second pass": each stage forked as soon as its modules are
imported (the tree keeper before, importing its own: forty-fourth pass), the tree keeper
woken by the receiver's connection, no module a replay does not use (subprocess, tomllib,
OpenSSL's hashlib) on its way. `bench/replay.py` measures it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stagefork_stage
import zmq
from supervisor_helpers import effective_config

from auditstream import stagefork, wire
from auditstream.config import Config, ConfigError, load, write_json
from auditstream.redelivery import acks_endpoint
from auditstream.supervisor import RestartPolicy, Supervisor
from treekeeper.acks import AckSender
from treekeeper.control import ControlServer
from treekeeper.stage import FrameWait
from treekeeper.tree import entity_id

REPO = Path(__file__).resolve().parents[1]


def test_the_tree_keeper_wakes_when_a_receiver_connects(tmp_path: Path) -> None:
    """While its hello is due, the tree keeper's wait for a frame ends as soon as a receiver
    connects to the ack socket, not at the wait's end; the hello then goes out."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        inlet = wire.Inlet(ctx, f"ipc://{tmp_path}/treekeeper.sock")
        control = ControlServer(ctx, str(tmp_path))
        acks = AckSender(ctx, cfg)
        frames = FrameWait(inlet, control, acks)
        acks.service(-1)
        assert acks.hello_due  # nobody connected yet
        receiver = wire.Inlet(ctx, acks_endpoint(cfg), connect=True)
        start = time.monotonic()
        assert frames.recv(20_000) is None
        assert time.monotonic() - start < 10  # woken by the connection, not the timeout
        deadline = time.monotonic() + 10
        while acks.hello_due and time.monotonic() < deadline:
            acks.service(-1)
            frames.recv(10)
        frame = receiver.recv(10_000)
        assert frame is not None and frame.kind == wire.HELLO
        receiver.close()
        acks.close(linger_ms=0)
        control.close()
        inlet.close()
    finally:
        ctx.term()


def test_the_tree_keepers_wait_returns_a_frame_that_arrives(tmp_path: Path) -> None:
    """A frame that arrives during that wait is returned, as the plain receive would."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path}/treekeeper.sock"
        inlet = wire.Inlet(ctx, endpoint)
        control = ControlServer(ctx, str(tmp_path))
        acks = AckSender(ctx, cfg)
        frames = FrameWait(inlet, control, acks)
        outlet = wire.Outlet(ctx, endpoint)
        assert outlet.send(wire.EVENTS, {"n": 1})
        frame = None
        deadline = time.monotonic() + 10
        while frame is None and time.monotonic() < deadline:
            frame = frames.recv(1000)
        assert frame is not None and frame.kind == wire.EVENTS and frame.body == {"n": 1}
        outlet.close(linger_ms=0)
        acks.close(linger_ms=0)
        control.close()
        inlet.close()
    finally:
        ctx.term()


def test_entity_ids_are_sha256_without_openssl() -> None:
    """The Python table's entity id is the same SHA-256 as hashlib's, computed without
    importing hashlib (OpenSSL's start was ~3 ms of a replay's first events)."""
    digest = hashlib.sha256(b"host|42|1700000000123").digest()[:16]
    assert entity_id("host", 42, 1700000000123) == (
        base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    )
    code = (
        "import sys; from treekeeper.tree import entity_id; entity_id('h', 1, 2); "
        "print('hashlib' in sys.modules)"
    )
    assert python_prints(code) == "False"


def test_a_replays_start_imports_no_module_only_other_paths_use() -> None:
    """The command and every stage module load without subprocess (exec'd stages only),
    tomllib (TOML configs only) or hashlib: each was milliseconds of every replay."""
    code = (
        "import sys, auditstream.cli, receiver.stage, assembler.stage, treekeeper.stage; "
        "print(sorted(m for m in ('subprocess', 'tomllib', 'hashlib') if m in sys.modules))"
    )
    assert python_prints(code) == "[]"


def python_prints(code: str) -> str:
    """What a fresh interpreter running ``code`` in this checkout prints, stripped."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_a_toml_config_still_loads_and_its_errors_name_the_file(tmp_path: Path) -> None:
    """tomllib, now imported when a TOML file is read, parses it and names a bad one."""
    good = tmp_path / "good.toml"
    good.write_text('[assembler]\ninstances = 2\n[runtime]\nlog_level = "debug"\n')
    cfg = load(good)
    assert cfg.assembler.instances == 2 and cfg.runtime.log_level == "debug"
    bad = tmp_path / "bad.toml"
    bad.write_text("[assembler\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid TOML"):
        load(bad)


@pytest.fixture
def waiting_tree_keeper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """tests/stagefork_stage.py as the tree keeper (it waits for a stop); an assembler
    module that cannot be imported."""
    monkeypatch.setitem(stagefork.STAGE_RUNNERS, "treekeeper", "stagefork_stage")
    monkeypatch.setitem(stagefork.STAGE_RUNNERS, "assembler", "auditstream_test_no_such_module")
    stagefork_stage.BEHAVIOUR["mode"] = "wait"
    yield
    stagefork_stage.BEHAVIOUR["mode"] = "report"


def test_a_stage_that_cannot_be_imported_stops_those_forked_before_it(
    waiting_tree_keeper: None, tmp_path: Path
) -> None:
    """Each stage's modules are imported just before its fork: when the assembler's fail,
    the tree keeper already forked is stopped before the error is raised, as before, from
    the supervisor."""
    conf = tmp_path / "effective-config.json"
    write_json(Config(), conf)
    supervisor = Supervisor(
        conf, assemblers=1, receiver_stdin=False, policy=RestartPolicy(), fork_stages=True
    )
    with pytest.raises(ModuleNotFoundError, match="auditstream_test_no_such_module"):
        supervisor.run()
    treekeeper = supervisor.stages[0].proc
    assert treekeeper is not None and treekeeper.pid != os.getpid()
    assert treekeeper.poll() == 0  # stopped by SIGTERM through its own handler, and reaped
    assert all(stage.proc is None for stage in supervisor.stages[1:])


def test_the_tree_keeper_imports_its_modules_after_its_fork(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The tree keeper's module is imported in the forked child, not in the supervisor: one
    that cannot be imported ends the child (exit 1, the error on its stderr), the supervisor
    says it could not start and stops the stages forked after it."""
    monkeypatch.setitem(stagefork.STAGE_RUNNERS, "treekeeper", "auditstream_test_no_tree_keeper")
    conf = effective_config(tmp_path, tmp_path / "run")
    supervisor = Supervisor(
        conf,
        assemblers=1,
        receiver_stdin=False,
        policy=RestartPolicy(),
        fork_stages=True,
        ready_file=tmp_path / "ready",
    )
    assert supervisor.run() == 1
    assert "auditstream_test_no_tree_keeper" not in sys.modules
    treekeeper = supervisor.stages[0]
    assert treekeeper.proc is not None and treekeeper.proc.poll() == 1
    assert supervisor.failed == ["treekeeper"]
    assert all(s.proc is not None and s.proc.poll() is not None for s in supervisor.stages)
    assert "No module named 'auditstream_test_no_tree_keeper'" in capfd.readouterr().err
