"""Logging for every process: readable text on a terminal, JSON lines for machines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pythonjsonlogger.json import JsonFormatter


def json_formatter_class() -> type[JsonFormatter]:
    """python-json-logger's formatter, imported only when asked for: with what it imports
    (uuid, platform, inspect) it was ~10 ms of every start, before a replay's first fork."""
    try:  # python-json-logger >= 3
        from pythonjsonlogger.json import JsonFormatter as formatter
    except ImportError:  # pragma: no cover - 2.x layout
        from pythonjsonlogger.jsonlogger import JsonFormatter as formatter  # type: ignore[attr-defined,no-redef,unused-ignore]
    return formatter


def setup(component: str, *, fmt: str = "text", level: str = "info") -> logging.Logger:
    """Configure the root logger of this process and return the component's logger."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter_class = json_formatter_class()

        class EcsJsonFormatter(formatter_class):  # type: ignore[valid-type,misc]
            """``@timestamp`` in ISO 8601 UTC with milliseconds, as ECS and our docs have it
            (logging's default, ``2026-11-24 15:19:10,985``, has no zone and a comma)."""

            def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
                return iso_utc_ms(record.created)

        handler.setFormatter(
            EcsJsonFormatter(
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


def iso_utc_ms(seconds: float) -> str:
    """``2026-11-24T15:19:10.985Z``: a POSIX time as ISO 8601 UTC with milliseconds."""
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


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
