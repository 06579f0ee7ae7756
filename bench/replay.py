"""Replay benchmark: the whole pipeline, each stage alone, and the peers, on one log in one run.

    python bench/replay.py                     # generates a 300k-line exec-heavy log
    python bench/replay.py --log /var/log/audit/audit.log --assemblers 2

Prints lines/s for each and the ratio to Debian's laurel (and ausearch -i) measured
on the same input in the same run. Machines here are noisy: read the ratios. The
pipeline runs twice: with the C event building where built, and without it.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
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
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def laurel(log: Path, tmp: Path) -> float | None:
    if shutil.which("laurel") is None:
        return None
    work = tmp / "laurel"
    work.mkdir()
    with open(log, "rb") as fh:
        start = time.perf_counter()
        subprocess.run(["laurel"], stdin=fh, cwd=work, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


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
    parser.add_argument("--assemblers", type=int, default=1)
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
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
        rows: list[tuple[str, float | None]] = []
        rows.append(
            (
                f"auditstream replay, 3 processes, {args.assemblers} assembler(s)",
                pipeline(log, tmp, args.assemblers),
            )
        )
        rows.append(
            (
                "  the same with AUDITSTREAM_NATIVE=0 (no C code)",
                pipeline(log, tmp, args.assemblers, "0"),
            )
        )
        # The fixed cost in the row above: the processes' start and the end of the stream.
        head = tmp / "head.log"
        with open(log, "rb") as src:
            head.write_bytes(b"".join(itertools.islice(src, 20)))
        fixed = min(pipeline(head, tmp, args.assemblers) for _ in range(3))
        if not args.no_stages:
            rows += list(stage_timings(log, tmp).items())
        rows.append(("laurel (Debian) on the same log", laurel(log, tmp)))
        rows.append(("ausearch -i on the same log", ausearch(log)))
        base = rows[-2][1]
        print(
            f"log: {log if args.log else 'generated by bench/gen_log.py'}, {lines} lines, {os.cpu_count()} cores"
        )
        print(f"{'what':56} {'seconds':>8} {'lines/s':>10} {'vs laurel':>10}")
        for name, secs in rows:
            if secs is None:
                print(f"{name:56} {'not installed':>30}")
                continue
            ratio = f"{base / secs:.2f}x" if base else "-"
            print(f"{name:56} {secs:8.2f} {lines / secs:10.0f} {ratio:>10}")
        print(f"start-up and end of the pipeline (its first 20 lines, best of 3): {fixed:.2f} s")
        if args.json_out:
            table = [{"what": name, "seconds": secs} for name, secs in rows]
            out = {"lines": lines, "rows": table, "fixed_seconds": fixed}
            args.json_out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
