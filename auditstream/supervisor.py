"""The parent process: starts the stage processes, restarts them, stops them in order.

It owns no sockets (circus's rule): stages talk to each other directly. Signals
become loop flags; the loop polls children.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from auditstream.stage import EXIT_FATAL

log = logging.getLogger("auditstream.supervisor")

POLL_S = 0.05
STOP_GRACE_S = 60.0  # how long a stage may take to drain after its upstream stopped
FAIL_GRACE_S = 3.0  # after a stage failed, nothing downstream of it can drain: do not wait long
READY_TIMEOUT_S = 120.0  # sinks' start-up checks (a Kafka health check takes up to its timeout)


@dataclass(slots=True)
class StageProcess:
    name: str  # receiver, assembler-0, treekeeper
    argv: list[str]
    stdin_inherit: bool = False
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    restarts: list[float] = field(default_factory=list)
    backoff_s: float = 0.5
    restart_at: float | None = None


@dataclass(slots=True)
class RestartPolicy:
    """Restart crashed stages with backoff; give up if one keeps dying (flapping)."""

    enabled: bool = False
    max_restarts: int = 5
    window_s: float = 60.0
    max_backoff_s: float = 10.0


class Supervisor:
    def __init__(
        self,
        config_path: Path,
        *,
        assemblers: int,
        receiver_stdin: bool,
        policy: RestartPolicy,
        ready_file: Path | None = None,
    ) -> None:
        py = sys.executable
        conf = ["--config", str(config_path)]
        # Start order is downstream first: each stage binds its input before anyone pushes.
        self.stages = [StageProcess("treekeeper", [py, "-m", "treekeeper", *conf])]
        self.stages += [
            StageProcess(f"assembler-{i}", [py, "-m", "assembler", *conf, "--index", str(i)])
            for i in range(assemblers)
        ]
        self.stages.append(
            StageProcess("receiver", [py, "-m", "receiver", *conf], stdin_inherit=receiver_stdin)
        )
        self.policy = policy
        self.ready_file = ready_file
        self.stop_requested = 0
        self.failed: list[str] = []
        self.gave_up = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested += 1

    def _spawn(self, stage: StageProcess) -> None:
        stdin = None if stage.stdin_inherit else subprocess.DEVNULL
        # Own session: a terminal's Ctrl-C reaches the supervisor only, which stops the
        # stages in pipeline order.
        stage.proc = subprocess.Popen(stage.argv, stdin=stdin, start_new_session=True)
        stage.exit_code = None
        stage.restart_at = None

    def _stage(self, name: str) -> StageProcess:
        return next(s for s in self.stages if s.name == name)

    def run(self) -> int:
        """Run until every stage has exited; return the process exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # The tree keeper opens the sinks first: a bad sink fails the start, not later.
            self._spawn(self.stages[0])
            if not self._wait_ready(self.stages[0]):
                self.failed.append(self.stages[0].name)
                return 1
            for stage in self.stages[1:]:
                self._spawn(stage)
            pids = " ".join(f"{s.name}={s.proc.pid}" for s in reversed(self.stages) if s.proc)
            log.info("stage pids: %s", pids)
            self._loop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return 0 if not self.failed else 1

    def _wait_ready(self, stage: StageProcess) -> bool:
        if self.ready_file is None:
            return True
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            code = stage.proc.poll() if stage.proc else None
            if code is not None:
                stage.exit_code = code
                log.error("%s could not start (exit code %s)", stage.name, code)
                return False
            if self.stop_requested or time.monotonic() > deadline:
                log.error("%s did not become ready; stopping", stage.name)
                self._terminate_all(signal.SIGTERM)
                return False
            time.sleep(POLL_S)
        return True

    def _loop(self) -> None:
        signalled = 0
        stop_started: float | None = None
        while True:
            now = time.monotonic()
            if self.stop_requested > signalled:
                signalled = self.stop_requested
                stop_started = stop_started or now
                # Stop the source; its eof drains the rest in pipeline order.
                receiver = self._stage("receiver")
                if signalled == 1 and receiver.proc and receiver.exit_code is None:
                    receiver.proc.send_signal(signal.SIGTERM)
                else:
                    self._terminate_all(signal.SIGTERM)
            # A failed receiver sent its eof, so the rest can drain; any other failure
            # breaks the pipe and nothing behind it will drain.
            broken = any(name != "receiver" for name in self.failed)
            grace = FAIL_GRACE_S if broken else STOP_GRACE_S
            if stop_started is not None and now - stop_started > grace:
                log.error("stages did not drain within %.0f s; killing them", grace)
                self._terminate_all(signal.SIGKILL)
                stop_started = now
            alive = False
            for stage in self.stages:
                self._check(stage, now, stopping=stop_started is not None)
                alive = alive or stage.exit_code is None or stage.restart_at is not None
            if not alive:
                return
            time.sleep(POLL_S)

    def _check(self, stage: StageProcess, now: float, *, stopping: bool) -> None:
        if stage.restart_at is not None and now >= stage.restart_at and not stopping:
            log.warning("restarting %s", stage.name)
            self._spawn(stage)
            return
        if stage.proc is None or stage.exit_code is not None:
            return
        code = stage.proc.poll()
        if code is None:
            return
        stage.exit_code = code
        if code == 0:
            return
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if code == EXIT_FATAL:
            log.error("%s cannot run (%s); stopping the pipeline", stage.name, how)
        elif self.policy.enabled and not stopping:
            stage.restarts = [t for t in stage.restarts if now - t < self.policy.window_s] + [now]
            if len(stage.restarts) <= self.policy.max_restarts:
                log.error("%s died (%s); restarting in %.1f s", stage.name, how, stage.backoff_s)
                stage.restart_at = now + stage.backoff_s
                stage.backoff_s = min(stage.backoff_s * 2, self.policy.max_backoff_s)
                return
            log.error(
                "%s died %d times within %.0f s; giving up",
                stage.name,
                len(stage.restarts),
                self.policy.window_s,
            )
            self.gave_up = True
        else:
            log.error("%s failed (%s); stopping the pipeline", stage.name, how)
        self.failed.append(stage.name)
        self.stop_requested = max(self.stop_requested, 2)

    def _terminate_all(self, sig: int) -> None:
        for stage in self.stages:
            stage.restart_at = None
            if stage.proc is not None and stage.exit_code is None and stage.proc.poll() is None:
                stage.proc.send_signal(sig)
