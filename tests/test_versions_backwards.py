"""Versions that go backwards and subscriptions that go quiet (issue 11, spec §12), on a single Redis and on a
Redis Cluster: a client resuming across a new lifetime of the data gets a snapshot, never deltas that skip what
it missed; and a process whose subscription went silent never answers the seat-map poll with a version older
than Redis last told it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.live.broker import VERIFY_SECONDS
from tests.conftest import LiveServer, RedisServer
from tests.helpers import auth
from tests.sse import Watch, apply

FLIGHT = "FL-001"


pytestmark = pytest.mark.both_planes


def http_client(live: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=live.base_url, timeout=httpx.Timeout(10.0, read=None))


async def new_order(http: httpx.AsyncClient) -> tuple[str, str]:
    """Create an order on the flight (retried while the store comes back); returns (order id, token)."""
    for _ in range(100):
        created = await http.post("/orders", json={"flightId": FLIGHT})
        if created.status_code != 503:
            break
        await asyncio.sleep(0.05)
    assert created.status_code == 201, created.text
    return created.json()["orderId"], created.json()["token"]


async def select(http: httpx.AsyncClient, order_id: str, token: str, seats: list[str]) -> None:
    """Hold ``seats`` for the order (one flight version)."""
    held = await http.post(f"/orders/{order_id}/seats", json={"seats": seats}, headers=auth(token))
    assert held.status_code == 200, held.text


async def seat_map(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get(f"/flights/{FLIGHT}/seats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def lose_the_flight(plane: str, redis_server: RedisServer, data_redis: Any) -> None:
    """The flight's data is gone: a single Redis restarted without persistence; on the cluster, every key of
    the flight deleted (the flight is then created again, its versions starting over)."""
    if plane == "standalone":
        redis_server.restart()
        return
    for key in list(data_redis.scan_iter(match=f"seats:{{{FLIGHT}}}:*", count=1000)):
        data_redis.delete(key)


# --- resume across a new lifetime -------------------------------------------------------------------


async def test_resume_across_lost_data_gets_a_snapshot_of_the_new_lifetime(
    live_server: Callable[..., LiveServer], plane: str, redis_server: RedisServer, data_redis: Any
) -> None:
    """A client that saw events up to id X and reconnects with ``Last-Event-ID: X`` after the data was lost and
    the flight moved past X's version again gets a snapshot of the new epoch first (not the deltas after X's
    version, which would patch a map of another lifetime), and its map equals the seat map."""
    live = live_server()
    async with http_client(live) as http:
        order_id, token = await new_order(http)
        first = await Watch(http, f"/flights/{FLIGHT}/events").open()
        await first.until(lambda events: len(events) >= 1)
        for count in range(1, 7):  # the first lifetime holds row 1: 1A, 1A-1B, ... 1A-1F
            await select(http, order_id, token, [f"1{column}" for column in "ABCDEF"[:count]])
        seen = await first.until(lambda events: len(events) == 7)
        last = seen[-1]
        await first.close()

        await asyncio.to_thread(lose_the_flight, plane, redis_server, data_redis)
        order_id, token = await new_order(http)  # the configured flight is created again: versions restart
        version = (await seat_map(http))["version"]
        while version <= last.version + 2:  # past X in the new lifetime, on other seats
            await select(http, order_id, token, [f"{version % 4 + 2}F"])
            version = (await seat_map(http))["version"]

        resumed = await Watch(http, f"/flights/{FLIGHT}/events", {"Last-Event-ID": last.id or ""}).open()
        current = await seat_map(http)
        events = await resumed.until(lambda events: bool(events) and events[-1].version >= current["version"])
        assert events[0].event == "snapshot", [(e.event, e.id) for e in events]
        assert events[0].epoch != last.epoch
        assert apply(apply({}, seen), events) == current["seats"]
        assert all(current["seats"][f"1{column}"]["status"] == "available" for column in "ABCDEF")
        await resumed.close()


# --- a subscription that goes quiet -----------------------------------------------------------------


def black_hole(live: LiveServer) -> None:
    """Stop reading the process's pub/sub sockets without a word (no error, no close): announcements pile up
    in the kernel, unheard, as behind a network black hole. Run on the server's own event loop."""
    done = threading.Event()

    def pause() -> None:
        for node in live.broker.subscriber._nodes.values():
            node.protocol._transport.pause_reading()
        done.set()

    live.broker._loop.call_soon_threadsafe(pause)
    assert done.wait(5), "the server's loop did not run the pause"


async def test_silent_subscription_never_answers_older_than_redis_said(live_server: Callable[..., LiveServer]) -> None:
    """With A's pub/sub socket black-holed while B takes the writes, every ``/seats/version`` answer of A is at
    least the version A's verifier last read from Redis, and A's answers reach each write's version within a
    verification period (plus slack) of the write's response."""
    a, b = live_server(), live_server()
    async with http_client(a) as http_a, http_client(b) as http_b:
        order_id, token = await new_order(http_b)
        await select(http_b, order_id, token, ["1A"])
        deadline = time.monotonic() + 10
        while not (feed := a.broker._feeds.get(FLIGHT)) or not feed.live or feed.redis_version < 1:
            assert time.monotonic() < deadline, "A's feed never went live"
            await http_a.get(f"/flights/{FLIGHT}/seats/version")
            await asyncio.sleep(0.05)
        black_hole(a)
        heard = a.broker.stats.messages

        answers: list[tuple[float, int, int]] = []  # (answered at, version, what Redis last told A before asking)
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                floor = feed.redis_version
                response = await http_a.get(f"/flights/{FLIGHT}/seats/version")
                assert response.status_code == 200
                answers.append((time.monotonic(), response.json()["version"], floor))
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        writes: list[tuple[float, int]] = []  # (answered at, the flight's version after the write)
        for i in range(10):
            await select(http_b, order_id, token, [f"{i % 4 + 2}B"])
            answered = time.monotonic()
            writes.append((answered, (await http_b.get(f"/flights/{FLIGHT}/seats/version")).json()["version"]))
            await asyncio.sleep(0.25)
        await asyncio.sleep(VERIFY_SECONDS + 1.0)
        stop.set()
        await poller

    assert a.broker.stats.messages == heard, "A still heard announcements: the black hole leaked"
    older = [(version, floor) for _, version, floor in answers if version < floor]
    assert not older, f"A answered older than Redis had told it: {older[:5]}"
    lags = [next(at for at, version, _ in answers if at > answered and version >= written) - answered
            for answered, written in writes]
    print(f"{len(answers)} answers; catch-up after each write (ms): {[round(lag * 1000) for lag in lags]}")
    assert max(lags) <= VERIFY_SECONDS + 1.0, lags


def test_first_order_after_data_loss_recreates_the_configured_flight(make_client: Callable[..., Any],
                                                                       data_redis: Any) -> None:
    """When Redis lost its data (a restart without persistence) and the process still knows the flight's
    layout, an order on a configured flight creates the flight again and answers 201, not 404 flight_not_found."""
    client = make_client()
    assert client.post("/orders", json={"flightId": FLIGHT}).status_code == 201  # the layout is now cached
    data_redis.flushall()
    created = client.post("/orders", json={"flightId": FLIGHT})
    assert created.status_code == 201, created.text
    assert client.get(f"/flights/{FLIGHT}/seats").json()["version"] == 0
