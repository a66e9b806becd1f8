"""Live updates (SSE) against a real uvicorn server and a real redis-server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
import redis.cluster

from tests.conftest import LiveServer, RedisServer, standalone_only
from tests.sse import Watch, apply, versions

ADMIN = {"Authorization": "Bearer admin-secret"}


pytestmark = pytest.mark.both_planes


def auth(token: str) -> dict[str, str]:
    """The bearer header for an order token."""
    return {"Authorization": f"Bearer {token}"}


async def new_order(http: httpx.AsyncClient, flight_id: str = "FL-001") -> tuple[str, str]:
    """Create an order; returns (order id, token)."""
    response = await http.post("/orders", json={"flightId": flight_id})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["orderId"], body["token"]


async def hold(http: httpx.AsyncClient, order_id: str, token: str, seats: list[str]) -> dict[str, Any]:
    """Select ``seats`` for the order; the hold must succeed."""
    response = await http.post(f"/orders/{order_id}/seats", json={"seats": seats}, headers=auth(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def seat_map(http: httpx.AsyncClient, flight_id: str = "FL-001") -> dict[str, Any]:
    """GET the public seat map."""
    response = await http.get(f"/flights/{flight_id}/seats")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def toggle(http: httpx.AsyncClient, order_id: str, token: str, seats: tuple[str, str], times: int) -> None:
    """Swap an order's selection between two seats ``times`` times: one flight version each."""
    for i in range(times):
        await hold(http, order_id, token, [seats[i % 2]])


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    """The API with default test settings on a real server."""
    return live_server()


def http_client(live: LiveServer) -> httpx.AsyncClient:
    """An HTTP client for ``live`` without read timeouts (streams are long)."""
    return httpx.AsyncClient(base_url=live.base_url, timeout=httpx.Timeout(10.0, read=None))


async def test_every_subscriber_gets_1000_changes_in_order(server: LiveServer) -> None:
    """Across 1,000 changes from concurrent orders, every stream gets each version once, in order."""
    async with http_client(server) as http:
        orders = [await new_order(http) for _ in range(8)]
        watches = [await Watch(http, "/flights/FL-001/events").open() for _ in range(3)]
        start = [(await w.until(lambda ev: len(ev) >= 1))[0] for w in watches]
        assert all(first.event == "snapshot" for first in start)
        base = start[0].version
        assert all(first.version == base for first in start)

        pairs = [(f"{row}{a}", f"{row}{b}") for row in range(1, 5) for a, b in (("A", "B"), ("D", "E"))]
        await asyncio.gather(*(toggle(http, o, t, pair, 125) for (o, t), pair in zip(orders, pairs, strict=True)))

        final = await seat_map(http)
        assert final["version"] == base + 1000
        for watch in watches:
            events = await watch.until(lambda ev: versions(ev)[-1:] == [base + 1000], timeout=20)
            assert [e.event for e in events[1:]] == ["seats"] * 1000
            assert versions(events) == list(range(base + 1, base + 1001))
            assert apply({}, events) == final["seats"]
            assert events[-1].json()["hash"] == final["hash"]
            await watch.close()


async def test_seats_event_hash_and_changes_match_the_seat_map(server: LiveServer) -> None:
    """After each change, the event's hash equals the seat map's, and only changed seats are sent."""
    async with http_client(server) as http:
        order_id, token = await new_order(http)
        watch = await Watch(http, "/flights/FL-001/events").open()
        await watch.until(lambda ev: len(ev) == 1)
        for seats in (["1A", "1B"], ["1B", "1C"], ["5F"], ["2A", "2B", "2C"]):
            held = await hold(http, order_id, token, seats)
            current = await seat_map(http)
            events = await watch.until(lambda ev, v=current["version"]: versions(ev)[-1:] == [v])
            event = events[-1].json()
            assert event["hash"] == current["hash"]
            assert event["version"] == current["version"]
            assert event["lastUpdated"] == current["lastUpdated"]
            assert set(event["changes"]) <= set(current["seats"])
            assert len(event["changes"]) < len(current["seats"])
            for seat in seats:
                assert event["changes"][seat] == {"status": "held", "expiresAt": held["holdExpiresAt"]}
            assert apply({}, events) == current["seats"]
        await watch.close()


async def test_mine_marks_only_for_the_owner_and_no_owner_leaks(server: LiveServer) -> None:
    """A stream opened with orderId and its token marks that order's seats mine; others see no ids."""
    async with http_client(server) as http:
        mine_id, mine_token = await new_order(http)
        other_id, other_token = await new_order(http)
        await hold(http, mine_id, mine_token, ["1A"])
        mine = await Watch(http, f"/flights/FL-001/events?orderId={mine_id}&token={mine_token}").open()
        wrong = await Watch(http, f"/flights/FL-001/events?orderId={mine_id}&token=nope").open()
        public = await Watch(http, "/flights/FL-001/events").open()
        for watch in (mine, wrong, public):
            await watch.until(lambda ev: len(ev) == 1)
        assert mine.data_events()[0].json()["seats"]["1A"].get("mine") is True
        assert "mine" not in wrong.data_events()[0].json()["seats"]["1A"]

        await hold(http, mine_id, mine_token, ["1A", "1B"])
        await hold(http, other_id, other_token, ["2A"])
        for watch in (mine, wrong, public):
            await watch.until(lambda ev: len(ev) == 3)
        assert mine.data_events()[1].json()["changes"]["1B"]["mine"] is True
        assert "mine" not in mine.data_events()[2].json()["changes"]["2A"]
        for watch in (wrong, public):
            assert all("mine" not in change for e in watch.data_events()[1:] for change in e.json()["changes"].values())
        assert server.broker.open_streams == 3
        for watch in (mine, wrong, public):
            raw = "".join(e.data for e in watch.data_events())
            assert other_id not in raw and '"o"' not in raw
            await watch.close()
        await wait_for(lambda: server.broker.open_streams == 0)  # a client that leaves is forgotten


async def test_unknown_flight_stream_is_404(server: LiveServer) -> None:
    """A stream for a flight that does not exist answers 404 with a JSON error, not an empty stream."""
    async with http_client(server) as http:
        response = await http.get("/flights/NOPE/events")
        assert response.status_code == 404
        assert response.json()["error"] == "flight_not_found"


async def test_resume_sends_only_the_missed_changes(server: LiveServer) -> None:
    """Reconnecting with Last-Event-ID yields exactly the missed changes, then live ones; no snapshot."""
    async with http_client(server) as http:
        order_id, token = await new_order(http)
        first = await Watch(http, "/flights/FL-001/events").open()
        seen = (await first.until(lambda ev: len(ev) == 1))[0]
        last_seen = seen.version
        await first.close()

        await toggle(http, order_id, token, ("3C", "3D"), 5)
        resumed = await Watch(http, "/flights/FL-001/events", {"Last-Event-ID": seen.id or ""}).open()
        await resumed.until(lambda ev: len(ev) == 5)
        await toggle(http, order_id, token, ("3E", "3F"), 2)
        events = await resumed.until(lambda ev: len(ev) == 7)
        assert [e.event for e in events] == ["seats"] * 7
        assert versions(events) == list(range(last_seen + 1, last_seen + 8))
        current = await seat_map(http)
        assert events[-1].json()["hash"] == current["hash"]
        await resumed.close()

        up_to_date = await Watch(http, "/flights/FL-001/events",
                                 {"Last-Event-ID": f"{seen.epoch}-{current['version']}"}).open()
        await toggle(http, order_id, token, ("4C", "4D"), 1)
        events = await up_to_date.until(lambda ev: len(ev) >= 1)
        assert [(e.event, e.version) for e in events] == [("seats", current["version"] + 1)]
        await up_to_date.close()


async def test_resume_far_behind_gets_a_snapshot(live_server: Callable[..., LiveServer]) -> None:
    """A client further behind than the retained log gets a fresh snapshot at the current version."""
    live = live_server(change_log_length=10)
    async with http_client(live) as http:
        order_id, token = await new_order(http)
        first = await Watch(http, "/flights/FL-001/events").open()
        seen = (await first.until(lambda ev: len(ev) == 1))[0]
        last_seen = seen.version
        await first.close()
        await toggle(http, order_id, token, ("1A", "1B"), 30)
        current = await seat_map(http)
        assert current["version"] == last_seen + 30
        resumed = await Watch(http, "/flights/FL-001/events", {"Last-Event-ID": seen.id or ""}).open()
        events = await resumed.until(lambda ev: bool(ev) and ev[-1].version == current["version"])
        # The feed may not have applied the very last announcement when the client attached.
        assert events[0].event == "snapshot" and events[0].version >= current["version"] - 1
        assert [e.event for e in events[1:]] == ["seats"] * (len(events) - 1)
        assert versions(events, "snapshot") + versions(events) == list(range(events[0].version, last_seen + 31))
        assert apply({}, events) == current["seats"]
        assert events[-1].json()["hash"] == current["hash"]
        await resumed.close()


async def test_heartbeat_retry_hint_and_lifetime_cap(live_server: Callable[..., LiveServer]) -> None:
    """Streams start with a retry hint, carry comment heartbeats and end after their lifetime cap."""
    live = live_server(sse_heartbeat_seconds=0.2, sse_max_stream_seconds=1.0, sse_retry_ms=1234)
    async with http_client(live) as http:
        started = time.monotonic()
        watch = await Watch(http, "/flights/FL-001/events").open()
        await asyncio.wait_for(watch.ended.wait(), 5)
        assert 0.7 <= time.monotonic() - started < 3
        assert watch.error is None
        kinds = [e.event for e in watch.events]
        assert watch.events[0].event == "retry" and watch.events[0].data == "1234"
        assert kinds.count("snapshot") == 1 and kinds.count("comment") >= 2
        assert [e for e in watch.data_events() if e.event == "message"] == []  # no empty data: events


async def test_subscription_killed_mid_stream_loses_nothing(server: LiveServer, data_redis: Any) -> None:
    """After CLIENT KILL TYPE pubsub, changes published while unsubscribed still reach open streams."""
    async with http_client(server) as http:
        order_id, token = await new_order(http)
        watch = await Watch(http, "/flights/FL-001/events").open()
        base = (await watch.until(lambda ev: len(ev) == 1))[0].version
        await toggle(http, order_id, token, ("1A", "1B"), 3)
        await watch.until(lambda ev: len(ev) == 4)

        assert kill_pubsub(data_redis) >= 1
        await toggle(http, order_id, token, ("1A", "1B"), 10)  # the first ones while nobody is subscribed
        await wait_for(lambda: server.broker.subscribed)
        await toggle(http, order_id, token, ("1A", "1B"), 2)

        events = await watch.until(lambda ev: versions(ev)[-1:] == [base + 15])
        assert [e.event for e in events[1:]] == ["seats"] * 15
        assert versions(events) == list(range(base + 1, base + 16))
        assert server.broker.stats.subscriptions == 2
        assert apply({}, events) == (await seat_map(http))["seats"]
        await watch.close()


async def test_redis_restart_with_data_loss_resyncs_with_a_snapshot(
    server: LiveServer, redis_server: RedisServer, plane: str
) -> None:
    """After Redis restarts empty, an open stream gets a fresh snapshot, then every new change."""
    standalone_only(plane, "restarts the redis-server")
    async with http_client(server) as http:
        order_id, token = await new_order(http)
        watch = await Watch(http, "/flights/FL-001/events").open()
        await watch.until(lambda ev: len(ev) == 1)
        await toggle(http, order_id, token, ("1A", "1B"), 3)
        await watch.until(lambda ev: len(ev) == 4)

        redis_server.restart()  # no persistence: the flight, its orders and versions are gone
        await wait_for(lambda: server.broker.stats.subscriptions >= 2, timeout=10)
        order_id, token = await new_order(http)  # the configured flight was restored by itself
        await toggle(http, order_id, token, ("2A", "2B"), 5)

        events = await watch.until(lambda ev: ev[-1].version == 5 and ev[-1].epoch != ev[0].epoch, timeout=10)
        assert [e.event for e in events[:5]] == ["snapshot", "seats", "seats", "seats", "snapshot"]
        assert events[4].epoch != events[0].epoch  # a new lifetime of the data: a new epoch
        assert events[4].version <= 1  # the restored flight's versions, not the lost ones
        last_snapshot = max(i for i, e in enumerate(events) if e.event == "snapshot")
        after = events[last_snapshot:]
        assert versions(after, "snapshot") + versions(after) == list(range(after[0].version, 6))
        current = await seat_map(http)
        assert apply({}, events) == current["seats"]
        assert after[-1].json()["hash"] == current["hash"]
        await watch.close()


async def test_redis_restart_with_persistence_resyncs_in_a_new_epoch(
    live_server: Callable[..., LiveServer], persistent_redis: RedisServer, plane: str
) -> None:
    """A Redis restarted from its AOF (everysec: its last second may be gone, so versions may repeat) starts
    a new epoch: the open stream gets a snapshot of the data as it is, then every change in order."""
    standalone_only(plane, "restarts a persistent redis-server")
    live = live_server(redis_url=persistent_redis.url)
    async with http_client(live) as http:
        order_id, token = await new_order(http)
        watch = await Watch(http, "/flights/FL-001/events").open()
        first = (await watch.until(lambda ev: len(ev) == 1))[0]
        base = first.version
        await toggle(http, order_id, token, ("1A", "1B"), 2)
        await watch.until(lambda ev: len(ev) == 3)

        persistent_redis.restart()
        for i in range(6):
            for _ in range(40):  # the first calls may meet connections that died with the restart
                response = await http.post(
                    f"/orders/{order_id}/seats", json={"seats": [("1A", "1B")[i % 2]]}, headers=auth(token)
                )
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.05)
            assert response.status_code == 200, response.text

        events = await watch.until(lambda ev: ev[-1].version == base + 8 and ev[-1].epoch != first.epoch, timeout=10)
        last_snapshot = max(i for i, e in enumerate(events) if e.event == "snapshot")
        assert last_snapshot > 0 and events[last_snapshot].epoch != first.epoch
        after = events[last_snapshot:]
        assert versions(after, "snapshot") + versions(after) == list(range(after[0].version, base + 9))
        assert apply({}, events) == (await seat_map(http))["seats"]
        assert events[-1].json()["hash"] == (await seat_map(http))["hash"]
        await watch.close()


async def test_slow_consumer_does_not_delay_others(live_server: Callable[..., LiveServer]) -> None:
    """A client that never reads is dropped once its queue overflows; a reading client gets everything."""
    live = live_server(sse_client_queue=100)
    big_layout = {"rows": 5000, "columns": "ABCDEFGHIJKLMNOPQRST"}  # 100,000 seats: ~3 MB per snapshot
    async with http_client(live) as http:
        assert (await http.put("/flights/BIG", json=big_layout, headers=ADMIN)).status_code == 201
        host, port = live.base_url.removeprefix("http://").split(":")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        slow.connect((host, int(port)))
        slow.sendall(b"GET /flights/BIG/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        fast = await Watch(http, "/flights/BIG/events").open()
        await fast.until(lambda ev: len(ev) == 1)
        # Replacing the layout sends every stream another full snapshot: more than the kernel's
        # socket buffers (at most ~4 MB) can absorb for a client that does not read.
        assert (await http.put("/flights/BIG", json=big_layout, headers=ADMIN)).status_code == 200
        base = (await fast.until(lambda ev: len(ev) == 2))[1].version
        order_id, token = await new_order(http, "BIG")

        started = time.monotonic()
        await toggle(http, order_id, token, ("1A", "1B"), 150)
        events = await fast.until(lambda ev: versions(ev)[-1:] == [base + 150], timeout=10)
        assert time.monotonic() - started < 10
        assert versions(events) == list(range(base + 1, base + 151))
        assert live.broker.stats.dropped == 1

        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # read the backlog quickly
        slow.settimeout(5)
        received = bytearray()
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the backlog, then the end of the response
            chunk = slow.recv(1 << 20)
            assert chunk, "the connection closed before the response ended"
            received += chunk
        slow.close()
        assert received.count(b"event: snapshot") == 2
        await fast.close()


async def test_order_stream_for_unknown_order_is_404_at_once(server: LiveServer) -> None:
    """Spec 9.10: a stream for an order that does not exist (yet) answers 404 at once, never an empty stream."""
    async with http_client(server) as http:
        started = time.monotonic()
        missing = await http.get("/orders/not-created-yet/events?token=whatever")
        assert missing.status_code == 404 and missing.json()["error"] == "order_not_found"
        assert time.monotonic() - started < 1
        order_id, token = await new_order(http)
        assert (await http.get(f"/orders/{order_id}/events")).status_code == 401
        assert (await http.get(f"/orders/{order_id}/events?token=wrong")).status_code == 404
        watch = await Watch(http, f"/orders/{order_id}/events", auth(token)).open()
        first = (await watch.until(lambda ev: len(ev) == 1))[0]
        assert watch.status == 200 and first.event == "order"
        assert first.json()["orderId"] == order_id and first.json()["state"] == "PENDING"
        assert int(first.id or -1) == first.json()["version"]

        await hold(http, order_id, token, ["2C"])
        await watch.until(lambda ev: bool(ev) and ev[-1].json()["state"] == "SEATS_SELECTED")
        assert (await http.delete(f"/orders/{order_id}", headers=auth(token))).status_code == 200
        events = await watch.until(lambda ev: bool(ev) and ev[-1].json()["state"] == "CANCELLED")
        await asyncio.wait_for(watch.ended.wait(), 5)  # closed after the terminal state
        assert [e.json()["state"] for e in events] == ["PENDING", "SEATS_SELECTED", "CANCELLED"]
        assert [int(e.id or 0) for e in events] == [e.json()["version"] for e in events]
        assert watch.error is None


def kill_pubsub(data_redis: Any) -> int:
    """CLIENT KILL TYPE pubsub on every node of the data plane; how many connections died."""
    if isinstance(data_redis, redis.cluster.RedisCluster):
        return sum(int(node.redis_connection.client_kill_filter(_type="pubsub")) for node in data_redis.get_nodes())
    return int(data_redis.client_kill_filter(_type="pubsub"))


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_order_stream_shows_every_version_of_back_to_back_changes(server: LiveServer) -> None:
    """Changes made back to back (no await between them) reach the order stream one event per version."""
    async with http_client(server) as http:
        order_id, token = await new_order(http)
        watch = await Watch(http, f"/orders/{order_id}/events", auth(token)).open()
        await watch.until(lambda ev: len(ev) == 1)
        await asyncio.gather(*(hold(http, order_id, token, [seat]) for seat in ("3D", "3E", "3F")))
        assert (await http.delete(f"/orders/{order_id}", headers=auth(token))).status_code == 200
        events = await watch.until(lambda ev: bool(ev) and ev[-1].json()["state"] == "CANCELLED")
        assert [int(e.id or 0) for e in events] == list(range(1, 6))
        assert [e.json()["state"] for e in events] == ["PENDING"] + ["SEATS_SELECTED"] * 3 + ["CANCELLED"]


def _gauge(text: str, stream: str) -> float:
    """The value of ``seats_sse_subscribers{stream=...}`` in a /metrics page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("seats_sse_subscribers{") and f'stream="{stream}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_sse_subscribers_gauge_follows_open_streams(server: LiveServer) -> None:
    """/metrics shows one flight stream (and one order stream) while they are open, none after."""
    async with http_client(server) as http:
        assert _gauge((await http.get("/metrics")).text, "flight") == 0
        order_id, token = await new_order(http)
        flight = await Watch(http, "/flights/FL-001/events").open()
        order = await Watch(http, f"/orders/{order_id}/events", headers=auth(token)).open()
        await flight.until(lambda events: any(e.event == "snapshot" for e in events))
        await order.until(lambda events: any(e.event == "order" for e in events))
        page = (await http.get("/metrics")).text
        assert _gauge(page, "flight") == 1 and _gauge(page, "order") == 1
        await flight.close()
        await order.close()
        deadline = time.monotonic() + 5
        while True:
            page = (await http.get("/metrics")).text
            if _gauge(page, "flight") == 0 and _gauge(page, "order") == 0:
                break
            assert time.monotonic() < deadline, "the gauge did not come back to 0 after the streams closed"
            await asyncio.sleep(0.05)
