"""receiver/event_tail.py: which events a followed log's last lines leave unended."""

from __future__ import annotations

from receiver.event_tail import TAIL_LINES, EventTail, unended_events


def _line(kind: str, serial: int, node: str = "") -> bytes:
    prefix = f"node={node} " if node else ""
    return f"{prefix}type={kind} msg=audit(1700000000.001:{serial}): a=1\n".encode()


def test_an_event_without_its_eoe_is_unended_and_one_with_it_is_not() -> None:
    """A SYSCALL and PATH without EOE leave their event unended; an event with its EOE does not."""
    lines = [_line("SYSCALL", 5), _line("PATH", 5), _line("SYSCALL", 6), _line("EOE", 6)]
    assert unended_events(lines) == {("", 5)}
    assert unended_events([*lines, _line("EOE", 5)]) == set()


def test_interleaved_events_and_nodes_are_told_apart() -> None:
    """Two events' records interleaved, and one serial on two nodes: each is its own event."""
    lines = [
        _line("SYSCALL", 7, "a"),
        _line("SYSCALL", 7, "b"),
        _line("SYSCALL", 8, "a"),
        _line("EOE", 7, "a"),
    ]
    assert unended_events(lines) == {("b", 7), ("a", 8)}


def test_records_that_stand_alone_and_lines_that_are_not_records_leave_nothing() -> None:
    """A user-space record (1100s), the kernel's start-up message, a lone EOE and a non-record line end nothing and leave nothing open; numbered types are read as named ones."""
    lines = [
        _line("USER_LOGIN", 3),
        _line("KERNEL", 4),
        _line("EOE", 2),
        b"this is not a record\n",
        b"type=1300 msg=audit(1700000000.001:9): a=1\n",
        _line("UNKNOWN[1320]", 9),
    ]
    assert unended_events(lines) == set()
    assert unended_events([_line("LOGIN", 10)]) == {("", 10)}  # written in a syscall's event


def test_the_tail_keeps_the_last_lines_across_chunks() -> None:
    """Short chunks add up to the last TAIL_LINES lines; a long chunk replaces them."""
    tail = EventTail()
    tail.saw([_line("SYSCALL", 1)])
    tail.saw([_line("EOE", 2)])
    assert tail.unended() == {("", 1)}
    tail.saw([_line("EOE", n) for n in range(100, 100 + TAIL_LINES)])
    assert len(tail.lines) == TAIL_LINES and tail.unended() == set()
    tail.saw([_line("SYSCALL", 3)])
    assert tail.lines[0] == _line("EOE", 101) and tail.unended() == {("", 3)}
