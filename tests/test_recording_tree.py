"""The process table a recording starts from (``PATH.tree``): written beside a new recording,
loaded by its replay, so that processes running before the recording began keep the entity
ids, arguments and ancestry the live run gave them (treekeeper/recording_tree.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from live_helpers import REPO

from auditstream.hostnode import host_name
from treekeeper import recording_tree, state
from treekeeper.procfs import FakeProcSource, ProcInfo
from treekeeper.tree import ProcessTable, TableConfig

NODE = "rec-host"
BASE_MS = 1_700_000_000_000


def scanned_table() -> ProcessTable:
    """init (1) and a shell (10) found by a start-up scan, as live on host NODE."""
    table = ProcessTable(TableConfig(host=host_name(NODE)))
    table.scan(
        FakeProcSource(
            [
                ProcInfo(1, 0, BASE_MS, b"systemd", b"/sbin/init", [b"/sbin/init"]),
                ProcInfo(10, 1, BASE_MS + 5, b"bash", b"/usr/bin/bash", [b"bash", b"-l"], b"/"),
            ]
        )
    )
    return table


def recording_lines() -> list[bytes]:
    """The shell (pid 10) forks 200, which execs ls and opens a file: the records a live
    recording of node NODE holds, none about the shell's own start."""
    prefix = f"node={NODE} "
    lines = []
    events = [
        (1, "syscall=56 success=yes exit=200 a0=1200011 items=0 ppid=1 pid=10", "bash", "/usr/bin/bash", []),
        (2, "syscall=59 success=yes exit=0 a0=1 items=0 ppid=10 pid=200", "ls", "/usr/bin/ls",
         ['type=EXECVE msg=audit({stamp}): argc=2 a0="ls" a1="/tmp"']),
        (3, "syscall=257 success=yes exit=3 a0=ffffff9c items=0 ppid=10 pid=200", "ls", "/usr/bin/ls", []),
    ]  # fmt: skip
    for serial, fields, comm, exe, extra in events:
        stamp = f"1700000001.{serial:03d}:{serial}"
        lines.append(
            f"{prefix}type=SYSCALL msg=audit({stamp}): arch=c000003e {fields} auid=0 uid=0 "
            f'gid=0 ses=1 comm="{comm}" exe="{exe}" key=(null)'.encode()
        )
        lines += [(prefix + line.format(stamp=stamp)).encode() for line in extra]
        lines.append(f"{prefix}type=EOE msg=audit({stamp}): ".encode())
    return lines


def replay(tmp_path: Path, log: Path, *extra: str) -> tuple[list[dict[str, Any]], str]:
    """`auditstream replay LOG` into jsonl: (docs, stderr)."""
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log), "--sink", f"jsonl:{out}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], done.stderr


def ls_exec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ls process's execve doc."""
    return next(d for d in docs if d.get("auditd", {}).get("data", {}).get("syscall") == "execve")


def test_replay_starts_from_the_recorded_table(tmp_path: Path) -> None:
    """With LOG.tree, the exec's parent is the scanned shell: its entity id, arguments and
    ancestry; without it (today's replay) the shell is a stranger."""
    table = scanned_table()
    shell_id = table.processes[table.current[10]].entity_id
    log = tmp_path / "raw.log"
    log.write_bytes(b"".join(line + b"\n" for line in recording_lines()))

    docs, _ = replay(tmp_path, log)
    assert ls_exec(docs)["process"]["parent"]["entity_id"] != shell_id

    state.save(table, recording_tree.sidecar_path(str(log)), node=NODE)
    docs, stderr = replay(tmp_path, log)
    process = ls_exec(docs)["process"]
    assert process["parent"]["entity_id"] == shell_id
    assert process["parent"]["args"] == ["bash", "-l"]
    assert [(a["pid"], a["entity_id"]) for a in process["ancestry"]] == [
        (10, shell_id),
        (1, table.processes[table.current[1]].entity_id),
    ]
    assert process["args"] == ["ls", "/tmp"]
    assert "starts from the process table recorded" in stderr


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff", b"\x85\xa7version\x01"])
def test_unusable_sidecar_is_named_and_skipped(tmp_path: Path, content: bytes) -> None:
    """An empty, corrupt or node-less LOG.tree is named in a warning; the replay goes on."""
    log = tmp_path / "raw.log"
    log.write_bytes(b"".join(line + b"\n" for line in recording_lines()))
    recording_tree.sidecar_path(str(log)).write_bytes(content)
    docs, stderr = replay(tmp_path, log)
    assert ls_exec(docs)["process"]["args"] == ["ls", "/tmp"]
    assert "raw.log.tree cannot be used" in stderr


def test_sidecar_only_beside_a_new_recording(tmp_path: Path) -> None:
    """Written when the recording is absent or empty; a recording with lines keeps the
    table of its own start (an existing sidecar is not replaced)."""
    table = scanned_table()
    absent, empty, started = (tmp_path / n for n in ("absent.log", "empty.log", "started.log"))
    empty.write_bytes(b"")
    started.write_bytes(b"type=EOE msg=audit(1.0:1): \n")
    assert recording_tree.save_start(table, NODE, str(absent))
    assert recording_tree.save_start(table, NODE, str(empty))
    assert not recording_tree.save_start(table, NODE, str(started))
    assert not recording_tree.sidecar_path(str(started)).exists()
    loaded = recording_tree.load_start([str(absent)], TableConfig())
    assert loaded is not None and loaded[0] == NODE and len(loaded[1]) == 2
    assert loaded[1].config.host == host_name(NODE)


def test_replay_recording_passes_the_table_on(tmp_path: Path) -> None:
    """A replay of a recording with a table, itself recorded, gives its recording the same
    table, so that the copy replays alike."""
    log = tmp_path / "raw.log"
    log.write_bytes(b"".join(line + b"\n" for line in recording_lines()))
    table = scanned_table()
    state.save(table, recording_tree.sidecar_path(str(log)), node=NODE)
    again = tmp_path / "again.log"
    conf = tmp_path / "rec.toml"
    conf.write_text(f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nrecord = "{again}"\n')
    first, _ = replay(tmp_path, log, "-c", str(conf))
    second, _ = replay(tmp_path, again)
    assert recording_tree.sidecar_path(str(again)).is_file()
    assert ls_exec(first)["process"] == ls_exec(second)["process"]
    assert ls_exec(second)["process"]["parent"]["entity_id"] == (
        table.processes[table.current[10]].entity_id
    )


def test_links_planted_beside_the_recording_are_not_written_through(tmp_path: Path) -> None:
    """Links at PATH.tree and PATH.tree.tmp (a shared directory) are replaced or left,
    never followed: the files they point at keep their bytes; the table is mode 0600."""
    victims = [tmp_path / "victim1", tmp_path / "victim2"]
    for victim in victims:
        victim.write_bytes(b"keep")
    recording = tmp_path / "rec.log"
    (tmp_path / "rec.log.tree").symlink_to(victims[0])
    (tmp_path / "rec.log.tree.tmp").symlink_to(victims[1])
    assert recording_tree.save_start(scanned_table(), NODE, str(recording))
    assert [v.read_bytes() for v in victims] == [b"keep", b"keep"]
    sidecar = recording_tree.sidecar_path(str(recording))
    assert not sidecar.is_symlink() and sidecar.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("field", "value"),
    [(18, "x"), (1, "later"), (0, True), (8, "ls"), (4, [1]), (20, ["a" * 64, 7]), (24, 1)],
)
def test_a_field_of_another_type_is_refused_not_a_crash(
    tmp_path: Path, field: int, value: Any
) -> None:
    """A row whose field has another type (an exit time that is text, a pid that is a
    flag, args that are not a list…) makes the table unusable, said once; before, such an
    exit time stopped the tree keeper at its first comparison, restart after restart."""
    rows = [state._pack(p) for p in scanned_table().processes.values()]
    rows[0][field] = value
    body = {"version": 1, "saved_ms": 1, "host": "h", "node": NODE, "processes": rows}
    log = tmp_path / "raw.log"
    log.write_bytes(b"".join(line + b"\n" for line in recording_lines()))
    recording_tree.sidecar_path(str(log)).write_bytes(msgpack.packb(body))
    docs, stderr = replay(tmp_path, log)
    assert ls_exec(docs)["process"]["args"] == ["ls", "/tmp"]
    assert "raw.log.tree cannot be used" in stderr and "Traceback" not in stderr


def test_a_parent_cycle_in_the_table_ends_the_ancestry(tmp_path: Path) -> None:
    """init and the shell each other's parent (a table made by hand): the replay ends,
    and the exec's ancestry stops where it would repeat itself."""
    table = scanned_table()
    init, shell = table.processes[table.current[1]], table.processes[table.current[10]]
    init.parent = shell.key
    log = tmp_path / "raw.log"
    log.write_bytes(b"".join(line + b"\n" for line in recording_lines()))
    state.save(table, recording_tree.sidecar_path(str(log)), node=NODE)
    docs, stderr = replay(tmp_path, log)
    ancestry = ls_exec(docs)["process"]["ancestry"]
    assert "Traceback" not in stderr and [a["pid"] for a in ancestry] == [10, 1]
