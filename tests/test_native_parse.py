"""The C header parser (assembler/csrc/parse.c) gives the Python parse_record's result.

Every line of every log under tests/corpus and the shared conformance corpus, generated
logs, and hypothesis-made headers go through both; records and errors must be equal. The
same for parse_batch (assembler/batch.py): the same runs and unparsed lines.
Also: the loader's AUDITSTREAM_NATIVE switch (assembler/native.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib

from assembler.batch import BatchItem, Unparsed, parse_batch
from assembler.parse import ParseError, Record, parse_record
from auditstream.logline import LineError, split_log_line
from auditstream.native import MODE_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"


def c_parser() -> Callable[[int, bytes, str], Record]:
    """The C parse_record; skipped when not built, unless CI requires it."""
    return native_module("assembler.native_parse").parse_record  # type: ignore[no-any-return]


def c_kernel_parser() -> Callable[[int, bytes, str], Record]:
    """The C parse_kernel_record (parse_record with trailer=False)."""
    return native_module("assembler.native_parse").parse_kernel_record  # type: ignore[no-any-return]


def python_kernel_parse(type_: int, data: bytes, node: str = "") -> Record:
    """The reference for parse_kernel_record."""
    return parse_record(type_, data, node, trailer=False)


def outcome(parser: Callable[[int, bytes, str], Record], type_: int, data: bytes, node: str) -> object:
    """The record, or the ParseError's message."""
    try:
        return parser(type_, data, node)
    except ParseError as err:
        return f"ParseError: {err}"


def log_records() -> list[tuple[int, bytes, str]]:
    """(type, data, node) of every record line of the repository's and the shared corpus' logs."""
    roots = [REPO / "tests" / "corpus", *([SHARED_CORPUS] if SHARED_CORPUS.is_dir() else [])]
    paths = [path for root in roots for suffix in ("*.log", "*.txt") for path in sorted(root.rglob(suffix))]
    records = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            try:
                records.append(split_log_line(line))
            except LineError:
                continue
    return records


def test_every_corpus_record_parses_the_same() -> None:
    """Each record line of the corpus logs gives the same Record (or error) from C and Python."""
    cparse = c_parser()
    records = log_records()
    assert len(records) > 400, "the corpus logs were not found"
    for type_, data, node in records:
        assert outcome(cparse, type_, data, node) == outcome(parse_record, type_, data, node), data


def test_generated_log_parses_the_same(tmp_path: Path) -> None:
    """An ENRICHED bench/gen_log.py log (0x1d trailers) parses the same in C and Python."""
    cparse = c_parser()
    log = tmp_path / "gen.log"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "3000", "--out", str(log), "--enriched"],
        check=True,
    )
    lines = log.read_bytes().splitlines()
    assert any(b"\x1d" in line for line in lines)
    ckernel = c_kernel_parser()
    for line in lines:
        type_, data, node = split_log_line(line)
        assert outcome(cparse, type_, data, node) == outcome(parse_record, type_, data, node)
        kernel = outcome(ckernel, type_, data, node)
        assert kernel == outcome(python_kernel_parse, type_, data, node)
        if b"\x1d" in data:  # the trailer stays in the body
            assert isinstance(kernel, Record) and kernel.enriched == b"" and b"\x1d" in kernel.body


_HEADERISH = st.lists(
    st.sampled_from(
        [b"audit(", b"1", b"0", b"9", b"12345678901234567", b"4294967295", b"4294967296", b".", b":",
         b")", b": ", b" ", b"\t", b"\n", b"\x0b", b"\x1d", b"\xff", b"-", b"+", b"x=1", b"\x00"]
    ),
    max_size=14,
).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(prefix=_HEADERISH, rest=st.binary(max_size=40), node=st.sampled_from(["", "host", "h\x00st"]))
def test_any_header_parses_the_same(prefix: bytes, rest: bytes, node: str) -> None:
    """Header-like byte strings give the same Record or the same error from C and Python."""
    cparse = c_parser()
    data = prefix + rest
    assert outcome(cparse, 1300, data, node) == outcome(parse_record, 1300, data, node)
    assert outcome(c_kernel_parser(), 1300, data, node) == outcome(python_kernel_parse, 1300, data, node)


def test_node_defaults_to_empty_and_wrong_types_go_to_python() -> None:
    """A call without node, and data that is not bytes, behave as the Python function."""
    cparse = c_parser()
    assert cparse(1300, b"audit(1.002:3): a=1") == parse_record(1300, b"audit(1.002:3): a=1")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        cparse(1300, "audit(1.002:3): a=1", "")  # type: ignore[arg-type]


def test_many_calls_do_not_leak() -> None:
    """210k parses (both functions) of good and bad records leave the process' RSS within 20 MB of where it was."""
    cparse = c_parser()
    samples = [b"audit(1790000000.001:1001): a=1 b=2", b"audit(1.2:3): x \x1d UID=root", b"bogus"]

    ckernel = c_kernel_parser()  # its fallback passes trailer=False as a keyword
    for _ in range(2000):  # warm up allocator pools
        for data in samples:
            outcome(cparse, 1300, data, "n")
            outcome(ckernel, 1300, data, "n")
    before = rss_kib()
    for _ in range(35_000):
        for data in samples:
            outcome(cparse, 1300, data, "n")
            outcome(ckernel, 1300, data, "n")
    assert rss_kib() - before < 20 * 1024


def test_the_switch_chooses_python_c_or_a_clear_failure() -> None:
    """AUDITSTREAM_NATIVE=0 gives the Python batch parser; =1 with a module missing names the module."""
    code = (
        "from assembler import batch, native\n"
        "from auditstream.native import NativeUnavailable, load_native\n"
        "print(native.parse_batch_function() is batch.parse_batch)\n"
        "try:\n"
        "    load_native('assembler.native_missing_module', 'f')\n"
        "except NativeUnavailable as err:\n"
        "    print('unavailable:', err)\n"
    )
    env = {**os.environ, MODE_ENV: "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.splitlines()[0] == "True"
    env[MODE_ENV] = "1"
    required = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "unavailable: AUDITSTREAM_NATIVE=1 but assembler.native_missing_module.f" in required.stdout


def c_parse_batch() -> Callable[..., list[BatchItem]]:
    """The C parse_batch; skipped when not built, unless CI requires it."""
    return native_module("assembler.native_parse").parse_batch  # type: ignore[no-any-return]


def as_comparable(items: list[BatchItem]) -> list[object]:
    """Runs as lists of Records and Unparsed lines as plain tuples (C and Python items compare equal)."""
    return [list(item) if type(item) is list else tuple(item) for item in items]


def test_batches_cut_the_same_in_c_and_python() -> None:
    """The corpus records with markers, bad headers and odd types mixed in: same runs and lines from C and Python."""
    cbatch = c_parse_batch()
    rows: list[list[object]] = [list(record) for record in log_records()]
    odd = [[0, b"not a record", ""], [-3, b"lost=5", ""], [1300, b"bogus", "n"], [1320, b"audit(1.2:3): ", ""],
           [10**30, b"audit(1.2:3): x=1", ""], [1006, b"audit(1.2:3): x=1", ""], [2000, b"audit(1.2:3): x", ""]]  # fmt: skip
    for index, extra in enumerate(odd):
        rows.insert(index * 97 % len(rows), extra)
    for trailer in (True, False):
        for start in range(0, len(rows), 512):
            batch = rows[start : start + 512]
            got, expected = cbatch(batch, trailer), parse_batch(batch, trailer)
            assert as_comparable(got) == as_comparable(expected)
            for item in got:
                assert type(item) is list or type(item) is Unparsed
    assert any(len(item) > 1 for item in parse_batch(rows) if type(item) is list)


_DATA = [b"audit(5.001:7): a=1", b"audit(5.001:8): b", b"audit(5.1001:7): c", b" audit(5.001:7): \x1d X=1",
         b"audit(5.001:99999999999): x", b"audit(x)", b"", b"audit(6.000:7): d"]  # fmt: skip
_ROW = st.tuples(
    st.sampled_from([1300, 1302, 1307, 1320, 1006, 2000, 1100, 0, -1, 2**70]),
    st.sampled_from(_DATA),
    st.sampled_from(["", "n", "h\x00"]),
).map(list)


@settings(max_examples=2000, deadline=None)
@given(rows=st.lists(_ROW, max_size=30), trailer=st.booleans())
def test_any_batch_cuts_the_same(rows: list[list[object]], trailer: bool) -> None:
    """Any mix of records, repeats, markers and bad headers: C and Python give the same items."""
    assert as_comparable(c_parse_batch()(rows, trailer)) == as_comparable(parse_batch(rows, trailer))


def test_records_of_an_event_share_their_key_numbers() -> None:
    """The records of one event get the same serial, sec and msec objects; the next event gets its own values."""
    rows = [[1300, b"audit(1795507714.087:2061954): a=1", ""], [1307, b"audit(1795507714.087:2061954): cwd=/", ""],
            [1320, b"audit(1795507714.087:2061954): ", ""], [1300, b"audit(1795507714.912:2061955): a=2", ""],
            [1300, b"audit(1795507715.312:2061956): a=3", ""]]  # fmt: skip
    runs = c_parse_batch()(rows, True)
    first, second, third = runs[0], runs[1][0], runs[2][0]
    assert [r.serial for r in first] == [2061954] * 3 and first[0].serial is first[2].serial
    assert first[0].sec is first[1].sec and first[0].msec is first[1].msec
    assert (second.sec, second.msec, second.serial) == (1795507714, 912, 2061955)
    assert (third.sec, third.msec, third.serial) == (1795507715, 312, 2061956)
    assert as_comparable(runs) == as_comparable(parse_batch(rows, True))


def test_records_of_a_type_share_their_type_number() -> None:
    """Records of one type get one type integer, across batches, though each row brings its own (as msgpack's do)."""
    def rows(serial: int) -> list[list[Any]]:
        return [[int("1300"), b"audit(1.002:%d): a=1" % serial, ""], [int("1307"), b"audit(1.002:%d): cwd=/" % serial, ""],
                [int("1320"), b"audit(1.002:%d): " % serial, ""], [int("1300"), b"audit(1.002:%d): a=2" % (serial + 1), ""],
                [int("5000"), b"audit(1.002:%d): x=1" % (serial + 2), ""]]  # fmt: skip
    first, second = rows(10), rows(20)
    assert first[0][0] is not first[3][0] and first[0][0] is not second[0][0]
    runs = c_parse_batch()(first, True) + c_parse_batch()(second, True)
    syscalls = [run[0] for run in runs if run[0].type == 1300]
    assert len(syscalls) == 4 and all(rec.type is syscalls[0].type for rec in syscalls)
    assert runs[0][1].type == 1307 and runs[0][1].type is runs[3][1].type
    assert runs[2][0].type is first[4][0]  # beyond the shared range: the row's own integer
    assert as_comparable(c_parse_batch()(second, True)) == as_comparable(parse_batch(second, True))


def test_rows_c_does_not_read_go_to_python() -> None:
    """A batch with a row that is not a list or tuple of three, or a type that is not an int, behaves as in Python."""
    cbatch = c_parse_batch()
    good = [1300, b"audit(1.002:3): a=1", ""]
    batches: list[list[Any]] = [[good, (1320, b"audit(1.002:3): ", "")], [good, [True, b"audit(1.002:3): x", ""]]]
    for batch in batches:
        assert as_comparable(cbatch(batch)) == as_comparable(parse_batch(batch))
    bad_batches: list[list[Any]] = [[good, [1300, b"x"]], [good, 5]]
    for bad in bad_batches:
        with pytest.raises((ValueError, TypeError)) as from_c:
            cbatch(bad)
        with pytest.raises(from_c.type):
            parse_batch(bad)


def test_batches_do_not_leak() -> None:
    """20k batches of runs, markers and header errors leave the process' RSS within 20 MB of where it was."""
    cbatch = c_parse_batch()
    batch = [[1300, b"audit(1.002:3): a=1", ""], [1307, b"audit(1.002:3): cwd=/", ""], [1320, b"audit(1.002:3): ", ""],
             [0, b"junk", ""], [1300, b"bogus", ""], [1100, b"audit(1.002:4): x", ""]]  # fmt: skip
    for _ in range(2000):
        cbatch(batch, True)
    before = rss_kib()
    for _ in range(20_000):
        cbatch(batch, True)
        cbatch(batch, False)
    assert rss_kib() - before < 20 * 1024
