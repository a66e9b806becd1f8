"""Live updates end to end: real ``seats api`` and ``seats worker`` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Processes
from tests.sse import Watch

pytestmark = pytest.mark.e2e


def auth(token: str) -> dict[str, str]:
    """The bearer header for an order token."""
    return {"Authorization": f"Bearer {token}"}


async def order_with_seats(http: httpx.AsyncClient, seats: list[str]) -> tuple[str, str]:
    """Create an order on FL-001 holding ``seats``; returns (order id, token)."""
    created = await http.post("/orders", json={"flightId": "FL-001"})
    assert created.status_code == 201, created.text
    order_id, token = created.json()["orderId"], created.json()["token"]
    held = await http.post(f"/orders/{order_id}/seats", json={"seats": seats}, headers=auth(token))
    assert held.status_code == 200, held.text
    return order_id, token


def client(base: str) -> httpx.AsyncClient:
    """An HTTP client without read timeouts (streams are long)."""
    return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10.0, read=None))


async def test_order_stream_shows_trying_then_success_with_a_real_worker(processes: Processes) -> None:
    """The order stream shows PAYING/trying then CONFIRMED/success and closes; the flight stream sees the sale."""
    base = processes.api()
    processes.worker()
    async with client(base) as http:
        order_id, token = await order_with_seats(http, ["1A", "1B"])
        order_watch = await Watch(http, f"/orders/{order_id}/events?token={token}").open()
        flight_watch = await Watch(http, f"/flights/FL-001/events?orderId={order_id}&token={token}").open()
        first = (await order_watch.until(lambda ev: len(ev) == 1))[0].json()
        assert first["state"] == "SEATS_SELECTED"
        await flight_watch.until(lambda ev: len(ev) == 1)

        paying = await http.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
        assert paying.status_code == 202
        events = await order_watch.until(lambda ev: bool(ev) and ev[-1].json()["state"] == "CONFIRMED", timeout=20)
        await asyncio.wait_for(order_watch.ended.wait(), 5)  # closed after the terminal state
        orders = [e.json() for e in events]
        assert [(o["state"], o["paymentStatus"]) for o in orders[1:2]] == [("PAYING", "trying")]
        assert (orders[-1]["paymentStatus"], orders[-1]["attemptsLeft"]) == ("success", 3)
        assert orders[-1]["confirmationId"]
        assert [int(e.id or 0) for e in events] == [o["version"] for o in orders]
        assert [o["version"] for o in orders] == sorted({o["version"] for o in orders})

        seats = await flight_watch.until(
            lambda ev: any(e.event == "seats" and e.json()["changes"].get("1A", {}).get("status") == "confirmed"
                           for e in ev)
        )
        sold = next(e.json()["changes"] for e in seats if "confirmed" in e.data)
        assert sold == {"1A": {"status": "confirmed", "mine": True}, "1B": {"status": "confirmed", "mine": True}}

        seen_end = {**auth(token), "Last-Event-ID": events[-1].id or ""}
        again = await http.get(f"/orders/{order_id}/events", headers=seen_end)
        assert again.status_code == 204  # EventSource stops reconnecting once it saw the end
        await flight_watch.close()
    assert token not in processes.output()  # tokens in query strings are never logged


async def test_order_stream_shows_retrying_then_failed(processes: Processes) -> None:
    """With a gateway that always declines, the stream shows attempts 3 → 2 → 1 → 0 and ends FAILED."""
    base = processes.api()
    processes.worker(env={"SEATS_PAYMENT_FAILURE_RATE": "1"})
    async with client(base) as http:
        order_id, token = await order_with_seats(http, ["2A"])
        watch = await Watch(http, f"/orders/{order_id}/events", auth(token)).open()
        await watch.until(lambda ev: len(ev) == 1)
        paying = await http.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
        assert paying.status_code == 202
        events = await watch.until(lambda ev: bool(ev) and ev[-1].json()["state"] == "FAILED", timeout=20)
        await asyncio.wait_for(watch.ended.wait(), 5)
        orders: list[dict[str, Any]] = [e.json() for e in events]
        statuses = [o["paymentStatus"] for o in orders]
        assert statuses[1] == "trying" and "retrying" in statuses and statuses[-1] == "failed"
        left = [o["attemptsLeft"] for o in orders]
        assert left[0] == 3 and left[-1] == 0 and left == sorted(left, reverse=True)
        assert {2, 1} <= set(left)
        assert "3 attempts" in orders[-1]["lastError"]


async def test_sigterm_with_open_streams_exits_within_the_graceful_timeout(processes: Processes) -> None:
    """On SIGTERM, `seats api` ends its open streams cleanly and exits well within the graceful timeout."""
    graceful = 5.0
    base = processes.api(env={"SEATS_GRACEFUL_SHUTDOWN_SECONDS": str(int(graceful))})
    process = processes.started[-1]
    async with client(base) as http:
        order_id, token = await order_with_seats(http, ["3A"])
        watches = [
            await Watch(http, "/flights/FL-001/events").open(),
            await Watch(http, f"/flights/FL-001/events?orderId={order_id}&token={token}").open(),
            await Watch(http, f"/orders/{order_id}/events", auth(token)).open(),
        ]
        for watch in watches:
            await watch.until(lambda ev: len(ev) == 1)

        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.wait, graceful + 5)
        elapsed = time.monotonic() - started
        # Without draining, uvicorn would wait the whole graceful timeout for these streams.
        assert elapsed < graceful - 2, f"exit took {elapsed:.1f}s"
        assert process.returncode in (0, -signal.SIGTERM)
        for watch in watches:
            await asyncio.wait_for(watch.ended.wait(), 1)
            assert watch.error is None, watch.error  # ended as a complete response, not cut off
