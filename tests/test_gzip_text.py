"""receiver/gzip_text.py: a gzip file's text's first bytes and length, without reading it all."""

from __future__ import annotations

import gzip
from pathlib import Path

from receiver.gzip_text import gzip_text_head, gzip_text_length


def test_the_head_and_length_are_the_texts(tmp_path: Path) -> None:
    """The first bytes and the length are those of the decompressed text, not of the file."""
    text = b"type=EOE msg=audit(1.001:1): \n" * 1000
    path = tmp_path / "audit.log.1.gz"
    path.write_bytes(gzip.compress(text))
    assert gzip_text_head(str(path), 64) == text[:64]
    assert gzip_text_head(str(path), 10**6) == text
    assert gzip_text_length(str(path)) == len(text)


def test_what_is_no_gzip_or_is_cut_gives_none_or_no_head(tmp_path: Path) -> None:
    """A plain file has no gzip head; a file gzip is still writing (cut short) gives no head past what it holds; a missing file gives None."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"type=EOE msg=audit(1.001:1): \n")
    assert gzip_text_head(str(plain), 64) is None
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(b"x" * 100_000)[:20])
    assert gzip_text_head(str(cut), 64) is None
    assert gzip_text_head(str(tmp_path / "missing.gz"), 64) is None
    assert gzip_text_length(str(tmp_path / "missing.gz")) is None
    (tmp_path / "tiny.gz").write_bytes(b"\x1f\x8b")
    assert gzip_text_length(str(tmp_path / "tiny.gz")) is None
