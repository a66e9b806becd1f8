"""Payment jobs on a real redis-server: attempts, timeouts and at-least-once safety."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from service import keys
from service.flights import FlightStore
from service.models import Order
from service.orders import OrderScripts, OrderStore
from service.payments import SimulatedGateway, process_payment, read_books
from service.scripts import Scripts
from service.settings import Settings
from service.store import connect, connect_pipelined


@dataclass
class Rig:
    """An order store plus what the worker uses, on one settings object."""

    settings: Settings
    store: OrderStore
    order_scripts: OrderScripts
    gateway: SimulatedGateway
    enqueued: list[str]

    async def paying_order(self, order_id: str, seats: list[str]) -> tuple[Order, str]:
        created = await self.store.create("FL-001", order_id)
        await self.store.select_seats(order_id, created.token, seats)
        order = await self.store.pay(order_id, created.token, "12345")
        return order, self.enqueued[-1]

    async def run_job(self, order_id: str, payment_id: str) -> str:
        return await process_payment(self.order_scripts, self.gateway, self.settings, "FL-001", order_id, payment_id)

    async def fields(self, order_id: str) -> dict[str, str]:
        return dict(await self.order_scripts.redis.hgetall(keys.order("FL-001", order_id)))

    async def charges(self) -> int:
        return (await read_books(self.order_scripts.redis)).charged


@pytest.fixture
async def make_rig(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., object]]:
    """Factory for rigs; closes their clients."""
    clients: list[Any] = []

    async def make(**overrides: object) -> Rig:
        settings = make_settings(**overrides)
        client = connect(settings.redis_url, settings)
        pipelined = connect_pipelined(settings)  # what the worker runs scripts and the gateway over
        clients.extend([client, pipelined])
        scripts = Scripts(pipelined)
        flights = FlightStore(client, scripts, settings)
        await flights.ensure_catalogue()
        order_scripts = OrderScripts(client, scripts, settings)
        enqueued: list[str] = []

        async def enqueue(flight_id: str, order_id: str, payment_id: str) -> None:
            enqueued.append(payment_id)

        store = OrderStore(order_scripts, flights, settings, enqueue)
        return Rig(settings, store, order_scripts, SimulatedGateway(scripts, settings), enqueued)

    yield make
    for client in clients:
        await client.aclose()


async def test_job_run_twice_confirms_once(make_rig: Callable[..., object]) -> None:
    """Two concurrent runs of the same payment job confirm once, charge once and spend no attempt."""
    rig: Rig = await make_rig(payment_latency_seconds=0.05)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("twice", ["1A", "1B"])
    results = await asyncio.gather(rig.run_job("twice", payment_id), rig.run_job("twice", payment_id))
    assert sorted(results) == ["CONFIRMED", "NOOP"]
    fields = await rig.fields("twice")
    assert fields["state"] == "CONFIRMED" and fields["attemptsLeft"] == "3"
    assert await rig.charges() == 1
    assert await rig.run_job("twice", payment_id) == "NOOP"  # a late re-run changes nothing
    assert await rig.charges() == 1


async def test_job_killed_mid_attempt_rerun_costs_nothing(make_rig: Callable[..., object]) -> None:
    """A job cancelled mid-attempt (a killed worker) and run again confirms once without spending an attempt."""
    rig: Rig = await make_rig(payment_latency_seconds=0.3)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("killed", ["2A"])
    task = asyncio.create_task(rig.run_job("killed", payment_id))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert (await rig.fields("killed"))["paymentStatus"] == "trying"
    assert await rig.run_job("killed", payment_id) == "CONFIRMED"
    fields = await rig.fields("killed")
    assert fields["attemptsLeft"] == "3" and await rig.charges() == 1


async def test_declines_count_down_and_fail(make_rig: Callable[..., object]) -> None:
    """An always-declining gateway spends exactly 3 attempts, then FAILED with a message; a re-run spends none."""
    rig: Rig = await make_rig(payment_failure_rate=1.0)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("declines", ["2B"])
    assert await rig.run_job("declines", payment_id) == "FAILED"
    fields = await rig.fields("declines")
    assert fields["attemptsLeft"] == "0" and fields["state"] == "FAILED"
    assert fields["lastError"] == "Payment failed after 3 attempts: The payment was declined."
    assert await rig.run_job("declines", payment_id) == "NOOP"
    assert await rig.charges() == 0


async def test_gateway_timeout_is_a_failed_attempt(make_rig: Callable[..., object]) -> None:
    """An attempt slower than SEATS_PAYMENT_TIMEOUT_SECONDS counts as a failure and says so."""
    rig: Rig = await make_rig(payment_latency_seconds=0.3, payment_timeout_seconds=0.05, payment_attempts=2)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("slow", ["2C"])
    assert await rig.run_job("slow", payment_id) == "FAILED"
    fields = await rig.fields("slow")
    assert "did not answer within 0.05 s" in fields["lastError"] and fields["attemptsLeft"] == "0"


async def test_status_shows_retrying_between_attempts(make_rig: Callable[..., object]) -> None:
    """Between attempts the order shows paymentStatus 'retrying' with attemptsLeft already decremented."""
    rig: Rig = await make_rig(payment_failure_rate=1.0, payment_backoff_seconds=0.3)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("retrying", ["2D"])
    task = asyncio.create_task(rig.run_job("retrying", payment_id))
    seen: set[tuple[str, str]] = set()
    while not task.done():
        fields = await rig.fields("retrying")
        seen.add((fields["paymentStatus"], fields["attemptsLeft"]))
        await asyncio.sleep(0.02)
    assert ("retrying", "2") in seen and ("retrying", "1") in seen
    final = await rig.fields("retrying")
    assert final["paymentStatus"] == "failed" and final["attemptsLeft"] == "0"


async def test_payment_extends_hold(make_rig: Callable[..., object]) -> None:
    """Starting a payment extends a short hold to the payment window so it cannot lapse mid-payment."""
    rig: Rig = await make_rig(hold_seconds=1.0)  # type: ignore[misc]
    order, _ = await rig.paying_order("extend", ["3A"])
    created_ms = int((await rig.fields("extend"))["createdAt"])
    deadline_ms = int((await rig.fields("extend"))["holdExpiresAt"])
    assert deadline_ms - created_ms >= rig.settings.payment_window_seconds * 1000 - 1000
    assert order.hold_expires_at is not None
    ttl = await rig.order_scripts.redis.pttl(keys.seat("FL-001", "3A"))
    assert ttl > 10_000
