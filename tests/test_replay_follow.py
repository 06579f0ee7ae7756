"""`replay --follow` across log rotation: like tail -F, the new file is read after the old one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from live_helpers import start_follow_replay


def _sequences(out: Path) -> list[int]:
    if not out.exists():
        return []
    docs = [json.loads(line) for line in out.read_bytes().splitlines()]
    return [d["auditd"]["sequence"] for d in docs if "sequence" in d.get("auditd", {})]


def _event(serial: int) -> bytes:
    return (
        b"type=SYSCALL msg=audit(1700000001.000:%d): arch=c000003e syscall=59 success=yes"
        b' exit=0 pid=11 ppid=10 comm="ls" exe="/bin/ls"\n'
        b"type=EOE msg=audit(1700000001.000:%d): \n" % (serial, serial)
    )


def _wait_for(out: Path, serial: int) -> None:
    deadline = time.monotonic() + 20
    while serial not in _sequences(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serial in _sequences(out), f"event {serial} never came out: {_sequences(out)}"


@pytest.mark.parametrize("how", ["rename", "truncate"])
def test_follow_goes_on_with_the_new_file_after_rotation(tmp_path: Path, how: str) -> None:
    """auditd's rotation (rename, new file) or a copytruncate: the lines written to the old file last and every line of the new one come out."""
    proc, log, out = start_follow_replay(tmp_path)
    try:
        _wait_for(out, 1)
        if how == "rename":
            with log.open("ab") as old:
                old.write(_event(2))  # the last lines before the rename: still read
                os.rename(log, tmp_path / "audit.log.1")
                time.sleep(0.5)  # the reader sees the old file end and the path gone
                old.write(_event(3))  # a writer not yet told to reopen: still read
            log.write_bytes(_event(4))
        else:
            with log.open("r+b") as same:
                same.truncate(0)
            time.sleep(0.5)
            with log.open("ab") as same:
                same.write(_event(4))
        _wait_for(out, 4)
        with log.open("ab") as new:
            new.write(_event(5))
        _wait_for(out, 5)
        expected = [1, 2, 3, 4, 5] if how == "rename" else [1, 4, 5]
        assert sorted(_sequences(out)) == expected  # each once
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
