"""treekeeper.native_enrich (C) against treekeeper.enrich.enrich_doc and ProcessTable._observe.

Two process tables see the same docs, each its own deep copy. One enriches with the C
``enrich`` (the Python ``enrich_doc`` where C declines), the other with ``enrich_doc`` only;
both observe with Python. After every event the enriched docs must be the same JSON bytes
(key order included), hold the same objects of their own doc and of their table (the
Process's args list, its cached ancestry entries) at the same places, raise the same
exception if any, and leave the tables in the same state (event_ms's cache, last_ms, the
stats; every Process, ancestry entry caches included, every few hundred events). A decline
must leave doc and table untouched. ``observe`` (C's preamble of ``_observe``, the whole of it
for plain events, ``_act`` after it for forks, execs and exits) is held to ``_observe`` the
same way.

Inputs: the corpus logs and laurel record files, a generated log (full docs and the heads a
jsonl-only tree keeper decodes), and scripted hostile docs and table states.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from native_helpers import native_module, rss_kib
from test_ecs_golden_docs import _events
from test_tree import ev, execve, exit_group, fork, stamp

from assembler.events import event_from_records
from assembler.reassembler import CompletionReason
from auditstream import wire
from auditstream.native import MODE_ENV
from treekeeper import tree
from treekeeper.containers import ContainerRef
from treekeeper.enrich import enrich_doc, iso_ms, lifecycle_doc
from treekeeper.procfs import FakeProcSource, ProcInfo
from treekeeper.tree import Process, ProcessTable, TableConfig

REPO = Path(__file__).resolve().parents[1]
CORPORA = [REPO / "tests" / "corpus", REPO.parent / "shared" / "corpus"]
BASE_MS = 1_700_000_000_000
ID_A = "a" * 64
ID_B = "b" * 64
Doc = dict[str, Any]
Step = tuple[Doc, bool]  # a doc, and whether the tables observe it before enriching it
SPECIAL = tree.FORK_SYSCALLS | tree.EXEC_SYSCALLS | {"exit", "exit_group"}

native: Any = native_module("treekeeper.native_enrich")


class IntSub(int):
    """An int subclass: isinstance(x, int) holds, the C code declines it."""


class DictSub(dict[str, Any]):
    """A dict subclass: isinstance(x, dict) holds, the C code declines it."""


class StrSub(str):
    """A str subclass: isinstance(x, str) holds, the C code declines it."""

    __slots__ = ()


# ---- comparing ----------------------------------------------------------------------------


def as_json(value: Any) -> bytes:
    """JSON bytes, key order kept; the standard library's encoder (repr for the rest) where
    orjson refuses (ints beyond 64 bits, odd objects)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, default=_json_default).encode(
            "utf-8", "surrogatepass"
        )


def _json_default(value: Any) -> Any:
    """An ancestry entry's Fragment as its JSON; repr for anything else."""
    if isinstance(value, orjson.Fragment):
        return json.loads(orjson.dumps(value))
    return repr(value)


def containers(doc: Any) -> list[tuple[str, Any]]:
    """Every dict and list in ``doc`` with its path (depth first, in key order)."""
    out: list[tuple[str, Any]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            out.append((path, value))
            for key, item in list(value.items()):
                walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            out.append((path, value))
            for index, item in enumerate(value):
                walk(item, f"{path}/{index}")

    walk(doc, "")
    return out


def table_objects(table: ProcessTable) -> dict[int, frozenset[tuple[Any, str]]]:
    """id -> which Process attributes hold that list or dict: args, ancestry entries and
    the entries' args (several processes may share one, e.g. a forked child's args)."""
    found: dict[int, set[tuple[Any, str]]] = defaultdict(set)
    for key, proc in table.processes.items():
        args = getattr(proc, "args", None)
        if isinstance(args, list):
            found[id(args)].add((key, "args"))
        entry = getattr(proc, "ancestry_entry", None)
        if isinstance(entry, dict):
            found[id(entry)].add((key, "entry"))
            if isinstance(entry.get("args"), list):
                found[id(entry["args"])].add((key, "entry.args"))
    return {ident: frozenset(labels) for ident, labels in found.items()}


def sharing(doc: Any, before: list[tuple[str, Any]], table: ProcessTable) -> list[Any]:
    """Per dict and list of the enriched doc: was it in the doc before, and which table
    objects is it (``before`` keeps the old ones alive, so their ids are not reused)."""
    old = {id(value) for _, value in before}
    objects = table_objects(table)
    return [(path, id(value) in old, objects.get(id(value))) for path, value in containers(doc)]


def table_state(table: ProcessTable, doc: Any) -> tuple[Any, ...]:
    """What event_ms and the counters leave in the table."""
    ts = doc.get("@timestamp") if isinstance(doc, dict) else None
    return (
        type(table._ts_last).__name__,
        repr(table._ts_last),
        table._ts_last is ts,
        repr(table._ts_last_ms),
        table._ts_head,
        table._ts_base,
        repr(table.last_ms),
        dataclasses.astuple(table.stats)
        if dataclasses.is_dataclass(table.stats)
        else vars(table.stats),
    )


def process_state(proc: Process) -> list[Any]:
    """Every field of a Process (its ancestry entry as JSON, children sorted)."""
    out: list[Any] = []
    for field in dataclasses.fields(Process):
        value = getattr(proc, field.name, "<unset>")
        if field.name == "children":
            value = sorted(value)
        elif field.name in ("ancestry_entry", "fragment_of", "ancestry_fragment"):
            value = as_json(value)  # a Fragment by its text
        out.append((field.name, repr(value)))
    return out


def full_state(table: ProcessTable) -> list[Any]:
    """The whole table: its processes in order, the pid index, the container counts."""
    return [
        [(key, process_state(proc)) for key, proc in table.processes.items()],
        sorted(getattr(table, "current", {}).items()),
        sorted(table.container_members.items()),
        table_state(table, {}),
    ]


def actor_state(table: ProcessTable, doc: Doc) -> list[Any]:
    """The table's size and the state of the process the doc comes from, at its time."""
    process = doc.get("process")
    pid = process.get("pid") if isinstance(process, dict) else None
    proc = table.lookup(pid, table.last_ms) if type(pid) is int else None
    return [len(table.processes), len(table.current), None if proc is None else process_state(proc)]


@dataclasses.dataclass
class Tally:
    """How the C function fared over a run."""

    handled: int = 0
    declined: int = 0
    raised: int = 0
    observed_in_c: int = 0
    observed_in_python: int = 0
    done_in_c: int = 0  # forks, execs, exits observe did whole (the rest of ACTED: via _act)
    # (what the reference's own tests expect of observe, what it did) -> count
    observe_kinds: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def took_wrongly(self) -> int:
        """Events C took (plain, or acted on) that Python's tests would have left to Python,
        or took the other way."""
        return sum(n for (want, got), n in self.observe_kinds.items() if got not in (want, PY))

    def mismatched(self) -> int:
        """Events C did not handle as the reference's tests expect (taken or not)."""
        return sum(n for (want, got), n in self.observe_kinds.items() if got != want)


PLAIN, ACTED, PY = "plain", "acted", "python"  # observe: True, (actor, at_ms), False


def expected_observe(table: ProcessTable, doc: Doc) -> str:
    """What observe should do with the doc, decided with the reference's own helpers and
    conditions (event_ms's changes undone afterwards): PLAIN when _observe only does
    event_ms's bookkeeping and returns [], ACTED when its preamble finds a known process
    needing no change and the syscall is a fork, exec or exit, else PY."""
    process = tree._section(doc, "process")
    pid = tree._pid(process.get("pid"))
    if pid is None or pid <= 0:
        return PLAIN
    saved = (table._ts_head, table._ts_base, table._ts_last, table._ts_last_ms, table.last_ms,
             table.stats.bad_times)  # fmt: skip
    try:
        at_ms = table.event_ms(doc)
    except ValueError:  # "SS.²Z": str.isdigit but not int(): observe counts a bad doc
        return PY
    finally:
        (table._ts_head, table._ts_base, table._ts_last, table._ts_last_ms, table.last_ms,
         table.stats.bad_times) = saved  # fmt: skip
    ppid = tree._pid(tree._section(process, "parent").get("pid"))
    syscall = tree._section(tree._section(doc, "auditd"), "data").get("syscall")
    acts = isinstance(syscall, str) and syscall in SPECIAL
    if acts and type(syscall) is not str:
        return PY
    proc = table.lookup(pid, at_ms)
    if (
        proc is None
        or proc.tentative
        or (ppid is not None and ppid != proc.ppid)
        or proc.executable is None
    ):
        return PY
    if at_ms >= proc.image_ms and proc.inferred and not image_stays(table, proc, process, at_ms):
        return PY
    return ACTED if acts else PLAIN


IMAGE_FIELDS = ("executable", "name", "args", "cwd", "title")


def image_stays(table: ProcessTable, proc: tree.Process, process: Doc, at_ms: int) -> bool:
    """The reference's ``_take_image`` on a copy of a placeholder changes nothing but
    ``image_ms`` and the cached ancestry entry: it is seen again with the image it had."""
    probe = copy.copy(proc)
    table._take_image(probe, process, at_ms, with_args=False)
    return all(getattr(probe, name) == getattr(proc, name) for name in IMAGE_FIELDS)


def python_observe(table: ProcessTable, doc: Doc) -> list[Doc]:
    """ProcessTable.observe without the C fast path: the Python ``_observe`` only."""
    try:
        return table._observe(doc)
    except (TypeError, ValueError, AttributeError):
        table.stats.bad_docs += 1
        return []


def c_observe(table: ProcessTable, doc: Doc, tally: Tally) -> tuple[list[Doc], str]:
    """observe with C's ``observe`` first, as ProcessTable.observe calls it; a decline must
    change nothing. The lifecycle docs, and what C did (PLAIN, ACTED or PY)."""
    before = (as_json(doc), full_state(table))
    with c_lifecycle():
        return _c_observe(table, doc, tally, before)


def _c_observe(table: ProcessTable, doc: Doc, tally: Tally, before: Any) -> tuple[list[Doc], str]:
    taken = native.observe(table, doc)
    if taken is True:
        tally.observed_in_c += 1
        return [], PLAIN
    if isinstance(taken, list):  # a fork, exec or exit done whole in C
        tally.done_in_c += 1
        tally.observed_in_c += 1
        return taken, ACTED
    if taken is not False:
        actor, at_ms = taken
        assert type(actor) is Process and type(at_ms) is int, taken
        tally.observed_in_c += 1
        out: list[Doc] = []
        try:
            table._act(doc, actor, at_ms, out)
        except (TypeError, ValueError, AttributeError):
            table.stats.bad_docs += 1
            return [], ACTED
        return out, ACTED
    assert (as_json(doc), full_state(table)) == before, "observe declined after a change"
    tally.observed_in_python += 1
    return python_observe(table, doc), PY


def python_enrich(table: ProcessTable, doc: Doc) -> str | None:
    """ProcessTable.enrich with enrich_doc only; the exception type's name if it raised."""
    try:
        enrich_doc(table, doc)
    except (TypeError, ValueError, AttributeError) as err:
        table.stats.bad_docs += 1
        return type(err).__name__
    return None


def c_enrich(table: ProcessTable, doc: Doc, tally: Tally) -> str | None:
    """ProcessTable.enrich with the C function first; a decline must change nothing."""
    before = (as_json(doc), table_state(table, doc), [v for _, v in containers(doc)])
    try:
        if native.enrich(table, doc):
            tally.handled += 1
            return None
    except (TypeError, ValueError, AttributeError) as err:
        tally.raised += 1
        table.stats.bad_docs += 1
        return type(err).__name__
    after = (as_json(doc), table_state(table, doc), [v for _, v in containers(doc)])
    assert after[:2] == before[:2], "declined after a change"
    assert all(a is b for a, b in zip(after[2], before[2], strict=True)), "declined after a change"
    tally.declined += 1
    return python_enrich(table, doc)


class Pair:
    """A table enriched by C and one by Python, fed the same docs and compared."""

    def __init__(self, config: TableConfig | None = None, *, c_observes: bool = False) -> None:
        self.c_table = ProcessTable(copy.copy(config) if config else None)
        self.py_table = ProcessTable(copy.copy(config) if config else None)
        self.c_observes = c_observes
        self.tally = Tally()
        self.count = 0

    def both(self, change: Callable[[ProcessTable], Any]) -> None:
        """Apply the same change to both tables."""
        change(self.c_table)
        change(self.py_table)

    def feed(self, doc: Doc, observe: bool = True, *, check_every: int = 250) -> Doc:
        """One event through both tables; everything compared after it. Returns C's doc."""
        c_doc, py_doc = copy.deepcopy(doc), copy.deepcopy(doc)
        if observe:
            if self.c_observes:
                expected = expected_observe(self.py_table, py_doc)
                c_out, done = c_observe(self.c_table, c_doc, self.tally)
                kind = (expected, done)
                self.tally.observe_kinds[kind] = self.tally.observe_kinds.get(kind, 0) + 1
            else:
                c_out = python_observe(self.c_table, c_doc)
            py_out = python_observe(self.py_table, py_doc)
            assert as_json(c_out) == as_json(py_out)
            assert table_state(self.c_table, c_doc) == table_state(self.py_table, py_doc)
            if self.c_observes:  # the process C observed is as Python left it
                assert actor_state(self.c_table, c_doc) == actor_state(self.py_table, py_doc)
        c_before, py_before = containers(c_doc), containers(py_doc)
        c_err = c_enrich(self.c_table, c_doc, self.tally)
        py_err = python_enrich(self.py_table, py_doc)
        assert c_err == py_err, as_json(doc)
        assert as_json(c_doc) == as_json(py_doc)
        assert sharing(c_doc, c_before, self.c_table) == sharing(py_doc, py_before, self.py_table)
        assert table_state(self.c_table, c_doc) == table_state(self.py_table, py_doc)
        self.count += 1
        if self.count % check_every == 0:
            self.check()
        return c_doc

    def maintain(self) -> None:
        """Delete exited processes as the stage does, at the table's own time."""
        with contextlib.nullcontext() if not self.c_observes else c_lifecycle():
            c_out = self.c_table.maintain(self.c_table.last_ms)
        py_out = self.py_table.maintain(self.py_table.last_ms)
        assert as_json(c_out) == as_json(py_out)

    def check(self) -> None:
        """The whole tables compared."""
        assert full_state(self.c_table) == full_state(self.py_table)

    def run(self, docs: Iterable[Doc], *, maintain_every: int = 100) -> Tally:
        """Every doc observed then enriched; maintain now and then; the tables compared at the end."""
        for number, doc in enumerate(docs, 1):
            self.feed(doc)
            if number % maintain_every == 0:
                self.maintain()
        self.check()
        return self.tally

    def steps(self, steps: Iterable[Step]) -> Tally:
        """Docs observed (or not) then enriched; the tables compared at the end."""
        for doc, observe in steps:
            self.feed(doc, observe)
        self.check()
        return self.tally


@pytest.fixture(autouse=True)
def _python_observe_in_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """ProcessTable.observe and enrich run Python only here: the tests call C themselves."""
    monkeypatch.setattr(tree, "_NATIVE_ENRICH", None)
    monkeypatch.setattr(tree, "_NATIVE_OBSERVE", None, raising=False)
    monkeypatch.setattr(tree, "_lifecycle_doc", lifecycle_doc)


@contextlib.contextmanager
def c_lifecycle() -> Iterator[None]:
    """The table's lifecycle docs made by C's lifecycle_doc meanwhile (the C table's side)."""
    tree._lifecycle_doc = native.lifecycle_doc
    try:
        yield
    finally:
        tree._lifecycle_doc = lifecycle_doc


# ---- inputs -------------------------------------------------------------------------------


def corpus_logs() -> dict[str, bytes]:
    """Every corpus log and laurel record file (by content: duplicates once)."""
    found = [
        p
        for root in CORPORA
        if root.is_dir()
        for s in ("*.log", "*.txt")
        for p in sorted(root.rglob(s))
    ]
    by_content: dict[bytes, str] = {}
    for path in found:
        text = path.read_bytes()
        if b"type=" in text:
            by_content.setdefault(text, str(path))
    return {name: text for text, name in by_content.items()}


def log_docs(text: bytes) -> list[Doc]:
    """The docs the assembler makes of a log's events (events it refuses left out)."""
    docs: list[Doc] = []
    for records in _events(text):
        try:
            docs.append(event_from_records(records, CompletionReason.EOE)["doc"])
        except Exception:
            continue
    return docs


def _bench_frames(log: Path, lines: int, shards: int) -> list[tuple[int, list[Doc]]]:
    spec = importlib.util.spec_from_file_location(
        "treekeeper_cpu", REPO / "bench" / "treekeeper_cpu.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frames: list[tuple[int, list[Doc]]] = module.build_frames(log, lines, shards)
    return frames


@pytest.fixture(scope="module")
def generated_frames(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, list[Doc]]]:
    """The frames two sharded assemblers make of a 20k-line generated log (bench/gen_log.py)."""
    log = tmp_path_factory.mktemp("gen") / "gen.log"
    command = [
        sys.executable,
        str(REPO / "bench" / "gen_log.py"),
        "--lines",
        "20000",
        "--out",
        str(log),
    ]
    subprocess.run(command, check=True, capture_output=True)
    return _bench_frames(log, 20000, 2)


def with_time(doc: Doc, ts: Any) -> Doc:
    """``doc`` with another @timestamp (removed for the sentinel ``...``)."""
    doc = copy.deepcopy(doc)
    if ts is ...:
        del doc["@timestamp"]
    else:
        doc["@timestamp"] = ts
    return doc


def plain(at: int, pid: int, ppid: int | None, **kw: Any) -> Doc:
    """An openat event of ``pid``: no fork, exec or exit."""
    from test_tree import ev

    return ev(at, "openat", pid, ppid, exit="3", **kw)


def proc_infos() -> list[ProcInfo]:
    """A /proc with containers named by their cgroup, with and without a runtime."""
    base = BASE_MS - 60_000
    return [
        ProcInfo(1, 0, base, b"systemd", b"/sbin/init", [b"/sbin/init"]),
        ProcInfo(7000, 1, base + 1, b"app", b"/app", [b"/app", b"-x"],
                 cgroup=f"0::/system.slice/docker-{ID_A}.scope\n".encode()),
        ProcInfo(7001, 7000, base + 2, b"worker", b"/worker", [b"worker"],
                 cgroup=f"0::/system.slice/docker-{ID_A}.scope\n".encode()),
        ProcInfo(7100, 1, base + 3, b"other", b"/other", [b"other"],
                 cgroup=f"0::/somewhere/{ID_B}\n".encode()),
    ]  # fmt: skip


def scenario(chain: int = 40) -> list[Step]:
    """Forks, execs, exits, a deep chain with long args, PID reuse, an orphan, containers:
    the table states the hostile docs meet (all observed)."""
    steps: list[Step] = []

    def add(doc: Doc, observe: bool = True) -> None:
        steps.append((doc, observe))

    add(execve(0, 1, 0, "/sbin/init", ["/sbin/init"]))
    add(fork(1, 1, 0, 100, exe="/sbin/init"))
    add(execve(2, 100, 1, "/bin/bash", ["bash", "-l"]))
    grand, parent, exe = 1, 100, "/bin/bash"
    for i in range(chain):
        child = 1000 + i
        add(fork(10 + 3 * i, parent, grand, child, exe=exe))
        exe = f"/bin/p{i}"
        add(execve(11 + 3 * i, child, parent, exe, [f"p{i}", "x" * (37 * i)]))
        grand, parent = parent, child
    t = 10 + 3 * chain
    # An orphan: 2000's parent exits, init reaps it (reaped_from), a late record names it.
    add(fork(t + 1, 1005, 1004, 2000, exe="/bin/p5"))
    add(exit_group(t + 2, 1005, 1004))
    add(plain(t + 3, 2000, 1005))
    add(plain(t + 4, 2000, 1))
    # PID reuse: 5000 exits and comes back; late events of each incarnation and between them.
    add(fork(t + 10, 100, 1, 5000, exe="/bin/bash"))
    add(execve(t + 11, 5000, 100, "/bin/a", ["a"]))
    add(exit_group(t + 20, 5000, 100))
    add(fork(t + 30, 100, 1, 5000, exe="/bin/bash"))
    add(execve(t + 31, 5000, 100, "/bin/b", ["b"]))
    add(plain(t + 15, 5000, 100), False)  # the first incarnation (lookup walks `previous`)
    add(plain(t + 25, 5000, 100), False)  # between the two: none
    add(exit_group(t + 40, 5000, 100))
    add(plain(t + 50, 5000, 100), False)  # after its exit: none
    # A containerd shim's child is in its container; a runc init.
    shim = ["containerd-shim-runc-v2", "-namespace", "moby", "-id", ID_B, "-address", "/run/c.sock"]
    add(fork(t + 60, 1, 0, 3000, exe="/sbin/init"))
    add(execve(t + 61, 3000, 1, "/usr/bin/containerd-shim-runc-v2", shim))
    add(fork(t + 62, 3000, 1, 3001, exe="/usr/bin/containerd-shim-runc-v2"))
    add(execve(t + 63, 3001, 3000, "/bin/sh", ["sh", "-c", "sleep 1"]))
    # A clone3 child (tentative) and a thread.
    add(fork(t + 70, 100, 1, 3100, syscall="clone3", a0="7ffd0000"))
    add(fork(t + 71, 100, 1, 3101, a0="3d0f00"))
    return steps


LAST = 10 + 3 * 40 + 80  # after the scenario's events


def hostile_variants(pid: int, ppid: int, at: int) -> list[Doc]:
    """Event docs of a known process, twisted every way the C code must get right or decline."""
    base = plain(at, pid, ppid, exe="/bin/p39", comm="p39")
    out: list[Doc] = [base]

    def variant(change: Callable[[Doc], Any]) -> None:
        doc = copy.deepcopy(base)
        change(doc)
        out.append(doc)

    for value in (True, False, str(pid), 2**70, -1, 0, float(pid), None, IntSub(pid), 1 << 32):
        variant(lambda d, v=value: d["process"].__setitem__("pid", v))
    variant(lambda d: d["process"].pop("pid"))
    for value in ("x", [], None, DictSub(pid=pid)):
        variant(lambda d, v=value: d.__setitem__("process", v))
    variant(lambda d: d.pop("process"))
    for value in ("x", [], {}, {"pid": True}, {"pid": str(ppid)}, {"pid": 2**70}, {"pid": 1},
                  {"pid": 999_999}, {"pid": IntSub(ppid)}, DictSub(pid=ppid), {"pid": 100},
                  {"pid": ppid, "entity_id": "mine", "executable": "e", "name": "n", "args": ["a"]},
                  {"name": "only a name"}):  # fmt: skip
        variant(lambda d, v=value: d["process"].__setitem__("parent", copy.deepcopy(v)))
    variant(lambda d: d["process"].pop("parent"))
    variant(
        lambda d: d["process"].update(
            entity_id="x", start="y", executable="e", name="n", args=["a"]
        )
    )
    variant(lambda d: d["process"].update(executable=None, name=None, args=None))
    for value in ("x", {}, {"id": "mine"}, {"runtime": "podman"}, DictSub(id="sub"), None):
        variant(lambda d, v=value: d.__setitem__("container", copy.deepcopy(v)))
    return out


def timestamps(at_ms: int) -> list[Any]:
    """@timestamp values: the usual form, odd fractions, odd dates, and not timestamps at all."""
    head = datetime.fromtimestamp(at_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return [
        f"{head}.{at_ms % 1000:03d}Z",
        f"{head}Z",
        f"{head}.Z",
        f"{head}.1Z",
        f"{head}.12Z",
        f"{head}.1234567Z",
        f"{head}.abcZ",
        f"{head}.1a3Z",
        f"{head}x123Z",
        f"{head}.\u0661\u0662\u0663Z",  # Arabic-Indic digits: str.isdigit, int() takes them
        f"{head}.²Z",  # superscript two: str.isdigit, int() refuses it (ValueError)
        f"{head}.123",
        f"{head}.123+00:00",
        StrSub(f"{head}.123Z"),
        StrSub("short"),
        "2023-1a-14T22:13:20.123Z",
        "2023-11-14T22:13:2 .123Z",
        "2023-11-14 22:13:20.123Z",
        "2023-11-14x22:13:20.123Z",
        "20231114T221320.123456Z",
        "2023-02-29T00:00:00.000Z",
        "2024-02-29T00:00:00.000Z",
        "2023-13-01T00:00:00.000Z",
        "2023-11-14T24:00:00.000Z",
        "2023-11-14T23:60:00.000Z",
        "2023-11-14T23:59:60.000Z",
        "0000-01-01T00:00:00.000Z",
        "0001-01-01T00:00:00.000Z",
        "0999-12-31T23:59:59.999Z",
        "1000-01-01T00:00:00.000Z",
        "1969-12-31T23:59:59.999Z",
        "9999-12-31T23:59:59.999Z",
        "2023-11-14T22:13:20.123Zé",
        "é023-11-14T22:13:20.123Z",
        "short",
        "",
        None,
        12345,
        ...,
    ]


# ---- enrich: differential -------------------------------------------------------------------


def test_corpus_docs_enrich_the_same() -> None:
    """Every corpus log and laurel record file, each through its own pair of tables and all
    of them through one, gives the same docs and tables with C as with Python."""
    logs = corpus_logs()
    assert len(logs) >= 10
    everything: list[Doc] = []
    total = Tally()
    for name, text in logs.items():
        docs = log_docs(text)
        everything += docs
        tally = Pair().run(docs)
        total.handled += tally.handled
        total.declined += tally.declined
        assert tally.raised == 0, name
    together = Pair().run(everything)
    assert together.handled + together.declined == len(everything)
    assert total.handled > 0.95 * len(everything), total


def test_generated_log_docs_enrich_the_same(generated_frames: list[tuple[int, list[Doc]]]) -> None:
    """The docs of a generated log (two sharded assemblers) enrich the same, and C handles
    every one of them (they are all plain)."""
    docs = [event["doc"] for _, events in generated_frames for event in events if event["raw"]]
    assert len(docs) > 4000
    tally = Pair().run(docs)
    print(f"generated log: {len(docs)} docs, C handled {tally.handled}, declined {tally.declined}")
    assert tally.declined == 0 and tally.raised == 0
    assert tally.handled == len(docs)


def test_generated_log_heads_enrich_the_same(generated_frames: list[tuple[int, list[Doc]]]) -> None:
    """The heads a jsonl-only tree keeper decodes (wire.events_with_heads) enrich the same."""
    heads: list[Doc] = []
    for sender, events in generated_frames:
        body = wire.pack_events_body(events, {"sender": sender}).unpacked()
        heads += [event["doc"] for event in wire.events_with_heads(body) if event["raw"]]
    tally = Pair().run(heads)
    assert tally.declined == 0 and tally.handled == len(heads)


@pytest.mark.parametrize("depth", [0, 1, 3, 16, 100])
def test_hostile_docs_enrich_the_same(depth: int) -> None:
    """Twisted pids, process and parent sections, containers and timestamps, observed and
    not, over a table with a deep chain, PID reuse, an orphan and containers, at several
    ancestry depths: the same docs and tables."""
    pair = Pair(TableConfig(ancestry_max_depth=depth))
    pair.both(lambda t: t.scan(FakeProcSource(proc_infos())))
    pair.steps(scenario())
    steps: list[Step] = []
    for pid, ppid in ((1039, 1038), (2000, 1), (5000, 100), (3001, 3000), (7001, 7000),
                      (7100, 1), (3100, 100), (3101, 100), (42, 1)):  # fmt: skip
        for index, doc in enumerate(hostile_variants(pid, ppid, BASE_MS + LAST)):
            doc["@timestamp"] = stamp(BASE_MS + LAST)
            # Enriched alone, with a time event_ms has not cached: it parses it (or declines first).
            later = with_time(doc, stamp(BASE_MS + LAST + 1 + index % 5 * 997))
            steps += [(doc, True), (doc, False), (later, False)]
    for index, ts in enumerate(timestamps(BASE_MS + LAST + 5)):
        doc = with_time(plain(LAST + 5, 1039, 1038), ts)
        steps += [
            (doc, False),
            (doc, True),
            (with_time(plain(LAST + 6 + index, 7001, 7000), ts), False),
        ]
    tally = pair.steps(steps)
    assert tally.handled > 0 and tally.declined > 0 and tally.raised == 0, tally


def _fragments_in(doc: Doc) -> int:
    process = doc.get("process") if isinstance(doc, dict) else None
    ancestry = process.get("ancestry") if isinstance(process, dict) else None
    return (
        sum(isinstance(e, orjson.Fragment) for e in ancestry) if isinstance(ancestry, list) else 0
    )


@pytest.mark.parametrize("depth", [1, 3, 16])
def test_ancestry_fragments_write_what_the_entries_write(depth: int) -> None:
    """With ``ancestry_fragments`` (every sink writes the docs' text) the ancestry entries are
    their JSON text: C and Python agree, and the docs encode to the bytes the dict entries
    give, through the hostile scenario's forks, execs (an entry replaced), exits and reuse."""
    fragments = Pair(TableConfig(ancestry_max_depth=depth, ancestry_fragments=True))
    entries = Pair(TableConfig(ancestry_max_depth=depth))
    for pair in (fragments, entries):
        pair.both(lambda t: t.scan(FakeProcSource(proc_infos())))
    steps = scenario() + [
        (with_time(doc, stamp(BASE_MS + LAST)), observe)
        for pid, ppid in ((1039, 1038), (7001, 7000), (3101, 100), (42, 1))
        for doc in hostile_variants(pid, ppid, BASE_MS + LAST)
        for observe in (True, False)
    ]
    used = 0
    for doc, observe in steps:
        with_fragments = fragments.feed(doc, observe)
        used += _fragments_in(with_fragments)
        assert as_json(with_fragments) == as_json(entries.feed(doc, observe))
    fragments.check()
    entries.check()
    assert used > 0 and fragments.tally.handled > 0, fragments.tally


def test_an_ancestor_that_execs_again_is_written_anew() -> None:
    """The kept text of an ancestry entry follows its process: after the ancestor's exec
    (a new entry), its descendants' events name the new image, in C and in Python."""
    fragments = Pair(TableConfig(ancestry_fragments=True))
    entries = Pair(TableConfig())
    steps = [
        (execve(0, 1, 0, "/sbin/init", ["/sbin/init"]), True),
        (fork(1, 1, 0, 100, exe="/sbin/init"), True),
        (execve(2, 100, 1, "/bin/bash", ["bash", "-l"]), True),
        (fork(3, 100, 1, 200, exe="/bin/bash"), True),
        (execve(4, 200, 100, "/bin/child", ["child"]), True),
        (plain(5, 200, 100), True),  # 100's entry and its text kept
        (execve(6, 100, 1, "/bin/zsh", ["zsh", "-i"]), True),  # 100 becomes another image
        (plain(7, 200, 100), True),
        (plain(8, 200, 100), False),
    ]
    for number, (doc, observe) in enumerate(steps):
        with_fragments = fragments.feed(doc, observe)
        assert as_json(with_fragments) == as_json(entries.feed(doc, observe))
        if number == 6:  # the new entry made elsewhere first (lifecycle docs, Python code)
            fragments.both(lambda t: [p.entry() for k, p in t.processes.items() if k[0] == 100])
    ancestry = orjson.loads(as_json(with_fragments))["process"]["ancestry"]
    assert ancestry[0]["executable"] == "/bin/zsh" and ancestry[0]["args"] == ["zsh", "-i"]
    assert fragments.tally.handled > 0, fragments.tally


def test_timestamps_before_and_after_the_cache() -> None:
    """Enrich alone (no observe before it) parses @timestamp itself: random valid times over
    years 1..9999 and their neighbours give the same event_ms bookkeeping as Python."""
    pair = Pair()
    pair.steps(scenario(chain=3))
    rng = random.Random(7)
    low = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
    high = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
    for _ in range(3000):
        seconds = rng.choice([rng.randint(low, high), rng.randint(1_600_000_000, 1_800_000_000)])
        ms = seconds * 1000 + rng.randint(0, 999)
        head = datetime.fromtimestamp(seconds, UTC).isoformat()[:19]
        frac = rng.choice([f".{ms % 1000:03d}", "", f".{ms % 10}", f".{ms % 1000:03d}999"])
        pid = rng.choice([1, 100, 1002, 5000, 9999])
        pair.feed(with_time(plain(0, pid, None), f"{head:0>19}{frac}Z"), observe=rng.random() < 0.3)
    pair.check()
    assert pair.tally.handled > 2500


def test_iso_ms_matches_python() -> None:
    """The C formatter writes what enrich.iso_ms writes, for years 1000..9999; None elsewhere."""
    rng = random.Random(3)
    low, high = -30610224000000, 253402300799999  # 1000-01-01 .. 9999-12-31T23:59:59.999
    samples = [low, high, 0, -1, 1, 999, -999, -1000, -1001, 951782400000, 951868800000]
    samples += [rng.randint(low, high) for _ in range(20000)]
    for ms in samples:
        assert native.iso_ms(ms) == iso_ms(ms), ms
    for ms in (low - 1, high + 1, -62135596800000, 2**70, True, "1"):
        assert native.iso_ms(ms) is None, ms


def test_a_chain_deeper_than_c_follows_is_declined() -> None:
    """A lineage longer than the C code's limit (128) with a larger ancestry_max_depth is
    left to Python, with the same result."""
    pair = Pair(TableConfig(ancestry_max_depth=200))
    pair.steps(scenario(chain=150))
    before = pair.tally.declined
    pair.feed(plain(LAST + 400, 1149, 1148), observe=False)
    pair.feed(plain(LAST + 401, 1100, 1099), observe=False)
    assert pair.tally.declined == before + 1
    pair.check()


def _set_all(
    attribute: str, value: Any, pids: tuple[int, ...] = (1038,)
) -> Callable[[ProcessTable], None]:
    def change(table: ProcessTable) -> None:
        for proc in table.processes.values():
            if proc.pid in pids:
                setattr(proc, attribute, copy.copy(value))

    return change


def _delete(attribute: str, pid: int) -> Callable[[ProcessTable], None]:
    def change(table: ProcessTable) -> None:
        for proc in table.processes.values():
            if proc.pid == pid:
                delattr(proc, attribute)

    return change


def _newest(table: ProcessTable, pid: int) -> Process:
    return table.processes[table.current[pid]]


def _creator_cycle(table: ProcessTable) -> None:
    _newest(table, 1037).creator = _newest(table, 1039).key


def _parent_deleted(table: ProcessTable) -> None:
    del table.processes[_newest(table, 1038).key]


def _current_stale(table: ProcessTable) -> None:
    table.current[1039] = (1039, 1)


def _previous_loop(table: ProcessTable) -> None:
    proc = _newest(table, 5000)
    proc.previous = proc.key


ODD_TABLES: dict[str, Callable[[ProcessTable], Any]] = {
    "started_at bool": _set_all("started_at", True, (1039,)),
    "started_at year 999": _set_all("started_at", -30610224000001, (1039,)),
    "started_at past 9999": _set_all("started_at", 253402300800000, (1039,)),
    "started_at huge": _set_all("started_at", 2**70, (1039,)),
    "exited_at str": _set_all("exited_at", "x", (1039,)),
    "pid int subclass": _set_all("pid", IntSub(1038)),
    "pid huge": _set_all("pid", 2**70),
    "start_ms huge": _set_all("start_ms", 2**70),
    "ppid bool": _set_all("ppid", True, (1039,)),
    "creator a list": _set_all("creator", [1, 2]),
    "creator unhashable tuple": _set_all("creator", ([1], 2)),
    "creator cycle": _creator_cycle,
    "parent a str": _set_all("parent", "x", (1039,)),
    "parent deleted": _parent_deleted,
    "current stale": _current_stale,
    "previous a list": _set_all("previous", [1], (5000,)),
    "previous loop": _previous_loop,
    "container a str": _set_all("container", "x", (1039,)),
    "container runtime None": _set_all("container", ContainerRef(ID_A), (1039,)),
    "ancestry entry odd": _set_all("ancestry_entry", "odd"),
    "ancestry entry empty dict": _set_all("ancestry_entry", {}),
    "entry raises": _set_all("args", ["ok", 7]),  # Process.entry() raises TypeError in C's call
    "no executable": _set_all("executable", None, (1039, 1038)),
    "args None": _set_all("args", None, (1039, 1038)),
    "entry unset": _delete("ancestry_entry", 1037),
    "entity_id unset": _delete("entity_id", 1038),
    "last_ms huge": lambda t: setattr(t, "last_ms", 2**70),
    "_ts_last_ms str": lambda t: setattr(t, "_ts_last_ms", "x"),
    "_ts_head not str": lambda t: setattr(t, "_ts_head", None),
    "_ts_base huge": lambda t: setattr(t, "_ts_base", 2**70),
    "bad_times huge": lambda t: setattr(t.stats, "bad_times", 2**70),
    "bad_times float": lambda t: setattr(t.stats, "bad_times", 1.5),
    "depth huge": lambda t: setattr(t.config, "ancestry_max_depth", 2**70),
    "depth negative": lambda t: setattr(t.config, "ancestry_max_depth", -3),
    "depth str": lambda t: setattr(t.config, "ancestry_max_depth", "16"),
    "processes not a dict": lambda t: setattr(t, "processes", DictSub(t.processes)),
    "current missing": lambda t: delattr(t, "current"),
    "stats another class": lambda t: setattr(
        t, "stats", SimpleNamespace(**dataclasses.asdict(t.stats))
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_TABLES))
def test_odd_table_states_give_the_same_result(name: str) -> None:
    """Attributes of unexpected types or unset, in the table or its processes: the C code
    gives Python's result (the same exception, after the same doc changes) or declines."""
    pair = Pair()
    pair.steps(scenario())
    for proc_table in (pair.c_table, pair.py_table):  # ancestry entries built anew: entry() runs
        for proc in proc_table.processes.values():
            proc.ancestry_entry = None
    pair.both(ODD_TABLES[name])
    for ts in (stamp(BASE_MS + LAST), stamp(BASE_MS + LAST + 1), stamp(BASE_MS + 5), None, ...):
        for pid, ppid in (
            (1039, 1038),
            (1039, None),
            (1039, 1),
            (2000, 1005),
            (5000, 100),
            (1, None),
        ):
            pair.feed(with_time(plain(LAST, pid, ppid), ts), observe=False)
    if name != "current missing":
        pair.check()


def test_a_patched_class_is_declined_until_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a ProcessTable or Process method replaced the C code declines (Python then calls
    the replacement); restored, it works again."""
    table = ProcessTable()
    for doc, _ in scenario(chain=3):
        table.observe(doc)
    doc = plain(LAST, 1002, 1001)
    assert native.enrich(table, copy.deepcopy(doc)) is True
    for cls, name in ((ProcessTable, "lookup"), (ProcessTable, "event_ms"), (Process, "entry")):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, _f=original: _f(*a))
        assert native.enrich(table, copy.deepcopy(doc)) is False
        assert native.observe(table, copy.deepcopy(doc)) is False
        monkeypatch.setattr(cls, name, original)
        assert native.enrich(table, copy.deepcopy(doc)) is True


LIFECYCLE_ACTIONS = ("process-started", "process-exec", "process-exited",
                     "container-first-seen", "container-gone")  # fmt: skip


def lifecycle_outcome(make: Callable[..., Doc], *args: Any) -> tuple[bytes | str, Any]:
    """A lifecycle doc's JSON and its process.args object, or the exception's type name."""
    try:
        doc = make(*args)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, OSError) as err:
        return type(err).__name__, None
    return as_json(doc), doc["process"].get("args")


@pytest.mark.parametrize("host", ["", "node-1"])
@pytest.mark.parametrize("name", ["as built", *sorted(ODD_TABLES)])
def test_lifecycle_docs_are_python_s(name: str, host: str) -> None:
    """C's lifecycle_doc gives enrich.lifecycle_doc's doc (the same JSON, args the process's
    own list) or its exception, for every process of the scenario's tables in odd states,
    every action, odd times and an unknown action."""
    table = ProcessTable(TableConfig(host=host))
    table.scan(FakeProcSource(proc_infos()))
    for doc, _ in scenario():
        table.observe(doc)
    for proc in list(table.processes.values())[::2]:
        proc.exit_code = proc.pid % 256  # half with an exit code, half without
    if name != "as built":
        ODD_TABLES[name](table)
    processes = getattr(table, "processes", {})
    assert processes
    count = 0
    for proc in list(processes.values()):
        for action in (*LIFECYCLE_ACTIONS, "process-unknown", StrSub("process-exec")):
            for at_ms in (BASE_MS + LAST, BASE_MS + 1, 253402300800000, -1, True):
                mine = lifecycle_outcome(native.lifecycle_doc, table, action, proc, at_ms)
                theirs = lifecycle_outcome(lifecycle_doc, table, action, proc, at_ms)
                assert mine[0] == theirs[0], (name, proc, action, at_ms)
                assert mine[1] is theirs[1]
                count += 1
    assert count > 100


def test_lifecycle_doc_declines_into_the_python_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where C's lifecycle_doc declines (a patched class, a time it does not write) it calls
    enrich.lifecycle_doc as it is then; otherwise it does not call it."""
    table = ProcessTable()
    for doc, _ in scenario(chain=3):
        table.observe(doc)
    proc = table.lookup(1002, table.last_ms)
    assert proc is not None
    calls: list[str] = []

    def spy(*args: Any) -> Doc:
        calls.append(args[1])
        return lifecycle_doc(*args)

    monkeypatch.setattr("treekeeper.enrich.lifecycle_doc", spy)
    native.lifecycle_doc(table, "process-exec", proc, BASE_MS + LAST)
    assert calls == []
    with pytest.raises(ValueError):  # the year 10000: Python's own error
        native.lifecycle_doc(table, "process-exited", proc, 253402300800000)
    native.lifecycle_doc(table, "process-exec", proc, True)  # a bool: not an exact int
    assert calls == ["process-exited", "process-exec"]
    monkeypatch.setattr(ProcessTable, "get", lambda self, key: None)
    doc = native.lifecycle_doc(table, "process-started", proc, BASE_MS + LAST)
    assert calls[-1] == "process-started" and "entity_id" not in doc["process"]["parent"]


def test_tree_uses_the_c_function_as_the_mode_says() -> None:
    """A fresh interpreter's ProcessTable.enrich goes through C unless AUDITSTREAM_NATIVE=0."""
    code = "import treekeeper.tree as t; print(t._NATIVE_ENRICH is not None)"
    for mode, expected in (("0", "False"), ("1", "True"), ("", "True")):
        env = {**os.environ, MODE_ENV: mode}
        found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=env, check=True, cwd=REPO).stdout.strip()  # fmt: skip
        assert found == expected, (mode, found)


def test_memory_does_not_grow() -> None:
    """200k calls over every path (enriched with ancestry and container, parsed times, bad
    times, declines, cache misses of entry()) and 375k lifecycle docs leave the RSS flat."""
    table = ProcessTable()
    table.scan(FakeProcSource(proc_infos()))
    for doc, _ in scenario(chain=20):
        table.observe(doc)
    docs = [plain(LAST, 1019, 1018), plain(LAST, 7001, 7000), plain(LAST, 5000, None),
            with_time(plain(LAST, 1019, 1018), "bad"), with_time(plain(LAST, 1019, 1018), None),
            with_time(plain(LAST, 1019, IntSub(1)), "2023-11-14T22:13:20.123Z"),
            plain(LAST + 1, 3001, 3000), plain(LAST + 1, 2000, 1005)]  # fmt: skip
    times = [stamp(BASE_MS + LAST + i * 1000) for i in range(50)]
    fresh = [1019, 1018]
    lifecycle_cases = [(table.processes[table.current[pid]], action)
                       for pid in (7001, 1019, 3001) for action in LIFECYCLE_ACTIONS]  # fmt: skip

    def one_round(i: int) -> None:
        for doc in docs:
            mine = {**doc, "process": copy.deepcopy(doc["process"])}
            if i % 3 == 0:
                mine["@timestamp"] = times[i % len(times)]
            native.enrich(table, mine)
            native.observe(table, mine)
        for proc, action in lifecycle_cases:
            native.lifecycle_doc(table, action, proc, BASE_MS + LAST + i)
        if i % 5 == 0:
            for proc in table.processes.values():
                if proc.pid in fresh:
                    proc.ancestry_entry = None

    for i in range(2000):
        one_round(i)
    before = rss_kib()
    for i in range(25_000):  # x 8 docs x 2 functions
        one_round(i)
    growth_kib = rss_kib() - before
    assert growth_kib < 4 * 1024, f"RSS grew by {growth_kib} KiB"


def test_forks_execs_and_exits_in_c_leave_no_memory_behind() -> None:
    """150k processes forked, exec'd, exited and deleted through C's observe leave the RSS
    flat (the table holds the last second's ~250)."""
    assert tree._NATIVE_ENRICH is None  # this file's fixture: ProcessTable.observe is Python
    table = ProcessTable()
    for doc in (fork(0, 1, 0, 100), execve(1, 100, 1, "/bin/sh", ["sh"])):
        table.observe(doc)
    done_in_c = 0

    def cycle(i: int) -> None:
        nonlocal done_in_c
        at, child = 10 + 4 * i, 2000 + i % 30000
        for doc in (fork(at, 100, 1, child), execve(at + 1, child, 100, "/bin/x", ["x", "-y"]),
                    exit_group(at + 2, child, 100, code=1)):  # fmt: skip
            out = native.observe(table, doc)
            assert isinstance(out, list) and len(out) == 1, out
            done_in_c += 1
        table.maintain(BASE_MS + at + 3)

    for i in range(30_000):
        cycle(i)
    before = rss_kib()
    for i in range(30_000, 180_000):
        cycle(i)
    growth_kib = rss_kib() - before
    assert len(table) < 300 and done_in_c == 3 * 180_000
    assert growth_kib < 4 * 1024, f"RSS grew by {growth_kib} KiB"


# ---- observe ----------------------------------------------------------------------------------


def test_corpus_docs_observe_the_same() -> None:
    """Every corpus log observed with C's observe first gives the same lifecycle docs,
    tables and enriched docs as Python's _observe; C takes what the reference's tests say."""
    total = Tally()
    for name, text in corpus_logs().items():
        tally = Pair(c_observes=True).run(log_docs(text))
        total.observed_in_c += tally.observed_in_c
        total.observed_in_python += tally.observed_in_python
        assert tally.raised == 0, name
        assert tally.mismatched() == 0, (name, tally.observe_kinds)
        for kind, count in tally.observe_kinds.items():
            total.observe_kinds[kind] = total.observe_kinds.get(kind, 0) + count
    assert total.observe_kinds.get((PLAIN, PLAIN), 0) > 0, total
    assert total.observe_kinds.get((ACTED, ACTED), 0) > 0, total


def test_generated_log_observe_the_same(generated_frames: list[tuple[int, list[Doc]]]) -> None:
    """A generated log observed with C's observe first: the same tables and docs; C takes
    the events of known processes, plain ones whole, forks, execs and exits to _act."""
    docs = [event["doc"] for _, events in generated_frames for event in events if event["raw"]]
    tally = Pair(c_observes=True).run(docs)
    plain_docs = sum(
        1 for doc in docs if doc["auditd"].get("data", {}).get("syscall") not in SPECIAL
    )
    print(
        f"generated log: {len(docs)} docs, {plain_docs} without fork/exec/exit; observe "
        f"took {tally.observed_in_c}, left {tally.observed_in_python} to Python"
    )
    print(f"  (expected by Python's tests, done by C): {tally.observe_kinds}")
    assert tally.mismatched() == 0, tally.observe_kinds
    assert tally.observe_kinds.get((PLAIN, PLAIN), 0) > 0.7 * plain_docs
    assert tally.observe_kinds.get((ACTED, ACTED), 0) > 0.7 * (len(docs) - plain_docs)
    ends = sum(1 for doc in docs if doc["auditd"].get("data", {}).get("syscall") in
               ("clone", "execve", "exit_group"))  # fmt: skip
    print(f"  forks, execs and exits: {ends}, done whole in C: {tally.done_in_c}")
    # In frame order (no reorder window here) about half the children's first events, from
    # the other shard, come before their fork: a placeholder the fork merges, in Python.
    assert tally.done_in_c > 0.6 * ends
    assert tally.handled == len(docs)


@pytest.mark.parametrize("depth", [0, 16])
def test_hostile_docs_observe_the_same(depth: int) -> None:
    """The hostile docs of test_hostile_docs_enrich_the_same, observed with C's observe
    first (late events, reused pids, tentative children, other ppids, odd times): the same."""
    pair = Pair(TableConfig(ancestry_max_depth=depth), c_observes=True)
    pair.both(lambda t: t.scan(FakeProcSource(proc_infos())))
    steps = scenario()
    for pid, ppid in ((1039, 1038), (2000, 1), (2000, 1005), (2000, 4242), (5000, 100),
                      (3001, 3000), (7001, 7000), (7100, 1), (3100, 100), (3101, 100), (42, 1)):  # fmt: skip
        for index, doc in enumerate(hostile_variants(pid, ppid, BASE_MS + LAST)):
            steps.append((with_time(doc, stamp(BASE_MS + LAST + index % 3)), True))
    for ts in timestamps(BASE_MS + LAST + 5):
        steps.append((with_time(plain(LAST + 5, 1039, 1038), ts), True))
        steps.append((with_time(plain(LAST + 5, 1039, None, exe="/bin/other"), ts), True))
    for syscall in ("exit", "exit_group", "execve", "clone", "openat", None, 7, ["x"]):
        doc = plain(LAST + 9, 1039, 1038)
        doc["auditd"]["data"]["syscall"] = syscall
        steps.append((doc, True))
    # Fresh single-threaded processes (forked, exec'd): a plain exit ends one, exit_group too.
    for index, syscall in enumerate(("exit", "exit_group", "openat")):
        child, at = 6000 + index, LAST + 20 + 10 * index
        steps.append((fork(at, 100, 1, child, exe="/bin/bash"), True))
        steps.append((execve(at + 1, child, 100, "/bin/x", ["x"]), True))
        doc = plain(at + 2, child, 100)
        doc["auditd"]["data"].update(syscall=syscall, a0="0")
        steps.append((doc, True))
    for section in ("auditd", "data"):
        for value in ("x", None, DictSub(data={"syscall": "openat"})):
            doc = plain(LAST + 9, 1039, 1038)
            (doc if section == "auditd" else doc["auditd"])[section] = value
            steps.append((doc, True))
    tally = pair.steps(steps)
    assert tally.observed_in_c > 0 and tally.observed_in_python > 0, tally
    assert tally.took_wrongly() == 0, tally
    assert tally.observe_kinds.get((ACTED, ACTED), 0) > 0, tally


def fork_variants(at: int) -> list[Step]:
    """Forks by the scenario's processes, each a case C's fork takes or leaves to Python."""
    steps: list[Step] = []
    child = iter(range(9000, 9100))

    def add(doc: Doc) -> None:
        steps.append((doc, True))

    add(fork(at, 1039, 1038, next(child)))  # the common case
    add(fork(at + 1, 1039, 1038, next(child), syscall="fork", a0="0"))
    add(fork(at + 2, 1039, 1038, next(child), syscall="vfork"))
    add(fork(at + 3, 1039, 1038, next(child), a0="0x1200011"))  # int(x, 16) takes "0x"
    add(fork(at + 4, 1039, 1038, next(child), a0="1_200_011"))
    add(fork(at + 5, 1039, 1038, next(child), a0=None))  # no flags
    add(fork(at + 6, 1039, 1038, next(child), a0="3d0f00"))  # a thread
    add(fork(at + 7, 1039, 1038, next(child), a0="1208011"))  # CLONE_PARENT
    add(fork(at + 8, 1039, 1038, next(child), a0="21200011"))  # CLONE_NEWPID
    add(fork(at + 9, 1039, 1038, next(child), syscall="clone3", a0="7ffd0000"))
    for exit in ("-11", " 9050", "+9051", "9_052", "0", "", "x", "99999999999999999999"):
        doc = fork(at + 10, 1039, 1038, 0)
        doc["auditd"]["data"]["exit"] = exit
        add(doc)
    for exit in (9053, None, 9054.0, True):
        doc = fork(at + 11, 1039, 1038, 0)
        doc["auditd"]["data"]["exit"] = exit
        add(doc)
    for result in ("fail", None, StrSub("success"), 7):
        doc = fork(at + 12, 1039, 1038, next(child))
        doc["auditd"]["result"] = result
        add(doc)
    failed = fork(at + 12, 1039, 1038, 0)
    failed["auditd"]["data"]["exit"] = "-11"
    failed["auditd"]["result"] = "fail"
    add(failed)
    add(fork(at + 13, 1039, 1038, 1038))  # the pid of a live process: retired, in Python
    add(fork(at + 14, 100, 1, 5000))  # a pid whose last process exited: previous is kept
    add(fork(at + 15, 100, 1, 1039 + 1000))  # new
    add(fork(at + 16, 7001, 7000, next(child)))  # in a container (from /proc)
    add(fork(at + 17, 3000, 1, next(child)))  # a shim
    add(fork(at + 18, 1039, 1038, next(child), comm="runc:[2:INIT]"))
    add(fork(at + 19, 1039, 1038, next(child), comm=StrSub("bash")))
    late = fork(at - 5000, 1039, 1038, 9099)  # older than the process now holding 9099
    add(fork(at + 20, 1039, 1038, 9099))
    add(late)
    # Exits: of a child (no children), of its parent (children alive: Python reparents),
    # again (nothing), a maybe-threaded exit (nothing), lenient or odd exit codes.
    add(exit_group(at + 30, 9000, 1039, code=3))
    add(exit_group(at + 31, 1039, 1038))
    add(exit_group(at + 32, 9000, 1039, code=4))
    for index, a0 in enumerate(("0x1", "1_0", None, 3, "", "1ff", "fffffffffffffffffff")):
        child = 9200 + index
        add(fork(at + 40 + index, 100, 1, child))
        doc = exit_group(at + 50 + index, child, 100)
        doc["auditd"]["data"]["a0"] = a0
        add(doc)
    add(fork(at + 60, 100, 1, 9300, a0="3d0f00"))  # 100 becomes maybe-threaded
    add(fork(at + 61, 100, 1, 9301))
    add(execve(at + 62, 9301, 100, "/bin/single", ["single"]))  # single-threaded again
    add(ev(at + 63, "exit", 100, 1, a0="0"))  # a thread's exit: nothing
    add(ev(at + 64, "exit", 9301, 100, a0="2", result=""))  # the process's
    # Execs: plain, failed, late, odd images; into a runtime's init or a shim; a shim's child.
    add(fork(at + 70, 100, 1, 9400))
    add(execve(at + 72, 9400, 100, "/bin/one", ["one", "-x"]))
    add(execve(at + 71, 9400, 100, "/bin/late", ["late"]))  # older than the last exec
    failed_exec = execve(at + 73, 9400, 100, "/bin/missing", ["missing"])
    failed_exec["auditd"]["result"] = "fail"
    add(failed_exec)
    for index, change in enumerate((
        {"args": "not a list"}, {"args": ["ok", 7]}, {"args": []}, {"args": None},
        {"name": ""}, {"name": None}, {"working_directory": None}, {"executable": None},
        {"title": StrSub("t")}, {"executable": StrSub("/bin/s")},
    )):  # fmt: skip
        doc = execve(at + 74 + index, 9400, 100, f"/bin/v{index}", [f"v{index}"])
        for key, value in change.items():
            if value is None:
                doc["process"].pop(key, None)
            else:
                doc["process"][key] = value
        add(doc)
    add(execve(at + 90, 9400, 100, "/usr/bin/runc", ["runc", "init"]))
    add(execve(at + 91, 9400, 100, "/usr/bin/containerd-shim-runc-v2",
               ["containerd-shim-runc-v2", "-namespace", "moby", "-id", ID_A]))  # fmt: skip
    add(fork(at + 92, 9400, 100, 9401, exe="/usr/bin/containerd-shim-runc-v2"))
    add(execve(at + 93, 9401, 9400, "/bin/app", ["app"]))  # joins the shim's container
    add(fork(at + 94, 3001, 3000, 9402, exe="/bin/sh"))  # in a container already
    add(execve(at + 95, 9402, 3001, "/bin/inside", ["inside"]))
    return steps


@pytest.mark.parametrize("host", ["", "node-1", "nœud"])
def test_forks_execs_and_exits_done_in_c_are_python_s(host: str) -> None:
    """Forks, execs and exits of every kind after the scenario: the ones C does whole (plain
    forks, vforks, clones, threads, failed forks, a reused pid; execs, failed or late ones, a
    shim's; exits without live children, repeated or of a maybe-threaded process) leave the
    same tables and lifecycle docs as Python's _observe; the rest (clone3, CLONE_PARENT,
    lenient numbers, live pids, containers, shims, runc init, a shim's child joining its
    container, odd doc values, children to reparent) go to Python with the same result."""
    pair = Pair(TableConfig(host=host), c_observes=True)
    pair.both(lambda t: t.scan(FakeProcSource(proc_infos())))
    steps = scenario() + fork_variants(LAST + 100)
    tally = pair.steps(steps)
    assert tally.took_wrongly() == 0, tally
    assert tally.done_in_c >= 40, tally


def test_a_full_table_or_a_patched_method_leaves_the_fork_to_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At max_processes (_insert would evict) and with _fork or _set_parent replaced, C does
    not fork; the tables still end the same."""
    table = ProcessTable()
    for doc, _ in scenario(chain=3):
        table.observe(doc)
    table.config.max_processes = len(table)
    taken = native.observe(table, fork(LAST, 1002, 1001, 9501))
    assert isinstance(taken, tuple), taken  # the actor resolved, the fork left to _act
    table.config.max_processes = len(table) + 1
    assert isinstance(native.observe(table, fork(LAST, 1002, 1001, 9502)), list)
    table.config.max_processes = TableConfig().max_processes
    for name in ("_fork", "_set_parent", "_insert", "_act"):
        original = getattr(ProcessTable, name)
        monkeypatch.setattr(ProcessTable, name, lambda *a, _f=original: _f(*a))
        assert native.observe(table, fork(LAST, 1002, 1001, 9500)) is False, name
        monkeypatch.setattr(ProcessTable, name, original)
    assert isinstance(native.observe(table, fork(LAST, 1002, 1001, 9500)), list)


def test_a_caller_without_its_children_set_leaves_the_fork_to_python() -> None:
    """A forking process whose ``children`` is unset: C leaves the fork to _act (it read
    that slot without a check and crashed the process); Python counts the doc as bad."""
    table = ProcessTable()
    for doc, _ in scenario(chain=3):
        table.observe(doc)
    del _newest(table, 1002).children
    assert isinstance(native.observe(table, fork(LAST, 1002, 1001, 9601)), tuple)
    bad = table.stats.bad_docs
    assert table.observe(fork(LAST + 1, 1002, 1001, 9602)) == []
    assert table.stats.bad_docs == bad + 1


def test_entity_id_is_python_s() -> None:
    """C's entity_id is tree.entity_id (SHA-256, URL-safe base64) for hosts of every length
    up to 300 bytes, non-ASCII hosts, and pids and start times of every size."""
    rng = random.Random(7)
    for length in range(300):
        host = "".join(rng.choice("abcé-ü.0") for _ in range(length))
        pid, start = rng.randrange(1 << 32), rng.randrange(-(1 << 62), 1 << 62)
        assert native.entity_id(host, pid, start) == tree.entity_id(host, pid, start), length
    assert native.entity_id("", 0, 0) == tree.entity_id("", 0, 0)
    with pytest.raises(UnicodeEncodeError):
        native.entity_id("\udcff", 1, 1)


def test_a_placeholder_seen_again_with_its_image_is_observed_in_c() -> None:
    """Events of a process whose fork was never seen (a placeholder) that show the image it has
    are taken by C's observe (image_ms moves, the cached entry goes); any other image, name
    or cwd, or a str subclass, is left to Python. Its exit_group showing the same image is
    resolved in C and ended by _act. Tables and enriched docs stay the same."""
    pair = Pair(c_observes=True)
    at = BASE_MS + LAST + 500
    steps: list[Step] = [(plain(at, 8100, 1, exe="/bin/p81", comm="p81"), True)]
    same = plain(at + 1, 8100, 1, exe="/bin/p81", comm="p81")
    same["process"]["working_directory"] = "/srv"  # the first cwd it shows is taken in Python
    steps.append((same, True))
    for offset in range(2, 6):  # the same image again; and a child whose lineage shows it
        steps.append((plain(at + offset, 8100, 1, exe="/bin/p81", comm="p81"), True))
        steps.append((plain(at + offset, 8101, 8100, exe="/bin/c", comm="c"), True))
    steps.append((plain(at + 6, 8100, 1), True))  # no executable: nothing to take
    steps.append((plain(at + 7, 8100, 1, exe="/bin/p81", comm=""), True))  # empty name: kept
    for changed in (
        plain(at + 8, 8100, 1, exe="/bin/p81", comm="other"),
        plain(at + 9, 8100, 1, exe="/bin/new", comm="p81"),
        plain(at + 10, 8100, 1, exe=StrSub("/bin/new"), comm="p81"),
    ):
        steps.append((changed, True))
    moved = plain(at + 11, 8100, 1, exe="/bin/new", comm="p81")
    moved["process"]["working_directory"] = "/elsewhere"
    steps.append((moved, True))
    steps.append((plain(at + 12, 8101, 8100, exe="/bin/c", comm="c"), True))
    ends = plain(at + 13, 8101, 8100, exe="/bin/c", comm="c")  # its image, and an exit_group
    ends["auditd"]["data"].update(syscall="exit_group", a0="3")
    steps.append((ends, True))
    tally = pair.steps(steps)
    assert tally.observe_kinds.get((ACTED, ACTED), 0) == 1, tally
    assert tally.took_wrongly() == 0, tally
    assert tally.observe_kinds.get((PLAIN, PLAIN), 0) >= 8, tally  # the repeats of both processes
    assert tally.observe_kinds.get((PY, PY), 0) >= 4, tally  # the changes, in Python
    assert pair.c_table.lookup(8100, at + 12) is not None
