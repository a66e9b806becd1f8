"""The load harness's own arithmetic: percentiles, windows, pacing, metrics parsing, invariants."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter

import pytest

from loadtest.client import NotLocal, check_local
from loadtest.invariants import InvariantReport, check_ownership, recount
from loadtest.pacing import arrival_times, closed_loop, open_loop
from loadtest.report import parse_metrics, server_view
from loadtest.stats import Recorder, percentile


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, p100 is the maximum: always a value that occurred."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 1) == 7.0


def test_percentile_of_small_samples_and_empty() -> None:
    """With 10 samples p95 and p99 are the maximum; no samples gives NaN; q outside (0, 100] is refused."""
    values = [float(v) for v in range(10)]
    assert percentile(values, 95) == 9
    assert percentile(values, 99) == 9
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_recorder_excludes_warmup_and_drain_and_measures_from_schedule() -> None:
    """Only samples scheduled inside the window count; latency runs from the scheduled time."""
    recorder = Recorder()
    recorder.window(10.0, 20.0)
    recorder.record("hold", 9.9, 10.5, 200)  # warm-up
    recorder.record("hold", 10.0, 10.25, 200)
    recorder.record("hold", 19.0, 19.5, 409, conflict=True)
    recorder.record("hold", 19.5, 21.0, 503)
    recorder.record("hold", 19.6, 25.0, 0)  # no response
    recorder.record("hold", 20.0, 20.1, 200)  # after the window
    summary = recorder.summary(["hold"])
    assert summary.requests == 3
    assert summary.rps == pytest.approx(0.3)
    assert summary.p50_ms == pytest.approx(500)
    assert summary.max_ms == pytest.approx(1500)
    assert summary.conflicts == 1
    assert summary.server_errors == 1
    assert summary.errors == 2
    assert recorder.series["hold"].warmup == 2


def test_arrival_times_are_evenly_spaced_and_bounded() -> None:
    """A 100/s process over 0.5 s schedules exactly 50 arrivals, 10 ms apart, all before the stop."""
    times = list(arrival_times(100, 5.0, 5.5))
    assert len(times) == 50
    assert times[0] == 5.0
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(times))
    assert times[-1] < 5.5
    with pytest.raises(ValueError):
        list(arrival_times(0, 0, 1))


async def test_open_loop_keeps_its_schedule_while_steps_are_slow() -> None:
    """Slow steps do not delay later arrivals: the pacer launches on time and waits for stragglers."""
    launched: list[tuple[float, float]] = []

    async def step(scheduled: float) -> None:
        launched.append((scheduled, time.monotonic()))
        await asyncio.sleep(0.1)  # ten times the inter-arrival gap

    start = time.monotonic() + 0.02
    stats = await open_loop(step, 100, start, start + 0.3, grace=1.0)
    assert stats.scheduled == len(launched) == 30
    assert stats.cancelled == 0
    lags = [actual - scheduled for scheduled, actual in launched]
    assert max(lags) < 0.05


async def test_open_loop_cancels_what_outlives_the_grace() -> None:
    """A hung step is cancelled at stop + grace: the harness never hangs."""
    async def step(_scheduled: float) -> None:
        await asyncio.sleep(60)

    start = time.monotonic()
    stats = await open_loop(step, 50, start, start + 0.1, grace=0.2)
    assert stats.cancelled == stats.scheduled == 5
    assert time.monotonic() - start < 1.0


async def test_closed_loop_runs_each_user_until_the_stop() -> None:
    """N users loop back to back until the stop time, then the run ends."""
    done: Counter[int] = Counter()

    async def user(index: int, stop: float) -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(0.01)
            done[index] += 1

    stats = await closed_loop(user, 4, time.monotonic() + 0.2)
    assert stats.scheduled == 4 and stats.cancelled == 0
    assert set(done) == {0, 1, 2, 3} and all(n >= 5 for n in done.values())


def test_only_local_targets() -> None:
    """The harness refuses anything but http://127.0.0.1 (or localhost)."""
    assert check_local("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_local("http://localhost:1") == "http://localhost:1"
    for url in ("http://10.0.0.1:8080", "https://127.0.0.1", "http://example.com"):
        with pytest.raises(NotLocal):
            check_local(url)


def test_server_view_reports_counter_deltas_and_route_means() -> None:
    """Two scrapes become business deltas and a mean latency per grouped route."""
    before = parse_metrics(
        'seats_holds_total{outcome="accepted"} 5\n'
        'seats_requests_total{app_name="seats",method="POST",path="/orders/{order_id}/seats",status_code="200"} 5\n'
        'seats_request_duration_seconds_sum{app_name="seats",method="POST",path="/orders/{order_id}/seats"} 0.5\n'
    )
    after = parse_metrics(
        'seats_holds_total{outcome="accepted"} 15\nseats_holds_total{outcome="refused"} 2\n'
        'seats_requests_total{app_name="seats",method="POST",path="/orders/{order_id}/seats",status_code="200"} 15\n'
        'seats_request_duration_seconds_sum{app_name="seats",method="POST",path="/orders/{order_id}/seats"} 0.6\n'
    )
    view = server_view(before, after)
    assert view["business"] == {"holds{accepted}": 10, "holds{refused}": 2}
    route = view["routes"]["POST /orders/{order_id}/seats"]
    assert route["requests"] == 10 and route["mean_ms"] == pytest.approx(10.0)


def _orders(**states: tuple[str, str]) -> dict[str, dict[str, str]]:
    return {oid: {"orderId": oid, "state": state, "seats": seats, "holdExpiresAt": ""}
            for oid, (state, seats) in states.items()}


def test_ownership_check_accepts_a_consistent_flight() -> None:
    """Sold seats of confirmed orders, live holds of open orders and of a FAILED order pass."""
    values = {"1A": "C|a", "1B": "C|a", "2A": "H|b|5000", "3A": "H|f|5000"}
    orders = _orders(a=("CONFIRMED", "1A,1B"), b=("SEATS_SELECTED", "2A"), f=("FAILED", "3A"), x=("EXPIRED", "4A"))
    report = InvariantReport()
    check_ownership("F", values, orders, 1000, report)
    assert report.ok, report.violations
    assert recount(values, 10, 1000) == Counter({"available": 6, "confirmed": 2, "held": 2})


@pytest.mark.parametrize(
    ("values", "orders", "expected"),
    [
        ({"1A": "C|a"}, _orders(a=("CONFIRMED", "1A"), b=("CONFIRMED", "1A")), "sold to a and b"),
        ({"1A": "H|a|5000"}, _orders(a=("CONFIRMED", "1A")), "lists 1A but the seat is"),
        ({"1A": "C|a", "1B": "C|a"}, _orders(a=("CONFIRMED", "1A")), "does not list them"),
        ({"1A": "C|a"}, _orders(a=("PAYING", "1A")), "which is PAYING"),
        ({"1A": "H|a|5000"}, _orders(a=("EXPIRED", "1A")), "still held by EXPIRED"),
        ({"1A": "H|a|500"}, _orders(a=("SEATS_SELECTED", "1A")), "past its deadline"),
        ({"1A": "H|a|5000"}, _orders(a=("SEATS_SELECTED", "1B")), "does not include it"),
    ],
)
def test_ownership_check_finds_each_violation(
    values: dict[str, str], orders: dict[str, dict[str, str]], expected: str
) -> None:
    """Every kind of inconsistency is reported."""
    report = InvariantReport()
    check_ownership("F", values, orders, 1000, report)
    assert not report.ok
    assert any(expected in v for v in report.violations), report.violations
