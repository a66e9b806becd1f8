"""Payments: the simulated gateway and the idempotent attempt loop the worker runs.

A submission is one arq job (job id = payment id). Each attempt is fenced by a compare-and-set
on ``attemptsLeft``: a job that runs twice (arq is at-least-once) re-enters at the first attempt
whose outcome was never recorded, and asks the gateway with the same idempotency key
``<paymentId>:<attempt>``, so it neither spends an extra attempt nor charges twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass

from service import keys, metrics
from service.multiplexed import MultiplexedRedis
from service.orders import TRUSTED, OrderScripts
from service.settings import Settings

log = logging.getLogger("seats.payments")

GATEWAY_RECORD_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """One attempt's outcome: ``success``, ``declined`` or ``timeout``, with the gateway's words."""

    outcome: str
    message: str


class SimulatedGateway:
    """A payment gateway that takes ``latency`` seconds and declines with ``failure_rate``.

    Like a real gateway it is idempotent per key: asking again with a key it has answered
    returns the recorded answer without a second charge.
    """

    def __init__(self, client: MultiplexedRedis, settings: Settings, rng: random.Random | None = None) -> None:
        self._execute = client.execute
        self._latency = settings.payment_latency_seconds
        self._failure_rate = settings.payment_failure_rate
        self._rng = rng or random.Random()  # noqa: S311 - simulates declines; not security

    async def charge(self, idempotency_key: str) -> GatewayResult:
        """Charge once per key; returns ``success`` or ``declined``.

        ``SET key answer NX GET`` records this answer and tells, in the same command, whether the
        key already had one (then that recorded answer is the answer and nothing is charged).
        """
        record_key = keys.gateway_charge(idempotency_key)
        if self._latency > 0:
            recorded = await self._execute("GET", record_key)  # a repeat answers at once
            if recorded is not None:
                return _recorded(recorded)
            await asyncio.sleep(self._latency)
        declined = self._rng.random() < self._failure_rate
        result = GatewayResult("declined", "The payment was declined.") if declined else GatewayResult("success", "")
        previous = await self._execute(
            "SET", record_key, f"{result.outcome}|{result.message}", "NX", "GET", "EX", GATEWAY_RECORD_SECONDS
        )
        if previous is not None:  # answered before (a re-run, or a concurrent duplicate first)
            return _recorded(previous)
        if result.outcome == "success":
            await self._execute("INCR", keys.GATEWAY_CHARGES)
        return result


def _recorded(value: str | bytes) -> GatewayResult:
    outcome, _, message = str(value).partition("|")
    return GatewayResult(outcome, message)


async def attempt_with_timeout(gateway: SimulatedGateway, key: str, timeout: float) -> GatewayResult:
    """One validation bounded by ``SEATS_PAYMENT_TIMEOUT_SECONDS``; a timeout is a failed attempt."""
    try:
        return await asyncio.wait_for(gateway.charge(key), timeout)
    except TimeoutError:
        return GatewayResult("timeout", f"The payment gateway did not answer within {timeout:g} s.")


async def process_payment(  # noqa: PLR0917 - the job's three ids next to its three collaborators
    order_scripts: OrderScripts, gateway: SimulatedGateway, settings: Settings,
    flight_id: str, order_id: str, payment_id: str,
) -> str:
    """Run a submission's attempts until CONFIRMED, FAILED, LATE or nothing is left to do."""
    attempts_total = settings.payment_attempts
    seen = ""  # the first attempt takes attemptsLeft as mark_trying finds it (no read before it)
    for _ in range(attempts_total + 1):
        started = await order_scripts.run("mark_trying", flight_id, order_id, TRUSTED, [payment_id, seen])
        if started.order is None:
            return "GONE"
        if started.status != "OK":
            return started.status
        # The order mark_trying returns is the fence for record_attempt (and carries the seats).
        attempts_left = started.order.attempts_left
        attempt_no = attempts_total - attempts_left + 1
        result = await attempt_with_timeout(
            gateway, f"{payment_id}:{attempt_no}", settings.payment_timeout_seconds
        )
        recorded = await order_scripts.run(
            "record_attempt", flight_id, order_id, TRUSTED,
            [payment_id, attempts_left, result.outcome, result.message, _confirmation_id(),
             settings.release_on_failure, attempts_total],
        )
        metrics.payment_attempt(result.outcome, recorded.status)
        log.debug("payment attempt", extra={"orderId": order_id, "attempt": attempt_no, "outcome": result.outcome,
                                           "recorded": recorded.status})
        if recorded.status != "RETRY" or recorded.order is None:
            return recorded.status
        seen = str(recorded.order.attempts_left)  # the next attempt runs only if nobody moved on
        await asyncio.sleep(settings.payment_backoff_seconds)
    return "EXHAUSTED"


def _confirmation_id() -> str:
    return "CNF-" + secrets.token_hex(5).upper()
