"""Hostile records through the real assembler path into the real sinks (issue #7).

Records carry attacker-chosen bytes (NUL, CR/LF, 0x1d, invalid UTF-8, quotes, ``%``,
whole forged records) the way the kernel writes them, and as user-space messages and
hostile log files do. Whatever comes in: every record comes out once (in an event or a
parse-error marker), every JSON line is valid and equals its document, every escaped
string maps back to the exact bytes, no text becomes a line, record or event of its own
in any sink, and ``ausearch`` reads the raw file as we do.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hostile_audit import (
    EOE,
    FORGED_LOGIN,
    FORGED_RECORD,
    FORGED_SERIALS,
    HOSTILE_PIECES,
    PATH,
    SYSCALL,
    USER_CMD,
    PlannedEvent,
    RawRecord,
    assemble,
    check_kafka,
    exec_event,
    garbage_record,
    header,
    kafka_encoder,
    kernel_quote,
    log_text,
    read_raw_file,
    run_through_sinks,
    user_event,
    wide_event,
    write_sinks,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditstream.escape import escape, unescape
from receiver.stage import LineCounters, lines_to_records
from sinks.rawfile import MAX_LINE_BYTES
from treekeeper.tree import Process, ProcessTable, TableConfig

REPO = Path(__file__).resolve().parents[1]
AUSEARCH = shutil.which("ausearch")
FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

hostile_bytes = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.binary(max_size=6)), max_size=8
).map(b"".join)
# A node= name as the receiver makes it: the bytes up to the first space, decoded.
hostile_node = st.one_of(
    st.just(""),
    st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.binary(max_size=4)), max_size=3)
    .map(b"".join)
    .map(lambda raw: raw.replace(b" ", b"").replace(b"\n", b"").decode("utf-8", "replace")),
)


@st.composite
def hostile_batches(draw: st.DrawFn) -> tuple[list[RawRecord], list[PlannedEvent]]:
    """A few events of every kind (exec with split args, user message, wide record) and
    garbage records, each with hostile bytes where an attacker can put them."""
    pushed: list[RawRecord] = []
    plans: list[PlannedEvent] = []
    for serial in range(1, draw(st.integers(1, 6)) + 1):
        kind = draw(st.sampled_from(("exec", "exec", "user", "wide", "garbage")))
        node = draw(hostile_node)
        if kind == "exec":
            plan = exec_event(
                serial,
                comm=draw(hostile_bytes),
                exe=draw(hostile_bytes),
                cwd=draw(hostile_bytes),
                path=draw(hostile_bytes),
                argv=draw(st.lists(hostile_bytes, min_size=1, max_size=4)),
                title=draw(hostile_bytes),
                node=node,
                chunk=draw(st.sampled_from((2, 5, 7000))),
            )
        elif kind == "user":
            plan = user_event(
                serial, draw(hostile_bytes), draw(st.sampled_from((USER_CMD, 1112))), node
            )
        elif kind == "wide":
            plan = wide_event(serial, draw(st.integers(1, 40)), node)
        else:
            pushed.append(garbage_record(draw(hostile_bytes), node=node))
            continue
        plans.append(plan)
        pushed += plan.records
    return pushed, plans


@pytest.fixture(scope="module")
def kafka_sink() -> Any:
    """The real KafkaSink's message encoding, without a broker."""
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    return kafka_encoder()


@settings(FUZZ, max_examples=150)
@given(hostile_batches())
def test_hostile_events_keep_every_invariant_in_every_sink(
    kafka_sink: Any, batch: tuple[list[RawRecord], list[PlannedEvent]]
) -> None:
    """Hostile exec, user, wide and garbage records: jsonl, file and kafka output keep every invariant."""
    pushed, plans = batch
    events, counts, _outputs, problems = run_through_sinks(pushed, plans)
    assert problems == []
    assert check_kafka(kafka_sink, events) == []
    garbage = sum(1 for _t, data, _n in pushed if data.startswith(b"x"))
    assert counts["parse_errors"] == garbage
    audit_events = [e for e in events if e["raw"] and e["key"][3] != 0]
    assert sorted(e["key"][3] for e in audit_events) == sorted(p.serial for p in plans)


@settings(FUZZ, max_examples=100)
@given(st.lists(st.one_of(hostile_bytes, st.sampled_from(HOSTILE_PIECES)), min_size=1, max_size=12))
def test_hostile_log_lines_are_records_or_counted_parse_errors(pieces: list[bytes]) -> None:
    """Log text with hostile lines: each line is one record or one counted parse error, exactly kept."""
    lines = []
    for index, piece in enumerate(pieces):
        body = b"pid=1 uid=0 msg='acct=" + piece + b" res=success'"
        # A record line, a line with a hostile node=, or the hostile bytes alone.
        lines.append(
            (b"type=USER_CMD msg=" + header(index + 1) + body)
            if index % 3 == 0
            else (
                b"node="
                + piece.replace(b" ", b"")
                + b" type=USER_ACCT msg="
                + header(index + 1)
                + body
            )
            if index % 3 == 1
            else piece
        )
    text = b"\n".join(lines) + b"\n"
    counters = LineCounters()
    records = lines_to_records(io.BytesIO(text).readlines(), counters)  # as LogSource reads
    events, counts = assemble(records)
    not_records = [data for number, data, _node in records if number == 0]
    assert counts["parse_errors"] >= len(not_records) == counters.bad_lines
    marker_texts = [
        unescape(e["doc"]["auditstream"]["marker"]["record"])
        for e in events
        if e["doc"]["event"].get("action") == "parse-error" and not e["raw"]
    ]
    assert sorted(marker_texts) == sorted(data[:4096] for data in not_records)
    problems = run_through_sinks(records, forged_ok=True)[3]
    assert problems == []


@settings(FUZZ, max_examples=12)
@given(
    size=st.integers(min_value=8900, max_value=70_000),
    offset=st.integers(min_value=8900, max_value=9100),
    filler=st.sampled_from((b"A", b"\xff", b"%", b"\x00", b"\r")),
)
def test_records_beyond_8970_bytes_cannot_forge_a_raw_record(
    size: int, offset: int, filler: bytes
) -> None:
    """A record longer than ausearch's line buffer is one line, cut to the buffer, and exact in JSON."""
    head = header(1) + b"pid=1 uid=0 msg='cmd="
    prefix = b"type=USER_CMD msg="
    pad = max(0, offset - len(prefix) - len(head))
    data = head + filler * pad + FORGED_LOGIN + b"A" * max(0, size - pad) + b"'"
    events, _counts, outputs, problems = run_through_sinks([(USER_CMD, data, "")])
    assert problems == []
    assert unescape(events[0]["doc"]["auditd"]["records"][0]) == prefix + data
    lines = outputs.raw.splitlines()
    assert len(lines) == 1 and len(lines[0]) == min(len(prefix + data), MAX_LINE_BYTES)
    assert outputs.raw_errors.get("line_truncated", 0) == (len(prefix + data) > MAX_LINE_BYTES)


@settings(FUZZ, max_examples=15)
@given(
    argv=st.lists(
        st.tuples(hostile_bytes, st.integers(1, 20_000)).map(
            lambda t: (t[0] or b"x") * (t[1] // max(1, len(t[0])) + 1)
        ),
        min_size=1,
        max_size=4,
    ),
    chunk=st.integers(100, 7000),
)
def test_long_split_execve_arguments_join_exactly(argv: list[bytes], chunk: int) -> None:
    """aN_len/aN[i] pieces over several EXECVE records join back to each exact argument."""
    plan = exec_event(
        1, comm=b"c", exe=b"/e", cwd=b"/", path=b"/p", argv=argv, title=b"t", chunk=chunk
    )
    events, _counts, _outputs, problems = run_through_sinks(plan.records, [plan])
    assert problems == []
    args = [unescape(a) for a in events[0]["doc"]["process"]["args"]]
    assert args == [a.split(b"\x00", 1)[0] for a in argv]


def test_ten_thousand_fields_and_a_64k_record() -> None:
    """A 10,000-field record and a 64 KiB record come out whole in JSON, one line each in the file."""
    wide = wide_event(1, 10_000)
    big = user_event(2, b"\xff\x00\x1d" * 21_846)
    events, _counts, outputs, problems = run_through_sinks(
        [*wide.records, *big.records], [wide, big]
    )
    assert problems == []
    assert len(events[0]["doc"]["auditd"]["data"]) > 10_000
    assert len(unescape(events[1]["doc"]["auditd"]["records"][0])) > 65_536
    assert outputs.raw_errors["line_truncated"] == 2


# -- regression tests for what the fuzzing found -------------------------------------------------


def test_comm_ending_in_backslash_cannot_hide_or_forge_exe() -> None:
    """comm 'a\\' (quoted by the kernel as "a\\") does not swallow exe=; a binary named
    /tmp/exe=/bin/ls stays that, never exe=/bin/ls."""
    plan = exec_event(
        1,
        comm=b"a\\",
        exe=b"/tmp/exe=/bin/ls",
        cwd=b"/",
        path=b"/tmp/exe=/bin/ls",
        argv=[b"x"],
        title=b"x",
    )
    events, _counts, _outputs, problems = run_through_sinks(plan.records, [plan])
    assert problems == []
    process = events[0]["doc"]["process"]
    assert process["name"] == "a\\" and process["executable"] == "/tmp/exe=/bin/ls"


@pytest.mark.parametrize("name", [b"?", b"(null)", b"'", b"''", b"'?'"])
def test_quoted_names_go_libaudit_would_drop_stay(name: bytes) -> None:
    """A file, comm or title named "?", "(null)" or quotes only is real text (the kernel quotes
    it) and stays in the doc; unquoted ?/(null) is still dropped."""
    plan = exec_event(1, comm=name, exe=b"/x", cwd=name, path=name, argv=[b"x"], title=name)
    events, _counts, _outputs, problems = run_through_sinks(plan.records, [plan])
    assert problems == []
    doc = events[0]["doc"]
    assert doc["process"]["name"] == doc["process"]["title"] == name.decode()
    assert doc["auditd"]["paths"][0]["name"] == name.decode()
    head = header(2)
    unknown = [(SYSCALL, head + b"arch=c000003e syscall=2 exit=3 pid=1 comm=(null) exe=(null)", "")]
    unknown += [(PATH, head + b"item=0 name=(null) nametype=UNKNOWN", ""), (EOE, head, "")]
    doc = assemble(unknown)[0][0]["doc"]
    assert "name" not in doc["auditd"]["paths"][0] and "executable" not in doc.get("process", {})


def test_parse_error_marker_keeps_cr_and_lf_exactly() -> None:
    """A record that fails to parse is kept in its marker byte for byte (CR/LF escaped, not blanked)."""
    bad = garbage_record(b"\r\n" + FORGED_RECORD + b"\n")
    events, counts = assemble([bad])
    marker = events[0]["doc"]["auditstream"]["marker"]
    assert counts["parse_errors"] == 1
    assert unescape(marker["record"]) == b"type=SYSCALL msg=" + bad[1]
    assert "\n" not in marker["record"] and "\r" not in marker["record"]


def test_hostile_node_is_escaped_in_host_name() -> None:
    """A node= name with control bytes or '%' becomes escaped host.name text that maps back."""
    node = "evil\x1b[31m%\r\x00"
    plan = user_event(1, b"x", node=node)
    events, _counts, _outputs, problems = run_through_sinks(plan.records, [plan])
    assert problems == []
    assert events[0]["doc"]["host"]["name"] == escape(node.encode())
    assert unescape(events[0]["doc"]["host"]["name"]) == node.encode()


def test_tree_lookup_ends_on_a_cycle_of_previous_processes() -> None:
    """The table state a hostile replay slice produced (a deleted process's key taken again,
    so two incarnations of pid 2643 name each other as ``previous``) no longer hangs lookup."""
    table = ProcessTable(TableConfig())
    older = Process(pid=2643, start_ms=345, entity_id="a", started_at=345, exited_at=345)
    newer = Process(pid=2643, start_ms=346, entity_id="b", started_at=345)
    older.previous, newer.previous = newer.key, older.key
    table.processes.update({older.key: older, newer.key: newer})
    table.current[2643] = newer.key
    started = time.monotonic()
    assert table.lookup(2643, 300) is None  # older than both: unknown, not an endless walk
    assert table.lookup(2643, 345) is newer
    assert time.monotonic() - started < 1.0


# -- the fixed hostile set, read back by the real ausearch ---------------------------------------


def fixed_hostile_set() -> tuple[list[RawRecord], list[PlannedEvent]]:
    """One event per known trick, all well-formed, so ausearch must find exactly these."""
    injected = b"\n" + FORGED_RECORD + b"\n"
    # Put a forged record exactly where ausearch would start its second piece of the line.
    before = len(
        b"type=USER_CMD msg=" + user_event(6, b"").records[0][1].split(b"acct=")[0] + b"acct="
    )
    at_cut = b"A" * (MAX_LINE_BYTES - before) + FORGED_LOGIN + b" " + b"B" * 60_000
    long_arg = (b'\xff"%\n' + FORGED_RECORD) * 400
    plans = [
        user_event(1, b"x" + injected + b"y"),
        user_event(2, b"\r\n" + FORGED_LOGIN + b"\r\n"),
        user_event(3, b"a\x00b\x00" + FORGED_RECORD),
        user_event(4, b'\x1dUID="root" ' + FORGED_RECORD),
        user_event(5, b"\xff\xfe\xed\xa0\x80%25%0a"),
        user_event(6, at_cut),
        exec_event(
            7,
            comm=b"a\\",
            exe=b"/tmp/exe=/bin/ls",
            cwd=injected,
            path=injected,
            argv=[b"sh", long_arg, injected],
            title=injected,
            chunk=3000,
        ),
        wide_event(8, 10_000),
        user_event(9, b"ok", node="evil\x1b[31m\r\x00%"),
    ]
    pushed = [record for plan in plans for record in plan.records]
    return [*pushed, garbage_record(injected)], plans


# The id in a record line's own header (the same text later in the line is data).
_RECORD_ID = re.compile(rb"^(?:node=\S* )?type=\S+ msg=audit\((\d+\.\d+:\d+)\)", re.MULTILINE)


def ausearch_ids(path: Path) -> list[bytes]:
    """Distinct audit ids (SEC.MSEC:SERIAL) that ausearch --raw finds in the file, in order."""
    assert AUSEARCH is not None
    out = subprocess.run(
        [AUSEARCH, "-if", str(path), "--raw"], capture_output=True, timeout=120, check=False
    ).stdout
    return list(dict.fromkeys(_RECORD_ID.findall(out)))


@pytest.mark.skipif(AUSEARCH is None, reason="ausearch (Debian package auditd) not installed")
def test_ausearch_finds_exactly_our_events_in_the_hostile_file(tmp_path: Path) -> None:
    """ausearch --raw on the file sink's output finds our events and no forged one."""
    pushed, plans = fixed_hostile_set()
    events, _counts = assemble(pushed)
    outputs = write_sinks(events, tmp_path)
    ours = [b"1700000000.001:%d" % e["key"][3] for e in events if e["raw"] and e["key"][3]]
    assert len(ours) == len(plans)
    found = ausearch_ids(outputs.raw_path)
    assert sorted(found) == sorted(ours)
    assert not {b"1700000000.001:%d" % serial for serial in FORGED_SERIALS} & set(found)
    assert outputs.raw_errors["line_truncated"] >= 2 and outputs.raw_errors["newline_escaped"] > 0


# -- the real pipeline: auditstream replay of a hostile log ------------------------------------


def hostile_log() -> tuple[bytes, list[bytes]]:
    """A log with the edge records of issue #7 (one record per line, as a file holds them)
    and the lines that are garbage. No serial gaps (the node= event has a node of its own
    and comes last), so no loss markers."""
    big_arg = bytes(range(1, 256)) * 120  # 30 KiB with every byte but NUL
    records: list[RawRecord] = []
    records += wide_event(1, 10_000).records
    records += user_event(2, b"\xff\x00\x1d\r" * 16_384).records  # 64 KiB record
    records += exec_event(
        3, comm=b"a\\", exe=b"/tmp/exe=/bin/ls", cwd=b"\xff\xfe", path=b"a\x00b",
        argv=[b"sh", big_arg, b"\r" + FORGED_RECORD], title=b"t\x00u", chunk=7000,
    ).records  # fmt: skip
    records += user_event(4, b'\x1dUID="root"\r' + FORGED_RECORD).records
    records += user_event(5, b"ok", node="evil\x1b\udcff").records  # invalid UTF-8 in node=
    garbage = [b"this is not an audit line \xff\x00", b"type=SYSCALL msg=audit(1700000000.00"]
    assert not any(b"\n" in data for _t, data, _n in records)
    return log_text(records) + b"\n".join(garbage) + b"\n", garbage


def test_replay_of_hostile_edge_records_through_real_processes(tmp_path: Path) -> None:
    """`auditstream replay` of 10k-field, 64 KiB, NUL, invalid UTF-8 and split-argument
    records: exit 0, counts add up, valid JSON, exact records, and the file sink reads back."""
    text, garbage = hostile_log()
    log, out, raw = tmp_path / "hostile.log", tmp_path / "events.jsonl", tmp_path / "copy.log"
    log.write_bytes(text)
    result = subprocess.run(
        [sys.executable, "-m", "auditstream", "replay", str(log),
         "--sink", f"jsonl:{out}", "--sink", f"file:{raw}"],
        capture_output=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = re.search(
        rb"(\d+) records read, (\d+) events out, (\d+) events lost \(serial gaps\), "
        rb"(\d+) records failed to parse; sent: (.*)",
        result.stderr,
    )
    assert summary, result.stderr
    read, out_count, lost, bad = (int(g) for g in summary.groups()[:4])
    lines = text.split(b"\n")[:-1]  # bytes.splitlines() would split at CR too
    docs = [json.loads(line) for line in out.read_bytes().split(b"\n")[:-1]]
    audit = [d for d in docs if "records" in d.get("auditd", {})]
    errors = [d for d in docs if d["event"].get("action") == "parse-error"]
    assert read == len(lines) and lost == 0 and bad == len(garbage) == len(errors)
    assert out_count == len(docs) and f"jsonl:{out} {len(docs)}".encode() in summary.group(5)
    assert sorted(d["event"]["sequence"] for d in audit) == [1, 2, 3, 4, 5]
    records_in = [line for line in lines if line not in garbage]
    records_out = [unescape(r) for d in audit for r in d["auditd"]["records"]]
    plain = [r.split(b" ", 1)[1] if r.startswith(b"node=") else r for r in records_in]
    assert sorted(records_out) == sorted(plain)
    exec_doc = next(d for d in audit if d["event"]["sequence"] == 3)
    assert exec_doc["process"]["executable"] == "/tmp/exe=/bin/ls"
    assert unescape(exec_doc["process"]["args"][1]) == bytes(range(1, 256)) * 120
    assert len(next(d for d in audit if d["event"]["sequence"] == 1)["auditd"]["data"]) > 10_000
    back, _counters = read_raw_file(raw)
    assert len(back) == len(lines) - 1  # all but the line that was not a record (no raw)
    assert max(len(line) for line in raw.read_bytes().split(b"\n")) <= MAX_LINE_BYTES
    if AUSEARCH is not None:
        assert len(ausearch_ids(raw)) == 5


def test_kernel_quote_matches_the_kernel_rule() -> None:
    """The helper quotes plain text and hex-encodes anything with a space, quote or control."""
    assert kernel_quote(b"/bin/ls") == b'"/bin/ls"'
    assert kernel_quote(b"a\\b") == b'"a\\b"'
    assert kernel_quote(b'a"b') == b"612262"
    assert kernel_quote(b"a b") == b"612062"
