"""apply_normalization in C (assembler/csrc/coalesce_normalize.h) against the Python reference.

``native_coalesce.coalesce`` runs the summary and ECS step (assembler.summarize.apply_normalization)
in C for the events it builds, and calls the Python function on the untouched event for what it
declines. These tests build events for every syscall of SYSCALL_NORMALIZATIONS and for the odd
cases (interpreters, PARENT/UNKNOWN paths, index hints past the end, bad modes, obj_ SELinux
fields, failed calls, missing fields, socket fields, normalizations of other shapes) and compare
the C event with the Python one field by field (with dict key order), the ECS document bytes,
and that C did the normalization itself (``native_coalesce._normalize_counts``).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hostile_audit import CWD, EOE, PATH, PROCTITLE, SYSCALL, header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib
from test_ecs_golden_docs import _events, _inputs

from assembler import summarize
from assembler.coalesce import coalesce
from assembler.coalesced import Coalesced
from assembler.ecs import build_doc
from assembler.normalizations import SYSCALL_NORMALIZATIONS, Normalization
from assembler.parse import Record, parse_record
from assembler.tables import ARCH_NAMES, SYSCALL_NAMES

REPO = Path(__file__).resolve().parents[1]
SOCKADDR = 1306

native = native_module("assembler.native_coalesce")

# -- building events ----------------------------------------------------------------------------

_ARCH_HEX = {name: f"{number:x}" for number, name in ARCH_NAMES.items()}

_SYSCALL_FIELDS: dict[str, str] = {
    "arch": "c000003e", "syscall": "257", "success": "yes", "exit": "3", "a0": "ffffff9c",
    "a1": "7ffd2a4c", "a2": "0", "a3": "0", "items": "1", "ppid": "1999", "pid": "20001",
    "auid": "1000", "uid": "1000", "gid": "1000", "euid": "0", "suid": "1000", "fsuid": "1000",
    "egid": "1000", "sgid": "1000", "fsgid": "1000", "tty": "pts0", "ses": "3",
    "comm": '"cat"', "exe": '"/usr/bin/cat"', "subj": "unconfined", "key": '"k"',
}  # fmt: skip

_PATH_FIELDS: dict[str, str] = {
    "item": "0", "name": '"/etc/passwd"', "inode": "612097", "dev": "fd:01",
    "mode": "0100644", "ouid": "0", "ogid": "0", "rdev": "00:00", "nametype": "NORMAL",
    "cap_fp": "0",
}  # fmt: skip


def _body(base: Mapping[str, str], changes: Mapping[str, str | None]) -> bytes:
    """``base`` with ``changes`` applied (None drops a field; new keys go at the end) as a body."""
    fields = {**base, **changes}
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None).encode()


def _syscall_token(name: str) -> dict[str, str]:
    """The arch and syscall fields that name ``name`` (a number where a table has it)."""
    for arch, numbers in SYSCALL_NAMES.items():
        for number, known in numbers.items():
            if known == name and arch in _ARCH_HEX:
                return {"arch": _ARCH_HEX[arch], "syscall": str(number)}
    return {"syscall": name}  # in no table: the name itself, kept as text by both sides


def event(
    syscall: str = "openat",
    changes: Mapping[str, str | None] | None = None,
    paths: Sequence[Mapping[str, str | None]] | None = None,
    *,
    serial: int = 500,
    extra: list[tuple[int, bytes]] | None = None,
) -> list[Record]:
    """SYSCALL (+ CWD, PATH per ``paths``, extra records, PROCTITLE, EOE) of one event."""
    head = header(serial)
    items = {"items": str(len(paths or []))}
    body = _body(_SYSCALL_FIELDS, {**_syscall_token(syscall), **items, **(changes or {})})
    records = [parse_record(SYSCALL, head + body), parse_record(CWD, head + b'cwd="/home/user"')]
    for index, path in enumerate(paths or []):
        fields = {"item": str(index), **path}
        records.append(parse_record(PATH, head + _body(_PATH_FIELDS, fields)))
    for record_type, extra_body in extra or []:
        records.append(parse_record(record_type, head + extra_body))
    records.append(parse_record(PROCTITLE, head + b"proctitle=636174002F6574632F706173737764"))
    records.append(parse_record(EOE, head))
    return records


def _paths_for(norm: Normalization) -> list[Mapping[str, str | None]]:
    """PATH records for a file normalization: PARENT entries up to its index hint, then its object."""
    if norm.object_what not in ("file", "filesystem"):
        return []
    parents: list[Mapping[str, str | None]] = [
        {"name": f'"/dir{i}"', "nametype": "PARENT", "mode": "040755"}
        for i in range(norm.object_path_index)
    ]
    return [*parents, {"name": '"/dir0/obj"', "nametype": "CREATE", "inode": "7"}]


# -- comparing ----------------------------------------------------------------------------------


def _ordered(value: Any) -> Any:
    """``value`` with its type and every dict's key order made part of equality."""
    if isinstance(value, dict):
        return ("dict", [(key, _ordered(item)) for key, item in value.items()])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            [(f.name, _ordered(getattr(value, f.name))) for f in dataclasses.fields(value)],
        )
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_ordered(item) for item in value])
    return (type(value).__name__, value)


def _doc_json(records: list[Record], built: Coalesced) -> bytes | str:
    """The ECS document's JSON bytes (or orjson's error, which both sides must give alike)."""
    try:
        return orjson.dumps(build_doc(records, built))
    except orjson.JSONEncodeError as err:
        return repr(err)


def compare(records: list[Record]) -> str:
    """Assert C == Python for one event: "c" (C normalized it), "python" (C coalesced it and left
    the normalization to Python) or "declined" (C declined the whole event)."""
    try:
        expected: Coalesced | Exception = coalesce(records)
    except Exception as err:  # the reference raises: C must decline
        expected = err
    before = native._normalize_counts()
    got = native.coalesce(records)
    after = native._normalize_counts()
    if got is None:
        return "declined"
    bodies = [(record.type, record.body) for record in records]
    assert not isinstance(expected, Exception), f"C handled what Python rejects: {bodies}"
    assert type(got) is Coalesced
    for field in dataclasses.fields(Coalesced):
        want, have = getattr(expected, field.name), getattr(got, field.name)
        assert _ordered(have) == _ordered(want), f"field {field.name} differs for {bodies}"
    # Python assigns the Normalization's own tuples: C shares the very same objects.
    assert got.ecs_category is expected.ecs_category, bodies
    assert got.ecs_type is expected.ecs_type, bodies
    assert _doc_json(records, got) == _doc_json(records, expected), f"documents differ for {bodies}"
    handled = after[0] - before[0]
    assert handled + after[1] - before[1] == 1
    return "c" if handled else "python"


# -- every syscall of the table -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYSCALL_NORMALIZATIONS))
def test_every_syscall_normalization(name: str) -> None:
    """Each syscall of SYSCALL_NORMALIZATIONS, with its PATH records and without, is normalized
    in C exactly as in Python (ok and failed, with an index hint past the end)."""
    token = "getpid" if name == "*" else name
    norm = SYSCALL_NORMALIZATIONS[name]
    paths = _paths_for(norm)
    variants = [
        event(token, paths=paths),
        event(token, {"success": "no", "exit": "-13"}, paths=paths),
        event(token, paths=paths[-1:]),  # one PATH: any hint is past the end
        event(token),
    ]
    for records in variants:
        assert compare(records) == "c"
    if norm.object_what in ("file", "filesystem"):
        assert coalesce(variants[0]).file is not None


@pytest.mark.parametrize(
    "name", ["socket", "listen", "accept", "bind", "connect", "recvfrom", "sendto"]
)
def test_socket_syscalls(name: str) -> None:
    """Socket calls: C normalizes them without SOCKADDR (also with socket_ fields in the SYSCALL
    record itself) and declines the whole event with a SOCKADDR record."""
    assert compare(event(name)) == "c"
    forged: dict[str, str | None] = {
        "socket_addr": "10.0.0.1",
        "socket_port": "80",
        "socket_path": "/run/x",
    }
    assert compare(event(name, forged)) == "c"
    assert compare(event(name, {"socket_path": "/run/x"})) == "c"
    assert compare(event(name, {"socket_port": "22"})) == "c"
    sockaddr = (SOCKADDR, b"saddr=02000050C0A800010000000000000000")
    assert compare(event(name, extra=[sockaddr])) == "declined"


def test_unknown_syscalls_take_the_fallback() -> None:
    """Syscalls without an entry (a known name, an unknown number, raw text) use the "*" entry."""
    fallback = SYSCALL_NORMALIZATIONS["*"]
    unknown: list[Mapping[str, str | None]] = [
        {"syscall": "39"},
        {"syscall": "99999"},
        {"syscall": "frobnicate"},
        {"arch": "zz"},
    ]
    for changes in unknown:
        records = event("openat", changes, paths=[{}])
        assert compare(records) == "c"
        assert coalesce(records).ecs_category is fallback.ecs_category


def test_without_syscall_field_warns_no_normalization() -> None:
    """A SYSCALL record without syscall= gets "no normalization found for event" from C too."""
    records = event("openat", {"syscall": None}, paths=[{}])
    assert compare(records) == "c"
    assert coalesce(records).warnings == ["no normalization found for event"]
    assert compare(event("openat", {"syscall": None, "exe": None, "comm": None})) == "c"


@pytest.mark.parametrize(
    ("exe", "comm"),
    [
        ('"/usr/bin/python3"', '"myscript"'),
        ('"/usr/bin/python3"', None),
        ('"/usr/bin/perl5.36"', '"tool"'),
        ('"/usr/bin/bashful"', '"b"'),
        ('"/usr/bin/sh"', '"sh"'),
        ('"/bin/sh"', '"sh"'),
        ('"/usr/bin/pytho"', '"x"'),
        (None, '"only-comm"'),
        (None, None),
        ("2F7573722F62696E2F707974686F6E33", "6D79207363726970"),  # hex: with a space
        ('"/usr/bin/python3"', '"?"'),
    ],
)
def test_interpreters_and_how(exe: str | None, comm: str | None) -> None:
    """``how`` from exe, or comm for an interpreter's exe, or comm alone, as in Python."""
    for name in ("openat", "setuid", "execve"):
        assert compare(event(name, {"exe": exe, "comm": comm}, paths=[{}])) == "c"


_NAMETYPE_LAYOUTS: list[list[str | None]] = [
    ["PARENT", "NORMAL"],
    ["PARENT", "PARENT", "DELETE", "CREATE"],
    ["PARENT", "UNKNOWN", "PARENT"],
    ["UNKNOWN"],
    ["NORMAL", "PARENT", "UNKNOWN", "CREATE"],
    ["PARENT", None, "NORMAL"],
    [None],
    ["parent", "NORMAL"],
    ["PARENT", "PARENT", "PARENT", "UNKNOWN", "PARENT", "NORMAL"],
]


@pytest.mark.parametrize("layout", _NAMETYPE_LAYOUTS, ids=lambda layout: "-".join(map(str, layout)))
@pytest.mark.parametrize("name", ["openat", "mkdir", "rename", "mount", "execve"])
def test_path_choice(name: str, layout: list[str | None]) -> None:
    """PARENT/UNKNOWN entries are skipped from the index hint on (or from 0 past the end)."""
    paths: list[dict[str, str | None]] = [
        {"name": f'"/p{index}"', "nametype": nametype, "inode": str(index + 1)}
        for index, nametype in enumerate(layout)
    ]
    assert compare(event(name, paths=paths)) == "c"


@pytest.mark.parametrize(
    "mode",
    ["0100644", "0", "7", "8", "0o755", "0O17", "0_755", "-0755", "+17", "1_", "_1", "zz", "0x1ff",
     "7" * 30, "0" * 25 + "755", "7-7", "0755,", "?", "0100755extra", "01007558"],
)  # fmt: skip
def test_modes(mode: str) -> None:
    """Every mode text gives Python's ``int(text, 8)`` result, or its warning and early return."""
    paths: list[dict[str, str | None]] = [{"mode": mode, "obj": "system_u:object_r:etc_t:s0"}]
    records = event("openat", paths=paths)
    assert compare(records) == "c"
    built = coalesce(records)
    try:
        int(mode, 8)
    except ValueError:
        dropped = "mode" not in built.paths[0]  # "?" is as good as absent
        assert (
            dropped
            or f"failed to set file object: failed to parse file mode: {mode}" in built.warnings
        )


@pytest.mark.parametrize(
    "path",
    [
        {"obj": "system_u:object_r:bin_t:s0"},
        {"obj": "system_u:object_r:bin_t:s0:c0.c1023"},
        {"obj": "a"},
        {"obj": "u:r::"},
        {"obj_extra": "x"},
        {"obj_": "empty-suffix"},
        {"objx": "not-selinux", "name": '""'},
        {"obj": "u:r:t:s0", "mode": "zz"},
        {"rdev": "?", "inode": "?", "ouid": "?", "ogid": "?", "name": '"?"'},
        {"rdev": "08:01", "ouid": "1000", "ogid": "1000", "name": None, "mode": None},
        {"name": "2F612062", "inode": None},
    ],
)
def test_file_object_fields(path: dict[str, str | None]) -> None:
    """The file dict (order path, device, inode, mode, uid, gid, selinux) and the obj_ SELinux
    keys come out as in Python."""
    for name in ("openat", "init_module", "mkdir"):
        assert compare(event(name, paths=[path])) == "c"
        assert compare(event(name, paths=[{"nametype": "PARENT"}, path])) == "c"


def test_failed_syscalls() -> None:
    """Failed calls (success=no, named and unnamed exit codes) normalize alike; no outcome is set."""
    failures: list[Mapping[str, str | None]] = [
        {"success": "no", "exit": "-2"},
        {"success": "no", "exit": "-99999"},
        {"success": None},
    ]
    for changes in failures:
        records = event("unlink", changes, paths=[{"nametype": "DELETE"}])
        assert compare(records) == "c"
        assert coalesce(records).ecs_outcome == ""


def test_first_present_warnings_of_the_table() -> None:
    """init_module's object primary (name) is absent from a SYSCALL record: the same warning."""
    records = event("init_module", paths=[{}])
    assert compare(records) == "c"
    assert "failed to set object primary using keys=[name] because they were not found" in (
        coalesce(records).warnings
    )
    assert compare(event("init_module", {"name": "mod.ko"}, paths=[{}])) == "c"
    assert compare(event("setuid", {"syscall": "105"})) == "c"


# -- normalizations of other shapes (patched into the live table, read by both sides) -----------


@pytest.fixture()
def patch_getpid(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[object], None]]:
    """A setter that puts a Normalization in place for the syscall getpid (39), for one test."""

    assert vars(summarize)["SYSCALL_NORMALIZATIONS"] is SYSCALL_NORMALIZATIONS

    def put(norm: object) -> None:
        monkeypatch.setitem(SYSCALL_NORMALIZATIONS, "getpid", norm)  # the table summarize reads

    yield put


_SHAPES: list[Normalization] = [
    Normalization(
        action="a", object_what="file", subject_primary=("nope", "auid"),
        subject_secondary=("missing", "gone"), object_primary=("name", "a0"),
        object_secondary=("absent",), how=("nohow",), source_ip=("laddr", "a1"),
        ecs_kind="alert", ecs_category=("iam", "x"), ecs_type=("user",),
        ecs_copy=(
            ("subject.primary", "user"), ("subject.secondary", "user.effective"),
            ("object.primary", "user.target"), ("object.secondary", "group"),
            ("uid.euid", "user.changes"), ("data.tty", "user"), ("data.nothere", "group"),
            ("uid.nothere", "user.effective"),
        ),
    ),
    Normalization(
        action="b", object_what="socket", subject_primary=("uid",), how=("exe", "comm"),
        source_ip=("nothere", "neither"), ecs_category=("network",), ecs_type=(),
        ecs_copy=(("data.exit", "user"), ("data.ses", "group"), ("data", "user.target")),
    ),
    Normalization(
        action="c", object_what="process", object_primary=("ses",), object_secondary=("tty",),
        ecs_copy=(("object.primary", "user"), ("data.a2", "group"), ("data.a3", "user.target"),
                  ("data.a1", "user.effective"), ("uid.euid", "user.changes")),
    ),
    Normalization(action="d", object_what="filesystem", object_path_index=3, how=("syscall",)),
    Normalization(action="e", object_what="socket", source_ip=("a1",)),
]  # fmt: skip


@pytest.mark.parametrize("shape", range(len(_SHAPES)))
def test_other_normalization_shapes(patch_getpid: Callable[[object], None], shape: int) -> None:
    """Summary keys, their warnings, source_ip (found and not) and every ecs_copy source and
    EcsEntity.set case give the Python result, done in C."""
    patch_getpid(_SHAPES[shape])
    values = ["", "unset", "4294967295", "-1", "1000", "root", "0x1", "12a", "007"]
    for value in values:
        changes: dict[str, str | None] = {"a2": value or '""', "a3": "-1", "tty": value or None}
        changes |= {"socket_addr": "1.2.3.4"} if shape == 1 else {}
        layouts: list[list[Mapping[str, str | None]]] = [
            [],
            [{}],
            [{"nametype": "PARENT"}, {"mode": "zz"}],
        ]
        for paths in layouts:
            assert compare(event("getpid", changes, paths=paths)) == "c"
            assert compare(event("getpid", {**changes, "auid": value or None}, paths=paths)) == "c"


@pytest.mark.parametrize(
    "norm",
    [
        Normalization(action="x", ecs_copy=(("data.tty", "nowhere"),)),  # Python raises KeyError
        Normalization(action="x", ecs_copy=(("weird.source", "user"),)),  # Python raises ValueError
    ],
)
def test_normalizations_python_rejects_are_declined(
    patch_getpid: Callable[[object], None], norm: Normalization
) -> None:
    """Where apply_normalization raises, C declines the whole event (Python's coalesce raises)."""
    patch_getpid(norm)
    records = event("getpid")
    with pytest.raises((KeyError, ValueError)):
        coalesce(records)
    assert compare(records) == "declined"


@pytest.mark.parametrize(
    "norm",
    [
        Normalization(action="x", how=["syscall"]),  # type: ignore[arg-type]
        Normalization(action="x", object_what="file", object_path_index=-1),
        Normalization(action=1, object_what="file"),  # type: ignore[arg-type]
        Normalization(action="x", ecs_category=["file"]),  # type: ignore[arg-type]
        Normalization(action="x", ecs_copy=(("data.tty", "user", "extra"),)),  # type: ignore[arg-type]
        None,
    ],
)
def test_unhandled_shapes_go_to_python(patch_getpid: Callable[[object], None], norm: Any) -> None:
    """Shapes the C code does not know leave the untouched event to the Python function."""
    patch_getpid(norm)
    layouts: list[list[Mapping[str, str | None]]] = [[], [{}, {}]]
    for paths in layouts:
        records = event("getpid", paths=paths)
        try:
            coalesce(records)
            want = "c" if norm is None else "python"
        except ValueError:  # the pair of three does not unpack: C declines the event
            want = "declined"
        assert compare(records) == want


# -- hypothesis: random paths, modes, exes and syscalls -----------------------------------------

_NAMES = [*sorted(name for name in SYSCALL_NORMALIZATIONS if name != "*"), "getpid", "999"]
_PATH_VALUES = st.sampled_from(["0100644", "zz", "-1", "0o7", '""', "?", "00:00", '"?"', "x", "0"])
_PATHS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "nametype": st.sampled_from(["PARENT", "UNKNOWN", "NORMAL", "CREATE", "DELETE"]),
            "mode": _PATH_VALUES,
            "rdev": _PATH_VALUES,
            "inode": _PATH_VALUES,
            "ouid": _PATH_VALUES,
            "ogid": _PATH_VALUES,
            "name": st.sampled_from(['""', '"/a"', "2F61", None]),
            "obj": st.sampled_from(["u:r:t:s0", "a", None]),
            "obj_x": st.sampled_from(["1", None]),
        },
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_NAMES),
    _PATHS,
    st.sampled_from(['"/usr/bin/python3"', '"/usr/bin/cat"', None, '"?"']),
    st.sampled_from(['"script"', None, '"(null)"']),
    st.sampled_from(["yes", "no", None]),
)
def test_random_events(
    name: str, paths: list[dict[str, Any]], exe: str | None, comm: str | None, success: str | None
) -> None:
    """Random PATH lists, modes, exes, comms and results: C normalizes each as Python does."""
    # obj_ keys next to a PATH's obj: the C coalescer declines the whole event.
    both = any(path.get("obj") and path.get("obj_x") for path in paths)
    got = compare(event(name, {"exe": exe, "comm": comm, "success": success}, paths=paths))
    assert got == ("declined" if both else "c")


# -- coverage of real logs ----------------------------------------------------------------------


def _coverage(events: list[list[Record]]) -> dict[str, int]:
    """How many events C normalized, left to Python, or declined whole."""
    counts = {"c": 0, "python": 0, "declined": 0}
    for records in events:
        counts[compare(records)] += 1
    return counts


def test_generated_log_is_normalized_in_c(tmp_path: Path) -> None:
    """Every event of a bench/gen_log.py log (all SYSCALL-led) is coalesced and normalized in C."""
    log = tmp_path / "x.log"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_log.py"), "--lines", "20000", "--out", str(log)],
        check=True,
        capture_output=True,
    )
    events = _events(log.read_bytes())
    counts = _coverage(events)
    print(f"gen_log: {len(events)} events: {counts}")
    syscall_led = sum(1 for records in events if records[0].type == SYSCALL)
    assert syscall_led > 4000
    assert counts == {"c": len(events), "python": 0, "declined": 0}


def test_corpus_coverage(corpus: Path) -> None:
    """Every corpus event the C coalescer handles is normalized in C too, equal to Python."""
    counts = _coverage([records for text in _inputs().values() for records in _events(text)])
    print(f"corpus: {counts}")
    assert counts["c"] > 200
    assert counts["python"] == 0


# -- no leaks -----------------------------------------------------------------------------------


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc/self/status (Linux)"
)
def test_no_leak_over_170k_calls(patch_getpid: Callable[[object], None]) -> None:
    """170,000 coalesce calls through every normalization path leave the Normalization objects'
    reference counts as they were, trace no growing Python memory and grow RSS by under 20 MB."""
    patch_getpid(_SHAPES[0])
    selinux: dict[str, str | None] = {"obj": "u:r:t:s0"}
    events = [
        event("openat", paths=[selinux]),
        event("mkdir", paths=[{"nametype": "PARENT"}, {"mode": "zz", **selinux}]),
        event("connect", {"socket_addr": "1.2.3.4", "socket_port": "9"}),
        event("init_module", {"exe": '"/usr/bin/python3"'}, paths=[{"obj_x": "1"}]),
        event("openat", {"syscall": None}),
        event("getpid", {"tty": "-1"}, paths=[{"mode": "-0755", **selinux}]),
        event("getpid", {"a1": "10.0.0.1", "auid": None}, paths=[selinux]),
    ]
    norm = SYSCALL_NORMALIZATIONS["openat"]
    shape = _SHAPES[0]
    watched = [
        norm.ecs_category,
        norm.action,
        norm.object_what,
        shape.ecs_type,
        shape.subject_primary,
    ]
    for records in events:  # warm up caches and the allocator
        assert compare(records) == "c"
        native.coalesce(records)
    counts = [sys.getrefcount(obj) for obj in watched]
    tracemalloc.start()
    traced = tracemalloc.get_traced_memory()[0]
    for call in range(20_000):
        native.coalesce(events[call % len(events)])
    traced = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    before = rss_kib()
    for call in range(150_000):
        native.coalesce(events[call % len(events)])
    grown = rss_kib() - before
    # Within a few: shared strings such as "file" are also referenced by whatever else
    # runs meanwhile (another test's leftover thread); a leak of one per call shows as
    # thousands over these 170,000 calls.
    drift = [sys.getrefcount(obj) - count for obj, count in zip(watched, counts, strict=True)]
    assert all(abs(d) < 100 for d in drift), drift
    assert traced < 64 * 1024, f"traced Python memory grew by {traced} bytes over 20,000 calls"
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 150,000 calls"
    print(f"over 20,000 calls traced memory grew {traced} B; over 150,000 RSS grew {grown} KiB")
