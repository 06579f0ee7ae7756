"""Time the assembler stage alone (parse, reassemble, interpret, coalesce, ECS doc).

    python bench/assembler.py /tmp/big.log [--lines N] [--profile] [--ship] [--frames]

Lines are split into raw records before the clock starts, as the receiver would;
the timed loop is ``Assembly.push_batch`` / ``maintain`` in batches of 512, in-process.
``--ship`` also packs each batch's events as the stage sends them to a tree keeper with a
jsonl sink (``wire.pack_events_body`` with heads, no raw records): a third of a pipeline
assembler's CPU. ``--frames`` also packs each batch as the receiver ships it (before the clock)
and unpacks it in the loop as the stage's inlet does (``wire.unpack_body``, rows as tuples).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from inspect import signature
from pathlib import Path
from typing import Any

# This file is named like the package it measures: put the repo root in place of bench/.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from assembler.stage import Assembly  # noqa: E402
from auditstream import wire  # noqa: E402
from auditstream.config import Config  # noqa: E402
from auditstream.logline import split_log_line  # noqa: E402
from auditstream.native import load_native  # noqa: E402
from auditstream.stage import keep_freed_heap, tune_gc  # noqa: E402

BATCH = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", help="an audit.log file")
    parser.add_argument("--lines", type=int, default=0, help="use only the first N lines")
    parser.add_argument("--profile", action="store_true", help="run under cProfile, print top 25")
    parser.add_argument("--ship", action="store_true", help="pack the events as the stage does")
    parser.add_argument(
        "--frames", action="store_true", help="unpack records frames as the stage does"
    )
    parser.add_argument(
        "--no-fused",
        action="store_true",
        help="every event the Coalesced way (assembler/csrc/fused_event.h), for comparison",
    )
    args = parser.parse_args()
    if args.no_fused:
        set_fused = load_native("assembler.native_ecs", "_set_fused")
        if set_fused is None:
            raise SystemExit("--no-fused: assembler.native_ecs is not built")
        set_fused(False)
    with open(args.log, "rb") as handle:
        lines = handle.readlines()
    if args.lines:
        lines = lines[: args.lines]
    recs: list[list[Any]] = [list(split_log_line(line)) for line in lines]
    batches: list[Any] = [recs[index : index + BATCH] for index in range(0, len(recs), BATCH)]
    if args.frames:  # as the receiver ships them (rows of [type, data, node])
        batches = [wire.pack_body({"recs": batch, "recv_ns": 0}) for batch in batches]
    # --ship: as the stage (docs written as text) with a jsonl sink (the record count in
    # place of the records)
    assembly = Assembly(Config(), event_time=True, written_docs=args.ship)
    if args.ship:
        assembly.raw_records = False
    tune_gc()  # as the stage runs
    keep_freed_heap()
    events = 0
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    # An older tree's inlet had lists only (a copy of this file times it too).
    as_tuples = {"lists": False} if "lists" in signature(wire.unpack_body).parameters else {}
    for batch in batches:
        if args.frames:  # as the stage's inlet reads a records frame
            batch = wire.unpack_body(batch, **as_tuples)["recs"]
        assembly.push_batch(batch)
        assembly.maintain()
        events += len(assembly.out)
        if args.ship:
            wire.pack_events_body(assembly.out, {}, heads=True)
        assembly.out = []
    assembly.close()
    events += len(assembly.out)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(f"{len(recs)} lines, {events} events in {elapsed:.2f} s")
    print(f"{len(recs) / elapsed:,.0f} lines/s  {events / elapsed:,.0f} events/s")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
