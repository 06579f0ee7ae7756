"""The tree keeper's CPU per event, in one process: decode, dedupe, tree, jsonl.

    python bench/treekeeper_cpu.py --log /tmp/big.log --lines 30000            # CPU time
    python bench/treekeeper_cpu.py --log /tmp/big.log --lines 30000 --callgrind

The frames are those of ``--assemblers`` sharded ``Assembly`` objects (records split by
serial, batches of 512 records, frames interleaved in a fixed order), built once and
kept in ``--frames`` (a pickle of the events, so runs of two trees see the same ones).
Each run packs them with the tree's own ``wire.pack_events_body`` and then times what
the tree keeper does per frame: ``wire.unpack_body`` + ``frames_events`` (decode),
``Dedupe.filter``, ``TreeStep.process`` and ``JsonlSink.write_batch`` (or, with
``--fanout``, a ``FanOut`` with the jsonl sink behind its thread). ``--fanout`` is a worst
case: this loop never waits for input, so the sink thread takes the GIL only at the
switch interval and reads its events cold (~1.6x the CPU). The real stage waits in
zmq_poll between frames and does not pay that (docs/performance.md, twenty-second pass).

Without ``--callgrind``: CPU seconds of that loop (``time.process_time``), best and
median of ``--rounds``. With it: valgrind's callgrind counts the instructions of one
run per stop point (load only, +decode, +dedupe, +tree, +jsonl) and prints the
differences per input event and per line: deterministic, unaffected by other jobs.
``--tree DIR`` runs another checkout's code (e.g. ``git archive HEAD`` unpacked) with
the same frames. The assembler's Python path builds the frames, so they do not depend on
which C code is built; the tree keeper's steps run with the caller's
``AUDITSTREAM_NATIVE`` (C where built; ``=0`` for the Python reference).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STOPS = ("load", "decode", "dedupe", "tree", "jsonl")
RECORDS_PER_BATCH = 512
Event = dict[str, Any]


NATIVE_MODE = "AUDITSTREAM_NATIVE"
_CALLER_MODE = os.environ.get(NATIVE_MODE)  # what the tree keeper's own steps run with


def _use_tree(tree: Path) -> None:
    os.environ[NATIVE_MODE] = "0"  # before anything imports the assembler
    sys.path.insert(0, str(tree))


def _caller_mode_env() -> dict[str, str]:
    """The environment with the caller's AUDITSTREAM_NATIVE (the frames were built without C)."""
    env = dict(os.environ)
    env.pop(NATIVE_MODE, None)
    if _CALLER_MODE is not None:
        env[NATIVE_MODE] = _CALLER_MODE
    return env


def build_frames(log: Path, lines: int, shards: int) -> list[tuple[int, list[Event]]]:
    """(sender, events) of each frame the sharded assemblers ship for the log's first lines."""
    from assembler.stage import Assembly
    from auditstream.config import Config
    from auditstream.logline import split_log_line

    cfg = Config()
    cfg.receiver.source = "file"
    cfg.assembler.instances = shards
    records: list[list[list[Any]]] = [[] for _ in range(shards)]
    with open(log, "rb") as fh:
        for number, line in enumerate(fh):
            if number >= lines:
                break
            type_, data, node = split_log_line(line.rstrip(b"\n"))
            serial = int(data[data.index(b":") + 1 : data.index(b")")])
            records[serial % shards].append([type_, data, node])
    per_shard: list[list[list[Event]]] = []
    for index in range(shards):
        assembly = Assembly(cfg, event_time=True, index=index)
        batches = []
        recs = records[index]
        for start in range(0, len(recs), RECORDS_PER_BATCH):
            assembly.push_batch(recs[start : start + RECORDS_PER_BATCH])
            assembly.maintain()
            batches.append(assembly.out)
            assembly.out = []
        assembly.close()
        batches.append(assembly.out)
        per_shard.append(batches)
    frames: list[tuple[int, list[Event]]] = []
    for round_ in range(max(len(b) for b in per_shard)):
        for index, batches in enumerate(per_shard):
            if round_ < len(batches):
                frames.append((index, batches[round_]))
    return frames


def load_frames(opts: argparse.Namespace) -> list[tuple[int, list[Event]]]:
    """The cached frames, built first if ``--frames`` does not exist yet."""
    path: Path = opts.frames
    if not path.exists():
        frames = build_frames(opts.log, opts.lines, opts.assemblers)
        path.write_bytes(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))
    loaded: list[tuple[int, list[Event]]] = pickle.loads(path.read_bytes())
    return loaded


def run_once(opts: argparse.Namespace, stop: str, out: Path) -> tuple[float, int, int]:
    """Pack the frames, run the per-frame path up to ``stop``; (CPU s of it, events, frames)."""
    os.environ.clear()
    os.environ.update(_caller_mode_env())  # the tree keeper's C (treekeeper/native.py) as asked
    from auditstream import stage, wire
    from auditstream.config import Config
    from sinks.config import FileOutputConfig, SinkConfig
    from sinks.fanout import FanOut
    from sinks.jsonl import JsonlSink
    from treekeeper.dedupe import Dedupe
    from treekeeper.pipeline import TreeStep
    from treekeeper.stage import TransportErrors, frames_events

    frames = load_frames(opts)
    packed = [(sender, wire.pack_events_body(events, {})) for sender, events in frames]
    del frames
    events_in = 0
    cfg = Config()
    cfg.receiver.source = "file"
    cfg.assembler.instances = opts.assemblers
    dedupe = Dedupe.for_config(cfg)
    step = TreeStep(cfg)
    out.unlink(missing_ok=True)
    sink = JsonlSink("out", FileOutputConfig(str(out)))
    fanout = FanOut([sink], [SinkConfig(name="out", type="jsonl")]) if opts.fanout else None
    write = fanout.submit if fanout is not None else sink.write_batch
    errors = TransportErrors()
    # A jsonl sink alone: the stage decodes only the docs' heads (a tree that can, that is).
    heads = {"doc_text": True} if "doc_text" in inspect.signature(frames_events).parameters else {}
    unpack = getattr(wire, "events_body", None)
    level = STOPS.index(stop)
    stage.tune_gc()  # as the stage runs
    if hasattr(stage, "keep_freed_heap"):  # an older tree has none
        stage.keep_freed_heap()
    started = time.process_time()
    if level > 0:
        for sender, raw in packed:
            # docs_json as a frame part of its own (an older tree: inside the body)
            body = unpack(raw.body, raw.docs_json) if unpack else wire.unpack_body(raw.body)
            frame = wire.Frame(wire.EVENTS, sender, 0, body)
            events = frames_events(frame, errors, **heads)
            events_in += len(events)
            if level < 2:
                continue
            events = dedupe.filter(events)
            if level < 3:
                continue
            events = step.process(events, sender, None)
            if level < 4:
                continue
            write(events)
        if level >= 3:
            for sender in range(opts.assemblers):
                tail = step.source_done(sender)
                if level >= 4:
                    write(tail)
            tail = step.close()
            if level >= 4:
                write(tail)
    if fanout is not None:
        fanout.close()
    else:
        sink.close()
    spent = time.process_time() - started
    if errors.frames:
        raise SystemExit(f"{errors.frames} frames had undecodable docs")
    return spent, events_in, len(packed)


def callgrind_instructions(opts: argparse.Namespace, stop: str, workdir: Path) -> int:
    """Instructions valgrind's callgrind counted for one whole run up to ``stop``."""
    out_file = workdir / f"callgrind.{stop}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        str(Path(__file__).resolve()),
        *_worker_args(opts),
        "--stop",
        stop,
        "--out",
        str(workdir / f"out.{stop}.jsonl"),  # runs at once must not share a file
    ]
    # A fixed hash seed: set and dict layouts (dedupe, the tree) are the same run to run.
    env = {**_caller_mode_env(), "PYTHONHASHSEED": "0"}
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    text = out_file.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise SystemExit(f"no instruction total in {out_file}")
    return int(found.group(1))


def _worker_args(opts: argparse.Namespace) -> list[str]:
    args = ["--worker", "--tree", str(opts.tree), "--frames", str(opts.frames)]
    args += ["--log", str(opts.log), "--lines", str(opts.lines)]
    args += ["--assemblers", str(opts.assemblers)]
    return args + (["--fanout"] if opts.fanout else [])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, default=Path("/tmp/big.log"))
    parser.add_argument("--lines", type=int, default=30_000)
    parser.add_argument("--assemblers", type=int, default=2)
    parser.add_argument("--frames", type=Path, help="the frames' cache (built when absent)")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose code runs")
    parser.add_argument("--out", type=Path, help="jsonl written (default: a temporary file)")
    parser.add_argument("--fanout", action="store_true", help="write through a FanOut thread")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--rounds", type=int, default=5, help="CPU-time runs (no callgrind)")
    parser.add_argument("--jobs", type=int, default=1, help="callgrind runs at once")
    parser.add_argument("--stop", choices=STOPS, default="jsonl", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.tree = opts.tree.resolve()
    _use_tree(opts.tree)
    if opts.frames is None:
        opts.frames = Path(tempfile.gettempdir()) / (
            f"treekeeper_cpu-{opts.log.name}-{opts.lines}-{opts.assemblers}.pickle"
        )
    with tempfile.TemporaryDirectory(prefix="treekeeper_cpu-") as workdir:
        if opts.out is None:
            opts.out = Path(workdir) / "out.jsonl"
        if opts.worker:
            run_once(opts, opts.stop, opts.out)
            return
        frames = load_frames(opts)  # built here once, not under valgrind
        events = sum(len(e) for _, e in frames)
        with open(opts.log, "rb") as fh:
            lines = min(opts.lines, sum(1 for _ in fh))
        print(f"tree {opts.tree}: {len(frames)} frames, {events} events, {lines} lines")
        del frames
        if opts.callgrind:
            with concurrent.futures.ThreadPoolExecutor(opts.jobs) as pool:
                runs = {
                    s: pool.submit(callgrind_instructions, opts, s, Path(workdir)) for s in STOPS
                }
                counts = {stop: run.result() for stop, run in runs.items()}
            base = counts["load"]
            previous = base
            for stop in STOPS[1:]:
                part = counts[stop] - previous
                previous = counts[stop]
                print(f"  {stop:7} {part / events / 1000:8.1f}k instructions/event")
            total = counts["jsonl"] - base
            print(
                f"  total   {total / events / 1000:8.1f}k instructions/event, "
                f"{total / lines / 1000:.1f}k per line"
            )
            return
        spent = [run_once(opts, "jsonl", opts.out)[0] for _ in range(opts.rounds)]
        best, median = min(spent), statistics.median(spent)
        print(
            f"  CPU per event: best {best / events * 1e6:.1f} µs, median {median / events * 1e6:.1f}"
            f" µs; per line: best {best / lines * 1e6:.2f} µs, median {median / lines * 1e6:.2f} µs"
        )


if __name__ == "__main__":
    main()
