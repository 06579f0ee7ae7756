"""The parent process: starts the stage processes, restarts them, stops them in order.

It owns no sockets (circus's rule): stages talk to each other directly. Signals
become loop flags; the loop polls children. A replay's stages are forked from it once it
has imported them (auditstream/stagefork.py); live ones are exec'd.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import ClassVar

from auditstream import config as config_mod
from auditstream import privilege, sdnotify, stagefork
from auditstream.exitwatch import ExitWatch
from auditstream.stage import EXIT_FATAL
from auditstream.stagefork import ChildProcess

# PYTHONHASHSEED's largest value (0 turns randomization off).
HASH_SEED_MAX = 4294967295

log = logging.getLogger("auditstream.supervisor")

POLL_S = 0.05
# While the tree keeper starts: how often its ready file is looked for. Its exit wakes the
# wait at once (ExitWatch); a short replay can be over before the first 50 ms look.
READY_POLL_S = 0.01
STOP_EARLY_TIMEOUT_S = 5.0
STOP_GRACE_S = 60.0  # how long a stage may take to drain after its upstream stopped
# A stop signal while a stop is under way (a second Ctrl-C) stops the stages at once:
# SIGTERM, then SIGKILL for any still running this much later (a stuck one). Like a second
# Ctrl-C in docker compose, not supervisord's and circus's 10 s and 30 s: those are the
# first stop's grace, and the first signal here has had its drain already.
FORCE_GRACE_S = 1.0
FAIL_GRACE_S = 3.0  # after a stage failed, nothing downstream of it can drain: do not wait long
READY_TIMEOUT_S = 120.0  # sinks' start-up checks (a Kafka health check takes up to its timeout)
METRICS_STOP_S = 5.0


@dataclass(slots=True)
class StageProcess:
    name: str  # receiver, assembler-0, treekeeper
    argv: list[str]
    stdin_inherit: bool = False
    pass_fds: tuple[int, ...] = ()  # descriptors it keeps (replay /dev/fd/N inputs)
    proc: ChildProcess | None = None
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
    initial_backoff_s: ClassVar[float] = 0.5


def stage_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The exec'd stages' environment: ours, with one PYTHONHASHSEED for every stage of the run.

    The assemblers send hash() of each record and the tree keeper compares them with
    hashes of its own (auditstream/doc_text.py RECORD_HASHES), so all stages must hash
    alike. The seed is random per run, as Python's own would be; a restarted stage gets
    the same one. A seed the user set (a number) is kept. Forked stages hash with the
    supervisor's own seed: a run forks all of its pipeline stages or none."""
    env = dict(environ)
    if not env.get("PYTHONHASHSEED", "").isdigit():
        # os.urandom, not secrets: that imports hmac and OpenSSL (~3 ms of the start); the
        # seed need not be a secret, only differ from run to run.
        env["PYTHONHASHSEED"] = str(int.from_bytes(os.urandom(8), "little") % HASH_SEED_MAX + 1)
    return env


class Supervisor:
    def __init__(
        self,
        config_path: Path,
        *,
        assemblers: int,
        receiver_stdin: bool,
        receiver_fds: tuple[int, ...] = (),
        policy: RestartPolicy,
        ready_file: Path | None = None,
        privileges: privilege.SpawnPrivileges | None = None,
        capturing_file: Path | None = None,
        fork_stages: bool = False,
        output_closed_file: Path | None = None,
        hold_fds: tuple[int, ...] = (),
    ) -> None:
        """``fork_stages``: fork the pipeline's stages instead of exec'ing them, where each
        one's privileges allow (a replay; see auditstream/stagefork.py).
        ``output_closed_file``: the tree keeper creates it once every sink's output is gone
        for good (stdout's reader exited): the run then stops as on a first signal.
        ``hold_fds``: descriptors every stage keeps open (the runtime dir's lock): a stage
        still draining after our death keeps the directory from a new run."""
        py = sys.executable
        conf = ["--config", str(config_path), "--supervisor-pid", str(os.getpid())]
        # Start order is downstream first: each stage binds its input before anyone pushes.
        self.stages = [StageProcess("treekeeper", [py, "-m", "treekeeper", *conf])]
        self.stages += [
            StageProcess(f"assembler-{i}", [py, "-m", "assembler", *conf, "--index", str(i)])
            for i in range(assemblers)
        ]
        self.stages.append(
            StageProcess(
                "receiver",
                [py, "-m", "receiver", *conf],
                stdin_inherit=receiver_stdin,
                pass_fds=receiver_fds,
            )
        )
        # The Prometheus endpoint only reads status files: it starts last (after the tree
        # keeper is ready) and is stopped once the pipeline is done; it has nothing to drain.
        self.metrics: StageProcess | None = None
        if config_mod.load(config_path).runtime.metrics_listen:
            self.metrics = StageProcess("metrics", [py, "-m", "auditstream.metrics", *conf])
            self.stages.append(self.metrics)
        for stage in self.stages:
            stage.pass_fds += hold_fds
        self.policy = policy
        self.ready_file = ready_file
        self.stage_env = stage_environment(os.environ)
        # As root: how each stage drops privileges (auditstream/privilege.py).
        self.privileges = privileges
        if privileges is not None and privileges.account is not None:
            privilege.share_with_group(config_path, privileges.account, 0o640)
        # systemd's READY=1 waits for this file (live: the receiver's first status, written
        # once its source is open and its rules loaded), else only for the stages' start.
        self.capturing_file = capturing_file
        self.ready_notified = False
        self.stopping_notified = False
        self.stop_requested = 0
        self.signals: list[int] = []  # SIGINT/SIGTERM/SIGHUP received, in order
        # The first stop signal, when it came before the receiver had finished: the input
        # was not read to its end (a replay exits 128 + it).
        self.interrupted_by: int | None = None
        self.output_closed_file = output_closed_file
        self.output_closed = False  # every output gone: the run stopped early (see above)
        self.kill_at: float | None = None  # a forced stop SIGKILLs what still runs then
        self.force_killed: list[str] = []  # stages a forced stop killed (not failures)
        self.failed: list[str] = []
        self.gave_up = False
        self.stopped_starting = False  # a stop signal came before the tree keeper was ready
        self.restarts = 0  # stages restarted after dying (redelivery covers what they held)
        self.source_done = False  # the receiver exited 0: nothing is left to resend
        self.killed_late: list[str] = []  # stages killed after that (not failures)
        self.exits = ExitWatch()
        # How each pipeline stage is set up when forked; None: every stage is exec'd. All or
        # none: forked stages hash() with the supervisor's seed, exec'd ones with stage_env's.
        self.fork_setups: dict[str, Callable[[], None]] | None = None
        if fork_stages:
            setups = {
                s.name: privileges.fork_setup(s.name) if privileges else privilege.no_setup
                for s in self.stages
                if s is not self.metrics
            }
            if all(setup is not None for setup in setups.values()):
                self.fork_setups = {name: setup for name, setup in setups.items() if setup}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)  # the loop counts it into stop_requested, in its order

    def _spawn(self, stage: StageProcess, extra_args: list[str] | None = None) -> None:
        argv = stage.argv + (extra_args or [])
        stage.proc = self._fork(stage, argv) or self._exec(stage, argv)
        stage.exit_code = None
        stage.restart_at = None

    def _fork(self, stage: StageProcess, argv: list[str]) -> ChildProcess | None:
        setup = self.fork_setups.get(stage.name) if self.fork_setups is not None else None
        if setup is None:
            return None
        # argv is [python, "-m", module, args...], as it would be exec'd
        forked = stagefork.fork_stage(
            argv[2],
            argv[3:],
            stdin_inherit=stage.stdin_inherit,
            setup=setup,
            keep_fds=stage.pass_fds,
        )
        if forked is None:
            log.warning("%s: cannot fork here (threads running); exec'd instead", stage.name)
        return forked

    def _exec(self, stage: StageProcess, argv: list[str]) -> ChildProcess:
        import subprocess  # here: ~2 ms of every start, which a replay's forks do not use

        stdin = None if stage.stdin_inherit else subprocess.DEVNULL
        options = self.privileges.popen_options(stage.name) if self.privileges else {}
        # Own session: a terminal's Ctrl-C reaches the supervisor only, which stops the
        # stages in pipeline order.
        return subprocess.Popen(
            argv,
            stdin=stdin,
            start_new_session=True,
            env=self.stage_env,
            pass_fds=stage.pass_fds,
            **options,
        )

    def _stage(self, name: str) -> StageProcess:
        return next(s for s in self.stages if s.name == name)

    def run(self) -> int:
        """Run until every stage has exited; return the process exit code."""
        stop_signals = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup; auditd's plugin
            stop_signals.append(signal.SIGHUP)  # its terminal closed: stop as for SIGTERM
        old = {s: signal.signal(s, self._on_signal) for s in stop_signals}
        if self.output_closed_file is not None:  # a killed run's must not count for this one
            self.output_closed_file.unlink(missing_ok=True)
        try:
            # The tree keeper opens the sinks first: a bad sink fails the start, not later.
            # The other stages start meanwhile, so that their start (exec'd: ~0.085 CPU s of
            # imports each) overlaps its own: the assemblers only pass on what the receiver
            # sends, and the receiver opens its source only once the tree keeper is ready
            # (--start-after).
            #
            # A forked stage's modules are imported here just before its fork (stagefork.py),
            # downstream first; the tree keeper imports its own after its fork and sets up
            # and opens its sinks while we import the assembler's and the receiver's: its
            # ~30 ms of imports and ~8 ms of set-up leave the critical path.
            early = [s for s in self.stages[1:] if s is not self.metrics]
            try:
                self._spawn(self.stages[0])
                for stage in early:
                    after = (
                        ["--start-after", str(self.ready_file)] if stage.name == "receiver" else []
                    )
                    self._spawn(stage, after if self.ready_file is not None else [])
            except BaseException:
                # A stage that cannot be started (an import that fails: a broken install; an
                # exec that fails): the ones already running are stopped before it is raised.
                self._stop_early(self.stages)
                raise
            if not self._wait_ready(self.stages[0]):
                self._stop_early(self.stages)
                if self.stopped_starting:
                    return 0  # asked for, not a failure
                self.failed.append(self.stages[0].name)
                return 1
            if self.metrics is not None:
                self._spawn(self.metrics)
            pids = " ".join(f"{s.name}={s.proc.pid}" for s in reversed(self.stages) if s.proc)
            log.info("stage pids: %s", pids)
            self._notify_ready()
            self._loop()
        finally:
            self.exits.close()
            self._notify_stopping()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return 0 if not self.failed else 1

    def _stop_early(self, stages: list[StageProcess]) -> None:
        """Stop stages before the receiver was let go (nothing reached them): SIGTERM, then
        SIGKILL after STOP_EARLY_TIMEOUT_S, or at once on a further stop signal."""
        for stage in stages:
            if stage.proc is not None and stage.proc.poll() is None:
                stage.proc.terminate()
        deadline = time.monotonic() + STOP_EARLY_TIMEOUT_S
        signals = len(self.signals)
        while running := [s.proc for s in stages if s.proc is not None and s.proc.poll() is None]:
            if len(self.signals) > signals or time.monotonic() > deadline:
                if len(self.signals) > signals:
                    log.warning("%s again: killing the stages now", signal_name(self.signals[-1]))
                for proc in running:
                    proc.kill()
                    proc.wait()
                return
            self.exits.wait([proc.pid for proc in running], POLL_S)

    def _wait_ready(self, stage: StageProcess) -> bool:
        if self.ready_file is None:
            return True
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            code = stage.proc.poll() if stage.proc else None
            # Killed while starting (not failed on its own): start it again, within bounds.
            if (
                code is not None
                and code < 0
                and self.policy.enabled
                and not self.signals
                and self.restarts < self.policy.max_restarts
            ):
                log.error("%s died while starting (signal %d); restarting", stage.name, -code)
                self.restarts += 1
                self._spawn(stage)
                continue
            if code == 0:
                # Done already: a short replay can end between two looks, and the tree
                # keeper removes its ready file at exit. The loop takes the exit from here.
                return True
            if code is not None:
                stage.exit_code = code
                log.error("%s could not start (exit code %s)", stage.name, code)
                return False
            if self.signals:  # the receiver has not been let go: nothing was read
                log.info("stop requested while %s was starting; stopping", stage.name)
                self.stopped_starting = True
                return False
            if time.monotonic() > deadline:
                log.error(
                    "%s did not become ready in %.0f s; stopping", stage.name, READY_TIMEOUT_S
                )
                return False
            self.exits.wait([stage.proc.pid] if stage.proc else [], READY_POLL_S)
        return True

    def _loop(self) -> None:
        signalled = 0
        seen_signals = 0
        stop_started: float | None = None
        while True:
            now = time.monotonic()
            self._notify_ready()
            for signum in self.signals[seen_signals:]:
                seen_signals += 1
                self.stop_requested += 1
                if stop_started is None and self.kill_at is None:
                    self._note_first_signal(signum)
                    stop_started = now  # the stop below
                else:
                    self._force_stop(signum, now)
            if not self.output_closed and self._outputs_gone():
                self.output_closed = True
                log.debug("every output is closed: stopping the pipeline")
                self.stop_requested += 1  # a first stop: the stages drain, discarding
            if self.stop_requested > signalled:
                signalled = self.stop_requested
                stop_started = stop_started or now
                self._notify_stopping()
                # Stop the source; its eof drains the rest in pipeline order.
                receiver = self._stage("receiver")
                if signalled == 1 and receiver.proc and receiver.exit_code is None:
                    receiver.proc.send_signal(signal.SIGTERM)
                    # The tree keeper too, which still drains till the eof: a submit blocked
                    # on a full `block` sink then ends (sinks/fanout.py, watch_stop).
                    treekeeper = self._stage("treekeeper")
                    if treekeeper.proc and treekeeper.exit_code is None:
                        treekeeper.proc.send_signal(signal.SIGTERM)
                else:
                    self._terminate_all(signal.SIGTERM)
            if self.kill_at is not None and now >= self.kill_at:
                self._kill_remaining()
                self.kill_at = math.inf  # once: still a forced stop for a further signal
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
            if alive and self._pipeline_done():
                stop_started = stop_started or now
                self._stop_metrics()
                continue
            if not alive:
                return
            running = [s.proc.pid for s in self.stages if s.proc and s.exit_code is None]
            timeout = POLL_S if self.kill_at is None else max(0.0, min(POLL_S, self.kill_at - now))
            self.exits.wait(running, timeout)

    def _note_first_signal(self, signum: int) -> None:
        """The first stop signal: the stages drain in pipeline order (the loop sends it)."""
        receiver = self._stage("receiver")
        if receiver.exit_code is None or receiver.restart_at is not None:
            self.interrupted_by = signum  # the source had not finished: the input is cut
        log.info(
            "%s: stopping, the stages write what they hold (a second signal stops them at once)",
            signal_name(signum),
        )

    def _force_stop(self, signum: int, now: float) -> None:
        """A stop signal while a stop is under way: SIGTERM every stage, and SIGKILL what
        still runs FORCE_GRACE_S later; a further signal kills at once."""
        if self.kill_at is None:
            log.warning(
                "%s again: stopping every stage now (SIGTERM; SIGKILL to any still running "
                "after %.0f s)",
                signal_name(signum),
                FORCE_GRACE_S,
            )
            self.kill_at = now + FORCE_GRACE_S
            self._terminate_all(signal.SIGTERM)
        else:
            log.warning("%s again: killing every stage now", signal_name(signum))
            self.kill_at = now  # the loop kills them next

    def _kill_remaining(self) -> None:
        """SIGKILL each stage still running, named with the reason on stderr."""
        for stage in self.stages:
            stage.restart_at = None
            if stage.proc is None or stage.exit_code is not None or stage.proc.poll() is not None:
                continue
            log.warning(
                "killing %s (pid %d): still running after SIGTERM", stage.name, stage.proc.pid
            )
            self.force_killed.append(stage.name)
            stage.proc.kill()

    def _outputs_gone(self) -> bool:
        """The tree keeper said every output is gone for good (its file exists)."""
        return self.output_closed_file is not None and self.output_closed_file.exists()

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
        # Our own SIGTERM can reach a stage still importing, before its handler exists:
        # it had taken no input yet, so that death loses nothing.
        if code == 0 or (stopping and code == -signal.SIGTERM):
            self._exited_cleanly(stage)
            return
        if stage.name in self.force_killed and code == -signal.SIGKILL:
            return  # asked for (a second stop signal) and said when it was sent
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if code < 0 and self.source_done:
            # The receiver exited 0 once everything it sent was acknowledged: a stage killed
            # now had nothing left to give. The others stop (the tree keeper may wait for
            # the eof of an assembler killed); the summary, if written, tells the outcome.
            log.warning(
                "%s was killed (%s) after the receiver had finished; stopping the pipeline",
                stage.name,
                how,
            )
            self.killed_late.append(stage.name)
            self.stop_requested = max(self.stop_requested, 2)
            return
        if code == EXIT_FATAL:
            log.error("%s cannot run (%s); stopping the pipeline", stage.name, how)
        elif self.policy.enabled and not stopping and not self.source_done:
            stage.restarts = [t for t in stage.restarts if now - t < self.policy.window_s] + [now]
            if len(stage.restarts) <= self.policy.max_restarts:
                if len(stage.restarts) == 1:  # the first death in the window: no flapping
                    stage.backoff_s = RestartPolicy.initial_backoff_s
                log.error("%s died (%s); restarting in %.1f s", stage.name, how, stage.backoff_s)
                stage.restart_at = now + stage.backoff_s
                self.restarts += 1
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

    def _exited_cleanly(self, stage: StageProcess) -> None:
        # The receiver exits 0 once everything it sent is durable (or it was told to stop):
        # no stage that dies after it could be given anything again, so none restarts.
        if stage.name == "receiver":
            self.source_done = True
            for other in self.stages:
                other.restart_at = None
        # The tree keeper exits 0 after every assembler's eof, everything written: what
        # still runs (an assembler waiting for a stop, a receiver waiting for acks) is done.
        elif stage.name == "treekeeper" and self.stop_requested < 2:
            self.stop_requested = 2

    def _pipeline_done(self) -> bool:
        """Every stage but the metrics endpoint has exited for good."""
        return all(
            s.exit_code is not None and s.restart_at is None
            for s in self.stages
            if s is not self.metrics
        )

    def _stop_metrics(self) -> None:
        """Stop the metrics endpoint; its exit (or our signal) is never a pipeline failure."""
        stage = self.metrics
        if stage is None:
            return
        stage.restart_at = None
        if stage.proc is None or stage.exit_code is not None:
            stage.exit_code = stage.exit_code if stage.exit_code is not None else 0
            return
        stage.proc.send_signal(signal.SIGTERM)
        import subprocess  # its TimeoutExpired: see _exec

        try:
            code = stage.proc.wait(timeout=METRICS_STOP_S)
        except subprocess.TimeoutExpired:
            stage.proc.kill()
            code = stage.proc.wait()
        if code not in (0, -signal.SIGTERM):
            log.warning("metrics endpoint exited with code %s at stop", code)
        stage.exit_code = code

    def _notify_ready(self) -> None:
        """Tell systemd (Type=notify) once that the stages run and, live, capture."""
        if self.ready_notified or self.stopping_notified:
            return
        if self.capturing_file is not None and not self.capturing_file.exists():
            return
        self.ready_notified = True
        pids = " ".join(f"{s.name}={s.proc.pid}" for s in reversed(self.stages) if s.proc)
        sdnotify.notify("READY=1", f"STATUS=stages running: {pids}")

    def _notify_stopping(self) -> None:
        """Tell systemd (Type=notify) once that the stop has begun."""
        if not self.stopping_notified:
            self.stopping_notified = True
            sdnotify.notify("STOPPING=1")

    def _terminate_all(self, sig: int) -> None:
        for stage in self.stages:
            stage.restart_at = None
            if stage.proc is not None and stage.exit_code is None and stage.proc.poll() is None:
                stage.proc.send_signal(sig)


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
