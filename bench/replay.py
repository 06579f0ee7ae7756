"""Replay benchmark: the whole pipeline, each stage alone, and the peers, on one log in one run.

    python bench/replay.py                     # generates a 300k-line exec-heavy log
    python bench/replay.py --log /var/log/audit/audit.log --assemblers 1,2

Prints lines/s for each and the ratio to Debian's laurel (and ausearch -i) measured
on the same input in the same run. Machines here are noisy: read the ratios. The
pipeline, laurel and ausearch run ``--rounds`` times each, alternated (ours, laurel,
ausearch, ours, ...), and each row is the median of its rounds, with their range: one run
of ~1.5 s swung by ±20 % here (session 34: 1.07x, 1.52x and 1.23x laurel in three runs in
a row). ``--assemblers 1,2`` runs the pipeline with each number of assemblers in every
round, so that the configurations are compared in the same run too. The pipeline without C
code (AUDITSTREAM_NATIVE=0) and the start-up figure run once, with the first number.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bytecode import compile_packages  # noqa: E402  (bench/ is on the path)

from assembler.stage import Assembly  # noqa: E402
from auditstream.config import Config  # noqa: E402
from auditstream.stage import GC_THRESHOLD_ALLOCATIONS, keep_freed_heap  # noqa: E402
from receiver.logsource import LogSource  # noqa: E402
from receiver.stage import LineCounters, lines_to_records  # noqa: E402
from sinks import build_sink, parse_sink_arg  # noqa: E402
from treekeeper.pipeline import TreeStep  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def assembler_counts(text: str) -> list[int]:
    """``--assemblers``: "1" or "1,2" (each number of assembler processes to run)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"numbers of assemblers are 1 or more: {text!r}")
    return counts


def median_of(times: list[float | None]) -> float | None:
    """The median of the rounds that ran (None where the tool is not installed)."""
    ran = [t for t in times if t is not None]
    return statistics.median(ran) if ran else None


def spread_of(times: list[float | None]) -> str:
    """The rounds' range, "[min-max s]", or "" for a single run."""
    ran = [t for t in times if t is not None]
    return f"[{min(ran):.2f}-{max(ran):.2f} s]" if len(ran) > 1 else ""


def stage_timings(log: Path, tmp: Path) -> dict[str, float]:
    """Each stage's own work in this process, without ZeroMQ: seconds for the whole log."""
    gc.freeze()  # the same collector settings as the stage processes (auditstream/stage.py)
    gc.set_threshold(GC_THRESHOLD_ALLOCATIONS, 50, 100)
    keep_freed_heap()  # as the stages do
    cfg = Config()
    cfg.receiver.source = "file"
    counters = LineCounters()
    batches: list[list[tuple[int, bytes, str]]] = []
    out: dict[str, float] = {}
    out["receiver (split lines)"] = timed(
        lambda: batches.extend(
            lines_to_records(c, counters) for c in LogSource([str(log)]).chunks()
        )
    )
    assembly = Assembly(cfg, event_time=True)
    events: list[dict] = []

    def assemble() -> None:
        for batch in batches:
            for i in range(0, len(batch), 512):
                assembly.push_batch([list(r) for r in batch[i : i + 512]])
                assembly.maintain()
                events.extend(assembly.out)
                assembly.out = []
        assembly.close()
        events.extend(assembly.out)

    out["assembler (parse, group, interpret, ECS)"] = timed(assemble)
    step = TreeStep(cfg)
    enriched: list[dict] = []
    out["treekeeper (tree, enrich)"] = timed(
        lambda: [
            enriched.extend(step.process(events[i : i + 256])) for i in range(0, len(events), 256)
        ]
    )
    sink = build_sink(parse_sink_arg(f"jsonl:{tmp / 'stage.jsonl'}"))

    def write() -> None:
        for i in range(0, len(enriched), 256):
            sink.write_batch(enriched[i : i + 256])
        sink.close()

    out["jsonl sink (encode, write)"] = timed(write)
    return out


def pipeline(log: Path, tmp: Path, assemblers: int, native_mode: str | None = None) -> float:
    """Seconds of `auditstream replay`; ``native_mode`` sets AUDITSTREAM_NATIVE (None: as is)."""
    env = dict(os.environ)
    if native_mode is not None:
        env["AUDITSTREAM_NATIVE"] = native_mode
    cmd = [
        sys.executable,
        "-m",
        "auditstream",
        "replay",
        str(log),
        "--sink",
        f"jsonl:{tmp / 'out.jsonl'}",
        "--assemblers",
        str(assemblers),
    ]
    (tmp / "out.jsonl").unlink(missing_ok=True)  # each round writes a file of its own
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def laurel(log: Path, tmp: Path) -> float | None:
    if shutil.which("laurel") is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="laurel-", dir=tmp))  # laurel writes into its cwd
    with open(log, "rb") as fh:
        start = time.perf_counter()
        subprocess.run(["laurel"], stdin=fh, cwd=work, check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    shutil.rmtree(work)  # as our output goes before each round: neither side keeps its runs'
    return seconds


def ausearch(log: Path) -> float | None:
    if shutil.which("ausearch") is None:
        return None
    start = time.perf_counter()
    subprocess.run(
        ["ausearch", "-if", str(log), "-i"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, help="audit.log to replay (default: generate one)")
    parser.add_argument("--lines", type=int, default=300_000, help="lines to generate")
    parser.add_argument(
        "--assemblers",
        type=assembler_counts,
        default=[1],
        help="assembler processes, or several to compare in the same rounds: 1,2",
    )
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternated runs of ours and the peers (median)"
    )
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    compile_packages()  # the stages start as an installed copy does (bench/bytecode.py)
    with tempfile.TemporaryDirectory(prefix="auditstream-bench-") as tmpdir:
        tmp = Path(tmpdir)
        log = args.log
        if log is None:
            log = tmp / "exec-heavy.log"
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "bench" / "gen_log.py"),
                    "--lines",
                    str(args.lines),
                    "--out",
                    str(log),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        with open(log, "rb") as fh:
            lines = sum(1 for _ in fh)
        ours = {n: f"auditstream replay, 3 processes, {n} assembler(s)" for n in args.assemblers}
        laurel_name, ausearch_name = (
            "laurel (Debian) on the same log",
            "ausearch -i on the same log",
        )
        runs: dict[str, list[float | None]] = {name: [] for name in ours.values()}
        runs[laurel_name], runs[ausearch_name] = [], []
        for _ in range(max(1, args.rounds)):  # alternated: a slow spell hits both sides
            for count, name in ours.items():
                runs[name].append(pipeline(log, tmp, count))
            runs[laurel_name].append(laurel(log, tmp))
            runs[ausearch_name].append(ausearch(log))
        rows: list[tuple[str, float | None]] = [
            (name, median_of(runs[name])) for name in ours.values()
        ]
        first = args.assemblers[0]
        no_c = f"  {first} assembler(s) with AUDITSTREAM_NATIVE=0 (no C code)"
        rows.append((no_c, pipeline(log, tmp, first, "0")))
        runs[no_c] = [rows[-1][1]]
        # The fixed cost in the row above: the processes' start and the end of the stream.
        head = tmp / "head.log"
        with open(log, "rb") as src:
            head.write_bytes(b"".join(itertools.islice(src, 20)))
        fixed = min(pipeline(head, tmp, first) for _ in range(3))
        if not args.no_stages:
            rows += list(stage_timings(log, tmp).items())
        rows.append((laurel_name, median_of(runs[laurel_name])))
        rows.append((ausearch_name, median_of(runs[ausearch_name])))
        base = rows[-2][1]
        print(
            f"log: {log if args.log else 'generated by bench/gen_log.py'}, {lines} lines, {os.cpu_count()} cores"
        )
        print(f"medians of {max(1, args.rounds)} alternated rounds (range in brackets)")
        print(f"{'what':56} {'seconds':>8} {'lines/s':>10} {'vs laurel':>10}  rounds")
        for name, secs in rows:
            if secs is None:
                print(f"{name:56} {'not installed':>30}")
                continue
            ratio = f"{base / secs:.2f}x" if base else "-"
            spread = spread_of(runs.get(name, []))
            print(f"{name:56} {secs:8.2f} {lines / secs:10.0f} {ratio:>10}  {spread}")
        print(
            f"start-up and end of the pipeline ({first} assembler(s), its first 20 lines, best "
            f"of 3): {fixed:.2f} s"
        )
        if args.json_out:
            table = [
                {"what": name, "seconds": secs, "rounds": runs.get(name, [secs])}
                for name, secs in rows
            ]
            out = {"lines": lines, "rows": table, "fixed_seconds": fixed}
            args.json_out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
