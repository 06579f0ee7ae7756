"""SYSCALL records interpreted in two runs: the call's head, and the process's tail, memoised.

A kernel SYSCALL record is ``arch syscall success exit a0..a3 items ppid pid`` (what this
call did) then ``auid uid gid euid suid fsuid egid sgid fsgid tty ses comm exe subj key``
(who did it). The tail is the same for every call of a process, and for every process of
one program run by one user, so its interpretation is memoised and only the head's ten
tokens are split and interpreted per record.

The result equals :func:`assembler.interpret.interpret` of the whole record (data, its
order, rule keys). Where that could differ, the whole record is interpreted instead:
- both runs must be plain bodies (then the whole is one too: no quote or odd token spans
  the cut, where text in one run could otherwise forge a field of the other);
- no token key in both runs (the whole would take the duplicate-key path);
- steps that read or place two fields see both in one run: success/res/result and
  arch/syscall not in the tail; the head holds only fields of the per-call steps (see
  :func:`~assembler.interpret.interpret_call_head`: no ids, subject, rule key, exact
  text), none of them dropped, quoted or needing escapes; and no exact field of the tail
  is kept from a dropped value (the whole record appends it after the result).
"""

from __future__ import annotations

from dataclasses import dataclass

from assembler.fields import DROPPED_VALUES
from assembler.interpret import Interpreted, interpret, interpret_body, interpret_call_head
from assembler.parse import Record

SYSCALL = 1300
_CUT = b" auid="
_HEAD_ONLY_KEYS = frozenset(("success", "res", "result", "arch", "syscall"))
# Bounded memo, cleared whole when full; longer tails are not kept (nor split). A tail is
# interpreted apart only when seen a second time, so tails that never repeat (churn,
# hostile input) cost one set entry, not a second interpretation.
_MAX_TAILS = 2048
_MAX_TAIL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class _Tail:
    """A tail's interpretation (None: not usable, interpret whole records) and token keys."""

    interpreted: Interpreted | None
    token_keys: frozenset[str]


_TAILS: dict[tuple[bytes, tuple[str, ...]], _Tail] = {}
_SEEN_ONCE: set[tuple[bytes, tuple[str, ...]]] = set()


def interpret_syscall(rec: Record, exact: tuple[str, ...] = ()) -> Interpreted:
    """:func:`~assembler.interpret.interpret` of a SYSCALL record; the caller owns the result."""
    body = rec.body
    cut = body.find(_CUT)
    if cut < 0 or len(body) - cut > _MAX_TAIL_BYTES:
        return interpret(rec, exact)
    head = body[:cut]
    if b"subj" in head:  # explicit subj_* fields would meet the tail's context parts
        return interpret(rec, exact)
    tail_key = (body[cut + 1 :], exact)
    tail = _TAILS.get(tail_key)
    if tail is None:
        if tail_key not in _SEEN_ONCE:
            if len(_SEEN_ONCE) >= _MAX_TAILS:
                _SEEN_ONCE.clear()
            _SEEN_ONCE.add(tail_key)
            return interpret(rec, exact)
        _SEEN_ONCE.discard(tail_key)
        tail = _remember_tail(*tail_key)
    tail_part = tail.interpreted
    if tail_part is None:
        return interpret(rec, exact)
    data = interpret_call_head(head)
    if data is None or not tail.token_keys.isdisjoint(data):
        return interpret(rec, exact)
    # The whole record's order: head fields, tail fields (subject context parts last of
    # them), then the result the interpreter appends.
    result = data.pop("result", None)
    data.update(tail_part.data)
    if result is not None:
        data["result"] = result
    return Interpreted(data, list(tail_part.keys), plain=True)


def _remember_tail(tail_body: bytes, exact: tuple[str, ...]) -> _Tail:
    interpreted = interpret_body(SYSCALL, tail_body, exact)
    token_keys: frozenset[str] = frozenset()
    usable = False
    if interpreted.plain:
        # A plain body's tokens are key=value at single spaces (values hold neither).
        text = tail_body.decode("utf-8", "surrogateescape").replace('"', "")
        flat = text.replace(" ", "=").split("=")
        keys, values = flat[::2], flat[1::2]
        token_keys = frozenset(keys)
        kept = {key for key, value in zip(keys, values, strict=True) if value not in DROPPED_VALUES}
        # An exact field whose value was dropped but kept as text is placed after the
        # result in a whole record: such a tail cannot be joined to a head.
        restored = any(key in interpreted.data and key not in kept for key in exact)
        usable = token_keys.isdisjoint(_HEAD_ONLY_KEYS) and not restored
    tail = _Tail(interpreted if usable else None, token_keys)
    if len(_TAILS) >= _MAX_TAILS:
        _TAILS.clear()
    _TAILS[(tail_body, exact)] = tail
    return tail
