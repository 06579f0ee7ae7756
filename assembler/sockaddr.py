"""Decode a SOCKADDR record's ``saddr`` hex into fields, as go-libaudit's auparse does.

``family`` is ``unix`` (with ``path``), ``ipv4`` / ``ipv6`` (with ``addr``, ``port``
and, for ipv6, ``flow`` when non-zero), ``netlink`` (raw ``saddr`` kept) or the
family number in decimal (raw ``saddr`` kept).

Deliberate differences from go-libaudit:
* The family is a host-order u16. go-libaudit always reads it little-endian, so a
  big-endian host's (ppc64, s390x) AF_INET ``0002…`` reads as family 512. A family
  whose first byte is 0 and second is not is read big-endian here (families are
  all < 256, so a little-endian family never looks like that).
* ``flow`` is read as an unsigned 32-bit value (Go fails the whole record above 2**31-1).
"""

from __future__ import annotations

import re

from auditstream.escape import escape

_HEX = re.compile(rb"[0-9a-fA-F]+")
_UPPER_HEX = re.compile(rb"(?:[0-9A-F]{2})*")
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16


def _hex_int(token: bytes) -> int | None:
    return int(token, 16) if _HEX.fullmatch(token) else None


def ipv6_text(raw: bytes) -> str:
    """Format 16 bytes the way Go's ``net.IP.String`` does (IPv4-mapped as dotted quad)."""
    if raw[:12] == b"\x00" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in raw[12:])
    groups = [(raw[i] << 8) | raw[i + 1] for i in range(0, 16, 2)]
    # The longest run of >= 2 zero groups (the first one on ties) becomes "::".
    best_start, best_len, run_start = -1, 1, -1
    for index, group in enumerate([*groups, 1]):
        if group == 0:
            run_start = index if run_start < 0 else run_start
            continue
        if run_start >= 0 and index - run_start > best_len:
            best_start, best_len = run_start, index - run_start
        run_start = -1
    if best_start < 0:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best_start])
    tail = ":".join(f"{g:x}" for g in groups[best_start + best_len :])
    return f"{head}::{tail}"


def decode_sockaddr(saddr: bytes) -> dict[str, str] | None:
    """Return the decoded fields of a ``saddr`` hex string, or None if it is malformed."""
    if len(saddr) < 4:
        return None
    low, high = _hex_int(saddr[0:2]), _hex_int(saddr[2:4])
    if low is None or high is None:
        return None
    family = high << 8 | low
    if low == 0 and high != 0:  # big-endian host, see module docstring
        family = high
    if family == _AF_UNIX:
        if not _UPPER_HEX.fullmatch(saddr[4:]):
            return None
        path = bytes.fromhex(saddr[4:].decode("ascii")).split(b"\x00", 1)[0]
        return {"family": "unix", "path": escape(path)}
    if family == _AF_INET:
        if len(saddr) < 16:
            return None
        port = _hex_int(saddr[4:8])
        if port is None:
            return None
        # Go ignores a malformed address byte (it reads as 0).
        octets = [_hex_int(saddr[i : i + 2]) or 0 for i in range(8, 16, 2)]
        return {"family": "ipv4", "addr": ".".join(map(str, octets)), "port": str(port)}
    if family == _AF_INET6:
        if len(saddr) < 48:
            return None
        port, flow = _hex_int(saddr[4:8]), _hex_int(saddr[8:16])
        if port is None or flow is None or not _HEX.fullmatch(saddr[16:48]):
            return None
        out = {
            "family": "ipv6",
            "addr": ipv6_text(bytes.fromhex(saddr[16:48].decode("ascii"))),
            "port": str(port),
        }
        if flow > 0:
            out["flow"] = str(flow)
        return out
    raw = saddr.decode("ascii", "replace")
    if family == _AF_NETLINK:
        return {"family": "netlink", "saddr": raw}
    return {"family": str(family), "saddr": raw}
