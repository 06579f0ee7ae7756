"""A followed log's position file: where a follow started again later resumes.

``[receiver] position_file`` (``replay --position-file``) holds the followed log's
identity (device, inode, a hash of its first bytes) and the acknowledged offset in it,
written by the checkpoint keeper (receiver/checkpoint.py) at the checkpoint's moments and
at a clean stop. At the next start :func:`resume_position` finds where to go on: the same
file at the offset, or the file rotated away meanwhile (another name in the log's
directory) and the ones rotated after it, or a copytruncate's copy; anything else is
warned about and the log is read from its start (docs/recovery.md, "Position file").
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from receiver.gzip_text import gzip_copy_text
from receiver.logsource import HEAD_BYTES, FileIdentity

log = logging.getLogger("auditstream.receiver")
POSITION_VERSION = 1


def head_digest(head: bytes) -> str:
    """A position file's ``head_sha256``: the file's first bytes as written and as matched."""
    import hashlib  # here: OpenSSL's start is ~2.5 ms of every replay's start

    return hashlib.sha256(head).hexdigest()


@dataclass(slots=True, frozen=True)
class SavedPosition:
    """A position file's content (``CheckpointKeeper._write_position`` writes it)."""

    path: str  # the followed log, absolute
    device: int
    inode: int
    head_length: int
    head_sha256: str
    offset: int
    clean_stop: bool  # written after a drain: nothing past ``offset`` was sent
    owner: int  # the supervisor that wrote it


@dataclass(slots=True)
class Resume:
    """Where a follow with a position file starts, and why (``outcome``: receiver status)."""

    files: list[str]  # read in this order, the followed log last
    start: tuple[int, int]  # (index in files, offset)
    reading: FileIdentity | None  # the file ``start`` is in, where known
    # new, resumed, resumed_rotated (found at another name), resumed_copy (a copytruncate's
    # copy), truncated, not_found, unusable: the last three read the log from its start.
    outcome: str


_POSITION_FIELDS: dict[str, type] = {
    "path": str, "device": int, "inode": int, "head_length": int, "head_sha256": str,
    "offset": int, "clean_stop": bool, "owner": int,
}  # fmt: skip


def _parse_position(text: bytes) -> SavedPosition:
    """A position file's JSON, every field checked; a ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("version") != POSITION_VERSION:
        raise ValueError(f"not a position file of version {POSITION_VERSION}")
    for name, kind in _POSITION_FIELDS.items():
        value = data.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"field {name!r} missing or not {kind.__name__}")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"field {name!r} is negative")
    if data["head_length"] > HEAD_BYTES or data["head_length"] > data["offset"]:
        raise ValueError(f"head_length {data['head_length']} out of range")
    return SavedPosition(**{name: data[name] for name in _POSITION_FIELDS})


def resume_position(position_file: Path, path: str) -> Resume:
    """Where a follow of ``path`` starts, from its position file: at the saved offset if the
    log (device, inode, first bytes) is still there and long enough; in its rotated file
    (another name in its directory, same device, inode and first bytes) or a copytruncate's
    copy (same first bytes) from the offset, then the files rotated after it, then the log
    from its start. Anything else is warned about, naming the file, and the log is read
    from its start: events may then be missing or sent twice; it never fails the start."""
    log_path = os.path.abspath(path)
    again = "events already sent may be sent again"

    def from_start(outcome: str) -> Resume:
        return Resume([path], (0, 0), _identity(path, b""), outcome)

    try:
        text = position_file.read_bytes()
    except FileNotFoundError:
        log.info(
            "position file %s does not exist yet: reading %s from its start", position_file, path
        )
        return from_start("new")
    except OSError as err:
        log.warning(
            "cannot read position file %s: %s; reading %s from its start (%s)",
            position_file, err.strerror or err, path, again,
        )  # fmt: skip
        return from_start("unusable")
    try:
        saved = _parse_position(text)
    except ValueError as err:
        log.warning(
            "ignoring position file %s: %s; reading %s from its start (%s)",
            position_file, err, path, again,
        )  # fmt: skip
        return from_start("unusable")
    if saved.path != log_path:
        log.warning(
            "ignoring position file %s: it is for %s, not %s; reading %s from its start",
            position_file, saved.path, log_path, path,
        )  # fmt: skip
        return from_start("unusable")
    try:
        now = os.stat(path)
    except OSError:
        now = None
    same_file = now is not None and (now.st_dev, now.st_ino) == (saved.device, saved.inode)
    if same_file and now is not None and now.st_size >= saved.offset:
        head = _head_if_matches(path, saved)
        if head is not None:
            _say_resumed(saved, position_file, path, "")
            return Resume([path], (0, saved.offset), _identity(path, head), "resumed")
    # Rotated while we were stopped (auditd, logrotate's create): the same file, renamed;
    # truncated (copytruncate): its copy, if one is left, holds what we had not read.
    found = _find_saved_file(path, saved, same_inode=not same_file)
    if found is not None:
        found_path, head = found
        newer = _newer_rotations(log_path, found_path)
        outcome = "resumed_copy" if same_file else "resumed_rotated"
        what = "copy" if same_file else "rotated file"
        then = "".join(f", then {name}" for name in newer)
        _say_resumed(
            saved, position_file, found_path, f" (the {what} of {path}{then}, then {path})"
        )
        files = [found_path, *newer, path]
        return Resume(files, (0, saved.offset), _identity(found_path, head), outcome)
    if same_file:
        log.warning(
            "%s was truncated or replaced while auditstream was stopped (copytruncate, or a "
            "new file in the old one's inode) and no copy of its old text was found: reading "
            "it from its start; what it held after byte %d may be missing (position file %s)",
            path, saved.offset, position_file,
        )  # fmt: skip
        return from_start("truncated")
    log.warning(
        "the file of %s that position file %s names (device %d, inode %d, read to byte %d) "
        "is not in %s any more (deleted, compressed or moved while auditstream was stopped): "
        "reading %s from its start; what that file held after byte %d may be missing",
        path, position_file, saved.device, saved.inode, saved.offset,
        os.path.dirname(log_path), path, saved.offset,
    )  # fmt: skip
    return from_start("not_found")


def _say_resumed(saved: SavedPosition, position_file: Path, path: str, detail: str) -> None:
    if saved.owner == os.getppid() != 1:  # a receiver restarted in this run: duplicates dropped
        log.warning(
            "restarted: resuming %s at byte %d from position file %s%s",
            path, saved.offset, position_file, detail,
        )  # fmt: skip
        return
    log.info(
        "resuming %s at byte %d from position file %s%s", path, saved.offset, position_file, detail
    )
    if not saved.clean_stop:
        log.warning(
            "the follow that wrote position file %s did not stop cleanly (killed, or it "
            "crashed): events after byte %d that it had already sent are sent again",
            position_file, saved.offset,
        )  # fmt: skip


def _identity(path: str, head: bytes) -> FileIdentity | None:
    try:
        now = os.stat(path)
    except OSError:
        return None
    return FileIdentity(now.st_dev, now.st_ino, head)


def _head_if_matches(path: str, saved: SavedPosition) -> bytes | None:
    """The file's first ``head_length`` bytes if they are the saved ones."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(saved.head_length)
    except OSError:
        return None
    if len(head) == saved.head_length and head_digest(head) == saved.head_sha256:
        return head
    return None


def _find_saved_file(
    path: str, saved: SavedPosition, *, same_inode: bool
) -> tuple[str, bytes] | None:
    """Another name in the log's directory for the saved file (``same_inode``: the same
    device and inode, as a rename leaves it) or, not ``same_inode``, a copy of it (a name
    beginning with the log's, as logrotate's copytruncate gives it: the largest), with
    its first bytes the saved ones and at least ``offset`` long: (path, head). Failing
    both, a ``.gz`` whose text is such a file (:func:`_gzipped_copies`)."""
    log_path = os.path.abspath(path)
    directory, base = os.path.split(log_path)
    found: list[tuple[int, str, bytes]] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        candidate = os.path.join(directory, entry.name)
        if candidate == log_path or (not same_inode and not entry.name.startswith(base)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size < saved.offset:
            continue
        if same_inode and (st.st_dev, st.st_ino) != (saved.device, saved.inode):
            continue
        head = _head_if_matches(candidate, saved)
        if head is not None:
            found.append((st.st_size, candidate, head))
    if not found:  # compressed while we were stopped (logrotate without delaycompress)?
        found = _gzipped_copies(entries, directory, base, saved)
    if not found:
        return None
    _size, candidate, head = max(found)
    return candidate, head


def _gzipped_copies(
    entries: list[os.DirEntry[str]], directory: str, base: str, saved: SavedPosition
) -> list[tuple[int, str, bytes]]:
    """(text length, path, head) of each ``.gz`` in the log's directory, named as its
    rotations are (beginning with the log's name), whose text begins with the saved first
    bytes and is at least ``offset`` long: the saved file, rotated or copied, then
    compressed (receiver/gzip_text.py)."""
    found = []
    for entry in entries:
        if not entry.name.startswith(base):
            continue
        candidate = os.path.join(directory, entry.name)
        text = gzip_copy_text(candidate, saved.head_length, saved.offset)
        if text is None:
            continue
        length, head = text
        if len(head) == saved.head_length and head_digest(head) == saved.head_sha256:
            found.append((length, candidate, head))
    return found


def _newer_rotations(log_path: str, found: str) -> list[str]:
    """The files rotated after ``found``, oldest first, where the names tell: auditd's and
    logrotate's numbered ones (found at LOG.3: LOG.2, then LOG.1, plain or .gz), and
    logrotate's dated ones (``dateext``: found at LOG-20261123, the LOG-SUFFIX names whose
    suffix has the same shape and sorts after it, plain or .gz)."""
    numbered = re.fullmatch(re.escape(log_path) + r"\.(\d+)(?:\.gz)?", found)
    if numbered is not None:
        newer = []
        for n in range(int(numbered.group(1)) - 1, 0, -1):
            for name in (f"{log_path}.{n}", f"{log_path}.{n}.gz"):
                if _readable_file(name):
                    newer.append(name)
                    break
        return newer
    dated = re.fullmatch(re.escape(log_path) + _DATED_SUFFIX, found)
    return _newer_dated(log_path, dated.group(1)) if dated is not None else []


# logrotate's dateext suffix (dateformat's default -%Y%m%d, or with the hour, minutes,
# seconds or %s): digits and separators. logrotate itself sorts these names as text to
# find its oldest, so a dateformat that does not sort so breaks its own rotation too.
_DATED_SUFFIX = r"-(\d[\d_.-]*)(?:\.gz)?"


def _newer_dated(log_path: str, suffix: str) -> list[str]:
    """LOG-S names (or LOG-S.gz, where LOG-S is not there) with S of the shape of ``suffix``
    (each digit a digit, the separators the same) sorting after it, oldest first."""
    shape = re.sub(r"\d", "9", suffix)
    directory = os.path.dirname(log_path)
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except OSError:
        return []
    newer: dict[str, str] = {}
    for name in names:  # LOG-S sorts before LOG-S.gz: the plain one wins
        path = os.path.join(directory, name)
        dated = re.fullmatch(re.escape(log_path) + _DATED_SUFFIX, path)
        if dated is None or dated.group(1) in newer or not _readable_file(path):
            continue
        other = dated.group(1)
        if re.sub(r"\d", "9", other) == shape and other > suffix:
            newer[other] = path
    return [newer[other] for other in sorted(newer)]


def _readable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)
