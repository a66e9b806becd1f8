"""Metrics for ``GET /metrics``: request latency per route template and the business figures.

The API and the worker are separate processes. Set ``PROMETHEUS_MULTIPROC_DIR`` to one directory
both can write (emptied before they start; ``seats loadtest --spawn`` does this) and the API's
``/metrics`` shows the worker's counters too: prometheus_client then keeps every value in a small
memory-mapped file per process and Litestar's controller merges them. Without it each process
counts in memory and the API shows only its own figures (holds, swaps, SSE subscribers).

Every helper is a few dict lookups and an increment: nothing here touches Redis or logs.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, ClassVar

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

HOLDS = Counter("seats_holds_total", "Seat-selection requests by outcome (accepted, refused = seats taken)",
                ["outcome"])
HOLD_SWAPS = Counter("seats_hold_swaps_total", "Accepted selections that replaced or refreshed an earlier hold")
CONFIRMATIONS = Counter("seats_confirmations_total", "Orders confirmed by a successful payment")
PAYMENT_ATTEMPTS = Counter("seats_payment_attempts_total", "Payment validation attempts by outcome",
                           ["outcome"])
PAYMENT_RESULTS = Counter("seats_payment_results_total",
                          "Recorded attempt results (CONFIRMED, RETRY, FAILED, LATE, NOOP)", ["result"])
PAYMENT_LOOKUPS = Counter("seats_payment_lookups_total",
                          "Attempts whose answer did not come in time, looked up at the gateway, by what it had "
                          "recorded (success, declined, void = no charge)", ["outcome"])
SETTLEMENTS = Counter("seats_payment_settlements_total",
                      "Payments of orders that ended unconfirmed, settled (refunded, or failed: nothing charged)",
                      ["outcome"])
EXPIRATIONS = Counter("seats_expirations_total",
                      "Holds ended by the sweeper: expired orders, and failed orders whose seats were released",
                      ["kind"])
EXPIRY_LATENESS = Histogram(
    "seats_expiry_lateness_seconds", "How long after its deadline the sweeper ended a hold",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
REPLICATION_WAITS = Counter(
    "seats_replication_waits_total",
    "WAITs for replicas after a confirmation by outcome (acknowledged, timeout, skipped, failed)", ["outcome"])
WEBHOOK_ATTEMPTS = Counter(
    "seats_webhook_attempts_total",
    "Webhook delivery attempts by event type and outcome (delivered = 2xx; redirect = 3xx, client_error = 4xx, "
    "server_error = 5xx, timeout and unreachable are retried; abandoned = past SEATS_WEBHOOK_MAX_AGE_SECONDS, "
    "not sent)",
    ["type", "outcome"])
WEBHOOKS_QUEUED = Counter("seats_webhooks_queued_total",
                          "Outbox events handed to a delivery job by the worker's relay", ["type"])
SSE_SUBSCRIBERS = Gauge("seats_sse_subscribers", "Open SSE streams by kind (flight, order)", ["stream"],
                        multiprocess_mode="livesum")
SSE_DELIVERIES = Counter(
    "seats_sse_deliveries_total",
    "Flight events handed to streams: written to the connection by the fan-out (direct) or queued for the stream",
    ["path"])

_HOLD_ACCEPTED = HOLDS.labels("accepted")
_HOLD_REFUSED = HOLDS.labels("refused")


def hold_accepted(order_version: int) -> None:
    """Count an accepted selection; an order's version is 1 after creation and +1 per change,
    and no other change precedes payment, so a version above 2 means an earlier hold existed."""
    _HOLD_ACCEPTED.inc()
    if order_version > 2:
        HOLD_SWAPS.inc()


def webhook_attempt(event_type: str, outcome: str) -> None:
    """Count one webhook delivery attempt (``service.webhooks``; outcomes in WEBHOOK_ATTEMPTS' help)."""
    WEBHOOK_ATTEMPTS.labels(event_type, outcome).inc()


def hold_refused() -> None:
    """Count a selection refused because a seat was taken (409 ``seats_unavailable``)."""
    _HOLD_REFUSED.inc()


def payment_attempt(outcome: str, result: str) -> None:
    """Count one attempt (gateway ``outcome``) and what recording it did (``result``)."""
    PAYMENT_ATTEMPTS.labels(outcome).inc()
    PAYMENT_RESULTS.labels(result).inc()
    if result == "CONFIRMED":
        CONFIRMATIONS.inc()


def payment_lookup(outcome: str) -> None:
    """Count an attempt resolved by asking the gateway under its key (``success``/``declined``/``void``)."""
    PAYMENT_LOOKUPS.labels(outcome).inc()


def settlement(outcome: str) -> None:
    """Count a settled payment of an order that ended unconfirmed (``refunded`` or ``failed``)."""
    SETTLEMENTS.labels(outcome).inc()


def replication_wait(outcome: str) -> None:
    """Count a WAIT after a confirmation: ``acknowledged`` (enough replicas in time), ``timeout`` (fewer),
    ``skipped`` (the node fell short moments ago), ``failed`` (Redis did not answer)."""
    REPLICATION_WAITS.labels(outcome).inc()


def expiry(status: str, hold_expires_at: str | None, now: float) -> None:
    """Count a sweeper step that ended a hold (``EXPIRED``/``RELEASED``) and how late it ran."""
    if status not in ("EXPIRED", "RELEASED"):
        return
    EXPIRATIONS.labels(status.lower()).inc()
    if hold_expires_at:
        deadline = datetime.fromisoformat(hold_expires_at.replace("Z", "+00:00")).timestamp()
        EXPIRY_LATENESS.observe(max(0.0, now - deadline))


class RequestMetrics:
    """ASGI middleware: requests and latency per method and route template, for a few µs a request.

    Litestar's ``PrometheusConfig`` middleware builds a ``Request``, its URL and label dicts on every
    call (measured: +23 µs per request in-process, +27 µs with ``PROMETHEUS_MULTIPROC_DIR``, on a
    handler that costs 31 µs). This one reads the route template Litestar's router already put in
    the scope and keeps one bound child per (method, route, status). Same metric names and labels
    (without ``app_name``); use it *instead of* the plugin's middleware, never both: the names would
    collide. Metrics are created on first construction, so merely importing this module registers
    nothing that could clash. Wire it as ``middleware=[RequestMetrics]`` (or ``DefineMiddleware(
    RequestMetrics, registry=...)``).
    """

    _families: ClassVar[dict[int, tuple[Counter, Histogram]]] = {}

    def __init__(self, app: ASGIApp, registry: CollectorRegistry = REGISTRY) -> None:
        self.app = app
        families = RequestMetrics._families.get(id(registry))
        if families is None:
            families = RequestMetrics._families[id(registry)] = (
                Counter("seats_requests_total", "Requests by method, route template and status",
                        ["method", "path", "status_code"], registry=registry),
                Histogram("seats_request_duration_seconds", "Request duration by method, route template and status",
                          ["method", "path", "status_code"], registry=registry,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)),
            )
        self._families_of_registry = families
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request; count it under its route template and final status."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            key = (method, scope.get("path_template") or "unmatched", status)
            children = self._children.get(key)
            if children is None:
                count, duration = self._families_of_registry
                children = self._children[key] = (count.labels(*key), duration.labels(*key))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
