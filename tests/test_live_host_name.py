"""Live records without ``node=`` are this host's: every live doc has ``host.name``.

auditd with ``name_format = hostname`` prefixes each record with ``node=<hostname>`` and
Auditbeat sets ``host.name`` on every event; the live receiver gives the records of its
sources that name no node this host's name (auditstream/hostnode.py), so that the archive of
many hosts tells them apart. A file replay stays as it was: a log without ``node=`` is of
an unknown host. Live runs here read stdin (the auditd plugin source): no kernel needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from live_helpers import replay
from test_native_datagrams import SLOT_BYTES, c_take_records, filled_batch

from assembler.stage import Assembly
from auditstream.config import Config
from auditstream.doc_text import RECORD_HASHES
from auditstream.hostnode import host_name, local_host_name, local_node, node_of_hostname
from auditstream.logline import format_log_line, split_log_line
from auditstream.marker_records import KERNEL_LOST_TYPE, SOCKET_OVERRUN_TYPE, SOURCE_RECONNECT_TYPE
from receiver.checkpoint import SerialMark
from receiver.replaybuffer import ShardBuffer, record_serials, serial_gaps
from receiver.stage import LineCounters, lines_to_records, odd_line
from treekeeper.dedupe import doc_fingerprints, head_fingerprints, line_fingerprint

REPO = Path(__file__).resolve().parents[1]
NORMAL_LOG = REPO / "tests" / "corpus" / "go-libaudit" / "testdata" / "normal.log"
# Spaces, a quote, a tab, '%' and a non-ASCII letter: each a way to break a node= token,
# a line or an escape.
HOSTILE_NAME = 'évil host "q"%\t'
Doc = dict[str, Any]


def other_node_lines(node: str, serial: int) -> bytes:
    """One execve event of ``node`` as an aggregating auditd hands it to its plugin."""
    stamp = f"msg=audit(1700000000.{serial % 1000:03d}:{serial}):"
    return (
        f"node={node} type=SYSCALL {stamp} arch=c000003e syscall=59 success=yes exit=0 a0=1 "
        f'items=0 ppid=100 pid={serial} auid=1000 uid=1000 ses=3 comm="cat" exe="/usr/bin/cat" '
        f'key="k"\nnode={node} type=EOE {stamp} \n'
    ).encode()


def run_stdin(
    tmp_path: Path, feed: bytes, hostname: str | None = None
) -> tuple[list[Doc], bytes, bytes]:
    """`run --source stdin` fed ``feed`` (in a UTS namespace called ``hostname`` if given):
    its docs, its raw ``file`` sink and its ``--record`` recording."""
    conf = tmp_path / "plugin.toml"
    conf.write_text(f'[runtime]\ndir = "{tmp_path / "run"}"\n[receiver]\nsource = "stdin"\n')
    out, raw, recorded = tmp_path / "o.jsonl", tmp_path / "raw.log", tmp_path / "rec.log"
    command = [
        "-m", "auditstream", "run", "-c", str(conf), "--sink", f"jsonl:{out}",
        "--sink", f"file:{raw}", "--record", str(recorded),
    ]  # fmt: skip
    prefix = [sys.executable]
    if hostname is not None:  # this process' hostname stays; the run's is `hostname`
        renamed = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
        prefix = ["unshare", "--uts", sys.executable, "-c", renamed, hostname]
    result = subprocess.run(
        [*prefix, *command], input=feed, capture_output=True, timeout=60, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    docs = [json.loads(line) for line in out.read_bytes().splitlines()]
    return docs, raw.read_bytes(), recorded.read_bytes()


def host_names(docs: list[Doc]) -> dict[str | None, int]:
    """How many docs name each host.name (None: none)."""
    names: dict[str | None, int] = {}
    for doc in docs:
        name = doc.get("host", {}).get("name")
        names[name] = names.get(name, 0) + 1
    return names


def audit_docs(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("auditd", {}).get("records")]


def line_nodes(raw: bytes) -> set[str]:
    """The node of each record line of an audit.log text ("" for a line without one)."""
    return {
        split_log_line(line)[2]
        for line in raw.splitlines()
        if line.startswith((b"node=", b"type="))
    }


def test_stdin_plugin_docs_name_this_host_and_keep_a_fed_node(tmp_path: Path) -> None:
    """Lines without node= become this host's (docs, raw file sink, recording); node=other lines stay other's."""
    feed = NORMAL_LOG.read_bytes() + other_node_lines("other", 9001)
    docs, raw, recorded = run_stdin(tmp_path, feed)
    here = local_host_name()
    assert here  # a host without a name has no node to give
    audit = audit_docs(docs)
    assert sorted((d["event"]["sequence"], d["host"]["name"]) for d in audit) == [
        *[(s, here) for s in (58, 59, 60, 61, 62)],
        (9001, "other"),
    ]
    # Every doc names a host: the tree keeper's lifecycle docs and markers too.
    assert set(host_names(docs)) == {here, "other"}
    assert line_nodes(raw) == line_nodes(recorded) == {local_node(), "other"}


def test_replay_of_a_log_without_node_names_no_host(tmp_path: Path) -> None:
    """A file replay of a log without node= gives no host.name: its host is unknown."""
    out = tmp_path / "o.jsonl"
    result = replay(str(NORMAL_LOG), "--sink", f"jsonl:{out}")
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert len(audit_docs(docs)) == 5
    assert host_names(docs) == {None: len(docs)}


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)
def test_a_hostile_hostname_is_one_node_everywhere(tmp_path: Path) -> None:
    """A hostname with spaces, quotes, a tab, % and UTF-8 is one node= token live, in the raw
    sink and the recording, and their replay names the host as the live docs do."""
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a UTS namespace: {probe.stderr.decode(errors='replace')}")
    docs, raw, recorded = run_stdin(tmp_path, NORMAL_LOG.read_bytes(), HOSTILE_NAME)
    node = node_of_hostname(HOSTILE_NAME)
    assert node == 'évil_host_"q"%_'
    name = host_name(node)
    assert name == 'évil_host_"q"%25_'  # escaped as a log's node= would be
    assert host_names(docs) == {name: len(docs)}
    assert len(audit_docs(docs)) == 5
    assert line_nodes(raw) == line_nodes(recorded) == {node}
    for log in (raw, recorded):  # each replays as the live run named the host
        (tmp_path / "again.log").write_bytes(log)
        again = tmp_path / "again.jsonl"
        again.unlink(missing_ok=True)
        result = replay(str(tmp_path / "again.log"), "--sink", f"jsonl:{again}")
        assert result.returncode == 0, result.stderr
        replayed = [json.loads(line) for line in again.read_bytes().splitlines()]
        assert {d["host"]["name"] for d in audit_docs(replayed)} == {name}


@pytest.mark.parametrize(
    ("hostname", "node"),
    [
        ("vm", "vm"), ("web-1.example.org", "web-1.example.org"), ("évil host", "évil_host"),
        ('q"uote', 'q"uote'), ("tab\there", "tab_here"), ("new\nline\r", "new_line_"),
        ("pct%41", "pct%41"), ("bad\udcff", "bad\ufffd"), ("", ""),
    ],
)  # fmt: skip
def test_a_hostname_becomes_the_node_its_log_line_reads_back(hostname: str, node: str) -> None:
    """node_of_hostname keeps a plain name, makes what would end a token or a line '_', and
    gives the node a log line of it reads back as (undecodable bytes as U+FFFD)."""
    assert node_of_hostname(hostname) == node
    line = format_log_line(1300, b"audit(1.000:7): x=1", node)
    assert split_log_line(line) == (1300, b"audit(1.000:7): x=1", node)
    assert b"\n" not in line and b"\r" not in line


def test_lines_without_a_node_get_the_live_one_in_c_and_python() -> None:
    """Live lines without node= (or with an empty one) and odd lines get the live node, C and Python alike; a file's stay ""."""
    lines = [
        b"type=SYSCALL msg=audit(1.000:7): x=1\n", b"node=other type=EOE msg=audit(1.000:7): \n",
        b"node= type=EOE msg=audit(1.000:8): \n", b"not a record\n", b"\n", b"type=BOGUS msg=x\n",
    ]  # fmt: skip
    live = "vm"
    counters, reference = LineCounters(), LineCounters()
    got = lines_to_records(lines, counters, live)
    expected = [r for line in lines if (r := odd_line(line, reference, live)) is not None]
    assert got == expected
    assert [node for _, _, node in got] == [live, "other", live, live, live]
    assert got[0][2] is live  # one shared str: nothing made per record
    assert [node for _, _, node in lines_to_records(lines, LineCounters())] == [
        "",
        "other",
        "",
        "",
        "",
    ]


def test_kernel_records_share_the_live_node_in_c_and_python() -> None:
    """A recvmmsg batch's records get the reader's node, the very same str, in C and Python."""
    take = c_take_records()
    slots = [(1300, b"audit(1.0:2): ok\0\0", 0, 0, 0), (1320, b"audit(1.0:2): ", 0, 0, 0)]
    batch = filled_batch(slots)
    live = "".join(["v", "m"])  # not interned: identity says it is this object
    c_records: list[tuple[int, bytes, str]] = []
    python_records: list[tuple[int, bytes, str]] = []
    assert take(batch.buffer, batch.headers, batch.names, 0, 2, SLOT_BYTES, c_records, live) == 2
    assert batch.python_take_records(0, 2, python_records, live) == 2
    assert (
        c_records
        == python_records
        == [(1300, b"audit(1.0:2): ok", live), (1320, b"audit(1.0:2): ", live)]
    )
    assert all(node is live for _, _, node in c_records)
    assert batch.take_records(0, 2, []) == 2  # the default node stays ""


def test_serial_mark_fast_path_holds_for_this_hosts_node(tmp_path: Path) -> None:
    """Records all of the live node move the mark as parsing each one does, under that node."""
    fast, slow = SerialMark(tmp_path / "a.json"), SerialMark(tmp_path / "b.json")
    for serials in ([5, 3, 9], [8, 10, 7], [11, 12]):
        records = [(1300, b"audit(1.003:%d): x=1" % s, "vm") for s in serials]
        records.append((-3, b"lost=1", "vm"))
        assert fast.records_read(records, record_serials(records)) == []
        assert slow.records_read(records) == []
        assert fast.read == slow.read
    assert fast.read == {"vm": 12}
    assert fast.durable == slow.durable == {"vm": 4}


def test_an_evicted_live_batch_reports_its_node() -> None:
    """The serial range kept for a batch all of the live node names that node, as its unpacked body does."""
    records = [
        *((1300, b"audit(1.003:%d): x=1" % s, "vm") for s in (40, 38, 41)),
        (-2, b"lost=1", "vm"),
    ]
    with_range, without = ShardBuffer(0, 4), ShardBuffer(0, 4)
    a = with_range.add({"recs": list(records)}, len(records), record_serials(records))
    b = without.add({"recs": list(records)}, len(records))
    assert a.serial_range is not None
    assert (
        [g.as_wire() for g in serial_gaps(a)]
        == [g.as_wire() for g in serial_gaps(b)]
        == [["vm", 38, 41, 3]]
    )


@pytest.mark.parametrize("hostname", ["vm", HOSTILE_NAME])
def test_a_live_doc_read_back_salts_as_its_live_key(hostname: str) -> None:
    """A live doc (host.name of this host) and its raw line, read back after a crash, have the
    fingerprints of the live event, whose key names the live node: the duplicate is dropped."""
    node = node_of_hostname(hostname)
    records = [b"audit(1700000000.004:4): syscall=59 pid=4", b"audit(1700000000.004:4): "]
    texts = [f"type=SYSCALL msg={records[0].decode()}", f"type=EOE msg={records[1].decode()}"]
    live_head = {"auditd": {RECORD_HASHES: [hash(t) for t in texts]}}
    live = head_fingerprints(live_head, node)
    assert live is not None and live != head_fingerprints(live_head, "")
    written = {"auditd": {"records": texts}, "host": {"name": host_name(node)}}
    assert doc_fingerprints(written) == live
    raw_lines = [format_log_line(1300, records[0], node), format_log_line(1320, records[1], node)]
    assert tuple(line_fingerprint(line) for line in raw_lines) == live


@pytest.mark.parametrize(
    "marker_type", [KERNEL_LOST_TYPE, SOCKET_OVERRUN_TYPE, SOURCE_RECONNECT_TYPE]
)
def test_a_receiver_marker_names_the_host_of_its_source(marker_type: int) -> None:
    """A kernel-lost, socket-overrun or source-reconnected marker of a live source has its node
    as ``host.name`` and in its key, like the audit docs beside it."""
    assembly = Assembly(Config(), event_time=False)
    assembly.push_batch([[marker_type, b"lost=3 backlog=9", "myhost"]])
    (event,) = assembly.out
    assert event["doc"]["host"] == {"name": "myhost"}
    assert event["key"][0] == "myhost"
    assert event["doc"]["tags"] == ["auditstream-marker"]
