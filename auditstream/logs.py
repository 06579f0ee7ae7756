"""Logging for every process: readable text on a terminal, JSON lines for machines."""

from __future__ import annotations

import logging
import sys

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - 2.x layout
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[attr-defined,no-redef,unused-ignore]


def setup(component: str, *, fmt: str = "text", level: str = "info") -> logging.Logger:
    """Configure the root logger of this process and return the component's logger."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={
                    "asctime": "@timestamp",
                    "levelname": "log.level",
                    "name": "log.logger",
                },
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(f"auditstream[{component}] %(levelname)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"auditstream.{component}")


class RateLimitedLog:
    """Log the first few occurrences of a repeated problem, then only every Nth, with counts."""

    def __init__(self, logger: logging.Logger, *, first: int = 10, every: int = 1000) -> None:
        self.logger = logger
        self.first = first
        self.every = every
        self.seen: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        n = self.seen.get(kind, 0) + 1
        self.seen[kind] = n
        if n <= self.first or n % self.every == 0:
            self.logger.warning(f"{msg} (occurrence {n} of {kind})", *args)
