"""systemd's sd_notify protocol without python-systemd: one datagram to $NOTIFY_SOCKET.

With ``Type=notify`` systemd waits for ``READY=1`` before it counts the service as started,
and ``STOPPING=1`` tells it a stop is under way. ``NOTIFY_SOCKET`` is a filesystem path or,
starting with ``@``, a name in the abstract namespace. Without it every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("auditstream.sdnotify")
NOTIFY_TIMEOUT_S = 2.0  # a datagram to systemd never waits long; do not hang a stop on it


def notify_address(value: str) -> str | bytes | None:
    """The socket address that ``$NOTIFY_SOCKET`` names, or None when it names none."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace: a leading NUL, no file
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:… addresses, which we do not speak


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=…") as one message; True if it was sent."""
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = notify_address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", value)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(NOTIFY_TIMEOUT_S)
            sock.sendto(message, address)
    except OSError as err:
        log.warning("cannot notify systemd at %s (%s): %s", value, fields[0], err)
        return False
    return True
