"""Prometheus text exposition format 0.0.4: metric families in, ``/metrics`` text out.

Only what ``auditstream.metrics`` needs: counters, gauges and histograms with
labels. Names are checked against the format's grammar (a bad name is a bug,
so it raises); label values and HELP text are escaped as the format requires
(backslash, double quote in label values, newline).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MetricType = Literal["counter", "gauge", "histogram", "summary", "untyped"]
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as in ``name{label="..."}``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Backslash and line feed escaped, as in ``# HELP name ...``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers exactly; floats by repr; infinities and NaN spelled as the format does."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a sample value")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass(frozen=True, slots=True)
class Sample:
    """One line: the family name plus ``suffix`` (``_bucket`` …), its labels and value."""

    suffix: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(slots=True)
class MetricFamily:
    """A ``# HELP`` / ``# TYPE`` header and its samples."""

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")

    def add(self, value: float, labels: dict[str, str] | None = None, suffix: str = "") -> None:
        """Append one sample; label names are checked, values escaped at render."""
        pairs = tuple((labels or {}).items())
        for name, _ in pairs:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r} on {self.name}")
        self.samples.append(Sample(suffix, pairs, value))

    def add_histogram(
        self,
        labels: dict[str, str],
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """Buckets from per-bucket ``counts`` (one more than ``bounds``: the last is +Inf)."""
        if self.type != "histogram" or len(counts) != len(bounds) + 1:
            raise ValueError(f"{self.name}: {len(counts)} counts for {len(bounds)} bounds")
        cumulative = 0
        for bound, count in zip([*bounds, math.inf], counts, strict=True):
            cumulative += count
            self.add(cumulative, {**labels, "le": format_value(float(bound))}, "_bucket")
        self.add(total, labels, "_sum")
        self.add(cumulative, labels, "_count")


def render(families: Iterable[MetricFamily]) -> str:
    """The exposition text; families without samples are left out."""
    lines: list[str] = []
    seen: set[str] = set()
    for family in families:
        if not family.samples:
            continue
        if family.name in seen:
            raise ValueError(f"metric family {family.name} rendered twice")
        seen.add(family.name)
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sample.labels)
            labels = f"{{{text}}}" if text else ""
            lines.append(f"{family.name}{sample.suffix}{labels} {format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""
