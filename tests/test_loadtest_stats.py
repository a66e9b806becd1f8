"""The load harness's own arithmetic: percentiles, windows, pacing, metrics parsing, invariants, subjects, options."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import math
import time
from collections import Counter

import pytest

from loadtest.cli import UNREFUSED, UsageError, add_arguments, spawn_env
from loadtest.client import SUBJECT_NETWORK, NotLocal, Reply, check_local, request_headers, subject_address
from loadtest.invariants import InvariantReport, check_ownership, recount
from loadtest.pacing import arrival_times, closed_loop, open_loop
from loadtest.report import parse_metrics, server_view
from loadtest.scalper import Scalper
from loadtest.stats import Recorder, Series, percentile


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


def test_recorder_counts_refusals_by_the_controls() -> None:
    """Requests a limit refused are counted apart from seat conflicts (only inside the window)."""
    recorder = Recorder()
    recorder.window(0.0, 10.0)
    recorder.record("hold", 1.0, 1.1, 429, refused=True)
    recorder.record("hold", 2.0, 2.1, 409, refused=True)
    recorder.record("hold", 3.0, 3.1, 409, conflict=True)
    recorder.record("hold", 11.0, 11.1, 429, refused=True)  # after the window
    summary = recorder.summary()
    assert (summary.refused, summary.conflicts, summary.requests) == (2, 1, 3)
    assert summary.as_dict()["refused"] == 2


def test_series_cross_a_process_boundary_unchanged() -> None:
    """A recorder's series sent as JSON (the scalper's process) summarise exactly as the originals."""
    recorder = Recorder()
    recorder.window(0.0, 10.0)
    for i, status in enumerate((200, 429, 409, 0, 503)):
        recorder.record("x", 1.0 + i, 1.5 + i, status, conflict=status == 409, refused=status == 429)
    recorder.record("x", 11.0, 11.1, 200)
    copy = Recorder()
    copy.window(0.0, 10.0)
    copy.series = {k: Series.from_dict(json.loads(json.dumps(v.to_dict()))) for k, v in recorder.series.items()}
    assert copy.summary() == recorder.summary()
    assert copy.series["x"] == recorder.series["x"]


def test_replies_name_the_control_that_refused_them() -> None:
    """429 is the rate limiter, a 409 subject_limit_reached the caps; a seat conflict or a 200 is neither."""
    assert Reply(429, b'{"error":"rate_limited"}').refusal == "rate_limited"
    assert Reply(409, b'{"error":"subject_limit_reached"}').refusal == "subject_limit_reached"
    assert Reply(409, b'{"error":"seats_unavailable"}').refusal is None
    assert Reply(200, b"{}").refusal is None


def test_every_simulated_user_has_its_own_ipv4_address() -> None:
    """Subject addresses are distinct, in the benchmarking network, never its network or broadcast address."""
    addresses = [subject_address(i) for i in range(SUBJECT_NETWORK.num_addresses - 2)]
    assert len(set(addresses)) == len(addresses)
    parsed = {ipaddress.IPv4Address(a) for a in (addresses[0], addresses[-1])}
    assert all(a in SUBJECT_NETWORK for a in parsed)
    assert SUBJECT_NETWORK.network_address not in parsed and SUBJECT_NETWORK.broadcast_address not in parsed
    assert request_headers(address=addresses[0], token="t", json=True) == {
        "Content-Type": "application/json", "Authorization": "Bearer t", "X-Forwarded-For": addresses[0]}


def test_scalper_invariants() -> None:
    """The scalper must have been capped at least once and never hold more than the strictest cap it was told."""
    scalper = Scalper()
    assert "never refused by the seat cap" in scalper.violations()[0]
    scalper.seat_caps.add(10)
    scalper.peak = 10
    assert scalper.violations() == []
    scalper.peak = 11
    assert scalper.violations() == ["scalper: held 11 seats at once, over its cap of 10"]
    assert scalper.label(Reply(429, b"")) == "scalper.rate_limited"
    assert scalper.label(Reply(409, b'{"error":"seats_unavailable"}')) == "scalper.other"
    assert scalper.report()["outcomes"] == {"accepted": 0, "rate_limited": 1, "subject_limit_reached": 0, "other": 1}
    assert scalper.report()["other"] == {"409 seats_unavailable": 1}


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_spawned_settings_follow_the_scenarios() -> None:
    """Throughput scenarios raise the write limit (caps kept), scalper keeps the service's limits, --env wins,
    and scenarios that need different services are refused."""
    hold = spawn_env(_options("--spawn", "--scenario", "hold", "--scenario", "read"))
    assert hold["SEATS_TRUSTED_PROXIES"] == "127.0.0.1/32"
    assert hold["SEATS_RATE_LIMIT_WRITES"] == UNREFUSED["SEATS_RATE_LIMIT_WRITES"]
    assert "SEATS_MAX_HELD_SEATS_PER_SUBJECT" not in hold
    scalper = spawn_env(_options("--spawn", "--scenario", "scalper", "--scenario", "read"))
    assert "SEATS_RATE_LIMIT_WRITES" not in scalper
    chosen = spawn_env(_options("--spawn", "--scenario", "pay", "--env", "SEATS_RATE_LIMIT_WRITES=off"))
    assert chosen["SEATS_RATE_LIMIT_WRITES"] == "off"
    with pytest.raises(UsageError, match="cannot share one spawned service"):
        spawn_env(_options("--spawn", "--scenario", "scalper", "--scenario", "contended"))
    spawn_env(_options("--url", "http://127.0.0.1:1", "--scenario", "hold", "--scenario", "scalper"))  # no spawn


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
