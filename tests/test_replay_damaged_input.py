"""Replay inputs that break off (a corrupt or truncated gzip, a read error), and pipes as inputs.

A damaged file is reported once, with its name and how far it was read; what was decoded
before the damage goes through, one ``input-damaged`` marker takes the rest's place, the
files after it are read, no stage is restarted, and the replay exits 4.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_helpers import is_audit_event, read_events, replay

from auditstream import config as config_mod
from auditstream.supervisor import RestartPolicy, Supervisor

REPO = Path(__file__).resolve().parents[1]
EXIT_INPUT_DAMAGED = 4
_SERIAL = re.compile(rb"msg=audit\(\d+\.\d+:(\d+)\)")


def audit_log(first_serial: int, events: int) -> bytes:
    """``events`` two-record events (SYSCALL, EOE), serials from ``first_serial``, one a second."""
    lines = []
    for serial in range(first_serial, first_serial + events):
        stamp = f"{1_700_000_000 + serial}.000:{serial}"
        lines.append(
            f"type=SYSCALL msg=audit({stamp}): arch=c000003e syscall=59 success=yes exit=0 "
            f'a0=1 a1=2 a2=3 a3=4 items=1 ppid=1 pid={serial} uid=0 comm="sh" '
            f'exe="/usr/bin/sh-{serial * 7919 % 100_003}" key="k{serial}"\n'
            f"type=EOE msg=audit({stamp}): \n"
        )
    return "".join(lines).encode()


def serials_of_whole_lines(text: bytes) -> set[int]:
    """The serials of the complete (newline-ended) record lines in ``text``."""
    whole = text[: text.rfind(b"\n") + 1]
    return {int(m.group(1)) for m in _SERIAL.finditer(whole)}


def gzip_in_two(first: bytes, second: bytes) -> tuple[bytes, int]:
    """One gzip member of ``first`` then ``second``, flushed between them so that the second
    half's deflate data starts on a byte of its own; returns the bytes and that offset."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = packer.compress(first) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + packer.compress(second) + packer.flush(), len(head)


def audit_serials(events: list[dict[str, object]]) -> list[int]:
    return [e["event"]["sequence"] for e in events if is_audit_event(e)]  # type: ignore[index]


def markers(events: list[dict[str, object]]) -> list[dict[str, object]]:
    damaged = [e for e in events if e["event"]["action"] == "input-damaged"]  # type: ignore[index]
    return [e["auditstream"]["marker"] for e in damaged]  # type: ignore[index]


def write_truncated_gzip(path: Path) -> bytes:
    """A gzip of serials 10001.. cut at three quarters (over 2 MiB of text before the cut);
    returns the text zlib decodes from it."""
    text = audit_log(10_001, 12_000)
    data, _flushed = gzip_in_two(text[: len(text) // 2], text[len(text) // 2 :])
    cut = data[: len(data) * 3 // 4]
    path.write_bytes(cut)
    decodable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)  # no error: it stops
    assert 0 < len(decodable) < len(text) and not decodable.endswith(b"\n")
    return decodable


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short runtime directory kept after the run (its summary.json): ipc paths are short."""
    path = Path(tempfile.mkdtemp(prefix="asdmg"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def replay_kept(
    run_dir: Path, *args: str
) -> tuple[subprocess.CompletedProcess[bytes], str, dict[str, Any]]:
    """`auditstream replay ARGS` with its runtime directory kept: result, stderr, summary."""
    config = run_dir / "c.toml"
    config.write_text(f'[runtime]\ndir = "{run_dir / "rt"}"\n')
    result = replay("-c", str(config), *args, timeout=120)
    summary = json.loads((run_dir / "rt" / "summary.json").read_text())
    return result, result.stderr.decode(errors="replace"), summary


def test_a_corrupt_gzip_between_two_files_keeps_its_good_part_and_the_next_file(
    tmp_path: Path, run_dir: Path
) -> None:
    """A gzip broken in the middle: files 1 and 3 whole, file 2 up to the damage, one marker, a counter, exit 4, no restart."""
    one, three = tmp_path / "a.log", tmp_path / "c.log"
    one.write_bytes(audit_log(1, 200))
    three.write_bytes(audit_log(20_001, 200))
    # More than a read's MiB before the damage: lines passed on, then the failed read's.
    data, flushed = gzip_in_two(audit_log(10_001, 6000), audit_log(16_001, 1500))
    broken = bytearray(data)
    broken[flushed] = 0x07  # a deflate block header of the reserved type: invalid at once
    two = tmp_path / "b.log.1.gz"
    two.write_bytes(bytes(broken))
    with pytest.raises(zlib.error, match="invalid block type"):
        zlib.decompress(bytes(broken), 16 + zlib.MAX_WBITS)
    out = tmp_path / "events.jsonl"

    result, stderr, summary = replay_kept(
        run_dir, str(one), str(two), str(three), "--sink", f"jsonl:{out}"
    )

    assert result.returncode == EXIT_INPUT_DAMAGED, stderr
    assert "restarting" not in stderr and "Traceback" not in stderr, stderr
    events = read_events(out)
    serials = audit_serials(events)
    expected = [*range(1, 201), *range(10_001, 16_001), *range(20_001, 20_201)]
    assert sorted(serials) == expected
    assert markers(events) == [
        {
            "cause": "gzip_corrupt",
            "file": str(two),
            "error": "Error -3 while decompressing data: invalid block type",
            "read_lines": 12_000,
            "read_bytes": len(audit_log(10_001, 6000)),
        }
    ]
    assert summary["receiver"]["damaged_files"] == 1
    reported = [ln for ln in stderr.splitlines() if str(two) in ln]
    assert len(reported) == 2, stderr  # the receiver's error and the summary's line
    assert f"NOT READ TO THE END (1 files): {two} after 12000 lines" in stderr


def test_a_truncated_gzip_keeps_every_whole_line_and_the_files_after_it(
    tmp_path: Path, run_dir: Path
) -> None:
    """A gzip cut in its middle (a copy broken off): every whole line before the cut goes through, then the next file; exit 4."""
    two = tmp_path / "b.log.1.gz"
    decodable = write_truncated_gzip(two)
    three = tmp_path / "c.log"
    three.write_bytes(audit_log(20_001, 200))
    out = tmp_path / "events.jsonl"

    result, stderr, summary = replay_kept(run_dir, str(two), str(three), "--sink", f"jsonl:{out}")

    assert result.returncode == EXIT_INPUT_DAMAGED, stderr
    assert "restarting" not in stderr and "cannot run" not in stderr, stderr
    events = read_events(out)
    serials = set(audit_serials(events))
    whole = serials_of_whole_lines(decodable)
    assert set(range(20_001, 20_201)) <= serials
    # The cut line itself may still make an event (its header whole) or a parse error.
    assert whole <= serials - set(range(20_001, 20_201)) <= whole | {max(whole) + 1}
    [marker] = markers(events)
    assert marker["cause"] == "gzip_truncated"
    assert marker["read_bytes"] == len(decodable)
    assert marker["read_lines"] == decodable.count(b"\n") + 1
    assert summary["receiver"]["damaged_files"] == 1


def test_a_read_error_is_reported_and_the_next_file_read(tmp_path: Path) -> None:
    """EIO on reading a file (/proc/self/mem at offset 0): a read_error marker, the files around it whole, exit 4."""
    one, three = tmp_path / "a.log", tmp_path / "c.log"
    one.write_bytes(audit_log(1, 50))
    three.write_bytes(audit_log(20_001, 50))
    out = tmp_path / "events.jsonl"

    result = replay(str(one), "/proc/self/mem", str(three), "--sink", f"jsonl:{out}")

    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == EXIT_INPUT_DAMAGED, stderr
    assert "restarting" not in stderr and "Traceback" not in stderr, stderr
    events = read_events(out)
    assert sorted(audit_serials(events)) == [*range(1, 51), *range(20_001, 20_051)]
    [marker] = markers(events)
    assert marker["cause"] == "read_error" and marker["error"] == "Input/output error"
    assert marker["file"] == "/proc/self/mem" and marker["read_lines"] == 0


def test_process_substitution_inputs_reach_the_receiver(tmp_path: Path) -> None:
    """`replay <(cat a.log) <(gzip -c b.log)` in bash: both pipes are read whole, exit 0."""
    one, two = tmp_path / "a.log", tmp_path / "b.log"
    one.write_bytes(audit_log(1, 300))
    two.write_bytes(audit_log(10_001, 300))
    out = tmp_path / "events.jsonl"
    command = (
        f'"{sys.executable}" -m auditstream replay <(cat "{one}") <(gzip -c "{two}")'
        f' --sink "jsonl:{out}"'
    )

    result = subprocess.run(
        ["bash", "-c", command], cwd=REPO, capture_output=True, timeout=60, check=False
    )

    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert sorted(audit_serials(read_events(out))) == [*range(1, 301), *range(10_001, 10_301)]
    assert "records read" in stderr and "/dev/fd/" not in stderr


def test_a_truncated_gzip_through_a_pipe_keeps_every_whole_line(tmp_path: Path) -> None:
    """`replay <(cat cut.gz) c.log`: a pipe cannot be read again, yet every whole line before the cut goes through; exit 4."""
    two, three = tmp_path / "b.log.1.gz", tmp_path / "c.log"
    whole = serials_of_whole_lines(write_truncated_gzip(two))
    three.write_bytes(audit_log(20_001, 100))
    out = tmp_path / "events.jsonl"
    command = (
        f'"{sys.executable}" -m auditstream replay <(cat "{two}") "{three}" --sink "jsonl:{out}"'
    )

    result = subprocess.run(
        ["bash", "-c", command], cwd=REPO, capture_output=True, timeout=60, check=False
    )

    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == EXIT_INPUT_DAMAGED, stderr
    serials = set(audit_serials(read_events(out)))
    assert set(range(20_001, 20_101)) <= serials
    assert whole <= serials - set(range(20_001, 20_101)) <= whole | {max(whole) + 1}
    assert "NOT READ TO THE END (1 files): /dev/fd/" in stderr


def test_a_named_pipe_is_read_whole_and_not_touched_by_the_check(tmp_path: Path) -> None:
    """A FIFO with a writer: the pre-start check does not open it, so the receiver gets every line the writer sends."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    text = audit_log(1, 400)
    written: list[int] = []

    def writer() -> None:
        with fifo.open("wb") as pipe:  # waits for the receiver, the only reader
            pipe.write(text)
        written.append(len(text))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    out = tmp_path / "events.jsonl"

    result = replay(str(fifo), "--sink", f"jsonl:{out}")

    thread.join(timeout=10)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert written == [len(text)]
    assert sorted(audit_serials(read_events(out))) == list(range(1, 401))


def test_a_descriptor_path_that_is_not_open_is_refused_before_the_start(tmp_path: Path) -> None:
    """/dev/fd/N of no open descriptor: refused at once with the path named, exit 2."""
    result = replay("/dev/fd/97", "--sink", f"jsonl:{tmp_path / 'e.jsonl'}")
    assert result.returncode == 2
    assert (
        result.stderr.decode() == "auditstream: cannot read /dev/fd/97: No such file or directory\n"
    )


def test_an_execd_receiver_keeps_the_descriptors_it_is_given(tmp_path: Path) -> None:
    """Where a stage cannot be forked it is exec'd: the receiver's /dev/fd inputs stay open there too."""
    conf = tmp_path / "effective-config.json"
    config_mod.write_json(config_mod.Config(source_path="<test>"), conf)
    read_end, write_end = os.pipe()
    try:
        supervisor = Supervisor(
            conf,
            assemblers=1,
            receiver_stdin=False,
            receiver_fds=(read_end,),
            policy=RestartPolicy(),
        )
        os.write(write_end, b"through the pipe\n")
        os.close(write_end)
        write_end = -1
        probe = f"import sys; sys.exit(open('/dev/fd/{read_end}', 'rb').read() != b'through the pipe\\n')"
        receiver = supervisor._stage("receiver")
        proc = supervisor._exec(receiver, [sys.executable, "-c", probe])
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert receiver.pass_fds == (read_end,)
