"""The end-of-run check: read every touched flight from Redis and the API and prove it consistent.

Violations (any one fails the run):
- a seat sold to two orders (two CONFIRMED orders list the same seat);
- a CONFIRMED order that does not own exactly its seats (each listed seat ``C|order``, no other);
- a seat sold to an order that is not CONFIRMED;
- a seat held by a terminal order (a FAILED order may keep its seats until its deadline), by an
  order that does not list it, or past its deadline;
- the flight's ``sold`` counter differing from the number of sold seats;
- the API's seat map counting available/held/confirmed differently from a recount of the keys.
Warnings: non-terminal orders still open well after their deadline (the sweeper is behind).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from loadtest.client import Client
from service.store import keys

TERMINAL = frozenset({"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"})
OVERDUE_GRACE_MS = 5_000
CHUNK = 5_000
MAX_REPORTED = 50


@dataclass
class InvariantReport:
    """What the check found across all flights."""

    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)

    def add(self, other: InvariantReport) -> None:
        """Fold ``other``'s findings into this report."""
        self.violations += other.violations
        self.warnings += other.warnings
        self.checked.update(other.checked)

    @property
    def ok(self) -> bool:
        """No violation."""
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists capped; the counts say how many there were)."""
        return {"ok": self.ok, "violations": self.violations[:MAX_REPORTED], "violation_count": len(self.violations),
                "warnings": self.warnings[:MAX_REPORTED], "checked": dict(self.checked)}


def seat_ids(rows: int, columns: str) -> list[str]:
    """Seat ids of a layout, row-major, as the service numbers them."""
    return [f"{row}{col}" for row in range(1, rows + 1) for col in columns]


async def read_seats(client: aioredis.Redis, flight_id: str, ids: list[str]) -> dict[str, str]:
    """Seat id -> value of every held or sold seat among ``ids``."""
    values: dict[str, str] = {}
    for first in range(0, len(ids), CHUNK):
        chunk = ids[first : first + CHUNK]
        for seat_id, value in zip(chunk, await client.mget([keys.seat(flight_id, s) for s in chunk]), strict=True):
            if value is not None:
                values[seat_id] = value
    return values


async def read_orders(client: aioredis.Redis, flight_id: str) -> dict[str, dict[str, str]]:
    """Order id -> order hash of every order of the flight."""
    names = [name async for name in client.scan_iter(match=keys.order(flight_id, "*"), count=2000)]
    orders: dict[str, dict[str, str]] = {}
    for first in range(0, len(names), CHUNK):
        pipe = client.pipeline(transaction=False)
        for name in names[first : first + CHUNK]:
            pipe.hgetall(name)
        for fields in await pipe.execute():
            if fields:
                orders[fields["orderId"]] = fields
    return orders


async def redis_ms(client: aioredis.Redis) -> int:
    """Redis's clock (the service's one clock) in ms."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def recount(values: dict[str, str], capacity: int, now_ms: int) -> Counter[str]:
    """available / held / confirmed as the keys say at ``now_ms`` (a lapsed hold is available)."""
    counts: Counter[str] = Counter()
    for value in values.values():
        kind, _, rest = value.partition("|")
        if kind == "C":
            counts["confirmed"] += 1
        elif kind == "H" and int(rest.rpartition("|")[2]) > now_ms:
            counts["held"] += 1
    counts["available"] = capacity - counts["confirmed"] - counts["held"]
    return counts


def check_ownership(flight_id: str, values: dict[str, str], orders: dict[str, dict[str, str]], now_ms: int,
                    report: InvariantReport) -> None:
    """The seat/order cross-checks of one flight (pure: unit-testable without Redis)."""
    bad = report.violations.append
    sold_to: dict[str, str] = {}
    for order_id, order in orders.items():
        if order.get("state") != "CONFIRMED":
            continue
        listed = {s for s in order.get("seats", "").split(",") if s}
        for seat_id in listed:
            if seat_id in sold_to:
                bad(f"{flight_id}: seat {seat_id} sold to {sold_to[seat_id]} and {order_id}")
            sold_to[seat_id] = order_id
            if values.get(seat_id) != f"C|{order_id}":
                bad(f"{flight_id}: CONFIRMED order {order_id} lists {seat_id} but the seat is {values.get(seat_id)!r}")
        owned = {s for s, v in values.items() if v == f"C|{order_id}"}
        if owned - listed:
            bad(f"{flight_id}: seats {sorted(owned - listed)} sold to {order_id}, which does not list them")
    _check_holds(flight_id, values, orders, now_ms, report)
    report.checked["orders"] += len(orders)
    report.checked["confirmed_orders"] += sum(1 for o in orders.values() if o.get("state") == "CONFIRMED")
    report.checked["seats_sold"] += len(sold_to)


def _check_holds(flight_id: str, values: dict[str, str], orders: dict[str, dict[str, str]], now_ms: int,
                 report: InvariantReport) -> None:
    bad = report.violations.append
    for seat_id, value in values.items():
        kind, _, rest = value.partition("|")
        owner, _, deadline = rest.partition("|")
        order = orders.get(owner, {})
        state = order.get("state", "MISSING")
        if kind == "C" and state != "CONFIRMED":
            bad(f"{flight_id}: seat {seat_id} sold to {owner}, which is {state}")
        elif kind == "H":
            if int(deadline or 0) <= now_ms:
                bad(f"{flight_id}: seat {seat_id} held by {owner} past its deadline {deadline}")
            if state in TERMINAL and state != "FAILED":
                bad(f"{flight_id}: seat {seat_id} still held by {state} order {owner}")
            if seat_id not in order.get("seats", "").split(","):
                bad(f"{flight_id}: seat {seat_id} held by {owner}, whose selection does not include it")
    for order_id, order in orders.items():
        deadline = order.get("holdExpiresAt") or ""
        overdue = bool(deadline) and int(deadline) < now_ms - OVERDUE_GRACE_MS
        if overdue and order.get("state") in ("SEATS_SELECTED", "PAYING"):
            report.warnings.append(f"{flight_id}: order {order_id} is {order['state']} "
                                   f"{(now_ms - int(deadline)) / 1000:.1f} s after its deadline")


async def check_flight(client: aioredis.Redis, api: Client, flight_id: str, report: InvariantReport) -> None:
    """Every invariant of one flight."""
    meta: dict[str, str] = await client.hgetall(keys.flight(flight_id))  # type: ignore[misc]
    if not meta:
        report.violations.append(f"{flight_id}: the flight is missing")
        return
    ids = seat_ids(int(meta["rows"]), meta["columns"])
    report.checked["flights"] += 1
    report.checked["seats"] += len(ids)
    # The map must match a recount taken around it; retry when a hold lapsed in between.
    for _ in range(5):
        before = recount(await read_seats(client, flight_id, ids), len(ids), await redis_ms(client))
        reply = await api.call(None, "GET", f"/flights/{flight_id}/seats")
        now = await redis_ms(client)  # read before the keys: any hold they still show outlives it
        values = await read_seats(client, flight_id, ids)
        after = recount(values, len(ids), now)
        if before == after:
            break
    if reply.status != 200:
        report.violations.append(f"{flight_id}: GET /seats answered {reply.status}")
    else:
        shown = Counter(view["status"] for view in reply.json()["seats"].values())
        shown["available"] += 0
        if +shown != +after:
            report.violations.append(f"{flight_id}: the seat map shows {dict(shown)}, a recount {dict(after)}")
    if int(meta.get("sold", 0)) != after["confirmed"]:
        report.violations.append(f"{flight_id}: sold counter {meta.get('sold', 0)} but {after['confirmed']} seats sold")
    check_ownership(flight_id, values, await read_orders(client, flight_id), now, report)


async def _quiet(client: aioredis.Redis, flight_ids: list[str], timeout: float) -> int:
    """Wait until no order is PAYING (payments in flight would race the check); returns how many still are."""
    deadline = time.monotonic() + timeout
    while True:
        paying = 0
        for flight_id in flight_ids:
            paying += sum(1 for o in (await read_orders(client, flight_id)).values() if o.get("state") == "PAYING")
        if not paying or time.monotonic() > deadline:
            return paying
        await asyncio.sleep(0.25)


async def check_all(
    redis_url: str, api: Client, flight_ids: list[str], settle_seconds: float = 60.0
) -> InvariantReport:
    """Check every flight in ``flight_ids`` once payments have settled.

    A flight with violations is checked once more a second later and only the second reading
    counts: the worker may still expire an order between our reads, a real violation stays.
    """
    from loadtest.system import redis_client

    report = InvariantReport()
    client = redis_client(redis_url)  # a cluster's seed list too
    try:
        paying = await _quiet(client, flight_ids, settle_seconds)
        if paying:
            report.warnings.append(f"{paying} orders still PAYING after {settle_seconds:g} s")
        for flight_id in flight_ids:
            attempt = InvariantReport()
            await check_flight(client, api, flight_id, attempt)
            if not attempt.ok:
                await asyncio.sleep(1.0)
                attempt = InvariantReport()
                await check_flight(client, api, flight_id, attempt)
            report.add(attempt)
    finally:
        await client.aclose()
    return report
