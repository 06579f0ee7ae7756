"""The benchmark tables' arithmetic: medians of alternated replay rounds, the live CPU budget."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _bench_module(name: str) -> ModuleType:
    """bench/NAME.py as a module (bench/ is no package; its scripts import each other)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "bench" / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def _live_result(reader: str, rate: int, **extra: Any) -> dict[str, Any]:
    cpu = {"receiver": 1.0, "assembler": 2.0, "treekeeper": 1.5} if reader == "auditstream" else {}
    return {
        "reader": reader,
        "rate": rate,
        "generated": rate * 5,
        "events_out": rate * 5,
        "kernel_lost": 0,
        "kernel_waited": 0,
        "cpu_s": cpu or {"auditd": 3.0},
        **extra,
    }


def test_replay_rows_are_medians_of_the_rounds_that_ran() -> None:
    """A row is the median of its rounds, a tool that is not installed has none."""
    replay = _bench_module("replay")
    assert replay.median_of([1.4, None, 1.1, 1.9]) == 1.4
    assert replay.median_of([1.0, 2.0]) == 1.5
    assert replay.median_of([None, None]) is None
    assert replay.spread_of([1.37, 1.61, 1.5]) == "[1.37-1.61 s]"
    assert replay.spread_of([1.5]) == ""


def test_live_budget_row_adds_the_loads_cpu_to_the_readers() -> None:
    """The top rate's row gives the load's, kauditd's and the reader's CPU (its stages summed)."""
    bench_all = _bench_module("all")
    results = [
        _live_result("auditstream", 10_000, load_cpu_s=0.7, kauditd_cpu_s=0.01),
        _live_result("auditd", 10_000, load_cpu_s=0.6, kauditd_cpu_s=0.01),
        _live_result("auditstream", 50_000, load_cpu_s=3.25, kauditd_cpu_s=0.125),
        _live_result("auditd", 50_000),  # an older result without the load's CPU
    ]
    rows = bench_all.live_rows(results, 5.0)
    budget = [row for row in rows if "CPU s of load" in row[0]]
    cores = os.cpu_count()
    assert budget == [
        (
            f"live 50,000/s: CPU s of load + kauditd + reader (5 s load and 1 s after; {cores} cores)",
            "3.25 + 0.12 + 4.50",
            "-",
            "-",
            "-",
        )
    ]


def test_replay_rows_name_each_assembler_count_against_the_same_laurel() -> None:
    """Each number of assemblers replayed gets its own rows, each against the same peers."""
    bench_all = _bench_module("all")
    data = {
        "lines": 300_000,
        "rows": [
            {"what": "auditstream replay, 3 processes, 1 assembler(s)", "seconds": 1.0},
            {"what": "auditstream replay, 3 processes, 2 assembler(s)", "seconds": 1.25},
            {"what": "  1 assembler(s) with AUDITSTREAM_NATIVE=0 (no C code)", "seconds": 4.5},
            {"what": "laurel (Debian) on the same log", "seconds": 1.5},
            {"what": "ausearch -i on the same log", "seconds": 3.0},
        ],
    }
    rows = bench_all.replay_rows(data)
    assert rows == [
        ("replay lines/s vs laurel (1 assembler(s))", "300,000", "200,000", "1.50x", "met"),
        ("replay lines/s vs ausearch -i (1 assembler(s))", "300,000", "100,000", "3.00x", "-"),
        ("replay lines/s vs laurel (2 assembler(s))", "240,000", "200,000", "1.20x", "not met (>= 1.5x)"),
        ("replay lines/s vs ausearch -i (2 assembler(s))", "240,000", "100,000", "2.40x", "-"),
    ]


def test_replay_takes_a_list_of_assembler_counts() -> None:
    """``--assemblers 1,2`` compares both; a count below one or a word is refused."""
    replay = _bench_module("replay")
    assert replay.assembler_counts("1,2") == [1, 2]
    assert replay.assembler_counts("2") == [2]
    for bad in ("0", "1,x", ""):
        try:
            replay.assembler_counts(bad)
        except replay.argparse.ArgumentTypeError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_cpu_rows_compare_per_event_delivered_where_a_reader_lost_records() -> None:
    """Lossless at a rate, CPU is per 1k events of the load; where auditd lost records (and
    so did less work), the row gives both and the verdict compares per event delivered."""
    bench_all = _bench_module("all")
    results = [
        _live_result("auditstream", 1_000, cpu_s={"receiver": 0.5}),
        _live_result("auditd", 1_000, cpu_s={"auditd": 0.25}),
        _live_result("auditstream", 50_000),
        _live_result("auditd", 50_000, events_out=125_000, kernel_lost=600_000),
    ]
    rows = [row for row in bench_all.live_rows(results, 5.0) if "CPU s per 1k" in row[0]]
    assert rows == [
        ("live 1,000/s: CPU s per 1k events", "0.100", "0.050", "2.00x", "not met (<= auditd)"),
        (
            "live 50,000/s: CPU s per 1k events of the load / delivered",
            "0.018 / 0.018",
            "0.012 / 0.024",
            "1.50x / 0.75x",
            "met per event delivered; auditd lost 600,000 records (125,000 of 250,000 events out)",
        ),
    ]
