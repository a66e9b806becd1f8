"""The expiry sweeper: ends orders whose hold deadline passed and releases their seats.

It reads each flight's deadline index (``due_orders.lua``, Redis's clock) and runs
``expire_order.lua`` per due order. Keyspace notifications are not used: they are lossy and late.
The seat keys' own TTL (PXAT = deadline) is the last line of defence when no sweeper runs.
An order that ended unconfirmed while paying stays in the index until its payment is settled
(``service.payments.settle_payment``, passed in as ``settle``): the sweeper finishes what a dead
payment job left.
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


async def run_sweeper(order_scripts: OrderScripts, interval: float, settle: Settle | None = None) -> None:
    """Sweep every ``interval`` seconds until cancelled; Redis errors are logged and retried."""
    while True:
        try:
            changed = await sweep_once(order_scripts, settle)
            if changed:
                log.info("expired orders", extra={"count": changed})
        except errors.StoreUnavailable as exc:
            log.warning("sweep failed: %s", exc)
        except Exception:  # a bug or an unexpected reply must not end expiry for the worker's lifetime
            log.exception("sweep failed unexpectedly; retrying")
        await asyncio.sleep(interval)
