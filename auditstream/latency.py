"""Event latency from the receiver's receive stamp to a sink's flushed write.

A :class:`LatencyHistogram` keeps Prometheus-style fixed buckets (cumulative
since start, O(log buckets) per observation by bisect) and, for exact
percentiles, the last :data:`RECENT_EVENTS` observations (a sliding window of
events, not of time): p50/p99/max of the recent window are exact over those
events. It is fed by a sink's worker thread and read by the tree keeper's
status writer, so every method takes one lock.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NS_PER_S = 1_000_000_000
# Upper bounds ("le") in seconds: 1 ms .. 10 s, the span between a fast pipeline and a stall.
BUCKET_BOUNDS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
RECENT_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class RecentLatency:
    """Exact percentiles over the last ``events`` observations (seconds)."""

    events: int
    p50_s: float
    p99_s: float
    max_s: float


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list (``fraction`` in 0..1); 0 when empty."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyHistogram:
    """Fixed buckets since start plus an exact window of the most recent latencies."""

    def __init__(
        self,
        bounds_s: tuple[float, ...] = BUCKET_BOUNDS_S,
        recent_events: int = RECENT_EVENTS,
    ) -> None:
        if list(bounds_s) != sorted(set(bounds_s)) or not bounds_s:
            raise ValueError(f"bucket bounds must be strictly increasing: {bounds_s}")
        self.bounds_s = bounds_s
        self._bounds_ns = [round(b * NS_PER_S) for b in bounds_s]
        self._counts = [0] * (len(bounds_s) + 1)  # last: above every bound (+Inf)
        self._sum_ns = 0
        self._max_ns = 0
        self._recent: deque[int] = deque(maxlen=recent_events)
        self._lock = threading.Lock()

    def observe_many(self, latencies_ns: Iterable[int]) -> None:
        """Count each latency (ns; a negative one, from a clock step, counts as 0)."""
        bounds = self._bounds_ns
        counts = self._counts
        with self._lock:
            for value in latencies_ns:
                if value < 0:
                    value = 0
                counts[bisect.bisect_left(bounds, value)] += 1
                self._sum_ns += value
                if value > self._max_ns:
                    self._max_ns = value
                self._recent.append(value)

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def recent(self) -> RecentLatency:
        """p50/p99/max over the recent window (sorts at most RECENT_EVENTS ints)."""
        with self._lock:
            values = sorted(self._recent)
        return RecentLatency(
            events=len(values),
            p50_s=percentile(values, 0.50) / NS_PER_S,
            p99_s=percentile(values, 0.99) / NS_PER_S,
            max_s=(values[-1] if values else 0) / NS_PER_S,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for a status file: per-bucket (not cumulative) counts and more."""
        recent = self.recent()
        with self._lock:
            counts = list(self._counts)
            sum_ns, max_ns = self._sum_ns, self._max_ns
        return {
            "bounds_s": list(self.bounds_s),
            "counts": counts,
            "count": sum(counts),
            "sum_s": sum_ns / NS_PER_S,
            "max_s": max_ns / NS_PER_S,
            "recent": {
                "events": recent.events,
                "p50_s": recent.p50_s,
                "p99_s": recent.p99_s,
                "max_s": recent.max_s,
            },
        }
