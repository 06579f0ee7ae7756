"""A replay of an aggregated log keeps each audit node's processes apart.

auditd's remote logging (audisp-remote) writes several hosts' records into one log, each
line prefixed ``node=NAME``; two hosts' pids collide all the time. The tree keeper keeps
one process table per node in replay (treekeeper/pipeline.py), so host B's pid 500 is
never enriched with host A's pid 500, and lifecycle docs say which host they are about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from live_helpers import replay_to_jsonl

from assembler.ecs import host_name

REPO = Path(__file__).resolve().parents[1]
Doc = dict[str, Any]
LIFECYCLE = ("process-started", "process-exec", "process-exited")
NODE_A, NODE_B = "hostA", "host%B"  # B's name is escaped in host.name (assembler/ecs.py)


def event_lines(node: str, ms: int, serial: int, syscall: str, **fields: str) -> list[str]:
    """The lines of one syscall event of ``node`` (no prefix for ""), EXECVE when ``args``."""
    stamp = f"msg=audit(1700000000.{ms:03d}:{serial}):"
    args = fields.pop("args", "")
    body = " ".join(f"{name}={value}" for name, value in fields.items())
    lines = [
        f"type=SYSCALL {stamp} arch=c000003e syscall={syscall} success=yes {body} auid=0"
        " uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 key=(null)"
    ]
    if args:
        words = args.split()
        quoted = " ".join(f'a{i}="{word}"' for i, word in enumerate(words))
        lines.append(f"type=EXECVE {stamp} argc={len(words)} {quoted}")
    lines.append(f"type=EOE {stamp} ")
    prefix = f"node={node} " if node else ""
    return [prefix + line for line in lines]


def colliding_log(node_a: str, node_b: str) -> bytes:
    """Both hosts' pid 400 fork and exec; B's pid 500 acts right after A's pid 500 exec'd."""
    events = [
        # A: 400 forks 500, which execs alpha
        event_lines(node_a, 100, 10, "56", exit="500", ppid="1", pid="400",
                    comm='"shA"', exe='"/bin/shA"'),
        event_lines(node_a, 110, 11, "59", exit="0", ppid="400", pid="500",
                    comm='"alpha"', exe='"/usr/bin/alpha"', args="alpha --on-hostA"),
        # B: its own pid 500, never exec'd in this log
        event_lines(node_b, 150, 70, "257", exit="3", ppid="1", pid="500",
                    comm='"beta"', exe='"/usr/bin/beta"'),
        # B: its own 400 forks 700, which execs gamma, A's 500 acts between, 700 exits
        event_lines(node_b, 200, 71, "56", exit="700", ppid="1", pid="400",
                    comm='"shB"', exe='"/bin/shB"'),
        event_lines(node_b, 210, 72, "59", exit="0", ppid="400", pid="700",
                    comm='"gamma"', exe='"/usr/bin/gamma"', args="gamma --on-hostB"),
        event_lines(node_a, 300, 12, "257", exit="3", ppid="400", pid="500",
                    comm='"alpha"', exe='"/usr/bin/alpha"'),
        event_lines(node_b, 400, 73, "231", exit="0", ppid="400", pid="700",
                    comm='"gamma"', exe='"/usr/bin/gamma"'),
    ]  # fmt: skip
    return "".join(line + "\n" for lines in events for line in lines).encode()


def replay(log: Path, out: Path, native: str | None = None) -> list[Doc]:
    """`auditstream replay LOG` into the jsonl sink ``out``: its docs, in order."""
    return replay_to_jsonl(log, out, native)[0]


def audit_doc(docs: list[Doc], serial: int) -> Doc:
    """The audit event doc of ``serial``."""
    found = [d for d in docs if d.get("event", {}).get("sequence") == serial]
    assert len(found) == 1, (serial, docs)
    return found[0]


def lifecycle(docs: list[Doc]) -> list[Doc]:
    """The tree keeper's lifecycle docs, in order."""
    return [d for d in docs if d.get("event", {}).get("action") in LIFECYCLE]


def test_each_node_is_enriched_from_its_own_processes(tmp_path: Path) -> None:
    """Colliding pids of two nodes get distinct entity ids, parents and args of their own node."""
    log = tmp_path / "aggregated.log"
    log.write_bytes(colliding_log(NODE_A, NODE_B))
    docs = replay(log, tmp_path / "out.jsonl")
    a_exec, a_open = audit_doc(docs, 11), audit_doc(docs, 12)
    b_open, b_exec = audit_doc(docs, 70), audit_doc(docs, 72)
    a_500 = a_exec["process"]["entity_id"]
    assert a_open["process"]["entity_id"] == a_500  # A's own later event still finds it
    assert a_open["process"]["args"] == ["alpha", "--on-hostA"]
    b_500 = b_open["process"]
    assert b_500.get("entity_id") != a_500
    assert "args" not in b_500  # A's exec of its pid 500 says nothing about B's
    a_ids = {a_500, a_exec["process"]["parent"]["entity_id"]}
    assert b_500.get("parent", {}).get("entity_id") not in a_ids
    assert not a_ids & {anc.get("entity_id") for anc in b_500.get("ancestry", [])}
    # B's fork/exec chain: gamma's parent is B's 400, not A's (same pid, same ppid)
    b_parent = b_exec["process"]["parent"]
    assert b_parent["entity_id"] != a_exec["process"]["parent"]["entity_id"]
    assert b_parent["executable"] == "/bin/shB"
    assert b_exec["process"]["ancestry"][0]["entity_id"] == b_parent["entity_id"]


def test_lifecycle_docs_name_their_node_as_its_audit_docs_do(tmp_path: Path) -> None:
    """Each lifecycle doc carries the host.name its node's audit docs carry (escaped alike)."""
    log = tmp_path / "aggregated.log"
    log.write_bytes(colliding_log(NODE_A, NODE_B))
    docs = replay(log, tmp_path / "out.jsonl")
    assert audit_doc(docs, 72)["host"] == {"name": host_name(NODE_B)} != {"name": NODE_B}
    host_of: dict[str, str] = {}  # entity id -> the host.name of the audit docs showing it
    for doc in docs:
        if doc.get("auditd"):
            process = doc["process"]
            for entity in (process, process.get("parent", {}), *process.get("ancestry", [])):
                if "entity_id" in entity:
                    host_of[entity["entity_id"]] = doc["host"]["name"]
    steps = lifecycle(docs)
    seen = {(d["event"]["action"], d["host"]["name"], d["process"]["pid"]) for d in steps}
    assert {
        ("process-started", "hostA", 500),
        ("process-exec", "hostA", 500),
        ("process-started", host_name(NODE_B), 700),
        ("process-exec", host_name(NODE_B), 700),
        ("process-exited", host_name(NODE_B), 700),
    } <= seen
    for doc in steps:
        assert doc["host"]["name"] == host_of[doc["process"]["entity_id"]], doc


def test_c_and_python_tables_agree_on_an_aggregated_log(tmp_path: Path) -> None:
    """The C apply loop and the Python reference give the same docs for the multi-node log."""
    log = tmp_path / "aggregated.log"
    log.write_bytes(colliding_log(NODE_A, NODE_B))
    native = replay(log, tmp_path / "c.jsonl")
    python = replay(log, tmp_path / "python.jsonl", native="0")
    assert native == python
    assert len({d["host"]["name"] for d in lifecycle(native)}) == 2


def test_a_log_without_node_keeps_one_table(tmp_path: Path) -> None:
    """Without node= every record is one host's: pid 500 is one process, lifecycle docs name no host."""
    log = tmp_path / "audit.log"
    log.write_bytes(colliding_log("", ""))
    docs = replay(log, tmp_path / "out.jsonl")
    a_exec, b_open = audit_doc(docs, 11), audit_doc(docs, 70)
    assert b_open["process"]["entity_id"] == a_exec["process"]["entity_id"]
    assert b_open["process"]["args"] == ["alpha", "--on-hostA"]
    assert lifecycle(docs) and not any("host" in d for d in docs)


def test_nodes_past_the_cap_share_one_table_and_say_so(monkeypatch: Any, caplog: Any) -> None:
    """A log naming more nodes than MAX_NODE_TABLES keeps memory bounded: the further nodes
    share one table (not remembered per name), with one warning and a count in the stats."""
    from auditstream.config import Config
    from treekeeper import pipeline

    monkeypatch.setattr(pipeline, "MAX_NODE_TABLES", 3)
    cfg = Config()
    cfg.receiver.source = "file"
    step = pipeline.TreeStep(cfg)
    own = [step._table_of(f"n{i}") for i in range(3)]
    assert len({id(table) for table in own}) == 3
    past = [step._table_of(f"m{i}") for i in range(50)]
    assert all(table is past[0] for table in past) and past[0] not in own
    assert len(step.tables) == 4  # "" and n0..n2: the names past the cap are not kept
    assert step.stats()["runs_in_the_shared_node_table"] == 50
    assert sum("more than 3 audit nodes" in r.getMessage() for r in caplog.records) == 1
