"""auditstream: Linux audit events, reassembled, enriched with the process tree, fanned out."""

__version__ = "0.1.0"
