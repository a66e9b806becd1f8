"""Latency recording and summaries.

Every sample carries the time it was *scheduled*: in open-loop mode that is the arrival time the
pacer planned, so a server that falls behind shows its queueing as latency instead of hiding it
(no coordinated omission). Samples scheduled during the warm-up are counted but not summarised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of already sorted values; NaN if empty.

    Nearest rank never interpolates, so a p99 is always a latency that some request really had.
    """
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    if not sorted_values:
        return math.nan
    rank = math.ceil(q / 100 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


@dataclass(slots=True)
class Series:
    """One endpoint's samples inside the measured window."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    conflicts: int = 0
    refused: int = 0
    transport_errors: int = 0
    warmup: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for a recorder in another process (``from_dict`` reads it back)."""
        return {"latencies": self.latencies, "statuses": {str(k): v for k, v in self.statuses.items()},
                "conflicts": self.conflicts, "refused": self.refused, "transport_errors": self.transport_errors,
                "warmup": self.warmup}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Series:
        """The inverse of :meth:`to_dict`."""
        statuses = Counter({int(k): int(v) for k, v in data["statuses"].items()})
        return cls([float(v) for v in data["latencies"]], statuses, int(data["conflicts"]), int(data["refused"]),
                   int(data["transport_errors"]), int(data["warmup"]))


@dataclass(frozen=True, slots=True)
class Summary:
    """What the report shows for one endpoint (or a group of endpoints)."""

    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_errors: int
    conflicts: int
    refused: int  # by a spec §10 control: 429 rate_limited or 409 subject_limit_reached
    statuses: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, NaN as null, milliseconds rounded to microseconds."""
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "requests": self.requests, "rps": round(self.rps, 1),
            "p50_ms": clean(self.p50_ms), "p95_ms": clean(self.p95_ms), "p99_ms": clean(self.p99_ms),
            "max_ms": clean(self.max_ms), "errors": self.errors, "server_errors": self.server_errors,
            "conflicts": self.conflicts, "refused": self.refused, "statuses": self.statuses,
        }


def summarise(series: Iterable[Series], window_seconds: float) -> Summary:
    """Merge ``series`` and summarise them over a measured window of ``window_seconds``."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    conflicts = refused = transport = 0
    for one in series:
        latencies.extend(one.latencies)
        statuses.update(one.statuses)
        conflicts += one.conflicts
        refused += one.refused
        transport += one.transport_errors
    latencies.sort()
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    count = len(latencies)
    return Summary(
        requests=count,
        rps=count / window_seconds if window_seconds > 0 else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else math.nan,
        errors=server_errors + transport,
        server_errors=server_errors,
        conflicts=conflicts,
        refused=refused,
        statuses={str(k): v for k, v in sorted(statuses.items())},
    )


class Recorder:
    """Collects samples per endpoint name; only those scheduled in [measure_from, measure_until) count."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.measure_from = math.inf
        self.measure_until = math.inf

    def window(self, start: float, end: float) -> None:
        """Set the measured window (monotonic seconds): warm-up before it, drain after it."""
        self.measure_from, self.measure_until = start, end

    def record(self, name: str, scheduled: float, finished: float, status: int, *, conflict: bool = False,
               refused: bool = False) -> None:
        """One response (``status`` 0 = no response: connection error or timeout; ``refused``: by a control)."""
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Series()
        if not self.measure_from <= scheduled < self.measure_until:
            series.warmup += 1
            return
        if status == 0:
            series.transport_errors += 1
            series.statuses[0] += 1
            return
        series.latencies.append(finished - scheduled)
        series.statuses[status] += 1
        if conflict:
            series.conflicts += 1
        if refused:
            series.refused += 1

    def summary(self, names: Iterable[str] | None = None) -> Summary:
        """Summary of the named endpoints (all when ``names`` is None) over the measured window."""
        chosen = self.series.values() if names is None else [self.series[n] for n in names if n in self.series]
        return summarise(chosen, self.measure_until - self.measure_from)

    def per_endpoint(self) -> dict[str, Summary]:
        """Every endpoint's own summary."""
        return {name: self.summary([name]) for name in sorted(self.series)}
