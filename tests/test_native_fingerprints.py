"""The C fingerprint set and filter (treekeeper/csrc/fingerprints.c) give treekeeper.dedupe's results.

Random runs of operations go through both sets, every answer compared; batches of events
(heads, whole docs, markers, duplicates, parts of events sent again, odd shapes) go through
the C filter and the Python loop of ``Dedupe.filter``, the kept events and the counts
compared; and the C set's memory stays bounded however many fingerprints pass.
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_helpers import native_module, rss_kib

from auditstream.doc_text import DOC_TEXT, RECORD_HASHES, hashes_of_text, hashes_text
from treekeeper import dedupe
from treekeeper.dedupe import Dedupe, RecentFingerprints, doc_fingerprints

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
Event = dict[str, Any]


def c_module() -> ModuleType:
    """The C module; skipped when not built, unless CI requires it."""
    return native_module("treekeeper.native_fingerprints")


def python_dedupe(capacity: int) -> Dedupe:
    """A Dedupe on the Python set: Dedupe.filter then runs its Python loop."""
    found = Dedupe(capacity)
    found.seen = RecentFingerprints(capacity)
    return found


def c_dedupe(capacity: int) -> Dedupe:
    """A Dedupe on the C set: Dedupe.filter then calls the C filter (where allowed)."""
    found = Dedupe(capacity)
    found.seen = c_module().RecentFingerprints(capacity)
    return found


def test_the_c_module_reads_the_keys_the_assembler_writes() -> None:
    """The event and head keys compiled into the C filter are auditstream.doc_text's."""
    module = c_module()
    assert (module.DOC_TEXT, module.RECORD_HASHES) == (DOC_TEXT, RECORD_HASHES)


def test_dedupe_uses_the_c_set_where_built() -> None:
    """With the C module built (and not turned off) a Dedupe holds the C set."""
    module = c_module()
    if dedupe._NATIVE_SET is None:
        pytest.skip("AUDITSTREAM_NATIVE=0: the Python set is in use")
    assert type(Dedupe(10).seen) is module.RecentFingerprints


fingerprint = st.one_of(
    st.integers(-3, 12),  # collisions, 0 (the C table's empty mark) and its neighbours
    st.sampled_from([INT64_MIN, INT64_MAX, -1, 1 << 62]),
    st.integers(INT64_MIN, INT64_MAX),
)
operation = st.one_of(
    st.tuples(st.just("add_all"), st.lists(fingerprint, max_size=6).map(tuple)),
    st.tuples(st.just("has_all"), st.lists(fingerprint, max_size=6).map(tuple)),
    st.tuples(st.just("contains"), fingerprint),
    st.tuples(st.just("add"), fingerprint),
    st.tuples(st.just("len"), st.none()),
)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 9), operations=st.lists(operation, max_size=60))
def test_random_operations_answer_alike(capacity: int, operations: list[tuple[str, Any]]) -> None:
    """Every answer of the C set equals the Python set's, generations turning over and all."""
    module = c_module()
    ours, reference = module.RecentFingerprints(capacity), RecentFingerprints(capacity)
    for name, argument in operations:
        if name == "len":
            assert len(ours) == len(reference)
        elif name == "contains":
            assert (argument in ours) == (argument in reference)
        else:
            assert getattr(ours, name)(argument) == getattr(reference, name)(argument), name
    assert len(ours) == len(reference)
    assert ours.capacity == reference.capacity


def test_a_large_set_keeps_every_member_of_two_generations() -> None:
    """Past many growths and turnovers the C set knows exactly the Python set's members."""
    module = c_module()
    rng = random.Random(7)
    capacity = 50_000
    ours, reference = module.RecentFingerprints(capacity), RecentFingerprints(capacity)
    added: list[int] = []
    for _ in range(3_000):
        batch = tuple(rng.randint(INT64_MIN, INT64_MAX) for _ in range(rng.randint(1, 60)))
        ours.add_all(batch)
        reference.add_all(batch)
        added.extend(batch)
    assert len(ours) == len(reference)
    sample = added[:: len(added) // 5000] + [rng.randint(INT64_MIN, INT64_MAX) for _ in range(5000)]
    assert [fp in ours for fp in sample] == [fp in reference for fp in sample]
    assert any(fp in ours for fp in sample) and not all(fp in ours for fp in sample)


def test_what_cannot_be_a_fingerprint_is_never_a_member() -> None:
    """An int beyond int64 or a non-int is no member, and adding one is refused, naming why."""
    module = c_module()
    seen = module.RecentFingerprints(4)
    seen.add_all((1, 2))
    assert (1 << 64) not in seen and "1" not in seen and None not in seen
    assert not seen.has_all((1, 1 << 64)) and not seen.has_all((1, "x"))
    for odd in ((1 << 64,), ("x",), (1.0,)):
        with pytest.raises(TypeError, match="within int64"):
            seen.add_all(odd)
    with pytest.raises(TypeError):
        seen.add_all(5)
    assert len(seen) == 2


def head_event(hashes: list[Any], serial: int, *, as_text: bool = False) -> Event:
    """An audit event whose doc travelled as a head (its record hashes beside the text: as the
    assembler writes them, ``as_text``, or as a list of ints, as an older one did)."""
    carried: Any = hashes_text(hashes) if as_text else hashes
    head = {"auditd": {"result": "success", RECORD_HASHES: carried}, "process": {"pid": serial}}
    return {"key": ["", 1, 2, serial], "raw": len(hashes), "doc": head, DOC_TEXT: (b"{", b"}")}


def doc_event(records: list[Any], serial: int) -> Event:
    """An audit event with its whole doc (the raw records in it)."""
    return {"key": ["", 1, 2, serial], "raw": [], "doc": {"auditd": {"records": records}}}


def lost_marker(first: int, last: int) -> Event:
    """A serial-gap marker: identified by its range."""
    marker = {"cause": "serial_gap", "first_serial": first, "last_serial": last}
    doc = {
        "event": {"action": "events-lost"},
        "host": {"name": "h"},
        "auditstream": {"marker": marker},
    }
    return {"key": ["h", 0, 0, first], "raw": [], "doc": doc}


def odd_events() -> list[Event]:
    """Events of every shape the filter must take as Python takes them."""
    return [
        {"key": [], "raw": []},  # no doc
        {"key": [], "raw": [], "doc": None},
        {"key": [], "raw": [], "doc": "text"},
        {"key": [], "raw": [], "doc": {"event": {"action": "kernel-lost"}}},  # never deduplicated
        {"key": [], "raw": [], "doc": {"auditd": {"records": []}}},
        {"key": [], "raw": [], "doc": {"auditd": {"records": ["r", 5]}}},  # ints are skipped
        {"key": [], "raw": [], "doc": None, DOC_TEXT: None},
        {"key": [], "raw": [], "doc": {"auditd": "x"}, DOC_TEXT: None},
        {"key": [], "raw": [], "doc": {"auditd": {RECORD_HASHES: "x"}}, DOC_TEXT: None},
        {"key": [], "raw": [], "doc": {"auditd": {RECORD_HASHES: [1, "2"]}}, DOC_TEXT: None},
        {"key": [], "raw": [], "doc": {"auditd": {RECORD_HASHES: []}}, DOC_TEXT: None},
        {"key": [], "raw": [], "doc": {"auditd": {RECORD_HASHES: (1, 2)}}, DOC_TEXT: None},
        head_event([True, 0], 90),  # bool is an int to isinstance: Python takes it as 1
        head_event([0], 91),
        head_event([0, -1], 92, as_text=True),
        head_event([], 93, as_text=True),
        {**head_event([5], 94, as_text=True), "key": []},  # no key: no identity
    ] + [
        head_event([], 95 + n, as_text=False) | {"doc": {"auditd": {RECORD_HASHES: text}}}
        for n, text in enumerate(
            ["0" * 15, "A" * 16, "é" * 16, "0" * 16 + "g", " " * 16, "0000000000000001"]
        )
    ]


def event_stream(rng: random.Random, count: int) -> list[Event]:
    """Events with redeliveries: whole copies, parts of events, late records, markers."""
    events: list[Event] = []
    for serial in range(count):
        roll = rng.random()
        if roll < 0.55:
            hashes = [rng.randint(-(1 << 63), (1 << 63) - 1) for _ in range(3)]
            events.append(head_event(hashes, serial, as_text=rng.random() < 0.7))
        elif roll < 0.75:
            events.append(doc_event([f"type=SYSCALL msg=audit(1.2:{serial})", "type=EOE"], serial))
        elif roll < 0.80:
            events.append(lost_marker(serial, serial + rng.randint(0, 2)))
        elif events:  # something sent again: all of an earlier event, or a part of it
            again = rng.choice(events)
            copy = {**again, "doc": again.get("doc")}
            doc = copy["doc"]
            if DOC_TEXT in copy and isinstance(doc, dict) and rng.random() < 0.5:
                hashes = doc["auditd"][RECORD_HASHES]
                if isinstance(hashes, str):
                    hashes = hashes_of_text(hashes)
                part = hashes[: rng.randint(1, len(hashes))]
                if rng.random() < 0.3:
                    part = [*part, rng.randint(0, 1 << 40)]  # a late record: not a duplicate
                copy = head_event(part, serial, as_text=rng.random() < 0.5)
            events.append(copy)
    return events


@pytest.mark.parametrize("capacity", [1, 7, 64, 100_000])
def test_filter_keeps_and_drops_what_python_does(capacity: int) -> None:
    """Batch by batch, the C filter keeps the same events (the same objects) and drops as many."""
    rng = random.Random(capacity)
    stream = odd_events() + event_stream(rng, 4_000) + odd_events()
    ours, reference = c_dedupe(capacity), python_dedupe(capacity)
    start = 0
    while start < len(stream):
        batch = stream[start : start + rng.randint(0, 90)]
        start += len(batch)
        kept = ours.filter(batch)
        assert [id(e) for e in kept] == [id(e) for e in reference.filter(batch)]
        assert ours.dropped == reference.dropped
    assert ours.dropped > 0 and len(ours.seen) == len(reference.seen)


def test_filter_keeps_an_event_whose_hash_cannot_be_one_and_forgets_it() -> None:
    """A record hash beyond int64 (no hash() gives one) passes each time: never a drop."""
    module = c_module()
    seen = module.RecentFingerprints(100)
    odd = head_event([1 << 64, 5], 1)
    for _ in range(2):
        assert module.filter_events(seen, [odd], doc_fingerprints) == ([odd], 0)
    assert 5 not in seen


def test_filter_refuses_an_event_that_is_no_dict_and_keeps_what_it_learnt() -> None:
    """A batch holding a non-dict raises TypeError; what came before it stays remembered."""
    module = c_module()
    seen = module.RecentFingerprints(100)
    first = head_event([11, 12], 1)
    with pytest.raises(TypeError, match="an event is a dict"):
        module.filter_events(seen, [first, ["not", "an", "event"]], doc_fingerprints)
    assert module.filter_events(seen, [head_event([11, 12], 2)], doc_fingerprints) == ([], 1)


def test_filter_calls_doc_fingerprints_for_whole_docs() -> None:
    """Whole docs are identified by treekeeper.dedupe.doc_fingerprints, as in Python."""
    module = c_module()
    seen = module.RecentFingerprints(10)
    calls: list[Any] = []

    def counting(doc: Any) -> Any:
        calls.append(doc)
        return doc_fingerprints(doc)

    event = doc_event(["type=EOE msg=audit(1.1:1)"], 1)
    kept, dropped = module.filter_events(seen, [event, dict(event)], counting)
    assert (kept, dropped) == ([event], 1) and len(calls) == 2


def test_memory_stays_bounded_past_many_turnovers() -> None:
    """Millions of fingerprints through a small set: its two tables are reused, RSS stays flat."""
    module = c_module()
    seen = module.RecentFingerprints(20_000)
    rng = random.Random(3)

    def churn(rounds: int) -> None:
        for _ in range(rounds):
            seen.add_all(tuple(rng.getrandbits(63) for _ in range(100)))

    churn(2_000)  # past the largest size the tables reach
    before = rss_kib()
    churn(20_000)  # two million more fingerprints, a hundred turnovers
    assert rss_kib() - before < 4_096
    assert 20_000 <= len(seen) <= 40_100
