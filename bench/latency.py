"""Live latency benchmark: receive-to-sink-write latency of `auditstream run` under open() load.

    python bench/latency.py                              # 10k events/s for 5 s
    python bench/latency.py --rate 10000 --seconds 5 --reorder-window-ms 0

Starts `auditstream run` with one rule (`-a always,exit -F arch=b64 -S open,openat
-F exe=<loadgen> -k load`: every event SYSCALL, CWD, PATH, PROCTITLE, EOE) and
`metrics_listen`, runs ../shared/bench/loadgen.c, waits until the jsonl sink has
every event, and prints the latency the tree keeper measured per event: the
receiver's receive time of the batch holding the event's EOE to the sink's
flushed write. Figures come from `/metrics` (histogram over every event: the
share at or below 50 ms is exact, percentiles are bucket bounds) and from
`status-treekeeper.json`, sampled every second during the load (exact p50/p99/max
over the last 10,000 events at each sample). Holds /run/lock/auditstream-kernel.lock;
needs root and a clean kernel; the kernel is put back as found.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compile_packages
from live import build_loadgen, kernel_lock, run_loadgen, start_run, wait_until
from live_helpers import kernel_status  # bench/live puts tests/ on the path

TARGET_S = 0.050


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics as name -> [(labels, value)] (label values here contain no commas)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, label_text = series.partition("{")
        labels = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in label_text.rstrip("}").split(",") if p)
        )
        out.setdefault(name, []).append((labels, float(value)))
    return out


def histogram_summary(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """Count, share <= 50 ms, bucket bounds holding p50/p99 from the latency histogram."""
    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in metrics.get("auditstream_event_latency_seconds_bucket", [])
    )
    total = buckets[-1][1] if buckets else 0.0

    def bound_of(fraction: float) -> float:
        return next((le for le, count in buckets if count >= fraction * total), float("nan"))

    within = next((count for le, count in buckets if le == TARGET_S), 0.0)
    return {
        "events": int(total),
        "share_within_50ms": within / total if total else float("nan"),
        "p50_at_most_s": bound_of(0.50),
        "p99_at_most_s": bound_of(0.99),
    }


def where_events_wait(port: int) -> dict[str, float]:
    """The queue, hop and kernel backlog gauges of one scrape, named shortly."""
    metrics = scrape(port)
    found: dict[str, float] = {}
    for labels, value in metrics.get("auditstream_queue_events", []):
        found[f"{labels['component_id']}:{labels['queue']}"] = value
    for labels, value in metrics.get("auditstream_hop_in_flight", []):
        found[labels["hop"]] = value
    for _, value in metrics.get("auditstream_kernel_backlog", []):
        found["kernel backlog"] = value
    return found


def sample_recent(status_file: Path, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    """Every second: the tree keeper's exact recent-window latency of the (only) sink."""
    while not stop.wait(1.0):
        try:
            latency = json.loads(status_file.read_text())["latency"]
        except (OSError, ValueError, KeyError):
            continue
        for snap in latency.values():
            samples.append(snap["recent"] | {"max_since_start_s": snap["max_s"]})


def bench(
    work: Path, loadgen: Path, rate: int, seconds: float, reorder_ms: int | None, assemblers: int
) -> dict[str, Any]:
    rule = f"-a always,exit -F arch=b64 -S open,openat -F exe={loadgen} -k load"
    rules = work / "load.rules"
    rules.write_text(rule + "\n")
    port = free_port()
    config = work / "c.toml"
    tree = f"[treekeeper]\nreorder_window_ms = {reorder_ms}\n" if reorder_ms is not None else ""
    config.write_text(
        f'[runtime]\ndir = "{work}/run"\nmetrics_listen = "127.0.0.1:{port}"\n'
        f'[receiver]\nrules_files = ["{rules}"]\n[assembler]\ninstances = {assemblers}\n{tree}'
    )
    out = work / "events.jsonl"
    proc = start_run(work, config, out)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(
        target=sample_recent, args=(work / "run" / "status-treekeeper.json", samples, stop)
    )
    try:
        wait_until(
            lambda: kernel_status()["enabled"] == 1 and kernel_status()["pid"] != 0,
            20,
            "the receiver to register",
        )
        lost0 = kernel_status()["lost"]
        sampler.start()
        # Half way through the load: where do events wait? (queues, hops, kernel backlog)
        midway = threading.Timer(seconds / 2, lambda: gauges.update(where_events_wait(port)))
        gauges: dict[str, float] = {}
        midway.start()
        generated = run_loadgen(loadgen, rate, seconds)
        midway.join()

        def load_events_out() -> int:
            return sum(1 for line in out.open("rb") if b'"load"' in line)

        try:
            wait_until(lambda: load_events_out() >= generated, 180, "every load event")
        except RuntimeError:  # report what did arrive: a backlog is the finding, not an error
            print(f"only {load_events_out()} of {generated} load events out after 180 s")
        time.sleep(1.5)  # the tree keeper's status (and /metrics) lag up to a second
        stop.set()
        sampler.join()
        metrics = scrape(port)
        lost = kernel_status()["lost"] - lost0
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    summary = histogram_summary(metrics)
    print("\n  half way through the load: " + ", ".join(f"{k} {v:g}" for k, v in gauges.items()))
    window = "default" if reorder_ms is None else f"{reorder_ms} ms"
    print(
        f"\nrate {rate}/s for {seconds:g} s, {assemblers} assembler(s), reorder_window_ms {window}:"
        f" generated {generated},"
        f" kernel lost {lost}, events observed {summary['events']}"
    )
    print(
        f"  all events (histogram): {100 * summary['share_within_50ms']:.1f} % within 50 ms;"
        f" p50 <= {summary['p50_at_most_s']} s, p99 <= {summary['p99_at_most_s']} s"
    )
    print("  exact, last 10,000 events, at the last three 1 s samples: p50 / p99 / max (s)")
    for s in samples[-3:]:  # the last samples: after the load, the window holds its end
        if s["events"]:
            print(
                f"    {s['p50_s']:.4f} / {s['p99_s']:.4f} / {s['max_s']:.4f}"
                f"   (max since start {s['max_since_start_s']:.4f})"
            )
    last = next((s for s in reversed(samples) if s["events"]), None)
    return {
        "rate": rate,
        "seconds": seconds,
        "generated": generated,
        "kernel_lost": lost,
        "histogram": summary,
        "recent": last,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=10_000, help="open() calls per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--assemblers", type=int, default=1)
    parser.add_argument(
        "--reorder-window-ms",
        type=int,
        action="append",
        help="[treekeeper] reorder_window_ms for a run (repeatable: one run each); default: the config default",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep each run's files under DIR")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    compile_packages()  # the stages start as an installed copy does (bench/bytecode.py)
    results: list[dict[str, Any]] = []
    if os.geteuid() != 0:
        raise SystemExit("needs root (kernel audit)")
    with tempfile.TemporaryDirectory(prefix="auditstream-latency-") as scratch, kernel_lock():
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        loadgen = build_loadgen(Path(tmp))
        for i, reorder_ms in enumerate(args.reorder_window_ms or [None]):
            work = Path(tmp) / f"run-{i}"
            work.mkdir(exist_ok=True)
            results.append(
                bench(work, loadgen, args.rate, args.seconds, reorder_ms, args.assemblers)
            )
    if args.json_out:
        args.json_out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
