"""The process table a recording starts from: ``PATH.tree`` beside ``run --record PATH``.

A live tree keeper starts from a scan of /proc, so processes that were running before
the recording began (init, sshd, the shell a user typed in) have their start time,
executable, arguments and container from /proc. The recording holds only what the
kernel sent afterwards, so its replay learnt them from their first record: other entity
ids, no arguments, other ancestry, for nearly every event (every process descends from
one of them). Beside a new recording the tree keeper therefore writes the table it
starts from (the state file's format, treekeeper/state.py, with the node its records
name), and a replay of that recording, first file first, loads it into that node's
table: the replay's events then carry what the live ones did (docs/design.md,
``--record``).

Written only for a recording that is new (absent or empty when the tree keeper starts;
the receiver opens it only after the tree keeper is ready): a recording appended to by
a later run keeps the table of its own start. Never trusted blindly: a sidecar that
cannot be read or decoded is logged, and the replay goes on without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from treekeeper import state
from treekeeper.tree import ProcessTable, TableConfig

log = logging.getLogger("auditstream.treekeeper")

SUFFIX = ".tree"


def sidecar_path(recording: str) -> Path:
    """Where the table a recording starts from is kept."""
    return Path(recording + SUFFIX)


def recording_is_new(recording: str) -> bool:
    """The recording does not exist yet or holds nothing (the receiver has not written)."""
    try:
        return os.stat(recording).st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: write nothing rather than a table of the wrong start


def save_start(table: ProcessTable, node: str, recording: str) -> bool:
    """Write ``table`` (whose records name ``node``) beside a new ``recording``; True if
    written. A failure is logged, never raised: the recording itself is what matters."""
    if not recording_is_new(recording):
        return False
    path = sidecar_path(recording)
    try:
        state.save(table, path, node=node)
    except OSError as err:
        log.warning(
            "cannot write the process table of the recording's start to %s (%s): its "
            "replay will not know the processes running before it began",
            path,
            err.strerror or err,
        )
        return False
    log.info("process table of the recording's start (%d processes) in %s", len(table), path)
    return True


def load_start(files: list[str], config: TableConfig) -> tuple[str, ProcessTable] | None:
    """(node, table) the first input file's recording started from, or None (no sidecar,
    or one that cannot be used: logged)."""
    if not files:
        return None
    path = sidecar_path(files[0])
    if not path.is_file():
        return None
    loaded = state.load_recorded(path, config)
    if loaded is None:
        return None
    node, table = loaded
    log.info(
        "replay starts from the process table recorded at the start of %s: %d processes (%s)",
        files[0],
        len(table),
        path,
    )
    return node, table
