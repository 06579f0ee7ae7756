"""Fused events (assembler/csrc/fused_event.h) against the Coalesced way they stand in for.

The assembly's C callback first asks native_coalesce to read an event's records into fields
and native_ecs to write its doc from them, without the Coalesced object and its dicts; what
either declines goes the Coalesced way (coalesce, then write_doc), which stays the reference.
Two assemblies take the same batches, one with fused events and one without; their events
(docs byte for byte, heads, the process's place) and counters must be equal for every
corpus log, the generated logs and load events, and for each shape the fused path declines,
which must then be declined (not written wrong).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generated_logs import write_generated_log
from native_helpers import native_module, rss_kib
from test_native_event_completer import assembly, batches_of, inputs, load_log, run

import assembler.summarize as summarize
from assembler.normalizations import Normalization
from assembler.parse import Record
from assembler.reassembler import CompletionReason

native_ecs: Any = native_module("assembler.native_ecs")
native_coalesce: Any = native_module("assembler.native_coalesce")

SYSCALL = (
    b"type=SYSCALL msg=audit(1795473252.716:%(serial)d): arch=c000003e syscall=%(nr)d "
    b"success=yes exit=3 a0=ffffff9c a1=7f0ea1d5a0b1 a2=80000 a3=0 items=%(items)d ppid=10838 "
    b"pid=10865 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) "
    b'ses=3 comm="cat" exe="/usr/bin/cat"%(extra)s key="files"\n'
)
PATH = (
    b"type=PATH msg=audit(1795473252.716:%(serial)d): item=%(item)d "
    b'name="/etc/f%(item)d" inode=2244660 dev=fe:00 mode=%(mode)s ouid=0 ogid=0 rdev=00:00 '
    b"nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0\n"
)
TAIL = (
    b'type=CWD msg=audit(1795473252.716:%(serial)d): cwd="/work"\n'
    b"type=PROCTITLE msg=audit(1795473252.716:%(serial)d): proctitle=636174002F6574632F66\n"
    b"type=EOE msg=audit(1795473252.716:%(serial)d): \n"
)


def event_text(
    serial: int, nr: int = 257, paths: int = 1, mode: bytes = b"0100644", extra: bytes = b""
) -> bytes:
    """One event: SYSCALL (syscall ``nr``, ``extra`` fields), ``paths`` PATH records, CWD,
    PROCTITLE and EOE."""
    values = {b"serial": serial, b"nr": nr, b"items": paths, b"extra": extra, b"mode": mode}
    text = SYSCALL % values
    for item in range(paths):
        text += PATH % {b"serial": serial, b"item": item, b"mode": mode}
    return text + TAIL % {b"serial": serial}


def counts() -> tuple[int, int]:
    """(fused docs written, read by native_coalesce) so far."""
    written, _ = native_ecs._fused_counts()
    read, _ = native_coalesce._fused_counts()
    return written, read


def both_ways(text: bytes, raw: bool = False) -> tuple[list[dict[str, Any]], int]:
    """(the events the fused way, which must equal those of the Coalesced way; fused docs
    written) for the log ``text``."""
    batches = batches_of(text)
    was = native_ecs._set_fused(False)
    try:
        reference = assembly(native=True, raw=raw)
        want = run(reference, batches, True)
    finally:
        native_ecs._set_fused(was)
    assert native_ecs._set_fused(True) is True
    mine = assembly(native=True, raw=raw)
    before, _ = counts()
    got = run(mine, batches, True)
    assert got == want
    assert mine.counts == reference.counts
    return got, counts()[0] - before


@pytest.fixture()
def normalization(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install a Normalization for the syscall named in the call, for one test."""

    def install(syscall: str, **fields: Any) -> None:
        table = dict(summarize.SYSCALL_NORMALIZATIONS)
        table[syscall] = Normalization(syscalls=(syscall,), **fields)
        monkeypatch.setattr(summarize, "SYSCALL_NORMALIZATIONS", table)

    yield install


@pytest.mark.parametrize("raw", [False, True])
def test_every_input_gives_the_same_events_both_ways(tmp_path: Path, raw: bool) -> None:
    """Corpus, generated and load logs give the same events and counters with fused events as
    without, and nearly every generated RAW and load event is written the fused way."""
    for name, text in inputs(tmp_path):
        got, written = both_ways(text, raw)
        if name in ("generated enriched=False", "load"):
            assert written > 0.95 * len(got), (name, written, len(got))
        if name == "generated enriched=True":
            assert written == 0, "ENRICHED user names are the Coalesced way's"


def test_an_exec_heavy_log_goes_the_fused_way(tmp_path: Path) -> None:
    """A generated log (execve with EXECVE arguments, clone, exit, SELinux subj, several
    PATH records) is written the fused way, equal to the Coalesced way."""
    log = write_generated_log(tmp_path / "exec.log", 20000)
    got, written = both_ways(log.read_bytes())
    assert written > 0.95 * len(got)
    assert any(b'"args":[' in event["doc"][0] for event in got)
    assert any(b'"selinux":{' in event["doc"][0] for event in got)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a socket object (connect)", event_text(1, nr=42)),
        ("a mode that is not octal digits", event_text(1, mode=b"0100649")),
        ("a data key under socket", event_text(1, extra=b" socket_port=80")),
        ("more PATH records than FUSED_MAX_PATHS", event_text(1, paths=17)),
        ("no syscall: no Normalization", event_text(1).replace(b" syscall=257", b"")),
        ("a key repeated across records", event_text(1).replace(b'cwd="/work"', b'cwd="/w" tty=x')),
    ],
)
def test_what_the_fused_way_declines_goes_the_coalesced_way(name: str, text: bytes) -> None:
    """An event the fused way does not write is declined, and its doc is the Coalesced way's."""
    before = counts()[0]
    got, written = both_ways(text)
    assert written == 0, name
    assert len(got) == 1 and counts()[0] == before


def test_the_plain_shape_next_to_them_is_fused() -> None:
    """The event the decline cases are made from is written the fused way (else those tests
    would pass without exercising a decline)."""
    socket_call = 41  # socket(2): neither a file nor a socket object
    got, written = both_ways(event_text(1) + event_text(2, paths=3) + event_text(3, nr=socket_call))
    assert written == 3 and len(got) == 3


def test_normalizations_it_does_not_apply_are_declined(normalization: Any) -> None:
    """An ecs_copy, source_ip keys or a summary key found nowhere leave the event to the
    Coalesced way; summary keys that are found are applied the fused way."""
    for fields in (
        {"ecs_copy": (("subject.primary", "user"),)},
        {"source_ip": ("addr",)},
        {"object_secondary": ("nowhere",)},
    ):
        normalization("openat", action="opened", **fields)
        assert both_ways(event_text(1))[1] == 0, fields
    normalization(
        "openat", action="opened", object_what="file", subject_primary=("uid",), how=("tty",)
    )
    got, written = both_ways(event_text(1, paths=2))
    assert written == 1
    assert b'"how":"(none)"' in got[0]["doc"][0] and b'"primary":"0"' in got[0]["doc"][0]


def test_enriched_trailers_are_not_read() -> None:
    """An event whose SYSCALL has an ENRICHED trailer (auditd's id names) is not read."""
    enriched = event_text(1).replace(b'key="files"', b'key="files"\x1dAUID="u" UID="root"')
    _, read_before = counts()
    got, written = both_ways(enriched)
    assert written == 0 and counts()[1] == read_before and len(got) == 1


def test_set_fused_turns_it_off() -> None:
    """With _set_fused(False) no event is written the fused way."""
    was = native_ecs._set_fused(False)
    try:
        made = assembly(native=True, raw=False)
        before = counts()
        run(made, batches_of(load_log(50)), True)
        assert counts() == before
    finally:
        native_ecs._set_fused(was)


def test_no_leak_over_many_fused_events(tmp_path: Path) -> None:
    """50 rounds of a generated log (every record kind the fused way reads) leave RSS within
    20 MB."""
    text = write_generated_log(tmp_path / "gen.log", 4000).read_bytes()
    made = assembly(native=True, raw=False)
    for batch in batches_of(text, 512):
        made.push_batch(batch, 1)
        made.maintain()
        made.out = []
    before, written_before = rss_kib(), counts()[0]
    for round_ in range(50):
        shifted = text.replace(b"1790000000.", b"179000%04d." % (round_ + 1))
        for batch in batches_of(shifted, 512):
            made.push_batch(batch, 1)
            made.maintain()
            made.out = []
    assert counts()[0] - written_before > 40 * 800
    growth_kib = rss_kib() - before
    assert growth_kib < 20 * 1024, f"RSS grew by {growth_kib} KiB"


def test_records_of_a_subclass_go_the_coalesced_way() -> None:
    """An event whose records are a Record subclass is not read the fused way (its slots may
    lie elsewhere); the callback still completes it, as the Coalesced way does."""

    class Sub(Record):
        __slots__ = ()

    made = assembly(native=True, raw=False)
    records = made.parse_batch(batches_of(event_text(1))[0], True)[0]
    assert isinstance(records, list) and len(records) == 5
    subs = [Sub(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}) for r in records]
    before = counts()
    made.reassembler._on_complete(subs, CompletionReason.EOE)
    assert counts() == before and len(made.out) == 1
    was = native_ecs._set_fused(False)
    try:
        reference = assembly(native=True, raw=False)
        reference.reassembler._on_complete(subs, CompletionReason.EOE)
    finally:
        native_ecs._set_fused(was)
    assert made.out == reference.out and isinstance(made.out[0]["doc"], dict)
