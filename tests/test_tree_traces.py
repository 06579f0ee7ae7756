"""Laurel's process traces replayed through parse → reassemble-by-id → coalesce → build_doc → tree.

Laurel's tests (src/coalesce.rs) assert process labels that propagate from a
process to its descendants, and SPAWNED_BY. Our equivalent: the labelled
process is the event's own process or one of its ``process.ancestry``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from treekeeper.reorder import ReorderWindow
from treekeeper.tree import ProcessTable

parse = pytest.importorskip("assembler.parse", reason="assembler.parse not importable yet")
coalesce_mod = pytest.importorskip("assembler.coalesce", reason="assembler.coalesce not importable")
ecs = pytest.importorskip("assembler.ecs", reason="assembler.ecs not importable yet")
logline = pytest.importorskip("auditstream.logline")

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "laurel" / "src" / "testdata"
EOE = 1320


@pytest.fixture(scope="module")
def testdata() -> Path:
    """The laurel trace folder of the shared corpus, or skip."""
    if not TESTDATA.is_dir():
        pytest.skip(f"laurel corpus not found at {TESTDATA}")
    return TESTDATA


def events(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(laurel event id, doc) per event, completed at EOE (the rest at end of input)."""
    done: list[list[Any]] = []
    for path in paths:
        open_events: dict[tuple[str, int, int, int], list[Any]] = {}
        for line in path.read_bytes().splitlines():
            if not line or line.startswith(b"#"):
                continue
            rec = parse.parse_record(*logline.split_log_line(line))
            key = (rec.node, rec.sec, rec.msec, rec.serial)
            open_events.setdefault(key, []).append(rec)
            if rec.type == EOE:
                done.append(open_events.pop(key))
        done.extend(open_events.values())
    out = []
    for recs in done:
        body = [r for r in recs if r.type != EOE]
        first = recs[0]
        doc = ecs.build_doc(recs, coalesce_mod.coalesce(body))
        out.append((f"{first.sec}.{first.msec:03d}:{first.serial}", doc))
    return out


def replay(paths: list[Path], *, window: bool = True) -> dict[str, dict[str, Any]]:
    """Feed the events (through the reorder window) to a table; return enriched docs by id."""
    table = ProcessTable()
    order: ReorderWindow[tuple[str, dict[str, Any]]] = ReorderWindow()
    items = events(paths)
    if window:
        ordered = []
        for item in items:
            ordered += order.push(item, table.event_ms(item[1]), item[1]["event"]["sequence"])
        items = ordered + order.flush()
    by_id = {}
    for event_id, doc in items:
        table.observe(doc)
        table.enrich(doc)
        by_id[event_id] = doc
    return by_id


def lineage_ids(doc: dict[str, Any]) -> list[str]:
    """The event's own entity id followed by its ancestors'."""
    process = doc["process"]
    return [process["entity_id"]] + [a["entity_id"] for a in process.get("ancestry", [])]


@pytest.mark.parametrize("name", ["shell-proc-trace.txt", "shell-proc-trace-reordered.txt"])
def test_shell_proc_trace(testdata: Path, name: str) -> None:
    """Every event laurel labels "test-script" descends from (or is) the test-script process."""
    docs = replay([testdata / name])
    script = docs["1682609045.526:29238"]["process"]
    assert script["pid"] == 71505 and script["executable"] == "/usr/bin/dash"
    for event_id in ["1682609045.526:29238", "1682609045.530:29239", "1682609045.530:29240",
                     "1682609045.530:29241", "1682609045.530:29242", "1682609045.530:29243",
                     "1682609045.530:29244", "1682609045.534:29245"]:  # fmt: skip
        assert script["entity_id"] in lineage_ids(docs[event_id]), event_id
    assert script["entity_id"] not in lineage_ids(docs["1682609045.526:29237"])
    sed = docs["1682609045.534:29245"]["process"]
    assert [a["pid"] for a in sed["ancestry"]] == [71506, 71505, 71432]


def test_reordered_without_window_does_not_corrupt(testdata: Path) -> None:
    """Fed in EOE order (reversed), the table stays consistent: one entity per process."""
    docs = replay([testdata / "shell-proc-trace-reordered.txt"], window=False)
    per_pid: dict[int, set[str]] = {}
    for doc in docs.values():
        per_pid.setdefault(doc["process"]["pid"], set()).add(doc["process"]["entity_id"])
    assert all(len(ids) == 1 for ids in per_pid.values())
    sed = docs["1682609045.534:29245"]["process"]
    assert sed["parent"]["pid"] == 71506


def test_dpkg_exec_without_fork(testdata: Path) -> None:
    """dpkg execs dpkg-query in place; the pager's shell and pager descend from that process."""
    docs = replay([testdata / "proc-trace-dpkg-l.txt"])
    dpkg = docs["1778355636.725:2322552"]["process"]
    query = docs["1778355636.728:2322553"]["process"]
    assert dpkg["entity_id"] == query["entity_id"]
    assert query["executable"] == "/usr/bin/dpkg-query"
    for event_id in ["1778355636.752:2322555", "1778355636.754:2322557"]:
        assert dpkg["entity_id"] in lineage_ids(docs[event_id])
    pager = docs["1778355636.754:2322557"]["process"]
    assert [a["pid"] for a in pager["ancestry"][:2]] == [1140463, 1140462]


def test_fork_sleep_exec_orphan(testdata: Path) -> None:
    """The orphan that execs after its parent died (ppid=1) is still spawned by uncaring-parent."""
    docs = replay([testdata / "fork-sleep-exec.txt"])
    parent = docs["1783860945.368:6104005"]["process"]
    orphan = docs["1783860945.368:6104008"]["process"]
    assert orphan["parent"]["pid"] == 1
    assert orphan["ancestry"][0]["entity_id"] == parent["entity_id"]
    assert orphan["ancestry"][0]["executable"] == "/home/user/bin/uncaring-parent"


def test_apt_get_tree(testdata: Path) -> None:
    """Every process of the apt-get update run (tree/01-16) descends from apt-get (tree/00)."""
    files = sorted((testdata / "tree").glob("[0-9][0-9].txt"))
    assert len(files) == 17
    docs = replay(files)
    ordered = sorted(docs.values(), key=lambda d: d["event"]["sequence"])
    apt = ordered[0]["process"]
    assert apt["args"] == ["apt-get", "update"]
    for doc in ordered[1:]:
        assert doc["process"]["ancestry"][0]["entity_id"] == apt["entity_id"]
        assert doc["process"]["parent"]["entity_id"] == apt["entity_id"]
