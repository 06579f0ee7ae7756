"""Stopping a replay: a second signal, the exit code of an interrupted replay, a closed stdout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from generated_logs import write_generated_log
from live_helpers import process_alive, replay_into_head, stage_pids

REPO = Path(__file__).resolve().parents[1]
AUDITSTREAM = (sys.executable, "-m", "auditstream")
BIG_LOG_LINES = 300_000  # ~1 s of replay on a fast machine: long enough to cut short
SUMMARY = re.compile(rb"auditstream: (\d+) records read, (\d+) events out, .*; sent: ([^\n]*)")


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bench/gen_log.py's log of BIG_LOG_LINES lines, shared by the tests of this file."""
    path = tmp_path_factory.mktemp("replay_stop") / "big.log"
    yield write_generated_log(path, BIG_LOG_LINES)
    path.unlink(missing_ok=True)


def _start(*args: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*AUDITSTREAM, "replay", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _stages(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    """The replay's three stages once they run."""
    deadline = time.monotonic() + 30
    stages: dict[str, int] = {}
    while not {"receiver", "assembler-0", "treekeeper"} <= stages.keys():
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        assert time.monotonic() < deadline, f"stages did not start: {stages}"
        time.sleep(0.01)
        stages = stage_pids(proc.pid)
    return stages


def _lines_written(path: Path, at_least: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the sink file holds ``at_least`` lines: the replay is under way."""
    deadline = time.monotonic() + 30
    while not path.exists() or path.read_bytes().count(b"\n") < at_least:
        assert proc.poll() is None, "the replay ended before it could be interrupted"
        assert time.monotonic() < deadline, "the replay wrote nothing"
        time.sleep(0.005)


def _kill_all(proc: subprocess.Popen[bytes], stages: dict[str, int]) -> None:
    for pid in stages.values():
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _sent(summary: bytes) -> dict[str, int]:
    """``sent: jsonl:- 45, jsonl:/x 7; …`` as {sink: count}."""
    listed = summary.split(b";")[0].decode()
    return {
        name: int(count) for name, count in (item.rsplit(" ", 1) for item in listed.split(", "))
    }


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_replay_exits_128_plus_it_with_a_valid_partial_output(
    big_log: Path, tmp_path: Path, sig: int, code: int
) -> None:
    """One SIGINT (SIGTERM) cuts a long replay short: exit 130 (143), the summary says so, and every line written is a whole JSON event."""
    out = tmp_path / "out.jsonl"
    proc = _start(str(big_log), "--sink", f"jsonl:{out}")
    stages = _stages(proc)
    try:
        _lines_written(out, 2000, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        _kill_all(proc, stages)
    text = stderr.decode(errors="replace")
    assert proc.returncode == code, text
    match = SUMMARY.search(stderr)
    assert match, text
    records, events_out = int(match.group(1)), int(match.group(2))
    assert records < BIG_LOG_LINES, f"the whole log was read: {text}"
    assert f"interrupted by {signal.Signals(sig).name} before the end of the input" in text
    lines = out.read_bytes().splitlines()
    docs = [json.loads(line) for line in lines]  # every line whole: none cut by the stop
    assert 2000 <= len(docs) == events_out == _sent(match.group(3))[f"jsonl:{out}"]
    assert "Traceback" not in text


def test_a_second_signal_stops_a_stage_that_ignores_the_first(
    big_log: Path, tmp_path: Path
) -> None:
    """With the tree keeper stuck (stopped: SIGTERM does nothing to it), a second SIGINT kills the stages within seconds, says so, and exits 130."""
    out = tmp_path / "out.jsonl"
    proc = _start(str(big_log), "--sink", f"jsonl:{out}")
    stages = _stages(proc)
    try:
        _lines_written(out, 1, proc)
        os.kill(stages["treekeeper"], signal.SIGSTOP)  # stuck: only SIGKILL ends it
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the first signal alone cannot have stopped it"
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - second
    finally:
        _kill_all(proc, stages)
    text = stderr.decode(errors="replace")
    assert took < 5, f"{took:.1f} s after the second signal: {text}"
    assert proc.returncode == 130, text
    assert "SIGINT again: stopping every stage now" in text
    assert f"killing treekeeper (pid {stages['treekeeper']})" in text
    assert "interrupted by SIGINT" in text
    assert not [name for name, pid in stages.items() if process_alive(pid)]
    assert "Traceback" not in text


def test_a_closed_stdout_stops_the_replay_early_with_141(big_log: Path) -> None:
    """`replay BIG --sink jsonl:- | head -100` stops soon after head exits, with one line about it, true counts and exit 141."""
    code, text, printed, took = replay_into_head(big_log, "jsonl:-")
    assert code == 141, text
    assert len(printed.splitlines()) == 100
    match = SUMMARY.search(text.encode())
    assert match, text
    assert int(match.group(1)) < BIG_LOG_LINES, f"the whole log was read: {text}"
    assert "stopped early: every output is closed" in text
    events_out, sent = int(match.group(2)), _sent(match.group(3))["jsonl:-"]
    assert 100 <= sent < events_out  # what head took counts, not 0
    discarded = re.search(r"NOT WRITTEN: jsonl:- discarded (\d+) events", text)
    assert discarded and sent + int(discarded.group(1)) == events_out, text
    assert len([line for line in text.splitlines() if "sink jsonl:-" in line]) == 1, text
    assert "Broken pipe" in text and "Traceback" not in text
    assert took < 30


def test_a_closed_stdout_leaves_the_other_sinks_to_finish(big_log: Path, tmp_path: Path) -> None:
    """With a file sink beside stdout, head's exit costs stdout only: the file gets every event, one line names the closed stdout, and the replay exits 3."""
    out = tmp_path / "all.jsonl"
    code, text, _printed, _took = replay_into_head(big_log, "jsonl:-", f"jsonl:{out}")
    assert code == 3, text
    match = SUMMARY.search(text.encode())
    assert match, text
    assert int(match.group(1)) == big_log.read_bytes().count(b"\n")  # every line read
    assert (
        out.read_bytes().count(b"\n")
        == int(match.group(2))
        == _sent(match.group(3))[f"jsonl:{out}"]
    )
    assert len([line for line in text.splitlines() if "sink jsonl:-" in line]) == 1, text
    assert "stopped early" not in text and "Traceback" not in text
