"""treekeeper.native_enrich.apply_ready (C, treekeeper/csrc/enrich_apply.h) against
TreeStep._apply's Python loop.

Two process tables (the same /proc scan) take the same released events, each its own deep
copy, one through each loop; the table's observe and enrich are the same (C where built)
on both sides. After every batch the output (events and their lifecycle docs, as JSON
bytes), the lifecycle count, any exception and the whole table state must be equal: for
scripted forks, execs, exits, PID reuse and containers, hostile docs, the corpus logs and a
generated log, replayed (no live step) and live (a container step that answers for execs).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from generated_logs import write_generated_log
from native_helpers import native_module
from test_native_enrich import (
    BASE_MS,
    LAST,
    DictSub,
    StrSub,
    _bench_frames,
    as_json,
    corpus_logs,
    full_state,
    hostile_variants,
    log_docs,
    plain,
    proc_infos,
    scenario,
)
from test_tree import execve, exit_group, fork

from treekeeper import pipeline
from treekeeper.enrich import iso_ms
from treekeeper.pipeline import EXEC_SYSCALLS, TreeStep
from treekeeper.procfs import FakeProcSource
from treekeeper.tree import ProcessTable, TableConfig

native: Any = native_module("treekeeper.native_enrich")
Doc = dict[str, Any]


def live_container(calls: list[int]) -> Any:
    """A stand-in for TreeStep._live_container: the real one's test, one doc for an exec."""

    def live(doc: Doc) -> list[Doc]:
        calls.append(1)
        if doc.get("auditd", {}).get("data", {}).get("syscall") not in EXEC_SYSCALLS:
            return []
        return [{"event": {"action": "container-seen"}, "pid": doc.get("process", {}).get("pid")}]

    return live


class Side:
    """A table and a stand-in step fed through one loop."""

    def __init__(self, native_loop: bool, live: bool, config: TableConfig | None = None) -> None:
        self.table = ProcessTable(config or TableConfig())
        self.table.scan(FakeProcSource(proc_infos()))
        self.calls: list[int] = []
        self.step = SimpleNamespace(
            table=self.table,
            event_time=not live,
            lifecycle_events=0,
            _live_container=live_container(self.calls),
        )
        self.native_loop = native_loop

    def apply(self, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> object:
        """The events through the loop: (output JSON, lifecycle count, exception, table)."""
        out: list[dict[str, Any]] = []
        error = None
        with monkeypatch.context() as patch:
            if not self.native_loop:
                patch.setattr(pipeline, "_NATIVE_APPLY", None)
            try:
                if self.native_loop:
                    live = None if self.step.event_time else self.step._live_container
                    native.apply_ready(self.step, self.table, events, out, live)
                else:
                    TreeStep._apply(self.step, events, out)  # type: ignore[arg-type]
            except Exception as err:  # the same must be raised both ways
                error = (type(err).__name__, str(err))
        return as_json(out), self.step.lifecycle_events, error, full_state(self.table)


def events_of(docs: list[Any], first_serial: int = 1) -> list[dict[str, Any]]:
    """Released events around the docs."""
    return [
        {"key": ["", 1, 2, first_serial + i], "raw": 3, "doc": doc} for i, doc in enumerate(docs)
    ]


def both_loops(
    docs: list[Any], monkeypatch: pytest.MonkeyPatch, live: bool, size: int = 37
) -> Side:
    """The docs in batches both ways, compared after each; the C side returned."""
    python, mine = Side(False, live), Side(True, live)
    for start in range(0, len(docs), size):
        batch = events_of(docs[start : start + size], start)
        want = python.apply(copy.deepcopy(batch), monkeypatch)
        got = mine.apply(copy.deepcopy(batch), monkeypatch)
        assert got == want, start
    return mine


@pytest.mark.parametrize("live", [False, True], ids=["replay", "live"])
def test_scripted_and_hostile_docs(monkeypatch: pytest.MonkeyPatch, live: bool) -> None:
    """Forks, execs, exits, PID reuse, containers, then hostile docs: the same both ways; live,
    the container step is asked for execs only."""
    docs = [doc for doc, _ in scenario()]
    for pid, ppid in ((1039, 1038), (7001, 7000), (3101, 100), (42, 1)):
        docs += hostile_variants(pid, ppid, BASE_MS + LAST)
    mine = both_loops(docs, monkeypatch, live)
    if live:
        execs = sum(
            1
            for doc in docs
            if isinstance(doc, dict)
            and isinstance(doc.get("auditd"), dict)
            and isinstance(doc["auditd"].get("data"), dict)
            and doc["auditd"]["data"].get("syscall") in EXEC_SYSCALLS
        )
        assert 0 < execs <= len(mine.calls) < len(docs), (len(mine.calls), execs, len(docs))


@pytest.mark.parametrize("live", [False, True], ids=["replay", "live"])
def test_corpus_docs(monkeypatch: pytest.MonkeyPatch, live: bool) -> None:
    """Every corpus log's docs: the same both ways."""
    for text in corpus_logs().values():
        docs = log_docs(text)
        if docs:
            both_loops(docs, monkeypatch, live, size=23)


def test_generated_docs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A generated log's frames (forks, execs, exits of many processes): the same both ways."""
    log = write_generated_log(tmp_path / "gen.log", 20000)
    docs = [doc for _, frame in _bench_frames(log, 20000, 2) for doc in frame]
    both_loops(docs[:6000], monkeypatch, live=True, size=200)


def test_an_event_without_a_doc_raises_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event without "doc": KeyError both ways, the events before it applied."""
    docs = [doc for doc, _ in scenario()][:5]
    events = [*events_of(docs), {"key": [], "raw": 1}]
    sides = [Side(False, True), Side(True, True)]
    results = [side.apply(copy.deepcopy(events), monkeypatch) for side in sides]
    assert results[0] == results[1]
    assert results[1][2] is not None and results[1][2][0] == "KeyError"


def test_shapes_the_c_steps_leave_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exec doc whose auditd, data or syscall is a subclass asks the container step as Python
    does."""
    execs = [
        doc
        for doc, _ in scenario()
        if doc.get("auditd", {}).get("data", {}).get("syscall") in EXEC_SYSCALLS
    ]
    twisted: list[Any] = []
    for doc in execs[:4]:
        a, b, c = copy.deepcopy(doc), copy.deepcopy(doc), copy.deepcopy(doc)
        a["auditd"] = DictSub(a["auditd"])
        b["auditd"]["data"] = DictSub(b["auditd"]["data"])
        c["auditd"]["data"]["syscall"] = StrSub(c["auditd"]["data"]["syscall"])
        twisted += [a, b, c]
    mine = both_loops(twisted, monkeypatch, live=True, size=5)
    assert len(mine.calls) == len(twisted)


def test_an_error_of_the_c_enrich_is_counted_as_python_counts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Processes whose args are not text make the C enrich raise TypeError (an ancestry entry
    it asks Process.entry for): ProcessTable.enrich counts it in bad_docs, and so does the C
    loop, and the events still go out."""
    docs = [doc for doc, _ in scenario()]
    sides = [Side(False, False), Side(True, False)]
    results = []
    for side in sides:
        side.apply(events_of(copy.deepcopy(docs[:30])), monkeypatch)
        for proc in side.table.processes.values():
            proc.args, proc.ancestry_entry = [1, 2], None
        results.append(side.apply(events_of(copy.deepcopy(docs[30:60]), 30), monkeypatch))
    assert results[0] == results[1]
    assert sides[1].table.stats.bad_docs > 0


def test_times_out_of_order_with_python_between_in_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches whose times step back, with events the C steps leave to Python (an unknown
    process, one in a dict subclass, a bad time) among them: the table's newest time and the rest of its state are
    the same both ways after each, so the loop's one view of the table stays true."""
    docs: list[Any] = []
    for index, (doc, _) in enumerate(scenario()):
        at = BASE_MS + 10 * index

        def at_ms(ms: int, doc: Doc = doc, syscall: str | None = "openat") -> Doc:
            copied = copy.deepcopy(doc)
            copied["@timestamp"] = iso_ms(ms)
            data = copied.get("auditd", {}).get("data")
            if syscall is not None and isinstance(data, dict):
                data["syscall"] = syscall  # one the C steps take whole
            return copied

        stranger = at_ms(at + 9)  # Python's: a process the table does not know
        stranger["process"] = {"pid": 90000 + index, "parent": {"pid": 1}}
        if index % 2:  # ... whose process neither C step reads: Python's times only
            stranger["process"] = DictSub(stranger["process"])
        docs += [at_ms(at, syscall=None), at_ms(at + 2), at_ms(at + 1), stranger, at_ms(at + 5)]
        if index % 7 == 6:
            docs.append(dict(at_ms(at + 6), **{"@timestamp": "not a time"}))
    for size in (3, 4, 5, 7, len(docs)):  # batches that end at each step, and one batch
        both_loops(docs, monkeypatch, live=False, size=size)


def _runs_of_7001(changes: list[Doc]) -> tuple[list[Doc], list[list[int]]]:
    """Plain events of 7001 (a known process in a container) in runs of three with one
    pristine `process`, ``changes`` between them; the docs and each run's indices."""
    docs: list[Doc] = []
    runs: list[list[int]] = []
    at = LAST + 100
    for change in [None, *changes]:
        if change is not None:
            docs.append(change)
        runs.append([])
        for _ in range(3):
            at += 1
            runs[-1].append(len(docs))
            docs.append(plain(at, 7001, 7000, exe="/worker", comm="worker"))
    return docs, runs


def _process_ids(docs: list[Doc]) -> dict[int, int]:
    """The docs through the C loop on a fresh table: doc index -> id of its `process`."""
    out: list[dict[str, Any]] = []
    side = Side(True, False)
    native.apply_ready(side.step, side.table, events_of(docs), out, None)
    return {e["key"][3] - 1: id(e["doc"]["process"]) for e in out if e["raw"]}


def test_a_run_of_one_process_shares_its_enriched_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events of one process with one pristine `process` in one batch get one enriched dict
    (enrich_memo.h), equal to what the Python loop writes for each."""
    docs, runs = _runs_of_7001([])
    both_loops(docs, monkeypatch, live=False, size=len(docs))
    ids = _process_ids(copy.deepcopy(docs))
    # the first may be enriched alone (its ancestors' elements made in Python), not the rest
    assert ids[runs[0][1]] == ids[runs[0][2]]


def test_the_shared_process_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one batch, the parent's exec, another cwd or parent section, a pid the table does not
    know and the process's own exec between runs of 7001 with one pristine `process`: the same output as
    the Python loop, and no run given another run's enriched dict."""
    at = LAST + 50
    other_cwd = plain(at, 7001, 7000, exe="/worker", comm="worker")
    other_cwd["process"]["working_directory"] = "/elsewhere"
    named_parent = plain(at, 7001, 7000, exe="/worker", comm="worker")
    named_parent["process"]["parent"]["name"] = "its own"  # the dict enrich adds to
    changes = [
        execve(at, 7000, 1, "/app2", ["app2"]),  # the parent's image and ancestry element
        other_cwd,  # another pristine process
        named_parent,
        plain(at, 99999, 7000),  # a process the table did not know
        execve(at + 1, 7001, 7000, "/worker2", ["worker2"]),  # its own image
    ]
    docs, runs = _runs_of_7001(changes)
    for doc in docs:  # one time for all: only the changes between the runs tell them apart
        doc["@timestamp"] = iso_ms(BASE_MS + at + 2)
    both_loops(docs, monkeypatch, live=False, size=len(docs))
    ids = _process_ids(copy.deepcopy(docs))
    per_run = [{ids[i] for i in run} for run in runs]
    assert all(ids[run[1]] == ids[run[2]] for run in runs)
    assert all(not (a & b) for n, a in enumerate(per_run) for b in per_run[n + 1 :]), per_run


@pytest.mark.parametrize(
    "values",
    [(1, 1.0), (1, True), (0.0, -0.0), (2**70, 2**70 + 1), ("a", "a\x00"), ([1], (1,))],
    ids=["int-float", "int-bool", "zero-signs", "big-ints", "str", "list-tuple"],
)
def test_a_pristine_process_that_differs_in_type_only_is_enriched_anew(
    monkeypatch: pytest.MonkeyPatch, values: tuple[Any, Any]
) -> None:
    """Two events whose `process` differ only in a value Python finds equal (1 and 1.0, True,
    -0.0) or nearly so: the second is not given the first's enriched dict."""
    docs = _runs_of_7001([])[0]
    for doc, value in zip(docs[1:], values, strict=True):  # after the first, the memo's
        doc["process"]["x"] = value
    out: list[dict[str, Any]] = []
    side = Side(True, False)
    native.apply_ready(side.step, side.table, events_of(docs), out, None)
    written = [e["doc"]["process"]["x"] for e in out[1:]]
    assert [(type(x), x) for x in written] == [(type(v), v) for v in values]
    assert out[1]["doc"]["process"] is not out[2]["doc"]["process"]


def _random_lives(seed: int, count: int = 400) -> list[Doc]:
    """Plain events of a few processes (each with one pristine `process`, so runs form)
    mixed at random with forks, execs, exits and reparenting ppids of them and their
    parents: the table changes between and inside runs."""
    rng = random.Random(seed)
    docs: list[Doc] = []
    parent_of = {7001: 7000, 7000: 1, 7100: 1}
    images = {pid: (f"/img{pid}", f"p{pid}") for pid in parent_of}
    next_child = 8000
    at = LAST + 1000
    pid = 7001
    for _ in range(count):
        at += rng.choice((0, 0, 1, 2))
        if pid not in parent_of or rng.random() < 0.2:  # a busy process for a while
            pid = rng.choice(sorted(parent_of))
        ppid = parent_of[pid]
        kind = rng.random()
        if kind < 0.70:  # a plain event as its process writes it: runs of equal texts
            exe, comm = images[pid]
            docs.append(plain(at, pid, ppid, exe=exe, comm=comm))
        elif kind < 0.80:  # a new image: the process's own, or a parent's for its children
            images[pid] = (f"/img{pid}-{at}", f"q{at % 7}")
            docs.append(execve(at, pid, ppid, images[pid][0], [images[pid][1], str(at)]))
        elif kind < 0.88:  # a child, which then acts
            child, next_child = next_child, next_child + 1
            docs.append(fork(at, pid, ppid, child, exe=images[pid][0]))
            parent_of[child] = pid
            images[child] = images[pid]
        elif kind < 0.94 and pid >= 8000:  # a child exits; its own children go to init
            docs.append(exit_group(at, pid, ppid))
            del parent_of[pid]
            for other, up in list(parent_of.items()):
                if up == pid:
                    parent_of[other] = 1
        else:  # another cwd: the same process, another pristine `process`
            exe, comm = images[pid]
            doc = plain(at, pid, ppid, exe=exe, comm=comm)
            doc["process"]["working_directory"] = f"/w{rng.randrange(3)}"
            docs.append(doc)
    return docs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("live", [False, True], ids=["replay", "live"])
def test_random_lives_in_one_batch_as_python_enriches_them(
    monkeypatch: pytest.MonkeyPatch, seed: int, live: bool
) -> None:
    """Random runs of plain events with forks, execs, exits and reparenting between and
    inside them, all in one batch (one memo throughout), and again in batches of 7: the
    C loop's output is the Python loop's, event by event."""
    docs = _random_lives(seed)
    both_loops(docs, monkeypatch, live, size=len(docs))
    both_loops(docs, monkeypatch, live, size=7)
    ids = _process_ids(copy.deepcopy(docs))
    assert len(set(ids.values())) < 0.8 * len(ids)  # runs did share their process


@pytest.mark.parametrize("fragments", [False, True], ids=["entries", "fragments"])
def test_without_ancestry_the_parent_itself_is_compared(
    monkeypatch: pytest.MonkeyPatch, fragments: bool
) -> None:
    """With ancestry_max_depth 0 no ancestor element is read, so nothing needs Python
    between the runs and each run shares one dict from its first event: the parent's exec
    and the process's own exec between runs of 7001 are written as Python writes them."""
    at = LAST + 50
    changes = [
        execve(at, 7000, 1, "/app2", ["app2", "-y"]),
        execve(at + 1, 7001, 7000, "/worker", ["worker", "--new"]),
    ]
    docs, runs = _runs_of_7001(changes)
    for index, doc in enumerate(docs):
        doc["@timestamp"] = iso_ms(BASE_MS + at + 2)
        if any(index in run for run in runs):  # the table's image is written, not the event's
            doc["process"].pop("executable")
    config = TableConfig(ancestry_max_depth=0, ancestry_fragments=fragments)
    outs = []
    for native_loop in (False, True):
        side = Side(native_loop, False, config)
        outs.append(side.apply(events_of(copy.deepcopy(docs)), monkeypatch))
    assert outs[0] == outs[1]
    out: list[dict[str, Any]] = []
    side = Side(True, False, config)
    native.apply_ready(side.step, side.table, events_of(copy.deepcopy(docs)), out, None)
    written = {e["key"][3] - 1: e["doc"]["process"] for e in out if e["raw"]}
    assert written[runs[0][2]] is written[runs[0][1]] is written[runs[0][0]]
    parents = [(written[run[0]]["parent"]["executable"], written[run[0]]["parent"]["args"])
               for run in runs]  # fmt: skip
    assert parents == [("/app", ["/app", "-x"])] + [("/app2", ["app2", "-y"])] * 2
    assert [written[run[0]]["args"] for run in runs] == [
        ["worker"],
        ["worker"],
        ["worker", "--new"],
    ]


def test_an_exec_that_looks_like_the_run_before_is_enriched_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exec whose `process` is the very text of the plain events before it (no args,
    exe or title of its own): its `process` is equal, so only the values the table now gives
    (the image the exec left) tell it from the run's; it is written as Python writes it."""
    at = LAST + 50

    def bare(doc: Doc) -> Doc:
        doc["process"] = {"pid": 7001, "parent": {"pid": 7000}}
        doc["@timestamp"] = iso_ms(BASE_MS + at + 2)
        return doc

    docs = [bare(plain(at, 7001, 7000)) for _ in range(4)]  # the first makes the elements
    docs.insert(3, bare(execve(at, 7001, 7000, "/new", ["new", "-z"])))
    both_loops(docs, monkeypatch, live=False, size=len(docs))
    out: list[dict[str, Any]] = []
    side = Side(True, False)
    native.apply_ready(side.step, side.table, events_of(copy.deepcopy(docs)), out, None)
    written = [e["doc"]["process"] for e in out if e["raw"]]
    assert written[2] is written[1] and written[2]["executable"] == "/worker"
    assert written[3] is not written[2] and "executable" not in written[3]
    assert written[4] is written[3]


def test_a_parent_changed_by_the_python_steps_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's exec in a doc the C steps leave to Python (a dict subclass) between
    events of 7001 with one `process` text, without ancestry: no C enrichment replaces the
    memo between them, so the parent's values it compares are what tell the runs apart."""
    at = LAST + 50
    docs: list[Any] = [plain(at, 7001, 7000, exe="/worker", comm="worker") for _ in range(2)]
    docs.append(DictSub(execve(at, 7000, 1, "/app3", ["app3"])))
    docs += [plain(at, 7001, 7000, exe="/worker", comm="worker") for _ in range(2)]
    for doc in docs:
        doc["@timestamp"] = iso_ms(BASE_MS + at + 2)
    config = TableConfig(ancestry_max_depth=0)
    outs = [
        Side(bool(loop), False, config).apply(events_of(copy.deepcopy(docs)), monkeypatch)
        for loop in (0, 1)
    ]
    assert outs[0] == outs[1]
    out: list[dict[str, Any]] = []
    side = Side(True, False, config)
    native.apply_ready(side.step, side.table, events_of(copy.deepcopy(docs)), out, None)
    written = [e["doc"]["process"] for e in out if e["raw"] and e["doc"]["process"]["pid"] == 7001]
    assert written[1] is written[0] and written[3] is written[2] and written[2] is not written[1]
    assert [w["parent"]["executable"] for w in written] == ["/app"] * 2 + ["/app3"] * 2
