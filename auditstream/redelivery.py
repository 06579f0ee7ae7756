"""What the receiver and the tree keeper share for redelivery: the ack hop and restart marks.

The tree keeper acknowledges durable batches to the receiver on a PUSH -> PULL hop of
its own. The tree keeper binds ``treekeeper-acks.sock`` in the stages' directory and
the receiver connects, like every other hop: with ``[runtime] user`` the stages may
not create sockets where root writes, and root can connect anywhere. A stage learns
whether it is a restart within the same run from a mark file holding the supervisor's
pid: a mark from another supervisor is a previous run's leftover.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from auditstream import runtime
from auditstream.config import GROWN_REPLAY_BUFFER_RECORDS, Config, batching

# How long the receiver waits at start for the tree keeper's hello before it reads
# anyway, unprotected (a tree keeper that never says hello cannot acknowledge).
HELLO_WAIT_S = 10.0


def buffered_records(cfg: Config) -> int:
    """Records the receiver's replay buffers hold unacknowledged, full, for every assembler
    (a file source's, grown: auditstream/config.py GROWN_REPLAY_BUFFER_RECORDS)."""
    effective = batching(cfg.receiver)
    per_shard = effective.replay_buffer_batches * effective.batch_max_records
    if cfg.receiver.source == "file":
        per_shard = max(per_shard, GROWN_REPLAY_BUFFER_RECORDS)
    return per_shard * cfg.assembler.instances


def checkpoint_lag_records(cfg: Config) -> int:
    """At most this many acknowledged records past the file source's written checkpoint.

    A restarted receiver reads again what lies past its checkpoint: the buffered records
    and those acknowledged since the checkpoint was last written. Bounding the latter
    (and not only by time: 0.25 s of a fast replay is ~150,000 records) keeps what comes
    again within what the tree keeper remembers (:func:`resendable_records`)."""
    return max(1, buffered_records(cfg) // 8)


def resendable_records(cfg: Config) -> int:
    """The most records a restarted receiver or tree keeper can cause to be sent again."""
    return buffered_records(cfg) + checkpoint_lag_records(cfg)


def acks_endpoint(cfg: Config) -> str:
    return f"ipc://{runtime.stage_dir(cfg)}/treekeeper-acks.sock"


def checkpoint_path(cfg: Config) -> Path:
    return Path(cfg.runtime.dir) / "receiver-checkpoint.json"


def serial_mark_path(cfg: Config) -> Path:
    return Path(cfg.runtime.dir) / "receiver-serials.json"


def is_restart(directory: Path, stage: str) -> bool:
    """True if this stage already ran under the same supervisor (this start is a restart).

    Marks the stage as started (in ``directory``, one it may write) either way.
    """
    path = directory / f"{stage}.started"
    owner = str(os.getppid())
    try:
        restarted = path.read_text().strip() == owner
    except OSError:
        restarted = False
    if not restarted:
        write_atomically(path, owner.encode())
    return restarted


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader (or a crash) never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
