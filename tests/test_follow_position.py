"""`replay --follow --position-file`: a follow started again resumes where the last one
stopped, across a clean stop, a rotation (numbered or dated) or a copytruncate while stopped, a corrupt
position file and a killed run; check-config and replay refuse it where it means nothing."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from live_helpers import REPO
from test_follow_log import _append, _event, _wait_for, _whole
from test_follow_log import _follow as follow_log


def _events(serials: range | list[int]) -> bytes:
    return b"".join(_whole(n) for n in serials)


def _serials(out: Path) -> Counter[int]:
    """The audit events' serials in a jsonl sink; a line a SIGKILL cut short is skipped."""
    found: Counter[int] = Counter()
    if not out.exists():
        return found
    for line in out.read_bytes().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        auditd = doc.get("auditd")
        if isinstance(auditd, dict) and "sequence" in auditd:
            found[int(auditd["sequence"])] += 1
    return found


def _follow(
    tmp_path: Path, log: Path, name: str, *extra: str
) -> AbstractContextManager[tuple[subprocess.Popen[bytes], Path, Path]]:
    """test_follow_log's follow into ``NAME.jsonl`` with this test's position file (or
    ``extra``, to add ``-c`` or replace the option)."""
    position = list(extra) or ["--position-file", str(tmp_path / "audit.position")]
    return follow_log(tmp_path, log, name=name, extra=position)


def _stop(proc: subprocess.Popen[bytes], stderr: Path) -> str:
    """SIGTERM, as systemd stops a service: exit 0; returns what it said on stderr."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, stderr.read_text()
    said = stderr.read_text()
    assert "Traceback" not in said
    return said


def _saved(tmp_path: Path) -> dict[str, object]:
    data = json.loads((tmp_path / "audit.position").read_text())
    assert isinstance(data, dict)
    return data


def test_stop_and_start_again_gives_each_event_once(tmp_path: Path) -> None:
    """A clean stop, events appended while stopped, a new follow: each event once across the two outputs, the resume said, the status and summary tell it, the saved offset is the log's end."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 6)))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, set(range(1, 6)))
        _append(log, _events(range(6, 2006)))  # a burst the stop must drain
        said = _stop(proc, stderr)
    assert f"position file {tmp_path / 'audit.position'} does not exist yet" in said
    saved = _saved(tmp_path)
    assert saved["offset"] == log.stat().st_size and saved["clean_stop"] is True
    _append(log, _events(range(2006, 2011)))  # written while no follower runs
    run_dir = tmp_path / "run"
    config = tmp_path / "follow.toml"
    config.write_text(f'[runtime]\ndir = "{run_dir}"\n')
    position = ["--position-file", str(tmp_path / "audit.position"), "-c", str(config)]
    with _follow(tmp_path, log, "second", *position) as (proc, second, stderr):
        _wait_for(second, set(range(2006, 2011)))
        status = json.loads((run_dir / "status-receiver.json").read_text())
        assert status["position_start"] == "resumed", status
        _append(log, _events([2011]))
        _wait_for(second, {2011})
        said = _stop(proc, stderr)
    offset = saved["offset"]
    assert f"resuming {log} at byte {offset} from position file" in said
    assert "did not stop cleanly" not in said
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["receiver"]["position_start_offset"] == offset
    assert _serials(first) + _serials(second) == Counter(range(1, 2012))  # each once
    assert _saved(tmp_path)["offset"] == log.stat().st_size


def test_a_line_unfinished_at_the_stop_is_read_whole_by_the_next_follow(tmp_path: Path) -> None:
    """A stop while the writer is inside a line: that line is left unread, and the next follow reads it whole (no parse error, each event once)."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events([1]))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, {1})
        line = _whole(2)
        _append(log, line[:30])  # the writer is inside the event's first line
        time.sleep(0.5)
        said = _stop(proc, stderr)
    assert "its unfinished last line is left for the next follow" in said
    _append(log, line[30:])
    with _follow(tmp_path, log, "second") as (proc, second, stderr):
        _wait_for(second, {2})
        _stop(proc, stderr)
    assert _serials(first) + _serials(second) == Counter([1, 2])
    assert "parse-error" not in first.read_text() + second.read_text()


def _records_of(out: Path, serial: int) -> list[list[str]]:
    """The record types of each doc of the audit event ``serial`` in a jsonl sink."""
    found = []
    for line in out.read_bytes().splitlines():
        auditd = json.loads(line).get("auditd")
        if isinstance(auditd, dict) and auditd.get("sequence") == serial:
            found.append([record.split(" ", 1)[0][5:] for record in auditd["records"]])
    return found


def test_a_stop_while_auditd_writes_an_event_reads_the_rest_of_it(tmp_path: Path) -> None:
    """A stop after an event's first record and before its others: the follow reads on until its EOE, so the event is written once and whole, and the next follow starts after it."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events([1]))
    body, eoe = _event(2)
    syscall, execve = body.splitlines(keepends=True)
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, {1})
        _append(log, syscall)
        time.sleep(0.6)  # read: the follow looks at a quiet log every 0.2 s
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the old follow had stopped by now, with the SYSCALL alone
        _append(log, execve + eoe)
        assert proc.wait(timeout=60) == 0, stderr.read_text()
    assert _records_of(first, 2) == [["SYSCALL", "EXECVE", "EOE"]]
    assert _saved(tmp_path)["offset"] == log.stat().st_size
    assert "EOE was not written" not in stderr.read_text()


def test_a_stop_waits_at_most_a_second_for_an_eoe_that_never_comes(tmp_path: Path) -> None:
    """A stop with an event's EOE never written: after about a second the follow stops, says so naming the serial, counts it in the summary, and writes the event with the records it has."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events([1]) + _event(7)[0])
    run_dir = tmp_path / "run"
    config = tmp_path / "follow.toml"
    config.write_text(f'[runtime]\ndir = "{run_dir}"\n')
    position = ["--position-file", str(tmp_path / "audit.position"), "-c", str(config)]
    with _follow(tmp_path, log, "first", *position) as (proc, first, stderr):
        _wait_for(first, {1})
        time.sleep(0.3)
        started = time.monotonic()
        said = _stop(proc, stderr)
        took = time.monotonic() - started
    assert "stopping with 1 event(s) whose EOE was not written within 1.0 s (serials 7)" in said
    assert took >= 1.0
    assert _records_of(first, 7) == [["SYSCALL", "EXECVE"]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["receiver"]["stop_unended_events"] == 1


@pytest.mark.parametrize("rotations", [1, 2])
def test_auditd_rotation_while_stopped_reads_the_rest_then_the_new_log(
    tmp_path: Path, rotations: int
) -> None:
    """auditd rotates once or twice while the follower is stopped (`position_file` in the config): the unread end of the saved file, the files rotated after it, then the new log, each event once."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 4)))
    config = tmp_path / "follow.toml"
    config.write_text(
        f'[receiver]\nsource = "file"\nfiles = ["{log}"]\nfollow = true\n'
        f'position_file = "{tmp_path / "audit.position"}"\n'
    )
    with _follow(tmp_path, log, "first", "-c", str(config)) as (proc, first, stderr):
        _wait_for(first, {1, 2, 3})
        _stop(proc, stderr)
    _append(log, _events([4, 5]))  # written before the rotation, not read yet
    serial = 6
    for _rotation in range(rotations):  # as auditd: .1 -> .2, audit.log -> .1, a new log
        if (tmp_path / "audit.log.1").exists():
            os.rename(tmp_path / "audit.log.1", tmp_path / "audit.log.2")
        os.rename(log, tmp_path / "audit.log.1")
        log.write_bytes(_events([serial, serial + 1]))
        serial += 2
    with _follow(tmp_path, log, "second", "-c", str(config)) as (proc, second, stderr):
        _wait_for(second, set(range(4, serial)))
        _append(log, _events([serial]))
        _wait_for(second, {serial})
        said = _stop(proc, stderr)
    assert f"resuming {tmp_path / f'audit.log.{rotations}'} at byte " in said
    assert f"(the rotated file of {log}" in said
    assert _serials(first) + _serials(second) == Counter(range(1, serial + 1))


def test_logrotate_dateext_rotations_while_stopped_are_read_in_date_order(
    tmp_path: Path,
) -> None:
    """logrotate (`dateext`) rotates twice while the follower is stopped: the saved file's unread end (now audit.log-20261124), then audit.log-20261125, then the new log, each event once; a file dated before the saved one is not read."""
    log = tmp_path / "audit.log"
    (tmp_path / "audit.log-20261123").write_bytes(_events([100]))  # rotated before
    log.write_bytes(_events(range(1, 4)))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, {1, 2, 3})
        _stop(proc, stderr)
    _append(log, _events([4, 5]))  # written before the rotation, not read yet
    for day, serials in ((24, [6, 7]), (25, [8, 9])):  # as logrotate's create
        os.rename(log, tmp_path / f"audit.log-202611{day}")
        log.write_bytes(_events(serials))
    with _follow(tmp_path, log, "second") as (proc, second, stderr):
        _wait_for(second, set(range(4, 10)))
        said = _stop(proc, stderr)
    assert f"resuming {tmp_path / 'audit.log-20261124'} at byte " in said
    assert f"then {tmp_path / 'audit.log-20261125'}, then {log})" in said
    assert _serials(first) + _serials(second) == Counter(range(1, 10))


def test_dated_rotations_after_the_saved_file_are_those_of_its_shape_sorted(
    tmp_path: Path,
) -> None:
    """The dated files after the saved one: later suffixes of its shape only, oldest first, a plain file before its .gz twin, a .gz where it alone is left; numbered names as before."""
    from receiver.position import _newer_rotations

    names = [
        "audit.log-20261121", "audit.log-20261122", "audit.log-20261123",
        "audit.log-20261124.gz", "audit.log-20261125", "audit.log-20261125.gz",
        "audit.log-2026112", "audit.log-2026112612", "audit.log-20261126x", "audit.log.1",
        "other.log-20261127",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    log = str(tmp_path / "audit.log")
    newer = _newer_rotations(log, str(tmp_path / "audit.log-20261122"))
    assert [Path(p).name for p in newer] == [
        "audit.log-20261123", "audit.log-20261124.gz", "audit.log-20261125",
    ]  # fmt: skip
    assert [Path(p).name for p in _newer_rotations(log, log + ".2")] == ["audit.log.1"]
    assert _newer_rotations(log, log + ".old") == []


@pytest.mark.parametrize("copy_left", [True, "gzip", False])
def test_copytruncate_while_stopped(tmp_path: Path, copy_left: bool | str) -> None:
    """A copytruncate while stopped: with logrotate's copy left (plain, or compressed at once), its unread end is read from the saved offset (nothing lost); without, a warning naming the log, the new text from its start, no crash."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 4)))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, {1, 2, 3})
        _stop(proc, stderr)
    _append(log, _events([4, 5]))  # not read before the copytruncate
    if copy_left == "gzip":
        (tmp_path / "audit.log.1.gz").write_bytes(gzip.compress(log.read_bytes()))
    elif copy_left:
        shutil.copyfile(log, tmp_path / "audit.log.1")
    with log.open("r+b") as same:
        same.truncate(0)
    _append(log, _events(range(10, 40)))  # longer than the saved offset at once
    with _follow(tmp_path, log, "second") as (proc, second, stderr):
        _wait_for(second, set(range(10, 40)))
        said = _stop(proc, stderr)
    if copy_left:
        assert f"(the copy of {log}, then {log})" in said
        assert _serials(first) + _serials(second) == Counter([*range(1, 6), *range(10, 40)])
    else:
        assert f"{log} was truncated or replaced while auditstream was stopped" in said
        assert "may be missing" in said
        assert _serials(first) + _serials(second) == Counter([1, 2, 3, *range(10, 40)])


@pytest.mark.parametrize("gone", ["compressed", "deleted"])
def test_a_log_rotated_and_compressed_while_stopped(tmp_path: Path, gone: str) -> None:
    """The saved log rotated and gzipped while stopped (logrotate without delaycompress): its unread end is read from audit.log.1.gz, then the rotations after it, then the new log, each event once; rotated and deleted: a warning that its unread end may be missing, the new log from its start, no crash."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 4)))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, {1, 2, 3})
        _stop(proc, stderr)
    _append(log, _events([4, 5]))
    (tmp_path / "audit.log.2.gz").write_bytes(gzip.compress(_events([90])))  # an older one
    os.rename(log, tmp_path / "audit.log.1")  # as logrotate: rename, create, then compress
    log.write_bytes(_events([6, 7]))
    old = (tmp_path / "audit.log.1").read_bytes()
    if gone == "compressed":  # then rotated once more, compressed at once again
        (tmp_path / "audit.log.2.gz").rename(tmp_path / "audit.log.3.gz")
        (tmp_path / "audit.log.2.gz").write_bytes(gzip.compress(old))
        (tmp_path / "audit.log.1.gz").write_bytes(gzip.compress(log.read_bytes()))
        log.write_bytes(_events([8]))
    (tmp_path / "audit.log.1").unlink()
    with _follow(tmp_path, log, "second") as (proc, second, stderr):
        _wait_for(second, {8} if gone == "compressed" else {6, 7})
        said = _stop(proc, stderr)
    if gone == "compressed":
        assert f"(the rotated file of {log}, then {tmp_path / 'audit.log.1.gz'}" in said
        assert _serials(first) + _serials(second) == Counter(range(1, 9))
        return
    assert f"is not in {tmp_path} any more" in said
    assert "may be missing" in said
    assert _serials(first) + _serials(second) == Counter([1, 2, 3, 6, 7])


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        (b'{"version": 1, "path": ', "not JSON"),
        (b'{"version": 1, "offset": -5}', "field 'path' missing or not str"),
        (b"\x00\xff" * 40, "not JSON"),
        (b"other path", "it is for /var/log/audit/audit.log, not "),
    ],
)
def test_an_unusable_position_file_is_warned_about_and_replaced(
    tmp_path: Path, content: bytes, warning: str
) -> None:
    """A corrupt position file, or one of another log: a warning naming it, the log read from its start, no crash, and a good position file written at the stop."""
    position = tmp_path / "audit.position"
    if content == b"other path":
        content = json.dumps(
            {"version": 1, "path": "/var/log/audit/audit.log", "device": 1, "inode": 2,
             "head_length": 64, "head_sha256": "0" * 64, "offset": 100000,
             "clean_stop": True, "owner": 1}
        ).encode()  # fmt: skip
    position.write_bytes(content)
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 4)))
    with _follow(tmp_path, log, "run") as (proc, out, stderr):
        _wait_for(out, {1, 2, 3})
        said = _stop(proc, stderr)
    assert f"position file {position}: " in said or f"ignoring position file {position}: " in said
    assert warning in said
    assert f"reading {log} from its start" in said
    assert _serials(out) == Counter([1, 2, 3])
    saved = _saved(tmp_path)
    assert saved["path"] == str(log) and saved["offset"] == log.stat().st_size


def _stage_pids(stderr: Path) -> list[int]:
    found = re.search(rb"stage pids: (.*)", stderr.read_bytes())
    assert found is not None, stderr.read_text()
    return [int(pid) for pid in re.findall(rb"=(\d+)", found.group(1))]


@pytest.mark.parametrize("killed", ["supervisor", "everything"])
def test_a_killed_run_then_a_restart_loses_nothing(tmp_path: Path, killed: str) -> None:
    """SIGKILL of the supervisor (its stages drain) or of every process at once (power cut, systemd's final kill) mid-burst, then a new follow: every event out, any twice only after the warning that explains it."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events(range(1, 6)))
    with _follow(tmp_path, log, "first") as (proc, first, stderr):
        _wait_for(first, set(range(1, 6)))
        time.sleep(0.5)  # a position file written
        _append(log, _events(range(6, 20006)))
        time.sleep(0.3)  # part of the burst read, written, acknowledged
        pids = _stage_pids(stderr)
        proc.kill()
        if killed == "everything":
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30  # stages draining after their supervisor died
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
    with _follow(tmp_path, log, "second") as (proc, second, stderr):
        deadline = time.monotonic() + 60
        while 20005 not in _serials(first) + _serials(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        _append(log, _events([20006]))  # and the follow goes on
        _wait_for(second, {20006})
        said = _stop(proc, stderr)
    both = _serials(first) + _serials(second)
    assert set(both) == set(range(1, 20007)), "events lost"
    twice = sum(both.values()) - len(both)
    if twice or killed == "everything":
        assert "did not stop cleanly (killed, or it crashed)" in said, (twice, said)
    assert f"resuming {log} at byte " in said


@pytest.mark.parametrize(
    ("args", "config", "refusal"),
    [
        (["replay", "{log}", "--position-file", "{pos}"], "", "give --follow"),
        (
            ["replay", "--follow", "{log}", "{log}", "--position-file", "{pos}"],
            "",
            "exactly one FILE",
        ),
        (
            ["replay", "--follow", "{log}", "--position-file", "{dir}/no/such/dir/pos"],
            "",
            "directory {dir}/no/such/dir does not exist",
        ),
        (
            ["check-config", "-c", "{conf}"],
            'source = "file"\nfiles = ["{log}"]\n',
            "follow = false",
        ),
        (["check-config", "-c", "{conf}"], "follow = true\n", "got source 'netlink'"),
        (
            ["check-config", "-c", "{conf}"],
            'source = "file"\nfollow = true\nfiles = ["{log}", "{log}"]\n',
            "files must name exactly one file",
        ),
        (
            ["check-config", "-c", "{conf}"],
            'source = "file"\nfollow = true\nfiles = ["{log}"]\nposition_file = "{dir}"\n',
            "is a directory",
        ),
    ],
)
def test_a_position_file_is_refused_where_it_means_nothing(
    tmp_path: Path, args: list[str], config: str, refusal: str
) -> None:
    """--position-file or `position_file` without follow, with several files or in a directory that cannot take it: exit 2, the option or key named, no traceback."""
    log = tmp_path / "audit.log"
    log.write_bytes(_events([1]))
    names = {"log": log, "pos": tmp_path / "pos", "dir": tmp_path, "conf": tmp_path / "c.toml"}
    if config:
        if "position_file" not in config:
            config += 'position_file = "{pos}"\n'
        (tmp_path / "c.toml").write_text("[receiver]\n" + config.format(**names))
    argv = [sys.executable, "-m", "auditstream", *(a.format(**names) for a in args)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert refusal.format(**names) in result.stderr
    assert "position" in result.stderr and "Traceback" not in result.stderr
    if config:
        assert "[receiver].position_file" in result.stderr
