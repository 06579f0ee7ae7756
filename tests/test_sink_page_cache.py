"""A file sink's written pages leave the page cache once on disk (sinks/page_cache.py).

Residency is read with mincore(2) on a private mapping of the file (untouched pages of a
MAP_PRIVATE file mapping report the page cache's). The file's bytes must be exactly what
was written, whatever the cache holds.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from sinks import page_cache
from sinks.base import SinkStats
from sinks.config import FileOutputConfig
from sinks.rotation import RotatingWriter

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(path: Path) -> int:
    """How many bytes of the file are in the page cache now."""
    size = path.stat().st_size
    with (
        path.open("rb") as handle,
        mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapped,
    ):
        pages = (size + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        mincore = ctypes.CDLL(None, use_errno=True).mincore
        mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        if mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        resident = sum(1 for flag in vector if flag & 1) * PAGE
    return resident


def write_lines(path: Path, total: int) -> bytes:
    """``total`` bytes of numbered lines through a RotatingWriter; what was written."""
    writer = RotatingWriter("jsonl", FileOutputConfig(path=str(path)), SinkStats())
    written = bytearray()
    number = 0
    while len(written) < total:
        line = b'{"n":%d,"pad":"%s"}\n' % (number, b"x" * 400)
        writer.append(line)
        written += line
        number += 1
    writer.flush()
    writer.close()
    return bytes(written)


@pytest.mark.skipif(not page_cache.WrittenPages(0).enabled, reason="no sync_file_range here")
def test_written_pages_leave_the_cache_and_the_file_is_whole(tmp_path: Path) -> None:
    """64 MiB written: at most the newest steps stay cached (three and a bit), and the bytes are all there."""
    path = tmp_path / "events.jsonl"
    want = write_lines(path, 64 << 20)
    resident = resident_bytes(path)
    assert resident <= 4 * page_cache.STEP_BYTES, resident  # steps end on chunk boundaries
    assert path.read_bytes() == want


def test_a_small_file_stays_cached(tmp_path: Path) -> None:
    """Less than a step written: nothing is dropped (a short run's file reads back warm)."""
    path = tmp_path / "events.jsonl"
    want = write_lines(path, 2 << 20)
    assert resident_bytes(path) >= len(want) - PAGE
    assert path.read_bytes() == want


def test_a_file_system_without_the_hints_keeps_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync_file_range failing turns the dropping off; every byte is still written."""
    monkeypatch.setattr(page_cache, "_SYNC", lambda fd, start, length, flags: -1)
    path = tmp_path / "events.jsonl"
    want = write_lines(path, 20 << 20)
    assert path.read_bytes() == want
    assert resident_bytes(path) >= len(want) - PAGE
