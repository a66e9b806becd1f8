"""The run's report: the server's own metrics next to the client's view, a table and JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
BUSINESS = ("seats_holds_total", "seats_hold_swaps_total", "seats_confirmations_total",
            "seats_payment_attempts_total", "seats_payment_results_total", "seats_expirations_total")


def parse_metrics(text: str) -> Samples:
    """Prometheus text → {(sample name, labels): value} (``app_name`` dropped: always ``seats``)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("app_name", "pid")))
            samples[(sample.name, labels)] = samples.get((sample.name, labels), 0.0) + sample.value
    return samples


def _bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (what a histogram can say)."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def server_view(before: Samples, after: Samples) -> dict[str, Any]:
    """What ``/metrics`` says happened between two scrapes: business counters and per-route timings."""
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    business: dict[str, float] = {}
    for (name, labels), value in delta.items():
        if name in BUSINESS and value:
            label = ",".join(v for _, v in labels)
            short = name.removeprefix("seats_").removesuffix("_total")
            business[f"{short}{{{label}}}" if label else short] = value
    lateness_buckets = {float(dict(labels)["le"]): v for (name, labels), v in delta.items()
                        if name == "seats_expiry_lateness_seconds_bucket"}
    lateness_count = sum(v for (n, _), v in delta.items() if n == "seats_expiry_lateness_seconds_count")
    lateness_sum = sum(v for (n, _), v in delta.items() if n == "seats_expiry_lateness_seconds_sum")
    routes: dict[str, dict[str, Any]] = defaultdict(lambda: {"requests": 0.0, "statuses": {}})
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for (name, labels), value in delta.items():
        tags = dict(labels)
        route = f"{tags.get('method', '')} {tags.get('path', '')}".strip()
        if name == "seats_requests_total" and value:
            routes[route]["requests"] += value
            routes[route]["statuses"][tags.get("status_code", "?")] = value
        elif name == "seats_request_duration_seconds_sum":
            routes[route]["seconds"] = routes[route].get("seconds", 0.0) + value
        elif name == "seats_request_duration_seconds_bucket":
            bound = float(tags["le"])
            buckets[route][bound] = buckets[route].get(bound, 0.0) + value
    for route, info in list(routes.items()):
        if not info["requests"]:
            del routes[route]
            continue
        info["mean_ms"] = round(info.pop("seconds", 0.0) / info["requests"] * 1000, 3)
        p99 = _bucket_quantile(buckets.get(route, {}), 0.99)
        info["p99_le_ms"] = None if p99 is None or math.isinf(p99) else p99 * 1000
    gauges = {",".join(v for _, v in labels) or name: value for (name, labels), value in after.items()
              if name == "seats_sse_subscribers"}
    p99_late = _bucket_quantile(lateness_buckets, 0.99)
    return {
        "business": business,
        "expiry_lateness": {
            "count": lateness_count,
            "mean_ms": round(lateness_sum / lateness_count * 1000, 1) if lateness_count else None,
            "p99_le_ms": None if p99_late is None or math.isinf(p99_late) else p99_late * 1000,
        },
        "sse_subscribers": gauges,
        "routes": dict(routes),
    }


def median_of(values: list[float | None]) -> float | None:
    """The median of the non-null values (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, rounded, or None when either is missing."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    """The terminal table: one line per measured phase, then ratios and invariants."""
    header = ("phase", "rps", "p50 ms", "p95 ms", "p99 ms", "errors", "conflicts", "refused", "api µs/req")
    rows: list[tuple[object, ...]] = []
    baseline = report.get("baseline") or {}
    if "rps" in baseline:
        rows.append(("baseline POST", baseline["rps"], baseline["p50_ms"], baseline["p95_ms"], baseline["p99_ms"],
                     baseline["errors"], 0, 0, baseline.get("server_cpu_us_per_req")))
    get = baseline.get("get") or {}
    if get:
        rows.append(("baseline GET", get["rps"], get["p50_ms"], get["p95_ms"], get["p99_ms"], get["errors"], 0, 0,
                     get.get("server_cpu_us_per_req")))
    for name, phase in report["scenarios"].items():
        rows.append((name, phase["rps"], phase["p50_ms"], phase["p95_ms"], phase["p99_ms"], phase["errors"],
                     phase["conflicts"], phase.get("refused", 0), phase.get("server_cpu_us_per_req")))
        for endpoint, summary in phase.get("endpoints", {}).items():
            if len(phase.get("endpoints", {})) > 1:
                rows.append((f"  {endpoint}", summary["rps"], summary["p50_ms"], summary["p95_ms"], summary["p99_ms"],
                             summary["errors"], summary["conflicts"], summary.get("refused", 0), None))
    cells = [header, *[tuple(_cell(v) for v in row) for row in rows]]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                        strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extras = [f"{k} = {v}" for k, v in report.get("ratios", {}).items() if v is not None]
    arq = baseline.get("arq_noop")
    if arq:
        extras.append(f"baseline arq: {arq['jobs_per_s']} no-op jobs/s drained by one worker tuned as seats worker "
                      f"({arq['cpu_us_per_job']} µs CPU per job)")
    for name, phase in report["scenarios"].items():
        if phase.get("extra", {}).get("payments_per_s") is not None:
            extras.append(f"{name}: {phase['extra']['payments_per_s']} payments/s confirmed "
                          f"({phase['extra'].get('measured', 'end to end')})")
        scalper = phase.get("extra", {}).get("scalper")
        if scalper:
            outcomes = ", ".join(f"{k} {v}" for k, v in scalper["outcomes"].items())
            extras.append(f"{name}: scalper ({phase['extra']['scalper_loops']} loops, one address): {outcomes}; "
                          f"held at most {scalper['peak_held_seats']} seats at once (cap {scalper['seat_cap']}; "
                          f"{scalper['samples']} samples, every {scalper['sample_interval_ms']} ms)")
        sse = phase.get("extra", {}).get("sse")
        if sse:
            extras.append(f"{name}: SSE {sse['connected']}/{sse['watchers']} watchers, {sse['events']} events, "
                          f"delivery p50 {sse['delivery_p50_ms']} ms p99 {sse['delivery_p99_ms']} ms, "
                          f"gaps {sse['gaps']}" + (f" ({sse['unavailable']})" if sse["unavailable"] else ""))
    if report.get("transport"):
        from loadtest.bench_transport import describe

        extras.append(describe(report["transport"]))
    invariants = report.get("invariants", {})
    verdict = "OK" if invariants.get("ok") else f"VIOLATED ({invariants.get('violation_count')})"
    extras.append(f"invariants: {verdict} {invariants.get('checked', {})}")
    extras += [f"  ! {v}" for v in invariants.get("violations", [])[:10]]
    extras += [f"  ? {w}" for w in invariants.get("warnings", [])[:5]]
    return "\n".join([*lines, "", *extras])


def write_json(report: dict[str, Any], path: str) -> None:
    """Write the report as indented JSON."""
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
