"""Starting a replay's stages by fork, without exec: the supervisor imports them once.

Exec'd afresh, each stage spent ~85 ms of CPU starting (the interpreter, ZeroMQ, its own
modules), four of them at once on two cores: most of a short replay's 0.25 s. Forked
from a supervisor that has imported its stage module, a stage starts at once and shares
those pages until it writes them (docs/performance.md, twenty-seventh pass). The
supervisor imports each stage's module just before that stage's fork, downstream first:
the tree keeper sets up while the supervisor imports the next stage's modules
(forty-second pass). The tree keeper, forked first, imports its own modules after the
fork (IMPORTED_AFTER_FORK): its imports, the largest, then run on one core while the
supervisor imports the assembler's and the receiver's on the other (forty-fourth pass).
A module it cannot import ends it with exit code 1 and the traceback on stderr, and the
supervisor reports that it could not start.

A forked stage runs ``stage_main`` as ``python -m NAME`` would: in a session of its own,
SIGINT and SIGTERM at their defaults until the stage sets its handlers (blocked across
the fork, so that none is lost in between), stdin on /dev/null (unless the receiver reads
it), every descriptor above 2 closed but those it is given (a replay of ``<(zcat a.gz)``
reads /dev/fd/63), and the privilege limits
``SpawnPrivileges.fork_setup`` gives it. It ends with ``os._exit``: it
must never return into the supervisor's code. Its ``/proc/PID/cmdline`` stays the
supervisor's; its ``comm`` names it (``stage_main`` sets that for every stage).

Live runs keep exec (auditstream/supervisor.py): a daemon starts once, and the receiver's
capabilities are set at exec. Forking needs a supervisor with one thread (a thread
holding a lock at the fork would leave it held in the child): otherwise the stage is
exec'd, as before.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Protocol

from auditstream.stage import STOP_SIGNALS, StageRun, stage_main

# `python -m MODULE` of each stage that may be forked -> the module holding its run().
STAGE_RUNNERS = {
    "receiver": "receiver.stage",
    "assembler": "assembler.stage",
    "treekeeper": "treekeeper.stage",
}
# Stages that import their module after the fork, in the child: see the docstring.
IMPORTED_AFTER_FORK = frozenset({"treekeeper"})
WAIT_POLL_S = 0.005


class ChildProcess(Protocol):
    """What the supervisor uses of a stage process: subprocess.Popen or ForkedStage."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ForkedStage:
    """A forked stage, with the parts of subprocess.Popen the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (-N: killed by signal N) once it has exited, else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: nothing more to learn
                self.returncode = 1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; subprocess.TimeoutExpired after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                import subprocess  # here: ~2 ms of every start that a replay does not use

                raise subprocess.TimeoutExpired(f"stage {self.pid}", timeout or 0.0)
            time.sleep(WAIT_POLL_S)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def forkable(module: str) -> bool:
    """This stage may be forked, in this process, now."""
    return module in STAGE_RUNNERS and hasattr(os, "fork") and threading.active_count() == 1


def fork_stage(
    module: str,
    args: list[str],
    *,
    stdin_inherit: bool,
    setup: Callable[[], None],
    keep_fds: tuple[int, ...] = (),
) -> ForkedStage | None:
    """Fork ``python -m module *args``, with ``keep_fds`` open as they are here; None where
    it cannot be forked (exec it then, passing the same descriptors)."""
    if not forkable(module):
        return None
    run: StageRun | None = None
    if module not in IMPORTED_AFTER_FORK:
        run = importlib.import_module(STAGE_RUNNERS[module]).run
    for stream in (sys.stdout, sys.stderr):  # what is buffered would be written twice
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # Blocked across the fork: a stop signal that reaches the child before it has reset our
    # handlers would only set a flag in its copy of the supervisor, and be lost. Blocked,
    # it waits until stage_main has set the stage's own handler (auditstream/stage.py), and
    # lands there: a stage stopped while it starts drains like any other.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return ForkedStage(pid)
    _run_in_child(module, run, args, stdin_inherit, setup, mask, keep_fds)  # never returns
    raise AssertionError("unreachable")  # pragma: no cover


def _stdio_on_standard_fds() -> None:
    """sys.stdout and sys.stderr on descriptors 1 and 2, as in a fresh interpreter (ours
    may write elsewhere, e.g. under pytest's capture, to a descriptor about to be closed)."""
    for fd, attr in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, attr)
        try:
            if stream is not None and stream.fileno() == fd:
                continue
        except (OSError, ValueError, AttributeError):
            pass
        # The process's stream from now on: never closed (closefd=False), so no context.
        stream = open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        setattr(sys, attr, stream)


def _close_fds_above_2(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but those in ``keep``."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _run_in_child(
    module: str,
    run: StageRun | None,
    args: list[str],
    stdin_inherit: bool,
    setup: Callable[[], None],
    mask: set[int | signal.Signals],
    keep_fds: tuple[int, ...],
) -> None:
    code = 1
    try:
        os.setsid()
        for sig in STOP_SIGNALS:  # the supervisor's handlers are not ours
            signal.signal(sig, signal.SIG_DFL)
        # The parent's mask, the stop signals still blocked: stage_main unblocks them.
        signal.pthread_sigmask(signal.SIG_SETMASK, set(mask) | STOP_SIGNALS)
        if not stdin_inherit:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.close(null)
        _stdio_on_standard_fds()
        _close_fds_above_2(keep_fds)
        setup()
        if run is None:
            run = importlib.import_module(STAGE_RUNNERS[module]).run
        code = stage_main(module, run, args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # anything: reported, then the exit below
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
