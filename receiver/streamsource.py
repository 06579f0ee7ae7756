"""auditd's plugin feeds: stdin (auditd started us as its plugin) or its af_unix socket
(we run beside auditd and connect to the socket its builtin af_unix plugin listens on).

Both carry audit.log text lines (plugin ``format = string``). The socket goes away while
auditd restarts: a reader of it connects again (receiver/live.py run_stream)."""

from __future__ import annotations

import errno
import os
import select
import socket

from receiver.logsource import SourceError

READ_BYTES = 1 << 20
# An ECONNRESET on the socket is auditd going away, like an end of file.
CLOSED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN})


class PluginStream:
    """The open feed: ``read`` gives bytes, None (nothing yet) or b"" (closed by auditd)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sock: socket.socket | None = None
        self.fd = 0
        self.closed_by: str = "end of file"  # why the last read gave b""
        self._poller = select.poll()

    @property
    def path(self) -> str | None:
        """The af_unix socket's path; None for stdin."""
        return self.source.removeprefix("unix:") if self.source.startswith("unix:") else None

    @property
    def reconnectable(self) -> bool:
        """Only the socket can be opened again: stdin's end is auditd stopping us."""
        return self.path is not None

    @classmethod
    def open(cls, source: str) -> PluginStream:
        """Open ``stdin`` or ``unix:PATH``; SourceError names the socket and what to check."""
        stream = cls(source)
        if stream.path is None:
            stream._watch(0)
            return stream
        error = stream.connect()
        if error is not None:
            raise SourceError(
                f"cannot connect to {source}: {error.strerror or error} (is auditd running "
                f"with its af_unix plugin active, args naming this path?)"
            )
        return stream

    def connect(self) -> OSError | None:
        """(Re)connect to the socket; the error if it cannot be reached now."""
        assert self.path is not None
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as err:
            sock.close()
            return err
        self.sock = sock
        self._watch(sock.fileno())
        return None

    def _watch(self, fd: int) -> None:
        self.fd = fd
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def read(self, timeout_ms: int) -> bytes | None:
        """What arrived within ``timeout_ms``: None if nothing, b"" once auditd closed it."""
        if not self._poller.poll(timeout_ms):
            return None
        try:
            chunk = os.read(self.fd, READ_BYTES)
        except OSError as err:
            if err.errno not in CLOSED_ERRNOS:
                raise SourceError(f"cannot read {self.source}: {err.strerror or err}") from err
            self.closed_by = err.strerror or str(err)
            return b""
        if not chunk:
            self.closed_by = "end of file"
        return chunk

    def close(self) -> None:
        """Close the socket (stdin stays: it is the process's)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
