"""The long fuzz run of issue #7 (not part of the test suite; results in docs/fuzz.md).

Makes hostile records — seeded random mutations of the real corpus records
(tests/corpus, ../shared/corpus) and generated events with attacker-chosen text
(tests/hostile_audit.py) — and pushes them, in chunks, through the real in-process path:
parse -> reassembler -> event_from_records (the assembler stage's ``Assembly``) -> the
tree keeper's step (one process table for the whole run) -> the jsonl and raw ``file``
sinks (real files) and the Kafka sink's message encoding. After every chunk it checks the
invariants of tests/hostile_audit.py (every record out once, every JSON line valid and
equal to its doc, exact round trips, one raw line per record, nothing forged). An
exception, an event that fails to interpret, or a chunk slower than --hang-seconds is a
crash; the chunk is saved under bench/out/ to reproduce it. Optionally a slice goes
through the real ``auditstream replay`` processes too (same hang limit).

    python bench/fuzz.py --records 1000000 --seed 7 --replay-records 50000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hostile_audit import (  # noqa: E402
    FORGED_LOGIN,
    HOSTILE_PIECES,
    PlannedEvent,
    RawRecord,
    assemble,
    check_kafka,
    check_outputs,
    exec_event,
    garbage_record,
    interpret_crashes,
    kafka_encoder,
    kernel_quote,
    log_text,
    user_event,
    wide_event,
    write_sinks,
)

from assembler.ecs import MARKER_TAG  # noqa: E402
from auditstream.config import Config  # noqa: E402
from auditstream.logline import LineError, split_log_line  # noqa: E402
from sinks.rawfile import MAX_LINE_BYTES  # noqa: E402
from treekeeper.pipeline import TreeStep  # noqa: E402

CORPUS_DIRS = (REPO / "tests" / "corpus", REPO.parent / "shared" / "corpus")
OUT_DIR = REPO / "bench" / "out"
# A value position: after '=', inside quotes, or at a record's end.
_VALUE_START = re.compile(rb"=|\"|'|$")


def corpus_records() -> list[RawRecord]:
    """Every record line of the corpus logs, split as the receiver splits them."""
    records: list[RawRecord] = []
    for directory in CORPUS_DIRS:
        for path in sorted(directory.rglob("*")):
            if path.suffix not in (".log", ".txt") or not path.is_file():
                continue
            if "golden" in path.name or path.name.upper().startswith(("README", "LICENSE")):
                continue
            for line in path.read_bytes().splitlines():
                try:
                    records.append(split_log_line(line))
                except LineError:
                    continue
    return records


@dataclass
class Mutator:
    """Seeded hostile records: mutated corpus records and generated events."""

    rng: random.Random
    corpus: list[RawRecord]
    used: Counter[str] = field(default_factory=Counter)

    def hostile(self, pieces: int = 6) -> bytes:
        out = []
        for _ in range(self.rng.randrange(pieces + 1)):
            if self.rng.random() < 0.6:
                out.append(self.rng.choice(HOSTILE_PIECES))
            else:
                out.append(self.rng.randbytes(self.rng.randrange(1, 6)))
        return b"".join(out)

    def node(self) -> str:
        if self.rng.random() < 0.9:
            return ""
        raw = self.hostile(3).replace(b" ", b"").replace(b"\n", b"")
        return raw.decode("utf-8", "replace")  # as the receiver decodes node=

    def _insert_at_value(self, data: bytes, piece: bytes) -> bytes:
        starts = [m.end() for m in _VALUE_START.finditer(data)]
        at = self.rng.choice(starts) if starts else len(data)
        return data[:at] + piece + data[at:]

    def mutate(self, record: RawRecord) -> RawRecord:
        """One random mutation of a corpus record (named in ``used``)."""
        number, data, node = record
        rng = self.rng
        kind = rng.choice(MUTATIONS)
        if rng.random() > _RARE.get(kind, 1.0):
            kind = "insert"
        self.used[kind] += 1
        if kind == "flip" and data:
            at = rng.randrange(len(data))
            data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        elif kind == "insert":
            data = self._insert_at_value(data, self.hostile())
        elif kind == "replace_value":
            tokens = data.split(b" ")
            if len(tokens) > 1:
                at = rng.randrange(1, len(tokens))
                key = tokens[at].split(b"=", 1)[0]
                value = self.hostile()
                raw = value if rng.random() < 0.3 else kernel_quote(value)
                tokens[at] = key + b"=" + raw
                data = b" ".join(tokens)
        elif kind == "truncate" and data:
            data = data[: rng.randrange(len(data))]
        elif kind == "splice":
            other = rng.choice(self.corpus)[1]
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
        elif kind == "header":
            serial = rng.choice((0, 1, 2**32 - 1, 2**32, rng.randrange(2**32), 4242))
            data = re.sub(rb":\d+\)", b":%d)" % serial, data, count=1)
        elif kind == "grow":
            size = rng.choice((MAX_LINE_BYTES - 30, MAX_LINE_BYTES + 1, 20_000, 65_536))
            data = self._insert_at_value(data, (self.hostile() + FORGED_LOGIN) * (size // 100 + 1))
        elif kind == "many_fields":
            count = rng.choice((100, 1000, 10_000))
            data += b" " + b" ".join(b"k%d=%s" % (i, self.hostile(1)) for i in range(count))
        elif kind == "type":
            number = rng.choice((0, 1, 1100, 1300, 1309, 1320, 1327, 2000, 2100, 99_999))
            if number == 0:  # the receiver sends a line it cannot split as type 0
                data = b"type=" + self.hostile() + b" msg=" + data
        elif kind == "node":
            node = self.node()
        elif kind == "enriched":
            data = self._insert_at_value(data, b"\x1d" + self.hostile())
        return number, data, node

    def event(self, serial: int) -> PlannedEvent:
        """A generated event with hostile text everywhere an attacker can reach."""
        rng = self.rng
        kind = rng.choice(("exec", "exec", "user", "wide"))
        self.used[f"event_{kind}"] += 1
        node = self.node()
        if kind == "exec":
            return exec_event(
                serial,
                comm=self.hostile(2),
                exe=self.hostile(),
                cwd=self.hostile(),
                path=self.hostile(),
                argv=[
                    self.hostile() * (2000 if rng.random() < 0.01 else rng.choice((1, 1, 1, 50)))
                    for _ in range(rng.randrange(1, 5))
                ],
                title=self.hostile(),
                node=node,
                chunk=rng.choice((3, 100, 7000)),
            )
        if kind == "user":
            return user_event(serial, self.hostile(10), rng.choice((1123, 1112, 1100)), node)
        return wide_event(
            serial, rng.choice((5, 50, 10_000) if rng.random() < 0.01 else (5, 50)), node
        )


MUTATIONS = (
    "none",
    "flip",
    "insert",
    "insert",
    "replace_value",
    "replace_value",
    "truncate",
    "splice",
    "header",
    "grow",
    "many_fields",
    "type",
    "node",
    "enriched",
)
# grow and many_fields make big records: keep them rare so a run stays minutes long.
_RARE = {"grow": 0.05, "many_fields": 0.05}


def make_chunk(
    mutator: Mutator, size: int, first_serial: int
) -> tuple[list[RawRecord], list[PlannedEvent]]:
    """About ``size`` records: mutated corpus runs and whole generated events, mixed."""
    rng = mutator.rng
    records: list[RawRecord] = []
    plans: list[PlannedEvent] = []
    serial = first_serial
    while len(records) < size:
        if rng.random() < 0.3:
            plan = mutator.event(serial)
            serial += 1
            plans.append(plan)
            records += plan.records
            continue
        start = rng.randrange(len(mutator.corpus))
        for record in mutator.corpus[start : start + rng.randrange(1, 12)]:
            records.append(mutator.mutate(record) if rng.random() < 0.7 else record)
        if rng.random() < 0.02:
            records.append(garbage_record(mutator.hostile()))
    return records, plans


@dataclass
class Totals:
    records: int = 0
    record_bytes: int = 0
    largest_record: int = 0
    chunks: int = 0
    events: int = 0
    lifecycle_events: int = 0
    markers: Counter[str] = field(default_factory=Counter)
    parse_errors: int = 0
    refused_events: int = 0  # CoalesceError: records that do not form an event (lone EOE)
    crashes: int = 0
    violations: int = 0
    planned_events: int = 0
    sink_errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


def save_chunk(seed: int, chunk: int, records: list[RawRecord], why: str) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"fuzz-seed{seed}-chunk{chunk}.repr"
    comment = "".join(f"# {line}\n" for line in why.splitlines())
    path.write_text(comment + repr(records) + "\n")  # ast.literal_eval() reads it back
    return path


class ChunkTimeout(Exception):
    """A chunk took longer than --hang-seconds: a hang (an endless loop) counts as a crash."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise ChunkTimeout


def run_chunk(
    records: list[RawRecord], plans: list[PlannedEvent], tree: TreeStep, kafka: Any, totals: Totals
) -> list[str]:
    """Assemble, pass the tree keeper's step (one table for the whole run, as in replay),
    write the sinks, check; return what broke."""
    events, counts = assemble(records)
    events = tree.process(events) + tree.close()  # close() flushes the reorder window
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        outputs = write_sinks(events, Path(scratch))
        problems = check_outputs(records, events, counts, outputs, plans)
    if kafka is not None:
        problems += check_kafka(kafka, events)
    totals.parse_errors += counts["parse_errors"]
    for event in events:
        if MARKER_TAG in (event["doc"].get("tags") or ()):
            totals.markers[event["doc"]["event"].get("action", "?")] += 1
        elif event["raw"]:
            totals.events += 1
        else:
            totals.lifecycle_events += 1
    totals.sink_errors.update(outputs.raw_errors)
    totals.sink_errors.update({f"jsonl_{k}": v for k, v in outputs.jsonl_errors.items()})
    totals.refused_events += counts["interpret_errors"]
    crashes = interpret_crashes(events)
    if crashes:
        raise RuntimeError(f"{len(crashes)} events failed to interpret: {crashes[0]}")
    return problems


def _replay(
    log: Path, jsonl: Path, raw: Path, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    """Run `auditstream replay`; past the timeout, stop it the way a user would: SIGTERM
    twice (the supervisor then stops every stage, a stuck one after 30 s), then SIGKILL."""
    command = [sys.executable, "-m", "auditstream", "replay", str(log),
               "--sink", f"jsonl:{jsonl}", "--sink", f"file:{raw}"]  # fmt: skip
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.terminate()
            time.sleep(1)
            child.terminate()
            try:
                out, err = child.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            err += f"\nfuzz: replay timed out after {timeout_s:.0f} s".encode()
        return subprocess.CompletedProcess(command, child.returncode, out, err)


def replay_slice(
    mutator: Mutator, records: int, totals: Totals, timeout_s: float, keep: str | None
) -> dict[str, Any]:
    """A slice through the real processes: `auditstream replay` of a hostile log file."""
    pushed, _plans = make_chunk(mutator, records, 10_000_000)
    text = log_text(pushed)  # a newline inside data splits the line, as in a real file
    with tempfile.TemporaryDirectory(prefix="fuzz-replay-") as scratch:
        log, jsonl, raw = (Path(scratch) / name for name in ("in.log", "out.jsonl", "out.log"))
        log.write_bytes(text)
        if keep:
            Path(keep).write_bytes(text)
        started = time.monotonic()
        result = _replay(log, jsonl, raw, timeout_s)
        seconds = time.monotonic() - started
        summary = re.search(
            rb"(\d+) records read, (\d+) events out, (\d+) events lost \(serial gaps\), "
            rb"(\d+) records failed to parse",
            result.stderr,
        )
        restarts = re.search(rb"(\d+) stage restarts", result.stderr)
        problems: list[str] = []
        if result.returncode != 0 or summary is None:
            problems.append(f"replay exit {result.returncode}: {result.stderr[-2000:]!r}")
        lines = jsonl.read_bytes().split(b"\n")[:-1] if jsonl.exists() else []
        bad_json = 0
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                bad_json += 1
        if bad_json:
            problems.append(f"{bad_json} jsonl lines are not valid JSON")
        events_out = int(summary.group(2)) if summary else -1
        if summary and events_out != len(lines):
            problems.append(f"summary says {events_out} events out, jsonl has {len(lines)} lines")
        raw_lines = raw.read_bytes().split(b"\n")[:-1] if raw.exists() else []
        if any(len(line) > MAX_LINE_BYTES for line in raw_lines):
            problems.append("file sink wrote a line longer than ausearch reads")
        if restarts and int(restarts.group(1)):
            problems.append(f"{int(restarts.group(1))} stage restarts (a stage crashed)")
        if problems:
            totals.crashes += 1
            totals.note("replay: " + "; ".join(problems))
        return {
            "records": len(pushed),
            "log_lines": text.count(b"\n"),
            "seconds": round(seconds, 1),
            "exit": result.returncode,
            "records_read": int(summary.group(1)) if summary else None,
            "events_out": events_out,
            "lost": int(summary.group(3)) if summary else None,
            "parse_errors": int(summary.group(4)) if summary else None,
            "jsonl_lines": len(lines),
            "raw_lines": len(raw_lines),
            "problems": problems,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=2000, help="records per assembler run")
    parser.add_argument("--replay-records", type=int, default=0, help="also replay this many")
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka encoding check")
    parser.add_argument("--json", help="write the summary here as JSON")
    parser.add_argument(
        "--hang-seconds", type=int, default=300, help="a chunk or replay slower is a hang"
    )
    parser.add_argument("--keep-replay-input", help="copy the replay slice's log here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    mutator = Mutator(rng, corpus_records())
    kafka = None if args.no_kafka else _kafka_or_none()
    totals = Totals()
    tree = _tree_step()
    signal.signal(signal.SIGALRM, _on_alarm)
    started = time.monotonic()
    last_report = started
    serial = 10_000
    while totals.records < args.records:
        records, plans = make_chunk(mutator, min(args.chunk, args.records - totals.records), serial)
        serial += len(plans) + 10
        totals.chunks += 1
        totals.records += len(records)
        totals.planned_events += len(plans)
        sizes = [len(data) for _t, data, _n in records]
        totals.record_bytes += sum(sizes)
        totals.largest_record = max(totals.largest_record, *sizes)
        signal.alarm(args.hang_seconds)
        try:
            problems = run_chunk(records, plans, tree, kafka, totals)
        except Exception as err:  # the point of the run: count it, keep the input, go on
            totals.crashes += 1
            path = save_chunk(args.seed, totals.chunks, records, traceback.format_exc())
            totals.note(f"crash in chunk {totals.chunks}: {err!r} (saved {path})")
            tree = _tree_step()  # its table may be half-updated
            continue
        finally:
            signal.alarm(0)
        if problems:
            totals.violations += len(problems)
            path = save_chunk(args.seed, totals.chunks, records, "\n".join(problems[:20]))
            totals.note(
                f"chunk {totals.chunks}: {problems[0]} (+{len(problems) - 1}; saved {path})"
            )
        now = time.monotonic()
        if now - last_report > 10:
            last_report = now
            rate = totals.records / (now - started)
            print(f"{totals.records:>9} records  {rate:>7.0f}/s  crashes {totals.crashes}"
                  f"  violations {totals.violations}", file=sys.stderr)  # fmt: skip
    seconds = time.monotonic() - started
    replay = (
        replay_slice(
            mutator, args.replay_records, totals, args.hang_seconds, args.keep_replay_input
        )
        if args.replay_records
        else None
    )
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed,
        "corpus_records": len(mutator.corpus),
        "records": totals.records,
        "record_bytes": totals.record_bytes,
        "largest_record_bytes": totals.largest_record,
        "chunks": totals.chunks,
        "generated_events": totals.planned_events,
        "audit_events_out": totals.events,
        "lifecycle_events_out": totals.lifecycle_events,
        "markers": dict(totals.markers),
        "parse_errors": totals.parse_errors,
        "events_refused_by_coalesce": totals.refused_events,
        "sink_counters": dict(totals.sink_errors),
        "mutations": dict(mutator.used),
        "crashes": totals.crashes,
        "invariant_violations": totals.violations,
        "examples": totals.examples,
        "seconds": round(seconds, 1),
        "records_per_second": round(totals.records / seconds) if seconds else None,
        "replay": replay,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if totals.crashes or totals.violations else 0


def _tree_step() -> TreeStep:
    cfg = Config()
    cfg.receiver.source = "file"  # event time, no /proc scan: as `auditstream replay`
    return TreeStep(cfg)


def _kafka_or_none() -> Any:
    try:
        return kafka_encoder()
    except ImportError:
        print("confluent-kafka not installed: Kafka encoding not checked", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
