"""The seat-map polls answered from the process's live feed (no Redis round trip): never staler
than the subscription, never showing a lapsed hold as held. Real redis-server, real uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.live.mirror import Mirror
from service.seatmap import Layout
from tests.conftest import LiveServer

FLIGHT = "FL-001"


def auth(token: str) -> dict[str, str]:
    """The bearer header for an order token."""
    return {"Authorization": f"Bearer {token}"}


class SlowPathCounter:
    """Counts the reads of one API app that went to Redis (``FlightStore.snapshot``)."""

    def __init__(self, live: LiveServer) -> None:
        flights = live.app.state.services.flights
        self.calls = 0
        original = flights.snapshot

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await original(*args, **kwargs)

        flights.snapshot = counted


async def warm(http: httpx.AsyncClient, counter: SlowPathCounter) -> dict[str, Any]:
    """Poll ``/seats/version`` until answers come from the feed (five in a row without Redis)."""
    deadline = time.monotonic() + 10
    streak = 0
    while streak < 5:
        assert time.monotonic() < deadline, "the fast path never took over"
        before = counter.calls
        response = await http.get(f"/flights/{FLIGHT}/seats/version")
        assert response.status_code == 200
        streak = streak + 1 if counter.calls == before else 0
        await asyncio.sleep(0.02)
    body: dict[str, Any] = response.json()
    return body


async def new_order(http: httpx.AsyncClient) -> tuple[str, str]:
    """Create an order on FL-001; returns (order id, token)."""
    response = await http.post("/orders", json={"flightId": FLIGHT})
    assert response.status_code == 201, response.text
    return response.json()["orderId"], response.json()["token"]


async def test_change_through_another_process_reaches_the_fast_path(live_server: Callable[..., LiveServer]) -> None:
    """A hold made through API B changes API A's fast answers (version, hash, 304) within the pub/sub
    delivery time, and A answers them without Redis before and after."""
    a, b = live_server(), live_server()
    counter = SlowPathCounter(a)
    async with httpx.AsyncClient(base_url=a.base_url) as http_a, httpx.AsyncClient(base_url=b.base_url) as http_b:
        first = await warm(http_a, counter)
        etag = f'"{first["hash"]}"'
        fast_before = counter.calls
        assert (await http_a.get(f"/flights/{FLIGHT}/seats", headers={"If-None-Match": etag})).status_code == 304
        assert counter.calls == fast_before  # the 304 came from the feed

        order_id, token = await new_order(http_b)
        held = await http_b.post(f"/orders/{order_id}/seats", json={"seats": ["3C"]}, headers=auth(token))
        assert held.status_code == 200
        changed_at = time.monotonic()
        while True:
            now = (await http_a.get(f"/flights/{FLIGHT}/seats/version")).json()
            if now["version"] != first["version"]:
                break
            assert time.monotonic() - changed_at < 1.0, "the fast path kept an old version"
            await asyncio.sleep(0.005)
        assert now["version"] == first["version"] + 1 and now["hash"] != first["hash"]
        assert set(now) == set(first) == {"flightId", "version", "hash", "lastUpdated"}
        # It is the version and hash Redis reports (the full map always reads Redis).
        full = (await http_a.get(f"/flights/{FLIGHT}/seats")).json()
        assert (full["version"], full["hash"]) == (now["version"], now["hash"])
        assert full["seats"]["3C"]["status"] == "held"
        stale = await http_a.get(f"/flights/{FLIGHT}/seats", headers={"If-None-Match": etag})
        assert stale.status_code == 200 and stale.headers["etag"] == f'"{now["hash"]}"'
        calls = counter.calls
        current = await http_a.get(f"/flights/{FLIGHT}/seats", headers={"If-None-Match": f'"{now["hash"]}"'})
        assert current.status_code == 304 and counter.calls == calls


async def test_own_write_is_never_answered_from_an_older_version(live_server: Callable[..., LiveServer]) -> None:
    """Right after a hold through A, A's next poll shows it (read your writes), fast path or not."""
    a = live_server()
    counter = SlowPathCounter(a)
    async with httpx.AsyncClient(base_url=a.base_url) as http:
        first = await warm(http, counter)
        order_id, token = await new_order(http)
        for seat in ("1A", "1B", "1C", "1D"):
            held = await http.post(f"/orders/{order_id}/seats", json={"seats": [seat]}, headers=auth(token))
            assert held.status_code == 200
            now = (await http.get(f"/flights/{FLIGHT}/seats/version")).json()
            full = (await http.get(f"/flights/{FLIGHT}/seats")).json()
            assert now["version"] == full["version"] > first["version"]
            first = now


async def test_lapsed_hold_is_not_shown_held_by_the_fast_path(live_server: Callable[..., LiveServer]) -> None:
    """A hold whose deadline passed (no sweeper runs here) is never reported as held: every poll sent
    after the deadline has the hash of the empty map, though the version does not move."""
    a, b = live_server(), live_server(hold_seconds=0.8)
    counter = SlowPathCounter(a)
    async with httpx.AsyncClient(base_url=a.base_url) as http_a, httpx.AsyncClient(base_url=b.base_url) as http_b:
        empty = await warm(http_a, counter)
        order_id, token = await new_order(http_b)
        held = await http_b.post(f"/orders/{order_id}/seats", json={"seats": ["2B"]}, headers=auth(token))
        assert held.status_code == 200
        deadline_ms = datetime.fromisoformat(held.json()["holdExpiresAt"].replace("Z", "+00:00")).timestamp() * 1000
        seen_held_fast = False
        while time.time() * 1000 < deadline_ms + 400:
            sent_ms = time.time() * 1000
            before = counter.calls
            body = (await http_a.get(f"/flights/{FLIGHT}/seats/version")).json()
            if body["hash"] != empty["hash"]:
                assert sent_ms < deadline_ms, "a lapsed hold was reported as held"
                seen_held_fast = seen_held_fast or counter.calls == before
            else:
                assert sent_ms >= deadline_ms - 50 or body["version"] == empty["version"]
            await asyncio.sleep(0.01)
        assert seen_held_fast  # the hold was seen through the fast path while it lasted
        assert body["hash"] == empty["hash"] and body["version"] == empty["version"] + 1
        seats = (await http_a.get(f"/flights/{FLIGHT}/seats")).json()["seats"]
        assert seats["2B"]["status"] == "available"


def test_live_state_is_valid_until_the_earliest_counted_hold() -> None:
    """The mirror's fast state names the earliest deadline of a hold its hash still counts."""
    from service.live.messages import SeatChange, SeatsMessage

    now = 1_800_000_000_000
    layout = Layout.build("FX", 2, "AB", "1", now)
    mirror = Mirror.read(layout, {"version": "0", "lastUpdated": str(now), "createdAt": "1"}, [None] * 4, now,
                         "lineage-1")
    assert mirror.live_state().valid_until == 2**62
    mirror.apply(SeatsMessage(f="FX", v=1, u=now, c={
        "1A": SeatChange("held", now + 5000, "o1"), "1B": SeatChange("held", now - 1, "o2"),
        "2A": SeatChange("confirmed", None, "o3"), "2B": SeatChange("held", now + 900, "o4"),
    }))
    state = mirror.live_state()
    assert state.valid_until == now + 900 and state.version == 1 and state.etag == f'"{state.hash}"'
    assert mirror.live_state() is state  # built once per version


async def test_data_loss_is_noticed_by_the_fast_path(live_server: Callable[..., LiveServer], redis_url: str) -> None:
    """After Redis loses its data (FLUSHALL: nothing is announced) and another process recreates the
    flight, the fast path stops answering with the lost version within a few seconds."""
    import redis as sync_redis

    a, b = live_server(), live_server()
    counter = SlowPathCounter(a)
    async with httpx.AsyncClient(base_url=a.base_url) as http_a, httpx.AsyncClient(base_url=b.base_url) as http_b:
        order_id, token = await new_order(http_a)
        assert (await http_a.post(f"/orders/{order_id}/seats", json={"seats": ["1A"]},
                                  headers=auth(token))).status_code == 200
        before = await warm(http_a, counter)
        assert before["version"] >= 1
        sync_redis.Redis.from_url(redis_url).flushall()
        assert (await http_b.get(f"/flights/{FLIGHT}/seats")).status_code == 200  # B recreates FL-001
        deadline = time.monotonic() + 5
        while (await http_a.get(f"/flights/{FLIGHT}/seats/version")).json()["version"] != 0:
            assert time.monotonic() < deadline, "the fast path kept answering from lost data"
            await asyncio.sleep(0.05)
        after = await warm(http_a, counter)  # and it takes over again on the new data
        assert after["version"] == 0 and after["hash"] != before["hash"]


async def test_read_feed_ends_when_nobody_reads(live_server: Callable[..., LiveServer],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A read starts a feed for the flight; unread (and unwatched) it is evicted again."""
    from service.live import broker as events

    monkeypatch.setattr(events, "READ_FEED_IDLE_SECONDS", 0.3)
    a = live_server(sse_heartbeat_seconds=0.1)
    async with httpx.AsyncClient(base_url=a.base_url) as http:
        assert (await http.get(f"/flights/{FLIGHT}/seats/version")).status_code == 200
        assert FLIGHT in a.broker._feeds
        deadline = time.monotonic() + 5
        while FLIGHT in a.broker._feeds:
            assert time.monotonic() < deadline, "the read feed was never evicted"
            await asyncio.sleep(0.05)
