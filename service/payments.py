"""Payments: the simulated gateway, the attempt loop the worker runs, and settling what cannot confirm.

The rule of real payment systems (Stripe, the IETF Idempotency-Key draft, spec §11): an unknown
outcome is resolved by asking the gateway again **under the same idempotency key**, never by
guessing. So:

- every gateway call is one Lua script (``lua/gateway_*.lua``): a charge writes its record and
  counts it in the books in one step, so a call that was cancelled (a timeout, a dead worker, a
  dropped connection) either took effect completely or not at all;
- an attempt whose answer did not come in time is looked up under its key ``<paymentId>:<n>``;
  the look-up closes a key it finds unused (record ``void``), so "no charge under this key" stays
  true even if the charge call is still on its way. Only that answer, or a decline, makes a failed
  attempt; a look-up that cannot reach the gateway leaves the attempt unrecorded (the job is
  retried and resumes from the gateway's records);
- each attempt is fenced by a compare-and-set on ``attemptsLeft`` (``mark_trying`` /
  ``record_attempt``): a job that runs twice (arq is at-least-once) re-enters at the first attempt
  whose outcome was never recorded and asks under the same key, so it neither spends an extra
  attempt nor charges twice, and a submission charges at most once in total (a charge ends it);
- an order that ends without a confirmation while paying (LATE, its hold lapsed) owes a
  settlement: the script that ended it set ``paymentStatus: refunding`` and left it in the deadline
  index. :func:`settle_payment` (the job right away, else the sweeper) closes every attempt key of
  the payment, refunds what was charged (each refund counted once by the gateway) and records
  ``refunded`` or ``failed`` on the order. A worker dying in between leaves the order ``refunding``
  and due, so the sweeper finishes the job.

Money invariant, once every order is terminal and settled: charged - refunded = CONFIRMED orders,
per order and in total (``GET /admin/payments/summary`` shows the books).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service import errors, metrics
from service.models import PaymentsSummary
from service.orders import TRUSTED, OrderScripts
from service.settings import Settings
from service.store import keys
from service.store.reads import Reads
from service.store.scripts import Scripts

log = logging.getLogger("seats.payments")

GATEWAY_RECORD_SECONDS = 24 * 3600
DECLINED_MESSAGE = "The payment was declined."
REFUNDED_MESSAGE = ("The payment went through after the hold had ended, so nothing was confirmed; "
                    "the charge was refunded.")


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """What the gateway recorded under one idempotency key.

    ``outcome``: ``success`` (charged), ``declined``, or ``void`` (closed by a look-up: nothing was
    charged and nothing ever will be under this key). ``ref`` is the order id.
    """

    outcome: str
    message: str
    ref: str
    refunded: bool

    @property
    def charged(self) -> bool:
        """Whether money was taken under this key (refunded or not)."""
        return self.outcome == "success"

    @classmethod
    def from_flat(cls, flat: Sequence[Any]) -> GatewayRecord:
        """From a gateway script's reply (the record hash as a flat list)."""
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(str(fields["outcome"]), str(fields.get("message", "")), str(fields.get("ref", "")),
                   fields.get("refunded") == "1")


class SimulatedGateway:
    """A payment gateway that takes ``SEATS_PAYMENT_LATENCY_SECONDS`` to charge and declines with
    ``SEATS_PAYMENT_FAILURE_RATE``; charge, look-up and refund are each idempotent per key and
    each one atomic step in Redis (``lua/gateway_*.lua``)."""

    def __init__(self, scripts: Scripts, settings: Settings, rng: random.Random | None = None) -> None:
        self._scripts = scripts
        self._latency = settings.payment_latency_seconds
        self._failure_rate = settings.payment_failure_rate
        self._rng = rng or random.Random()  # noqa: S311 - simulates declines; not security

    async def charge(self, idempotency_key: str, reference: str) -> GatewayRecord:
        """Charge once under ``idempotency_key``; a key already used answers its record unchanged.

        Raises StoreUnavailable when the gateway cannot be reached (the outcome is then unknown:
        ask :meth:`lookup`).
        """
        if self._latency > 0:
            await asyncio.sleep(self._latency)  # the gateway's work; a cancellation here charges nothing
        declined = self._rng.random() < self._failure_rate
        outcome, message = ("declined", DECLINED_MESSAGE) if declined else ("success", "")
        return await self._run("gateway_charge", idempotency_key, [outcome, message, reference,
                                                                   GATEWAY_RECORD_SECONDS])

    async def lookup(self, idempotency_key: str, reference: str) -> GatewayRecord:
        """What happened under ``idempotency_key``; an unused key is closed (``void``) by the same step,
        so a charge still on its way can no longer take money. Raises StoreUnavailable."""
        return await self._run("gateway_lookup", idempotency_key, [reference, GATEWAY_RECORD_SECONDS])

    async def refund(self, idempotency_key: str) -> GatewayRecord:
        """Refund the charge made under ``idempotency_key``; a second refund changes nothing.

        Raises StoreUnavailable, or Refusal ``NOT_CHARGED`` when nothing was charged under the key.
        """
        return await self._run("gateway_refund", idempotency_key, [])

    async def _run(self, script: str, idempotency_key: str, args: list[str | int]) -> GatewayRecord:
        flat = await self._scripts.run(script, [keys.gateway_charge(idempotency_key), keys.GATEWAY_BOOKS], args)
        return GatewayRecord.from_flat(flat)


async def read_books(reads: Reads) -> PaymentsSummary:
    """The gateway's books: how many charges and refunds it made. Raises StoreUnavailable."""
    charged, refunded = await reads.gateway_books()
    return PaymentsSummary(charged, refunded)


def attempt_key(payment_id: str, attempt_no: int) -> str:
    """The idempotency key of a submission's ``attempt_no``-th attempt (1-based)."""
    return f"{payment_id}:{attempt_no}"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt's resolved outcome as ``record_attempt`` takes it: ``success``, ``declined`` or
    ``timeout`` (the gateway did not answer in time and had charged nothing), with its message."""

    outcome: str
    message: str


async def resolve_attempt(gateway: SimulatedGateway, key: str, reference: str, timeout: float) -> AttemptResult:
    """Charge under ``key``, waiting at most ``timeout`` s (``SEATS_PAYMENT_TIMEOUT_SECONDS``).

    An answer that did not come in time, or a connection lost mid-call, is looked up under the same
    key; only "no charge" (or a decline) is a failed attempt. Raises StoreUnavailable when the look-up
    itself cannot reach the gateway: the outcome is still unknown and must not be recorded.
    """
    try:
        record = await asyncio.wait_for(gateway.charge(key, reference), timeout)
    except (TimeoutError, errors.StoreUnavailable):
        record = await gateway.lookup(key, reference)
        metrics.payment_lookup(record.outcome)
    if record.outcome == "void":
        return AttemptResult("timeout", f"The payment gateway did not answer within {timeout:g} s; "
                                        "nothing was charged.")
    return AttemptResult(record.outcome, record.message)


async def process_payment(  # noqa: PLR0917 - the job's three ids next to its three collaborators
    order_scripts: OrderScripts, gateway: SimulatedGateway, settings: Settings,
    flight_id: str, order_id: str, payment_id: str,
) -> str:
    """Run a submission's attempts until CONFIRMED, FAILED, LATE, EXPIRED or nothing is left to do.

    Returns the last script status. Raises StoreUnavailable when Redis cannot be reached (the
    worker retries the job; it resumes from the order's fence and the gateway's records).
    """
    attempts_total = await order_attempts(order_scripts, settings, flight_id, order_id)
    seen = ""  # the first attempt takes attemptsLeft as mark_trying finds it (no read before it)
    for _ in range(attempts_total + 1):
        started = await order_scripts.run("mark_trying", flight_id, order_id, TRUSTED, [payment_id, seen])
        if started.order is None:
            return "GONE"
        if started.order.payment_status == "refunding":  # ended unconfirmed, by this run or another
            await settle_payment(order_scripts, gateway, settings, flight_id, order_id)
        if started.status != "OK":
            return started.status
        # The order mark_trying returns is the fence for record_attempt (and carries the seats).
        attempts_left = started.order.attempts_left
        attempt_no = attempts_total - attempts_left + 1
        result = await resolve_attempt(gateway, attempt_key(payment_id, attempt_no), order_id,
                                       settings.payment_timeout_seconds)
        recorded = await order_scripts.run(
            "record_attempt", flight_id, order_id, TRUSTED,
            [payment_id, attempts_left, result.outcome, result.message, _confirmation_id(),
             settings.release_on_failure, attempts_total],
        )
        metrics.payment_attempt(result.outcome, recorded.status)
        if recorded.status == "CONFIRMED":
            await replicate_confirmation(order_scripts, settings, flight_id, order_id)
        log.debug("payment attempt", extra={"orderId": order_id, "attempt": attempt_no, "outcome": result.outcome,
                                           "recorded": recorded.status})
        if recorded.order is not None and recorded.order.payment_status == "refunding":
            await settle_payment(order_scripts, gateway, settings, flight_id, order_id)
        if recorded.status != "RETRY" or recorded.order is None:
            return recorded.status
        seen = str(recorded.order.attempts_left)  # the next attempt runs only if nobody moved on
        await asyncio.sleep(settings.payment_backoff_seconds)
    return "EXHAUSTED"


async def order_attempts(order_scripts: OrderScripts, settings: Settings, flight_id: str, order_id: str) -> int:
    """The attempts the order was created with (its ``attempts`` field): attempt numbers, and so the
    gateway's idempotency keys, count from it, not from this process's ``SEATS_PAYMENT_ATTEMPTS``, which a
    deploy may have changed since (orders created before the field existed fall back to the setting)."""
    (attempts,) = await order_scripts.reads.order_fields(flight_id, order_id, "attempts")
    return int(attempts) if attempts else settings.payment_attempts


async def replicate_confirmation(order_scripts: OrderScripts, settings: Settings, flight_id: str,
                                 order_id: str) -> None:
    """Wait until ``SEATS_REDIS_WAIT_REPLICAS`` replicas have the confirmation (spec §12) before the job
    reports it: replication is asynchronous, and a primary that dies right after the script could take
    an acknowledged sale with it. A WAIT that times out (or fails) is logged and counted; the
    confirmation stands (the order is CONFIRMED in Redis whatever happens next). After a shortfall the
    node's WAITs are skipped for a few seconds (counted ``skipped``): see ``Reads.wait_for_replicas``.
    """
    wanted = settings.wait_replicas
    if wanted <= 0:
        return
    try:
        acknowledged = await order_scripts.reads.wait_for_replicas(flight_id, wanted, settings.redis_wait_timeout_ms)
    except errors.StoreUnavailable as exc:
        metrics.replication_wait("failed")
        log.warning("WAIT for replicas failed", extra={"orderId": order_id, "error": str(exc)})
        return
    if acknowledged is None:
        metrics.replication_wait("skipped")
    elif acknowledged >= wanted:
        metrics.replication_wait("acknowledged")
    else:
        metrics.replication_wait("timeout")
        log.warning("a confirmation reached fewer replicas than asked within the timeout; WAITs to that node "
                    "are skipped for a while", extra={"orderId": order_id, "replicas": acknowledged, "wanted": wanted})


async def settle_payment(
    order_scripts: OrderScripts, gateway: SimulatedGateway, settings: Settings, flight_id: str, order_id: str
) -> str:
    """Settle the payment of an order that ended unconfirmed (``paymentStatus: refunding``).

    Every attempt key of its payment is looked up (closing the unused ones, so no late charge can
    land), each charge found is refunded, and the order records ``refunded`` (with a ``lastError``
    that says so) or ``failed`` (nothing had been charged). Safe to run any number of times, by the
    job and the sweeper at once: the gateway counts each refund once and only the first recording
    changes the order. Returns ``SETTLED``, or ``NOOP`` when there was nothing to settle.
    Raises StoreUnavailable (the order stays ``refunding`` and due; the sweeper tries again).
    """
    status, payment_id, last_error, attempts = await order_scripts.reads.order_fields(
        flight_id, order_id, "paymentStatus", "paymentId", "lastError", "attempts")
    if status != "refunding" or not payment_id:
        return "NOOP"
    refunds = 0
    for attempt_no in range(1, int(attempts or settings.payment_attempts) + 1):
        key = attempt_key(payment_id, attempt_no)
        if (await gateway.lookup(key, order_id)).charged:
            await gateway.refund(key)
            refunds += 1
    outcome, message = ("refunded", REFUNDED_MESSAGE) if refunds else ("failed", last_error or "")
    result = await order_scripts.run("settle_payment", flight_id, order_id, TRUSTED, [payment_id, outcome, message])
    if result.status == "SETTLED":
        metrics.settlement(outcome)
        log.info("payment settled", extra={"orderId": order_id, "outcome": outcome, "refunds": refunds})
    return result.status


def _confirmation_id() -> str:
    return "CNF-" + secrets.token_hex(5).upper()
