"""`replay --follow` of a log auditd keeps writing: rotations, truncation, a missing or
unreadable log, stop signals, and check-config of a config that follows files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from live_helpers import REPO


def _event(serial: int, *, split: bool = False) -> tuple[bytes, bytes]:
    """An execve event as (SYSCALL+EXECVE lines, EOE line): written apart across rotations."""
    head = b"msg=audit(1700000001.%03d:%d): " % (serial % 1000, serial)
    body = (
        b"type=SYSCALL " + head + b"arch=c000003e syscall=59 success=yes exit=0 pid=11"
        b' ppid=10 comm="ls" exe="/bin/ls"\ntype=EXECVE ' + head + b'argc=2 a0="ls" a1="%d"\n'
    ) % serial
    return body, b"type=EOE " + head + b"\n"


def _whole(serial: int) -> bytes:
    body, eoe = _event(serial)
    return body + eoe


def _docs(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_bytes().splitlines()]


def _serials(out: Path) -> Counter[int]:
    found: Counter[int] = Counter()
    for doc in _docs(out):
        auditd = doc.get("auditd")
        if isinstance(auditd, dict) and "sequence" in auditd:
            found[int(auditd["sequence"])] += 1
    return found


def _wait_for(out: Path, serials: set[int], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not serials <= set(_serials(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    missing = sorted(serials - set(_serials(out)))
    assert not missing, f"events never came out: {missing}"


@contextmanager
def _follow(
    tmp_path: Path,
    log: Path,
    *,
    no_dac: bool = False,
    name: str = "out",
    extra: Sequence[str] = (),
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """Run `auditstream replay --follow LOG` into the jsonl sink ``NAME.jsonl``, stderr to
    ``NAME.stderr``: (process, sink, stderr), killed at the end if the test did not stop it.

    ``no_dac``: as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so that a mode 000
    file is unreadable to it as to any user. ``extra``: more arguments."""
    out, stderr = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.stderr"
    argv = [sys.executable, "-m", "auditstream", "replay", "--follow", str(log)]
    argv += ["--sink", f"jsonl:{out}", *extra]
    if no_dac:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stderr=err, stdout=subprocess.DEVNULL)
    try:
        yield proc, out, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen[bytes], stderr: Path, sig: int = signal.SIGINT) -> None:
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0, stderr.read_text()


def _append(log: Path, data: bytes) -> None:
    with log.open("ab") as fh:
        fh.write(data)


def test_auditd_rotations_in_quick_succession_lose_nothing(tmp_path: Path) -> None:
    """Three auditd rotations 0.3 s apart (.1 -> .2, audit.log -> .1, a new audit.log), an event split across one: each event once, whole."""
    log = tmp_path / "audit.log"
    log.write_bytes(_whole(1))
    with _follow(tmp_path, log) as (proc, out, stderr):
        _wait_for(out, {1})
        serial = 2
        for _rotation in range(3):
            with log.open("ab") as old:
                old.write(_whole(serial) + _whole(serial + 1))
                body, eoe = _event(serial + 2)
                old.write(body)  # the event's last record goes to the next file
            for n in (2, 1):
                if (tmp_path / f"audit.log.{n}").exists():
                    os.rename(tmp_path / f"audit.log.{n}", tmp_path / f"audit.log.{n + 1}")
            os.rename(log, tmp_path / "audit.log.1")
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(fd, eoe[:10])  # one line in two write() calls
            time.sleep(0.05)
            os.write(fd, eoe[10:] + _whole(serial + 3))
            os.close(fd)
            serial += 4
            time.sleep(0.3)  # shorter than the follower's wait for a renamed file to go quiet
        _wait_for(out, set(range(1, serial)))
        _stop(proc, stderr)
        assert _serials(out) == Counter(range(1, serial))  # each once
        for doc in _docs(out):
            auditd = doc.get("auditd")
            if isinstance(auditd, dict) and "sequence" in auditd:
                assert len(auditd["records"]) == 3, doc  # SYSCALL, EXECVE, EOE together
        assert "rotated" in stderr.read_text()


def test_copytruncate_rewritten_past_the_position_is_read_from_its_start(tmp_path: Path) -> None:
    """A copytruncate whose writer has already written more than was read before: the new text is read from its start, no line torn."""
    log = tmp_path / "audit.log"
    log.write_bytes(_whole(1) + _whole(2))
    with _follow(tmp_path, log) as (proc, out, stderr):
        _wait_for(out, {1, 2})
        shutil.copyfile(log, tmp_path / "audit.log.1")
        with log.open("r+b") as same:
            same.truncate(0)
        _append(log, b"".join(_whole(n) for n in range(3, 13)))  # past the old size at once
        _wait_for(out, set(range(1, 13)))
        _stop(proc, stderr)
        assert _serials(out) == Counter(range(1, 13))
        assert not [d for d in _docs(out) if "marker" in str(d.get("auditstream", ""))]
        assert "truncated" in stderr.read_text()


@pytest.mark.parametrize("compressed", [False, True])
def test_copytruncate_reads_what_was_appended_before_it_from_the_copy(
    tmp_path: Path, compressed: bool
) -> None:
    """Lines appended just before logrotate's copy and truncate, not read yet, are read from the copy (audit.log.1, or audit.log.1.gz where logrotate compressed it at once) past our offset, then the emptied log from its start: each event once; an older copy with other first bytes is not read."""
    log = tmp_path / "audit.log"
    older = _whole(100)  # an older rotation
    (tmp_path / "audit.log.2.gz").write_bytes(gzip.compress(older))
    (tmp_path / "audit.log.3").write_bytes(older)
    log.write_bytes(_whole(1) + _whole(2))
    copy = tmp_path / ("audit.log.1.gz" if compressed else "audit.log.1")
    with _follow(tmp_path, log) as (proc, out, stderr):
        _wait_for(out, {1, 2})
        # As auditd writing while logrotate runs, faster than the follower's 0.2 s look.
        with log.open("ab") as writer:
            writer.write(_whole(3) + _whole(4)[:20])
        text = log.read_bytes()
        copy.write_bytes(gzip.compress(text) if compressed else text)
        with log.open("r+b") as same:
            same.truncate(0)
        _append(log, _whole(5) + _whole(6))
        _wait_for(out, {3, 5, 6})
        _stop(proc, stderr)
        said = stderr.read_text()
    assert _serials(out) == Counter({1: 1, 2: 1, 3: 1, 5: 1, 6: 1}), said
    assert f"from its copy {copy}" in said


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's DAC capabilities with setpriv")
def test_an_unreadable_new_log_is_waited_for_not_fatal(tmp_path: Path) -> None:
    """A rotation to a file the follower cannot read: a warning naming it, the old file still read, the new one once readable."""
    log = tmp_path / "audit.log"
    log.write_bytes(_whole(1))
    with _follow(tmp_path, log, no_dac=True) as (proc, out, stderr):
        _wait_for(out, {1})
        os.chmod(log, 0)  # the open file stays readable
        _append(log, _whole(2))
        _wait_for(out, {2})
        os.rename(log, tmp_path / "audit.log.1")
        log.write_bytes(_whole(3))
        os.chmod(log, 0)
        time.sleep(1)
        assert proc.poll() is None, stderr.read_text()
        assert f"cannot open followed {log}: Permission denied" in stderr.read_text()
        os.chmod(log, 0o600)
        _wait_for(out, {1, 2, 3})
        _stop(proc, stderr)
        assert _serials(out) == Counter({1: 1, 2: 1, 3: 1})


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    """A followed log auditd has not created yet: a warning, then its lines once it appears; a deleted one is still read from the open file."""
    log = tmp_path / "audit.log"
    with _follow(tmp_path, log) as (proc, out, stderr):
        time.sleep(1)
        assert proc.poll() is None, stderr.read_text()
        assert f"cannot open followed {log}: No such file or directory" in stderr.read_text()
        with log.open("ab") as writer:
            writer.write(_whole(1))
            writer.flush()
            _wait_for(out, {1})
            log.unlink()
            writer.write(_whole(2))  # auditd still writes to the deleted file
        _wait_for(out, {2})
        _stop(proc, stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_writes_everything_appended_before_it(tmp_path: Path, sig: int) -> None:
    """A stop signal right after a burst appended: exit 0, every event of the burst written once, the summary said."""
    log = tmp_path / "audit.log"
    log.write_bytes(_whole(1))
    with _follow(tmp_path, log) as (proc, out, stderr):
        _wait_for(out, {1})
        _append(log, b"".join(_whole(n) for n in range(2, 10002)))
        _stop(proc, stderr, sig)
        assert _serials(out) == Counter(range(1, 10002))
        said = stderr.read_text()
        assert f"{signal.Signals(sig).name}: stopping" in said
        assert "30003 records read" in said


@pytest.mark.parametrize(
    ("files", "reason"),
    [('["{dir}"]', "is a directory"), ('["{dir}/unreadable.log"]', "Permission denied")],
)
@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's DAC capabilities with setpriv")
def test_check_config_refuses_files_a_follow_cannot_read(
    tmp_path: Path, files: str, reason: str
) -> None:
    """check-config of `source = "file"` naming a directory or an unreadable log: exit 2, file, key and reason named."""
    (tmp_path / "unreadable.log").write_bytes(_whole(1))
    os.chmod(tmp_path / "unreadable.log", 0)
    config = tmp_path / "follow.toml"
    listed = files.format(dir=tmp_path)
    config.write_text(f'[receiver]\nsource = "file"\nfiles = {listed}\nfollow = true\n')
    result = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable,
         "-m", "auditstream", "check-config", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{config}: [receiver].files: cannot read " in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
