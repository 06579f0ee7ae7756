"""The C line splitter (receiver/csrc/lines.c) gives split_log_line's records and counts.

The reference is the Python path of receiver.stage.lines_to_records: odd_line on each
line. Corpus logs, a generated log with node= prefixes, and hypothesis-made lines go
through both; records and the blank/comment/bad counts must be equal.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib

from receiver.shipper import RawRecord
from receiver.stage import LineCounters, odd_line

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"
SplitLines = Callable[[list[bytes], Callable[[bytes], RawRecord | None]], list[RawRecord]]


def c_splitter() -> SplitLines:
    """The C split_lines; skipped when not built, unless CI requires it."""
    return native_module("receiver.native_lines").split_lines  # type: ignore[no-any-return]


def both_ways(lines: list[bytes]) -> None:
    """Assert C and Python give the same records and the same counts for ``lines``."""
    split_lines = c_splitter()
    python_counts, c_counts = LineCounters(), LineCounters()
    expected = [record for line in lines if (record := odd_line(line, python_counts)) is not None]
    got = split_lines(lines, lambda line: odd_line(line, c_counts))
    assert got == expected
    for name in LineCounters.__slots__:
        assert getattr(c_counts, name) == getattr(python_counts, name), name


def test_corpus_logs_split_the_same() -> None:
    """Every line of the repository's and the shared corpus' logs splits the same in C and Python."""
    roots = [REPO / "tests" / "corpus", *([SHARED_CORPUS] if SHARED_CORPUS.is_dir() else [])]
    paths = [path for root in roots for suffix in ("*.log", "*.txt") for path in sorted(root.rglob(suffix))]
    lines = [line for path in paths for line in path.read_bytes().splitlines(keepends=True)]
    assert len(lines) > 400
    both_ways(lines)


def test_a_generated_log_with_nodes_splits_the_same(tmp_path: Path) -> None:
    """bench/gen_log.py lines, with and without node= prefixes (repeated and changing), split the same."""
    log = tmp_path / "gen.log"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "3000", "--out", str(log)], check=True)
    lines = log.read_bytes().splitlines(keepends=True)
    nodes = [b"", b"node=web1 ", b"node=web1 ", b"node=db\xff2 ", b"node= "]
    both_ways([nodes[index % len(nodes)] + line for index, line in enumerate(lines)])


_PIECES = st.sampled_from(
    [b"node=", b"h", b" ", b"type=", b"SYSCALL", b"EOE", b"UNKNOWN[", b"]", b"1300", b"99999999999999999999",
     b" msg=", b"msg=", b"audit(1.2:3): ", b"x=1", b"\r", b"\n", b"#", b"\xff", b"\x00", b"\t", b"=", b"syscall"]
)


@settings(max_examples=2000, deadline=None)
@given(lines=st.lists(st.lists(_PIECES, max_size=10).map(b"".join), max_size=8))
def test_any_lines_split_the_same(lines: list[bytes]) -> None:
    """Lines built from the grammar's pieces give the same records and counts in C and Python."""
    both_ways(lines)


def test_lines_that_are_not_bytes_go_to_the_callback() -> None:
    """A list item that is not bytes is the callback's to judge (here it raises TypeError, and so does C)."""
    split_lines = c_splitter()
    with pytest.raises(TypeError, match="rstrip arg"):
        split_lines([b"type=EOE msg=x", "type=EOE msg=x"], lambda line: odd_line(line, LineCounters()))  # type: ignore[list-item]


def test_many_calls_do_not_leak() -> None:
    """100k splits of usual and odd lines leave the process' RSS within 20 MB of where it was."""
    split_lines = c_splitter()
    lines = [b"node=a type=SYSCALL msg=audit(1.2:3): x=1\n", b"type=1300 msg=y\n", b"node=b type=EOE msg=z\n", b"bad\n"]

    counters = LineCounters()
    for _ in range(2000):
        split_lines(lines, lambda line: odd_line(line, counters))
    before = rss_kib()
    for _ in range(100_000):
        split_lines(lines, lambda line: odd_line(line, counters))
    assert rss_kib() - before < 20 * 1024


# -- record_serials ----------------------------------------------------------------------------

_SERIAL_HEADERISH = st.lists(
    st.sampled_from(
        [b"audit(", b"1", b"0", b"9", b"123456789012345678", b"1234567890123456789", b".", b":",
         b")", b": ", b" ", b"\xd9\xa3", b"-", b"+", b"x=1", b"\x00"]
    ),
    max_size=12,
).map(b"".join)


def c_record_serials() -> Callable[..., list[int]]:
    """The C record_serials; skipped when not built, unless CI requires it."""
    return native_module("receiver.native_lines").record_serials  # type: ignore[no-any-return]


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([-5, 0, 1300, 2**70]), _SERIAL_HEADERISH, st.sampled_from(["", "n"])),
        max_size=6,
    )
)
def test_record_serials_are_the_same(records: list[tuple[int, bytes, str]]) -> None:
    """Header-like records (markers, odd digits, serials past 18 digits, huge types) give the
    same serials from C as from the Python reference."""
    from receiver.replaybuffer import _record_serial, python_record_serials

    assert c_record_serials()(records, _record_serial) == python_record_serials(records)


def test_record_serials_of_odd_records_go_to_the_reference() -> None:
    """Lists instead of tuples, str data, and a serial of 19 digits are handed to the slow path."""
    from receiver.replaybuffer import _record_serial, python_record_serials, record_serials

    records = [
        [1300, b"audit(1.2:77): a=1", ""],
        (1300, b"audit(1.2:1234567890123456789): a=1", ""),
        (1300, b"audit(1.2:42): a=1", ""),
    ]
    assert c_record_serials()(records, _record_serial) == [77, 1234567890123456789, 42]
    assert record_serials(records) == python_record_serials(records)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # what the reference raises for data that is not bytes
        c_record_serials()([(1300, "audit(1.2:3): x", "")], _record_serial)


def test_record_serials_many_calls_do_not_leak() -> None:
    """100k calls on good, marker and odd records keep RSS within 20 MB."""
    from receiver.replaybuffer import _record_serial

    serials = c_record_serials()
    records = [(1300, b"audit(1.2:5): x", ""), (-1, b"lost=3", ""), (1300, b"bogus", "")]
    for _ in range(2000):
        serials(records, _record_serial)
    before = rss_kib()
    for _ in range(100_000):
        serials(records, _record_serial)
    assert rss_kib() - before < 20 * 1024
