"""Business metrics helpers and the lean request-metrics middleware."""

from __future__ import annotations

import time

from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from service import metrics


def sample(name: str, **labels: str) -> float:
    """The current value of a sample in the default registry (0 when absent)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_hold_counters_tell_first_holds_from_swaps() -> None:
    """An accepted hold on an order at version 2 is a first hold; above 2 it is a swap."""
    accepted, swaps = sample("seats_holds_total", outcome="accepted"), sample("seats_hold_swaps_total")
    metrics.hold_accepted(2)
    metrics.hold_accepted(5)
    metrics.hold_refused()
    assert sample("seats_holds_total", outcome="accepted") == accepted + 2
    assert sample("seats_hold_swaps_total") == swaps + 1
    assert sample("seats_holds_total", outcome="refused") >= 1


def test_payment_and_expiry_helpers() -> None:
    """A confirmed attempt counts a confirmation; an expiry records how late it ran after the deadline."""
    confirmations = sample("seats_confirmations_total")
    metrics.payment_attempt("success", "CONFIRMED")
    metrics.payment_attempt("declined", "RETRY")
    assert sample("seats_confirmations_total") == confirmations + 1
    assert sample("seats_payment_attempts_total", outcome="declined") >= 1
    late_before = sample("seats_expiry_lateness_seconds_count")
    metrics.expiry("EXPIRED", "2026-01-01T00:00:00.000Z", time.mktime((2026, 1, 1, 0, 0, 1, 0, 0, 0)) - time.timezone)
    metrics.expiry("NOT_DUE", "2026-01-01T00:00:00.000Z", 0.0)
    assert sample("seats_expiry_lateness_seconds_count") == late_before + 1
    assert sample("seats_expiry_lateness_seconds_bucket", le="1.0") >= 1


def test_request_metrics_middleware_groups_by_route_template() -> None:
    """Requests are counted under the route template (not the concrete path) with their status."""
    registry = CollectorRegistry()

    @get("/things/{thing_id:str}")
    async def thing(thing_id: FromPath[str]) -> dict[str, str]:
        return {"id": thing_id}

    app = Litestar([thing], middleware=[DefineMiddleware(metrics.RequestMetrics, registry=registry)])
    with TestClient(app) as client:
        for name in ("a", "b", "c"):
            assert client.get(f"/things/{name}").status_code == 200
        assert client.get("/nowhere").status_code == 404
    labels = {"method": "GET", "path": "/things/{thing_id}", "status_code": "200"}
    assert registry.get_sample_value("seats_requests_total", labels) == 3
    assert registry.get_sample_value("seats_request_duration_seconds_count", labels) == 3
    assert "/things/a" not in generate_latest(registry).decode()
