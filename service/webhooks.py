"""Webhooks (spec §13, the Standard Webhooks specification https://www.standardwebhooks.com/).

How an event travels, at least once:

1. the order script that ends an order appends its event to the flight's outbox (``lua/_lib.lua``);
2. the worker's relay (:func:`run_relay`) reads the outboxes through a consumer group and queues one arq job
   per event, job id = the event's ``webhook-id``, then acknowledges the entry (``store.outbox``);
3. the job (``worker.jobs.deliver_webhook``) POSTs it once per try (:class:`Deliverer`); a 2xx ends it,
   anything else is retried by arq after :func:`retry_delay`, with the same ``webhook-id``, until the event is
   ``SEATS_WEBHOOK_MAX_AGE_SECONDS`` old.

The Lua script cannot queue the job itself: arq's queue is another Redis in cluster mode. A job run twice
(arq's at-least-once) sends the same id twice; receivers de-duplicate on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import httpx
import msgspec
from standardwebhooks import Webhook

from service import errors, metrics
from service.models import WebhookEvent, iso_ms
from service.orders import order_from_hash
from service.settings import Settings
from service.store.outbox import Outbox, OutboxEvent

log = logging.getLogger("seats.webhooks")

WEBHOOK_JOB: Final = "deliver_webhook"
RELAY_BATCH: Final = 100  # outbox entries read per flight per pass

_encoder = msgspec.json.Encoder()


def event_body(event: OutboxEvent) -> str:
    """The JSON body of ``event``: ``{"type", "timestamp", "data": <the order as GET /orders/{id} shows it>}``."""
    body = WebhookEvent(type=event.type, timestamp=iso_ms(event.at_ms), data=order_from_hash(event.order))
    return _encoder.encode(body).decode()


def signed_headers(signer: Webhook, webhook_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: ``webhook-id``, ``webhook-timestamp`` (Unix seconds of
    this attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(webhook_id, now, body),
        "content-type": "application/json",
    }


def retry_delay(job_try: int, settings: Settings, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds before try ``job_try + 1`` (``job_try`` = 1 after the first attempt): exponential, doubling from
    ``SEATS_WEBHOOK_FIRST_RETRY_SECONDS`` and capped at ``SEATS_WEBHOOK_MAX_RETRY_SECONDS``, with equal jitter
    (half fixed, half random: retries of many events spread out, yet each still backs off)."""
    doublings = min(job_try - 1, 60)  # 2**60 times any first retry is past any cap; larger would overflow a float
    ceiling = min(settings.webhook_max_retry_seconds, settings.webhook_first_retry_seconds * 2 ** doublings)
    return float(ceiling / 2 + rand(0.0, ceiling / 2))


def max_tries(settings: Settings) -> int:
    """arq's try bound for a delivery job, large enough never to end one before the event's max age does
    (each wait is at least half the first retry)."""
    return int(settings.webhook_max_age_seconds / (settings.webhook_first_retry_seconds / 2)) + 2


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's outcome (a ``seats_webhook_attempts_total`` label) and whether the event is done."""

    outcome: str
    done: bool
    status: int | None = None


class Deliverer:
    """POSTs signed events to ``SEATS_WEBHOOK_URL`` (one HTTP client per worker process)."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        assert settings.webhook_url and settings.webhook_secret
        self._url = settings.webhook_url
        self._signer = Webhook(settings.webhook_secret)
        self._max_age_ms = int(settings.webhook_max_age_seconds * 1000)
        self._timeout = settings.webhook_timeout_seconds
        self._client = client or httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    async def attempt(self, webhook_id: str, event_type: str, body: str, at_ms: int) -> Attempt:
        """POST ``body`` once; counts the attempt. An event older than the max age is abandoned unsent."""
        if time.time() * 1000 - at_ms > self._max_age_ms:
            result = Attempt("abandoned", done=True)
        else:
            result = await self._post(webhook_id, body)
        metrics.webhook_attempt(event_type, result.outcome)
        level = logging.INFO if result.outcome == "delivered" else logging.WARNING
        log.log(level, "webhook attempt", extra={"webhookId": webhook_id, "type": event_type,
                                                 "outcome": result.outcome, "status": result.status})
        return result

    async def _post(self, webhook_id: str, body: str) -> Attempt:
        headers = signed_headers(self._signer, webhook_id, body, datetime.now(tz=UTC))
        try:
            # httpx's timeout bounds each step (connect, write, every read), not the whole call: a receiver
            # that answers slowly could outlast arq's job timeout, and a job that times out is never retried.
            # So one bound for the whole exchange; the response's body is never read (nothing to fill memory).
            async with asyncio.timeout(self._timeout), self._client.stream(
                    "POST", self._url, content=body.encode(), headers=headers) as response:
                status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return Attempt("timeout", done=False)
        except httpx.HTTPError:
            return Attempt("unreachable", done=False)
        if 200 <= status < 300:
            return Attempt("delivered", done=True, status=status)
        outcome = "redirect" if status < 400 else "client_error" if status < 500 else "server_error"
        return Attempt(outcome, done=False, status=status)  # a redirect is not followed: the URL is configured

    def retry_in(self, at_ms: int, delay: float) -> float | None:
        """When to try again: ``delay`` seconds, shortened so the last try still lands within the event's max
        age (1 s before it); None when no time is left."""
        left = (self._max_age_ms - (time.time() * 1000 - at_ms)) / 1000 - 1
        return min(delay, left) if left > 0 else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


Enqueue = Callable[[str, str, str, int], Awaitable[object]]  # (webhook id, type, body, at ms)


def consumer_name() -> str:
    """This process's name in the outbox's consumer group: stable for its life, distinct across hosts."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def relay_once(outbox: Outbox, enqueue: Enqueue, consumer: str, claim_idle_ms: int | None,
                     forget_idle_ms: int | None = None) -> int:
    """One pass over every flight's outbox: queue a delivery job per event (entries idle ``claim_idle_ms``
    in another consumer's hands first, when given), then acknowledge them; with ``forget_idle_ms``, also
    remove consumers idle that long with nothing pending (dead workers). Returns how many were queued."""
    queued = 0
    for flight_id in sorted(await outbox.flights()):
        try:
            events = await _read_flight(outbox, consumer, flight_id, claim_idle_ms=claim_idle_ms,
                                        forget_idle_ms=forget_idle_ms)
        except errors.StoreUnavailable:
            raise  # Redis away: every flight would fail alike; the pass is retried
        except Exception:
            # one flight's bad outbox (an entry this code cannot read, a key of another type) must not stop
            # the events of every flight sorted after it; its entries stay pending and it is logged each pass
            log.exception("webhook relay: a flight's outbox failed; the other flights go on",
                          extra={"flightId": flight_id})
            continue
        for event, body in events:  # a queue that fails, fails the pass: the entries stay pending
            await enqueue(event.webhook_id, event.type, body, event.at_ms)
            metrics.WEBHOOKS_QUEUED.labels(event.type).inc()
        await outbox.done(flight_id, [event.entry_id for event, _ in events])
        queued += len(events)
    return queued


async def _read_flight(outbox: Outbox, consumer: str, flight_id: str, *, claim_idle_ms: int | None,
                       forget_idle_ms: int | None) -> list[tuple[OutboxEvent, str]]:
    """A flight's events to queue now, each with its body: stale ones taken over first, then new ones."""
    events: list[OutboxEvent] = []
    if claim_idle_ms is not None:
        events += await outbox.claim_stale(flight_id, consumer, claim_idle_ms, RELAY_BATCH)
    if forget_idle_ms is not None:
        await outbox.forget_consumers(flight_id, forget_idle_ms)
    events += await outbox.read(flight_id, consumer, RELAY_BATCH)
    return [(event, event_body(event)) for event in events]


async def run_relay(outbox: Outbox, enqueue: Enqueue, settings: Settings) -> None:
    """The worker's relay: :func:`relay_once` every ``SEATS_WEBHOOK_RELAY_INTERVAL_SECONDS`` (at once again
    while a pass found a full batch), taking over stale entries (and forgetting consumers silent for the max
    age) every half ``SEATS_WEBHOOK_CLAIM_IDLE_SECONDS``.
    A failed pass (Redis away) is logged and tried again; entries stay in the outbox meanwhile."""
    consumer = consumer_name()
    idle_ms = int(settings.webhook_claim_idle_seconds * 1000)
    forget_ms = int(settings.webhook_max_age_seconds * 1000)  # a worker silent that long is gone
    next_claim = 0.0
    while True:
        claim = time.monotonic() >= next_claim
        try:
            queued = await relay_once(outbox, enqueue, consumer, idle_ms if claim else None,
                                      forget_ms if claim else None)
        except Exception:
            log.exception("webhook relay pass failed; retrying")
            queued = 0
        else:
            if claim:
                next_claim = time.monotonic() + settings.webhook_claim_idle_seconds / 2
        if queued < RELAY_BATCH:
            await asyncio.sleep(settings.webhook_relay_interval_seconds)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
