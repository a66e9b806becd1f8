"""Every tunable of the service, read once from ``SEATS_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from typing import Literal

import msgspec

ReleaseMode = Literal["deadline", "immediate"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """One frozen source of truth for constants; tests and the load harness override fields."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    hold_seconds: float = 900.0
    max_hold_seconds: float = 7200.0
    payment_timeout_seconds: float = 10.0
    payment_attempts: int = 3
    payment_failure_rate: float = 0.15
    payment_latency_seconds: float = 1.0
    payment_backoff_seconds: float = 0.5
    max_seats_per_order: int = 10
    release_on_failure: ReleaseMode = "deadline"
    order_retention_seconds: float = 7 * 24 * 3600.0
    admin_token: str | None = None
    flights_file: str | None = None
    cors_origins: tuple[str, ...] = ()
    change_log_length: int = 1000
    sweep_interval_seconds: float = 0.2
    max_body_bytes: int = 64 * 1024
    redis_max_connections: int = 256
    redis_max_in_flight: int = 10_000  # commands waiting on the scripts' pipelined connection (then 503)
    graceful_shutdown_seconds: float = 3.0
    # HTTP/1.1 head and connection bounds, enforced by the server before the app sees a request
    # (service/server.py): a head is the request line plus headers
    http_max_head_bytes: int = 16 * 1024  # over it: 431 and the connection closed
    http_max_headers: int = 100  # header lines per request; over it: 431 and the connection closed
    http_head_timeout_seconds: float = 10.0  # from a connection's open, or a request's first byte, to its last header
    http_keepalive_seconds: float = 5.0  # an idle keep-alive connection is closed after this
    # open connections per process (SSE streams included, so issue 13's 5,000 watchers fit twice);
    # past it new connections are closed at once and uvicorn answers 503 to requests
    http_max_connections: int = 10_000
    sse_heartbeat_seconds: float = 15.0
    sse_max_stream_seconds: float = 1800.0
    sse_retry_ms: int = 3000
    sse_client_queue: int = 1024
    # streams one event is written to per event-loop turn; the rest after what else is ready (a hold)
    sse_fanout_slice: int = 500
    worker_max_jobs: int = 100
    worker_poll_delay_seconds: float = 0.01
    worker_metrics_port: int | None = None  # the worker's own /metrics (containers share no directory)
    # Hostile crowds (spec §10): who a request is, and what one subject may do.
    buyer_secret: str | None = None  # HMAC key of buyer passes (Seats-Buyer); unset: passes are refused
    require_buyer_pass: bool = False  # POST /orders needs a valid pass
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    rate_limit_writes: str = "60/60"  # token bucket per subject and flight: <count>/<seconds>, or "off"
    max_streams_per_subject: int = 20  # open SSE streams per subject (0: no cap)
    max_held_seats_per_subject: int = 10  # seats held at once per subject and flight (0: no cap)
    max_open_orders_per_subject: int = 3  # non-terminal orders per subject and flight (0: no cap)
    pending_order_seconds: float = 900.0  # an order that never held a seat expires after this long
    idempotency_seconds: float = 86_400.0  # how long an Idempotency-Key's first response is kept
    idempotency_lease_seconds: float = 30.0  # a key whose first request is still running answers 409 this long
    # Operators (spec §13): every seat change is kept in the flight's history this long
    history_seconds: float = 30 * 24 * 3600.0
    # one JSON line per HTTP request (method, path without query, status, duration): off by default, it
    # cost the API ~60 µs of CPU per hold (+21 %, README "Logs")
    access_log: bool = False
    # Webhooks (spec §13, Standard Webhooks): both set, or neither (then no outbox entry is written)
    webhook_url: str | None = None  # where order.confirmed/failed/expired/cancelled are POSTed
    webhook_secret: str | None = None  # 'whsec_' + base64 of the signing key
    webhook_max_age_seconds: float = 24 * 3600.0  # an event not delivered by then is abandoned
    webhook_timeout_seconds: float = 10.0  # one delivery attempt, connect to the response's status line
    webhook_first_retry_seconds: float = 5.0  # backoff before the 2nd attempt; doubles, with equal jitter
    webhook_max_retry_seconds: float = 3600.0  # the longest wait between two attempts
    webhook_relay_interval_seconds: float = 0.2  # how often a worker reads the flights' outboxes
    webhook_claim_idle_seconds: float = 30.0  # an outbox entry read but not queued this long is taken over

    @property
    def write_limit(self) -> tuple[int, float] | None:
        """``SEATS_RATE_LIMIT_WRITES`` as (count, window seconds); None when the limiter is off."""
        return parse_rate(self.rate_limit_writes)
    order_claim_seconds: float = 30.0  # lease on a new order id until its order exists
    eviction_check_seconds: float = 5.0  # /readyz's maxmemory-policy reading is at most this old
    # Redis Cluster (spec §12): SEATS_REDIS_URL then lists seed nodes, comma-separated.
    redis_cluster: bool = False
    redis_wait_replicas: int | None = None  # WAIT after a confirmation: None = 1 in cluster mode, 0 standalone
    redis_wait_timeout_ms: int = 500

    @property
    def webhooks(self) -> bool:
        """Whether order events are written to the outbox and delivered (SEATS_WEBHOOK_URL is set)."""
        return bool(self.webhook_url and self.webhook_secret)

    @property
    def wait_replicas(self) -> int:
        """How many replicas must have a confirmation before it is reported (``WAIT``)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster else 0

    @property
    def queue_url(self) -> str:
        """arq's Redis: ``SEATS_QUEUE_REDIS_URL``, defaulting to the data Redis."""
        return self.queue_redis_url or self.redis_url

    @property
    def payment_job_timeout_seconds(self) -> float:
        """The longest a payment job can legitimately run: every attempt, timeout and backoff."""
        attempts = self.payment_attempts
        return attempts * (self.payment_timeout_seconds + self.payment_backoff_seconds) + 2

    @property
    def payment_window_seconds(self) -> float:
        """How long holds are extended on payment: a full job plus arq's re-run delay after a crash.

        arq re-runs a job whose worker died once its in-progress key lapses (job timeout + 10 s),
        so the holds must outlive that for the re-run to still confirm.
        """
        return 2 * self.payment_job_timeout_seconds + 15

    @property
    def order_ttl_seconds(self) -> float:
        """How long a non-terminal order may exist before Redis forgets it."""
        return self.max_hold_seconds + self.payment_window_seconds + self.order_retention_seconds


_ENV_NAMES: dict[str, str] = {
    "redis_url": "SEATS_REDIS_URL",
    "queue_redis_url": "SEATS_QUEUE_REDIS_URL",
    "host": "SEATS_HOST",
    "port": "SEATS_PORT",
    "hold_seconds": "SEATS_HOLD_SECONDS",
    "max_hold_seconds": "SEATS_MAX_HOLD_SECONDS",
    "payment_timeout_seconds": "SEATS_PAYMENT_TIMEOUT_SECONDS",
    "payment_attempts": "SEATS_PAYMENT_ATTEMPTS",
    "payment_failure_rate": "SEATS_PAYMENT_FAILURE_RATE",
    "payment_latency_seconds": "SEATS_PAYMENT_LATENCY_SECONDS",
    "payment_backoff_seconds": "SEATS_PAYMENT_BACKOFF_SECONDS",
    "max_seats_per_order": "SEATS_MAX_SEATS_PER_ORDER",
    "release_on_failure": "SEATS_RELEASE_ON_FAILURE",
    "order_retention_seconds": "SEATS_ORDER_RETENTION_SECONDS",
    "admin_token": "SEATS_ADMIN_TOKEN",
    "flights_file": "SEATS_FLIGHTS",
    "cors_origins": "SEATS_CORS_ORIGINS",
    "change_log_length": "SEATS_CHANGE_LOG_LENGTH",
    "sweep_interval_seconds": "SEATS_SWEEP_INTERVAL_SECONDS",
    "max_body_bytes": "SEATS_MAX_BODY_BYTES",
    "redis_max_connections": "SEATS_REDIS_MAX_CONNECTIONS",
    "redis_max_in_flight": "SEATS_REDIS_MAX_IN_FLIGHT",
    "graceful_shutdown_seconds": "SEATS_GRACEFUL_SHUTDOWN_SECONDS",
    "http_max_head_bytes": "SEATS_HTTP_MAX_HEAD_BYTES",
    "http_max_headers": "SEATS_HTTP_MAX_HEADERS",
    "http_head_timeout_seconds": "SEATS_HTTP_HEAD_TIMEOUT_SECONDS",
    "http_keepalive_seconds": "SEATS_HTTP_KEEPALIVE_SECONDS",
    "http_max_connections": "SEATS_HTTP_MAX_CONNECTIONS",
    "sse_heartbeat_seconds": "SEATS_SSE_HEARTBEAT_SECONDS",
    "sse_max_stream_seconds": "SEATS_SSE_MAX_STREAM_SECONDS",
    "sse_retry_ms": "SEATS_SSE_RETRY_MS",
    "sse_client_queue": "SEATS_SSE_CLIENT_QUEUE",
    "sse_fanout_slice": "SEATS_SSE_FANOUT_SLICE",
    "worker_max_jobs": "SEATS_WORKER_MAX_JOBS",
    "worker_poll_delay_seconds": "SEATS_WORKER_POLL_DELAY_SECONDS",
    "worker_metrics_port": "SEATS_WORKER_METRICS_PORT",
    "buyer_secret": "SEATS_BUYER_SECRET",
    "require_buyer_pass": "SEATS_REQUIRE_BUYER_PASS",
    "trusted_proxies": "SEATS_TRUSTED_PROXIES",
    "rate_limit_writes": "SEATS_RATE_LIMIT_WRITES",
    "max_streams_per_subject": "SEATS_MAX_STREAMS_PER_SUBJECT",
    "max_held_seats_per_subject": "SEATS_MAX_HELD_SEATS_PER_SUBJECT",
    "max_open_orders_per_subject": "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT",
    "pending_order_seconds": "SEATS_PENDING_ORDER_SECONDS",
    "idempotency_seconds": "SEATS_IDEMPOTENCY_SECONDS",
    "idempotency_lease_seconds": "SEATS_IDEMPOTENCY_LEASE_SECONDS",
    "history_seconds": "SEATS_HISTORY_SECONDS",
    "access_log": "SEATS_ACCESS_LOG",
    "webhook_url": "SEATS_WEBHOOK_URL",
    "webhook_secret": "SEATS_WEBHOOK_SECRET",
    "webhook_max_age_seconds": "SEATS_WEBHOOK_MAX_AGE_SECONDS",
    "webhook_timeout_seconds": "SEATS_WEBHOOK_TIMEOUT_SECONDS",
    "webhook_first_retry_seconds": "SEATS_WEBHOOK_FIRST_RETRY_SECONDS",
    "webhook_max_retry_seconds": "SEATS_WEBHOOK_MAX_RETRY_SECONDS",
    "webhook_relay_interval_seconds": "SEATS_WEBHOOK_RELAY_INTERVAL_SECONDS",
    "webhook_claim_idle_seconds": "SEATS_WEBHOOK_CLAIM_IDLE_SECONDS",
    "order_claim_seconds": "SEATS_ORDER_CLAIM_SECONDS",
    "eviction_check_seconds": "SEATS_EVICTION_CHECK_SECONDS",
    "redis_cluster": "SEATS_REDIS_CLUSTER",
    "redis_wait_replicas": "SEATS_REDIS_WAIT_REPLICAS",
    "redis_wait_timeout_ms": "SEATS_REDIS_WAIT_TIMEOUT_MS",
}
_LIST_FIELDS = frozenset({"cors_origins", "trusted_proxies"})


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from ``SEATS_*`` variables (and explicit overrides), validating types."""
    source = os.environ if env is None else env
    raw: dict[str, object] = {}
    for field, name in _ENV_NAMES.items():
        value = source.get(name)
        if value is None or value == "":
            continue
        raw[field] = [o.strip() for o in value.split(",") if o.strip()] if field in _LIST_FIELDS else value
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid SEATS_* setting: {exc}") from exc
    _check_ranges(settings)
    return settings


def _check_ranges(settings: Settings) -> None:
    if not 0.0 <= settings.payment_failure_rate <= 1.0:
        raise SettingsError("SEATS_PAYMENT_FAILURE_RATE must be between 0 and 1")
    if settings.payment_attempts < 1:
        raise SettingsError("SEATS_PAYMENT_ATTEMPTS must be at least 1")
    if settings.hold_seconds <= 0 or settings.max_hold_seconds < settings.hold_seconds:
        raise SettingsError("SEATS_HOLD_SECONDS must be positive and at most SEATS_MAX_HOLD_SECONDS")
    if settings.max_seats_per_order < 1:
        raise SettingsError("SEATS_MAX_SEATS_PER_ORDER must be at least 1")
    _check_http_ranges(settings)
    if settings.worker_metrics_port is not None and not 1 <= settings.worker_metrics_port <= 65535:
        raise SettingsError("SEATS_WORKER_METRICS_PORT must be a TCP port (1-65535)")
    if settings.redis_cluster and not settings.queue_redis_url:
        raise SettingsError(
            "SEATS_REDIS_CLUSTER=true needs SEATS_QUEUE_REDIS_URL: the payment queue (arq) cannot run on a "
            "Redis Cluster (its transactions span slots); point it at a standalone Redis")
    if (settings.redis_wait_replicas is not None and settings.redis_wait_replicas < 0) \
            or settings.redis_wait_timeout_ms < 0:
        raise SettingsError("SEATS_REDIS_WAIT_REPLICAS and SEATS_REDIS_WAIT_TIMEOUT_MS must be 0 or more")
    if settings.order_claim_seconds <= 0 or settings.eviction_check_seconds <= 0:
        raise SettingsError("SEATS_ORDER_CLAIM_SECONDS and SEATS_EVICTION_CHECK_SECONDS must be positive")
    if settings.history_seconds < 1:
        raise SettingsError("SEATS_HISTORY_SECONDS must be at least 1")
    _check_controls(settings)
    _check_webhooks(settings)


def parse_rate(value: str) -> tuple[int, float] | None:
    """``"<count>/<seconds>"`` (e.g. ``60/60``) as (count, seconds); ``"off"`` is None.

    Raises SettingsError for anything else (a count or window that is not positive).
    """
    if value.strip().lower() == "off":
        return None
    count, sep, seconds = value.partition("/")
    try:
        rate = (int(count), float(seconds))
    except ValueError:
        rate = (0, 0.0)
    if not sep or rate[0] < 1 or rate[1] <= 0:
        raise SettingsError(f"SEATS_RATE_LIMIT_WRITES must be '<count>/<seconds>' or 'off', not {value!r}")
    return rate


def _check_controls(settings: Settings) -> None:
    parse_rate(settings.rate_limit_writes)
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise SettingsError(f"SEATS_TRUSTED_PROXIES: {proxy!r} is not an address or CIDR") from exc
    caps = (settings.max_streams_per_subject, settings.max_held_seats_per_subject,
            settings.max_open_orders_per_subject)
    if min(caps) < 0:
        raise SettingsError("SEATS_MAX_*_PER_SUBJECT must be 0 (no cap) or more")
    if settings.pending_order_seconds <= 0 or settings.idempotency_seconds <= 0:
        raise SettingsError("SEATS_PENDING_ORDER_SECONDS and SEATS_IDEMPOTENCY_SECONDS must be positive")
    if settings.require_buyer_pass and not settings.buyer_secret:
        raise SettingsError("SEATS_REQUIRE_BUYER_PASS needs SEATS_BUYER_SECRET")


def _check_http_ranges(settings: Settings) -> None:
    if not 1024 <= settings.http_max_head_bytes <= 1024 * 1024:
        raise SettingsError("SEATS_HTTP_MAX_HEAD_BYTES must be between 1024 and 1048576")
    if not 10 <= settings.http_max_headers <= 1000:
        raise SettingsError("SEATS_HTTP_MAX_HEADERS must be between 10 and 1000")
    if settings.http_head_timeout_seconds <= 0 or settings.http_keepalive_seconds <= 0:
        raise SettingsError("SEATS_HTTP_HEAD_TIMEOUT_SECONDS and SEATS_HTTP_KEEPALIVE_SECONDS must be positive")
    if settings.http_max_connections < 1:
        raise SettingsError("SEATS_HTTP_MAX_CONNECTIONS must be at least 1")
    if settings.sse_fanout_slice < 1:
        raise SettingsError("SEATS_SSE_FANOUT_SLICE must be at least 1")


def webhook_key(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret (Standard Webhooks, "Signature scheme").

    Raises SettingsError naming SEATS_WEBHOOK_SECRET (never echoing it) when it is not that shape.
    """
    prefix, _, encoded = secret.partition("_")
    try:
        key = base64.b64decode(encoded, validate=True) if prefix == "whsec" else b""
    except binascii.Error:
        key = b""
    if len(key) < 16:
        raise SettingsError("SEATS_WEBHOOK_SECRET must be 'whsec_' followed by the base64 of a key of "
                            "at least 16 bytes (Standard Webhooks)")
    return key


def _check_webhooks(settings: Settings) -> None:
    if bool(settings.webhook_url) != bool(settings.webhook_secret):
        raise SettingsError("SEATS_WEBHOOK_URL and SEATS_WEBHOOK_SECRET are set together, or neither")
    if settings.webhook_url:
        scheme = urllib.parse.urlsplit(settings.webhook_url).scheme
        if scheme not in {"http", "https"} or not urllib.parse.urlsplit(settings.webhook_url).netloc:
            raise SettingsError("SEATS_WEBHOOK_URL must be an http:// or https:// URL")
    if settings.webhook_secret:
        webhook_key(settings.webhook_secret)
    durations = (settings.webhook_max_age_seconds, settings.webhook_timeout_seconds,
                 settings.webhook_first_retry_seconds, settings.webhook_max_retry_seconds,
                 settings.webhook_relay_interval_seconds, settings.webhook_claim_idle_seconds)
    if min(durations) <= 0 or settings.webhook_max_retry_seconds < settings.webhook_first_retry_seconds:
        raise SettingsError("SEATS_WEBHOOK_*_SECONDS must be positive, the max retry at least the first")
