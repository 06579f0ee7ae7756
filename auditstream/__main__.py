"""``python -m auditstream``: the command line."""

from auditstream.cli import entry

entry()
