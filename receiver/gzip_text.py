"""What a gzip file holds, read cheaply: its text's first bytes and its text's length.

logrotate's ``compress`` without ``delaycompress`` gzips a rotated log at once (for
``copytruncate``, the copy): a follow that looks for the old text afterwards finds only
``audit.log.1.gz``. It is recognised as the plain file would be, by its text's first bytes
and a length past the offset read (receiver/logsource.py, receiver/position.py).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

_GZIP_MAGIC = b"\x1f\x8b"
_TRAILER_BYTES = 8  # CRC32, then ISIZE: the text's length modulo 2**32 (RFC 1952)


def is_gzip_name(name: str) -> bool:
    return name.endswith(".gz")


def gzip_copy_text(path: str, head_length: int, min_length: int) -> tuple[int, bytes] | None:
    """(text length, first ``head_length`` bytes of the text) of a ``.gz`` whose text is at
    least ``min_length`` long: a candidate for a rotated log or copy compressed at once,
    which the caller matches by those first bytes; None for any other file."""
    if not is_gzip_name(path):
        return None
    length = gzip_text_length(path)
    if length is None or length < min_length:
        return None
    head = gzip_text_head(path, head_length)
    return None if head is None else (length, head)


def gzip_text_head(path: str, length: int) -> bytes | None:
    """The first ``length`` bytes of the text ``path`` compresses (fewer if it is shorter);
    None if it is no gzip file or cannot be read or decompressed that far."""
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != _GZIP_MAGIC:
                return None
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as text:
                return text.read(length)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None


def gzip_text_length(path: str) -> int | None:
    """The length of the text ``path`` compresses, from its trailer's ISIZE (a text over
    4 GiB reads as its length modulo 2**32); None if it cannot be read. A file still being
    written (gzip running) ends in no trailer: its figure is then meaningless, which is why
    a plain copy that matches is preferred to its .gz."""
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if size < len(_GZIP_MAGIC) + _TRAILER_BYTES:
                return None
            raw.seek(size - 4)
            (length,) = struct.unpack("<I", raw.read(4))
            return int(length)
    except OSError:
        return None
