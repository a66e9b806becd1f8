"""The expiry sweeper: ends orders whose hold deadline passed and releases their seats.

It reads each flight's deadline index (``due_orders.lua``, Redis's clock) and runs
``expire_order.lua`` per due order. Keyspace notifications are not used: they are lossy and late.
The seat keys' own TTL (PXAT = deadline) is the last line of defence when no sweeper runs.
An order that ended unconfirmed while paying stays in the index until its payment is settled
(``service.payments.settle_payment``, passed in as ``settle``): the sweeper finishes what a dead
payment job left. And a PAYING order whose payment job vanished (the queue's Redis lost its data)
is handed its job again (``recover_payments``): the job resumes from the gateway's records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service import errors, metrics
from service.orders import OrderScripts
from service.store import keys

log = logging.getLogger("seats.expiry")

BATCH = 200
Settle = Callable[[str, str], Awaitable[str]]  # (flight id, order id) -> settle_payment's status
Enqueue = Callable[[str, str, str], Awaitable[bool]]  # (flight, order, payment id) -> enqueued anew
RECOVERY_SECONDS = 10.0  # how often PAYING orders are checked for a vanished job


async def sweep_once(order_scripts: OrderScripts, settle: Settle | None = None) -> int:
    """Expire every due order of every flight once, settling the payments of those that owe it
    (with ``settle``; without, they stay due); returns how many orders changed."""
    changed = 0
    flight_ids = await order_scripts.reads.catalogue()
    for flight_id in flight_ids:
        due = await order_scripts.scripts.run("due_orders", [keys.deadlines(flight_id)], [BATCH])
        for order_id in due:
            (seats,) = await order_scripts.reads.order_fields(flight_id, order_id, "seats")
            order_scripts.seen_seats.put(order_id, seats or "")
            result = await order_scripts.expire(flight_id, order_id)
            metrics.expiry(result.status, result.order.hold_expires_at if result.order else None, time.time())
            if result.status in ("EXPIRED", "RELEASED"):
                changed += 1
            refunding = result.order is not None and result.order.payment_status == "refunding"
            if refunding and settle is not None and await settle(flight_id, order_id) == "SETTLED":
                changed += 1
    return changed


async def recover_payments(order_scripts: OrderScripts, enqueue: Enqueue) -> int:
    """Give every PAYING order its payment job again; the queue refuses a job id it still knows
    (queued, running, or done and kept), so only vanished jobs run again (and resume from the gateway's
    records). Returns how many did."""
    recovered = 0
    for flight_id in await order_scripts.reads.catalogue():
        for order_id, payment_id in await order_scripts.reads.paying_orders(flight_id):
            if await enqueue(flight_id, order_id, payment_id):
                log.warning("a paying order had lost its payment job; it runs again", extra={"orderId": order_id})
                recovered += 1
    return recovered


async def run_sweeper(order_scripts: OrderScripts, interval: float, settle: Settle | None = None,
                      recover: Callable[[], Awaitable[int]] | None = None) -> None:
    """Sweep every ``interval`` seconds (and ``recover`` vanished payment jobs every RECOVERY_SECONDS)
    until cancelled; Redis errors are logged and retried."""
    recovered_at = 0.0
    while True:
        try:
            changed = await sweep_once(order_scripts, settle)
            if changed:
                log.info("expired orders", extra={"count": changed})
            if recover is not None and time.monotonic() - recovered_at > RECOVERY_SECONDS:
                recovered_at = time.monotonic()
                await recover()
        except errors.StoreUnavailable as exc:
            log.warning("sweep failed: %s", exc)
        except Exception:  # a bug or an unexpected reply must not end expiry for the worker's lifetime
            log.exception("sweep failed unexpectedly; retrying")
        await asyncio.sleep(interval)
