"""A replay's recording (``[receiver] record = PATH``) keeps its input's lines: a log without
``node=`` stays without, a line with one keeps its own (docs/design.md, ``--record``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from live_helpers import REPO

from auditstream.hostnode import local_node


def event_lines(serial: int, node: str = "") -> list[bytes]:
    """One execve event (SYSCALL, EOE) with ``serial``, prefixed ``node=NODE`` if given."""
    prefix = f"node={node} " if node else ""
    stamp = f"msg=audit(1700000000.{serial:03d}:{serial}):"
    return [
        f"{prefix}type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1 items=0"
        f' ppid=1 pid={100 + serial} auid=0 uid=0 ses=1 comm="ls" exe="/bin/ls" key=(null)'.encode(),
        f"{prefix}type=EOE {stamp} ".encode(),
    ]


def replay_recording(tmp_path: Path, lines: list[bytes]) -> bytes:
    """`auditstream replay LOG` with ``[receiver] record`` set: the recording's bytes."""
    log, recorded = tmp_path / "in.log", tmp_path / "rec.log"
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    conf = tmp_path / "rec.toml"
    conf.write_text(f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nrecord = "{recorded}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", "-c", str(conf), str(log),
         "--sink", f"jsonl:{tmp_path / 'out.jsonl'}"],
        cwd=REPO, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return recorded.read_bytes()


def test_replay_recording_of_a_node_less_log_names_no_node(tmp_path: Path) -> None:
    """Every recorded line equals the input line: no node= of this host is added."""
    assert local_node()  # else the test could not tell the difference
    lines = [line for serial in (1, 2, 3) for line in event_lines(serial)]
    assert replay_recording(tmp_path, lines).splitlines() == lines


def test_replay_recording_keeps_each_line_s_own_node(tmp_path: Path) -> None:
    """A log mixing lines of node=web1 and lines without: each recorded as it was read."""
    lines = event_lines(1, "web1") + event_lines(2) + event_lines(3, "web1")
    assert replay_recording(tmp_path, lines).splitlines() == lines
