"""Dedupe's fingerprints travel as the assembler's hashes of the records, never wrongly.

The heads carry ``hash()`` of each record in place of the records' text
(auditstream/doc_text.py ``RECORD_HASHES``). That is exact only when the assembler and
the tree keeper hash alike: the supervisor gives every stage of a run one
PYTHONHASHSEED, and the tree keeper decodes the docs whole from a sender that hashes
otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_doc_text import RECORD, audit_doc, audit_event, with_heads

from auditstream import wire
from auditstream.doc_text import DOC_TEXT, RECORD_HASHES
from auditstream.supervisor import stage_environment
from treekeeper.dedupe import Dedupe, RecentFingerprints, doc_fingerprints, head_fingerprints
from treekeeper.stage import TransportErrors, frames_events

REPO = Path(__file__).resolve().parents[1]
LATE = "type=PATH msg=audit(1700000000.001:7): item=1 name=/late"


def _hash_in_child(env: dict[str, str]) -> str:
    """hash() of one record text as a new interpreter with ``env`` computes it."""
    code = f"print(hash({RECORD!r}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    return out.stdout.decode().strip()


def test_stages_of_one_run_hash_alike_and_runs_differ() -> None:
    """Two stages given the supervisor's environment hash a record alike; another run's differ."""
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    run = stage_environment(plain)
    assert run["PYTHONHASHSEED"].isdigit() and run["PYTHONHASHSEED"] != "0"
    assert _hash_in_child(run) == _hash_in_child(run)
    other = stage_environment(plain)
    assert other["PYTHONHASHSEED"] != run["PYTHONHASHSEED"]  # 1 in 2**32 to collide
    assert _hash_in_child(other) != _hash_in_child(run)


def test_a_seed_the_user_set_is_kept_and_random_is_replaced() -> None:
    """PYTHONHASHSEED=123 stays for every stage; `random` becomes one number for all."""
    assert stage_environment({"PYTHONHASHSEED": "123"})["PYTHONHASHSEED"] == "123"
    assert stage_environment({"PYTHONHASHSEED": "random"})["PYTHONHASHSEED"].isdigit()


def test_a_heads_fingerprints_are_those_of_its_whole_doc() -> None:
    """The head's record hashes equal what dedupe computes from the doc's records."""
    doc = audit_doc()
    doc["auditd"]["records"] = [RECORD, LATE]
    (got,), _ = with_heads([audit_event(1, doc)])
    assert DOC_TEXT in got and RECORD_HASHES in got["doc"]["auditd"]
    assert head_fingerprints(got["doc"]) == doc_fingerprints(doc) == (hash(RECORD), hash(LATE))


def test_dedupe_drops_a_head_seen_whole_before_but_not_a_late_record() -> None:
    """An event written once as a whole doc is dropped when resent as a head; a late record passes."""
    dedupe = Dedupe(16)
    assert len(dedupe.filter([audit_event(1, audit_doc())])) == 1  # whole, as after a restart
    (again,), _ = with_heads([audit_event(1, audit_doc())])
    late_doc = audit_doc()
    late_doc["auditd"]["records"] = [LATE]
    (late,), _ = with_heads([audit_event(1, late_doc)])
    assert dedupe.filter([again, late]) == [late]
    assert dedupe.dropped == 1


def test_a_head_with_bad_hashes_is_never_dropped() -> None:
    """A head whose hashes are not ints has no identity: it passes, every time."""
    (got,), _ = with_heads([audit_event(1, audit_doc())])
    got["doc"]["auditd"][RECORD_HASHES] = ["not", "ints"]
    dedupe = Dedupe(16)
    assert dedupe.filter([got]) == [got] and dedupe.filter([got]) == [got]


def test_heads_of_a_sender_that_hashes_otherwise_are_decoded_whole() -> None:
    """A frame whose hash probe differs from ours: its docs decode whole, records and all, and it is counted."""
    doc = audit_doc()
    body = wire.pack_events_body([audit_event(1, doc)], {}).unpacked()
    body[wire.HASH_PROBE_FIELD] += 1
    errors = TransportErrors()
    frame = wire.Frame(kind=b"events", sender=0, counter=0, body=body)
    (got,) = frames_events(frame, errors, doc_text=True)
    assert DOC_TEXT not in got
    assert got["doc"] == doc
    assert errors.foreign_hashes == 1 and errors.frames == 0


def test_fingerprints_span_two_generations() -> None:
    """Members of the older and the newer set count alike; a third generation forgets the first."""
    seen = RecentFingerprints(3)
    seen.add_all((1, 2, 3))  # full: becomes the older generation
    seen.add_all((4,))
    assert seen.has_all((4, 1)) and seen.has_all((1, 4)) and seen.has_all((2, 3))
    assert not seen.has_all((5, 1)) and not seen.has_all((1, 5)) and not seen.has_all((5,))
    seen.add_all((5, 6))  # the newer fills: (1, 2, 3) are forgotten
    assert not seen.has_all((1,)) and seen.has_all((4, 5, 6))
