"""Thin arq jobs: each one calls into ``service`` and is safe to run more than once."""

from __future__ import annotations

from typing import Any

from arq import Retry

from service.errors import StoreUnavailable
from service.payments import process_payment as run_payment_attempts
from service.webhooks import retry_delay
from service.wiring import WorkerServices


async def process_payment(ctx: dict[str, Any], flight_id: str, order_id: str, payment_id: str) -> str:
    """Run one payment submission (job id = payment id); idempotent, see ``service.payments``.

    Redis out of reach mid-job (an attempt's outcome unknown) is retried by arq after the backoff
    (up to the worker's ``max_tries``): the re-run resumes from the order's fence and the gateway's
    records; past the retries, the order's deadline ends it and the sweeper settles its payment.
    """
    services: WorkerServices = ctx["services"]
    assert services.gateway is not None
    try:
        return await run_payment_attempts(services.order_scripts, services.gateway, services.settings, flight_id,
                                          order_id, payment_id)
    except StoreUnavailable as exc:
        raise Retry(defer=services.settings.payment_backoff_seconds) from exc


async def deliver_webhook(ctx: dict[str, Any], webhook_id: str, event_type: str, body: str, at_ms: int) -> str:
    """POST one webhook event (job id = its ``webhook-id``; ``service.webhooks``): a 2xx, or an event past
    its max age, ends the job; anything else is retried by arq after an exponential, jittered backoff,
    with the same id and body (re-signed with the attempt's timestamp)."""
    services: WorkerServices = ctx["services"]
    assert services.deliverer is not None
    attempt = await services.deliverer.attempt(webhook_id, event_type, body, at_ms)
    if attempt.done:
        return attempt.outcome
    delay = services.deliverer.retry_in(at_ms, retry_delay(int(ctx.get("job_try", 1)), services.settings))
    if delay is None:
        return "given up"
    raise Retry(defer=delay)
