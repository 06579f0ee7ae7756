"""Split one audit.log line into the raw record the pipeline carries.

A line is ``[node=NODE ]type=TYPE msg=DATA`` where TYPE is a name (``SYSCALL``),
a number (``1300``) or ``UNKNOWN[1334]``, and DATA is what the kernel sent over
netlink: ``audit(SEC.MSEC:SERIAL): fields`` (ENRICHED logs append 0x1d and
interpreted fields, which stay in DATA). Pure: bytes in, tuple out.
"""

from __future__ import annotations

from auditstream.record_types import NAME_BY_NUMBER, NUMBER_BY_NAME


class LineError(ValueError):
    """The line is not an audit record line."""


def split_log_line(line: bytes) -> tuple[int, bytes, str]:
    """Return ``(type, data, node)`` for a log line; raise :class:`LineError`."""
    line = line.rstrip(b"\r\n")
    node = ""
    if line.startswith(b"node="):
        end = line.find(b" ")
        if end < 0:
            raise LineError("node= prefix without a record")
        node = line[5:end].decode("utf-8", "replace")
        line = line[end + 1 :]
    if not line.startswith(b"type="):
        raise LineError("line does not start with type=")
    end = line.find(b" msg=")
    if end < 0:
        raise LineError("no msg= after type=")
    return parse_type(line[5:end]), line[end + 5 :], node


def parse_type(token: bytes) -> int:
    """Map ``SYSCALL``, ``1300`` or ``UNKNOWN[1300]`` to 1300."""
    if token.isdigit():
        return int(token)
    if token.startswith(b"UNKNOWN[") and token.endswith(b"]") and token[8:-1].isdigit():
        return int(token[8:-1])
    number = NUMBER_BY_NAME.get(token.decode("ascii", "replace"))
    if number is None:
        raise LineError(f"unknown record type {token[:40]!r}")
    return number


def type_name(number: int) -> str:
    """Name as auditd writes it: ``SYSCALL``, or ``UNKNOWN[1999]``."""
    return NAME_BY_NUMBER.get(number) or f"UNKNOWN[{number}]"


def format_log_line(number: int, data: bytes, node: str = "") -> bytes:
    """Inverse of :func:`split_log_line` (without the newline).

    A record's data can hold CR or LF (user-space messages are not escaped by the
    kernel); those bytes become spaces here so one record is always one line and
    no input can forge a second record. Callers count it with :func:`has_line_break`.
    """
    prefix = f"node={node} " if node else ""
    if has_line_break(data):
        data = data.replace(b"\n", b" ").replace(b"\r", b" ")
    return f"{prefix}type={type_name(number)} msg=".encode() + data


def has_line_break(data: bytes) -> bool:
    return b"\n" in data or b"\r" in data
