"""This host's audit node: the ``node=`` name live records without one are given.

auditd with ``name_format = hostname`` prefixes every record with ``node=<hostname>``;
the live receiver does the same for the records of its sources that name no node (the
kernel's never do), and ``run --record`` writes it, so that every live doc has
``host.name`` and a recording replays as what the live run gave (docs/design.md, "This
host's node"). A file replay gives none: a log without ``node=`` is of an unknown host.
"""

from __future__ import annotations

import socket
from functools import cache, lru_cache

from auditstream.escape import escape


@cache
def local_node() -> str:
    """This host's name as an audit node, read once per process (auditd too reads it at
    its start); "" when the host has no name (its records then name no node either)."""
    return node_of_hostname(socket.gethostname())


def node_of_hostname(name: str) -> str:
    """``name`` as a ``node=`` token of an audit.log line reads back: what a log line of
    these bytes would give (undecodable bytes as U+FFFD, receiver/csrc/lines.c), with the
    characters that would end the token or the line (whitespace, control characters)
    made ``_`` as the ``file`` sink writes them (sinks/rawfile.py). A live record's node,
    its raw line and that line replayed then agree, whatever the host is called."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if text.isprintable() and " " not in text:
        return text
    return "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in text)


@lru_cache(maxsize=256)
def host_name(node: str) -> str:
    """A log's ``node=`` name as ``host.name``: escaped like any untrusted text, since a
    hostile file can put control bytes or ``%`` there (plain names pass unchanged). The
    assembler writes docs' ``host.name`` so (in C too: assembler/csrc/ecs.c), and the Kafka
    sink keys a split doc by its event key's node so."""
    if node.isascii() and node.isprintable() and "%" not in node:
        return node
    return escape(node.encode("utf-8", "surrogateescape"))


@cache
def local_host_name() -> str:
    """:func:`local_node` as ``host.name`` spells it (:func:`host_name`): the tree keeper's
    live table and the fan-out's ``events-dropped`` markers then name this host as its
    audit docs do."""
    return host_name(local_node())
