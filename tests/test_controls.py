"""Hostile crowds (spec §10): subjects, buyer passes, the write limiter, the caps, idle orders, the stream
cap and Idempotency-Key, against a real redis-server (and a real uvicorn where the peer address matters)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from service import idempotency
from service.settings import Settings
from service.store import keys
from service.subjects import Subject, TrustedProxies, client_address, sign_pass, verify_pass
from tests.conftest import LiveServer
from tests.helpers import auth, hold, new_order

SECRET = "pass-secret"
PROXY = {"SEATS_TRUSTED_PROXIES": "127.0.0.1/32"}


def xff(address: str) -> dict[str, str]:
    """A client address as the trusted proxy in front of the API reports it."""
    return {"X-Forwarded-For": address}


def buyer(buyer_id: str, lifetime: float = 3600) -> dict[str, str]:
    """A valid buyer pass for ``buyer_id``."""
    return {"Seats-Buyer": sign_pass(SECRET, buyer_id, int(time.time() + lifetime))}


def dump(url: str) -> dict[str, str]:
    """Every key of the Redis and its value (any type) as one string, for scans."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value: Any = {
            "string": client.get, "hash": client.hgetall, "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "set": client.smembers, "list": lambda k: client.lrange(k, 0, -1),
            "stream": client.xrange,
        }[kind](key)
        out[key] = repr(value)
    client.close()
    return out


# --- subjects --------------------------------------------------------------------------------------------


def test_untrusted_forwarded_for_is_ignored() -> None:
    """Without a trusted proxy in front, X-Forwarded-For is whatever the client claims: the peer counts."""
    assert client_address("203.0.113.7", "198.51.100.1", TrustedProxies()) == "203.0.113.7"
    assert client_address("203.0.113.7", "198.51.100.1", TrustedProxies(["10.0.0.0/8"])) == "203.0.113.7"


def test_trusted_proxy_gives_the_right_most_untrusted_address() -> None:
    """Behind trusted proxies, the right-most address they did not add is the client (spoofed hops left of it)."""
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.1.2.3", proxies) == "203.0.113.9"
    assert client_address("127.0.0.1", "10.0.0.2, 10.0.0.3", proxies) == "10.0.0.2"  # all trusted: left-most


@pytest.mark.parametrize("header", [
    "not-an-address", "203.0.113.9, ", "203.0.113.9;for=x", ",".join(["203.0.113.9"] * 33), "1.2.3.4.5",
])
def test_unparseable_forwarded_for_falls_back_to_the_peer(header: str) -> None:
    """An X-Forwarded-For that does not parse (or is absurdly long) is not believed: the peer counts."""
    assert client_address("127.0.0.1", header, TrustedProxies(["127.0.0.1"])) == "127.0.0.1"


def test_ipv6_clients_count_by_their_slash_64() -> None:
    """Two addresses of one IPv6 /64 are one subject; an IPv4-mapped address is its IPv4 address."""
    a = client_address("2001:db8:1:2::1", None, TrustedProxies())
    b = client_address("2001:db8:1:2:ffff::9", None, TrustedProxies())
    assert a == b == "2001:db8:1:2::/64"
    assert client_address("::ffff:192.0.2.5", None, TrustedProxies()) == "192.0.2.5"


def test_buyer_pass_valid_forged_expired_and_malformed() -> None:
    """A signed, unexpired pass names its buyer; a forged, expired or malformed one is refused (401)."""
    from service.errors import InvalidBuyerPass

    now = time.time()
    good = sign_pass(SECRET, "buyer-42", int(now + 60))
    assert verify_pass(good, SECRET, now) == "buyer-42"
    buyer_id, expires, signature = good.split(".")
    bad = [
        sign_pass("another-secret", "buyer-42", int(now + 60)),  # forged
        f"buyer-43.{expires}.{signature}",  # another buyer under this signature
        f"{buyer_id}.{int(expires) + 1}.{signature}",  # a longer life under this signature
        sign_pass(SECRET, "buyer-42", int(now - 1)),  # expired
        "buyer-42", "a.b", "..", f"{'x' * 65}.{expires}.{signature}", f"{buyer_id}.{expires}.{signature}=",
        f"bü.{expires}.{signature}", f"{buyer_id}.-5.{signature}", f"{buyer_id}.{expires}.{signature[:-1]}",
    ]
    for value in bad:
        with pytest.raises(InvalidBuyerPass):
            verify_pass(value, SECRET, now)
    with pytest.raises(InvalidBuyerPass):
        verify_pass(good, None, now)  # no secret configured: nothing can be believed


# --- buyer passes through the API ------------------------------------------------------------------------


def test_required_buyer_pass(make_client: Callable[..., Any], redis_url: str) -> None:
    """With SEATS_REQUIRE_BUYER_PASS, POST /orders needs a valid pass: none, forged or expired is 401, no order."""
    client = make_client(buyer_secret=SECRET, require_buyer_pass=True)
    before = dump(redis_url)
    for headers in ({}, {"Seats-Buyer": sign_pass("forged", "b1", int(time.time()) + 60)}, buyer("b1", -5)):
        response = client.post("/orders", json={"flightId": "FL-001"}, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_buyer_pass"
    assert dump(redis_url) == before
    response = client.post("/orders", json={"flightId": "FL-001"}, headers=buyer("b1"))
    assert response.status_code == 201, response.text


def test_a_buyer_is_one_subject_whatever_its_address(make_client: Callable[..., Any]) -> None:
    """The open-order cap counts per buyer: two buyers behind one address each get their own three."""
    client = make_client(buyer_secret=SECRET, max_open_orders_per_subject=3)
    for buyer_id in ("alice", "bob"):
        for _ in range(3):
            assert client.post("/orders", json={"flightId": "FL-001"}, headers=buyer(buyer_id)).status_code == 201
        refused = client.post("/orders", json={"flightId": "FL-001"}, headers=buyer(buyer_id))
        assert refused.status_code == 409 and refused.json()["error"] == "subject_limit_reached"


# --- the write limiter -----------------------------------------------------------------------------------


def test_rate_limit_refuses_with_retry_after_and_changes_nothing(make_client: Callable[..., Any],
                                                                 redis_url: str) -> None:
    """Three writes per minute: each answers RateLimit headers; the fourth is 429 with Retry-After, no order."""
    client = make_client(rate_limit_writes="3/60")
    responses = [client.post("/orders", json={"flightId": "FL-001"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert responses[0].headers["RateLimit-Policy"] == '"writes";q=3;w=60'
    assert [r.headers["RateLimit"].split(";")[1] for r in responses] == ["r=2", "r=1", "r=0"]
    before = dump(redis_url)
    refused = client.post("/orders", json={"flightId": "FL-001", "orderId": "over-the-limit"})
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["error"] == "rate_limited" and body["details"] == {"limit": 3, "windowSeconds": 60}
    assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one token back in 60/3 = 20 s
    assert refused.headers["RateLimit"].startswith('"writes";r=0;')
    assert dump(redis_url) == before, "a refused write changed Redis"


def test_rate_limit_covers_every_write_and_counts_against_the_orders_subject(make_client: Callable[..., Any]) -> None:
    """Holds, payments and cancels spend the order's subject's tokens; the limit refuses each kind."""
    client = make_client(rate_limit_writes="4/60")
    order_id, token = new_order(client)  # 1
    assert hold(client, order_id, token, ["1A"]).status_code == 200  # 2
    assert hold(client, order_id, token, ["1B"]).status_code == 200  # 3
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 202
    assert hold(client, order_id, token, ["1C"]).status_code == 429
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 429
    assert client.delete(f"/orders/{order_id}", headers=auth(token)).status_code == 429


def test_rate_limit_refills_over_time(make_client: Callable[..., Any]) -> None:
    """The bucket refills continuously: after a token's worth of time a write goes through again."""
    client = make_client(rate_limit_writes="2/1")
    assert [new_order(client) and 201 for _ in range(2)] == [201, 201]
    refused = client.post("/orders", json={"flightId": "FL-001"})
    assert refused.status_code == 429
    time.sleep(0.6)  # 2 tokens per second: one is back after 0.5 s
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 201


async def test_trusted_proxy_addresses_are_separate_subjects(live_server: Callable[..., LiveServer]) -> None:
    """Behind a trusted proxy each client address has its own bucket; an untrusted hop cannot fake one."""
    server = live_server(rate_limit_writes="2/60", trusted_proxies=("127.0.0.1/32",))
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for address in ("203.0.113.1", "203.0.113.2"):
            statuses = [(await http.post("/orders", json={"flightId": "FL-001"}, headers=xff(address))).status_code
                        for _ in range(3)]
            assert statuses == [201, 201, 429], (address, statuses)
        # A client that prepends its own "address" still is the hop the proxy saw.
        spoofed = await http.post("/orders", json={"flightId": "FL-001"}, headers=xff("198.51.100.7, 203.0.113.1"))
        assert spoofed.status_code == 429


async def test_untrusted_peer_forwarded_for_does_not_split_the_subject(live_server: Callable[..., LiveServer]) -> None:
    """With no trusted proxy, rotating X-Forwarded-For values is one subject (the TCP peer)."""
    server = live_server(rate_limit_writes="2/60")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        statuses = [(await http.post("/orders", json={"flightId": "FL-001"}, headers=xff(f"203.0.113.{i}")))
                    .status_code for i in range(3)]
    assert statuses == [201, 201, 429]


# --- caps --------------------------------------------------------------------------------------------------


async def test_fifty_parallel_creates_never_overshoot_the_open_order_cap(
    live_server: Callable[..., LiveServer], redis_url: str,
) -> None:
    """50 concurrent POST /orders of one subject: exactly 3 succeed, the rest are 409 with {limit, current}."""
    server = live_server(max_open_orders_per_subject=3)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        responses = await asyncio.gather(*(http.post("/orders", json={"flightId": "FL-001"}) for _ in range(50)))
    created = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 409]
    assert len(created) == 3 and len(refused) == 47, [r.status_code for r in responses]
    assert {r.json()["error"] for r in refused} == {"subject_limit_reached"}
    assert {(r.json()["details"]["limit"], r.json()["details"]["current"]) for r in refused} == {(3, 3)}
    orders = [k for k in redis.Redis.from_url(redis_url).scan_iter("seats:{FL-001}:order:*")]
    assert len(orders) == 3


async def test_fifty_parallel_holds_never_overshoot_the_held_seat_cap(
    live_server: Callable[..., LiveServer], redis_url: str,
) -> None:
    """50 concurrent holds by one subject's 3 orders: its held seats never pass 10, at the end or in between."""
    server = live_server(max_held_seats_per_subject=10, max_open_orders_per_subject=3)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        orders = [await new_order_async(http) for _ in range(3)]
        seats = [f"{row}{col}" for row in range(1, 6) for col in "ABCDEF"]

        def held_now() -> int:
            return sum(1 for v in client.mget([keys.seat("FL-001", s) for s in seats]) if v and v.startswith("H|"))

        peaks: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                peaks.append(held_now())
                await asyncio.sleep(0.002)

        async def one(i: int) -> httpx.Response:
            order_id, token = orders[i % 3]
            row = seats[(i % 3) * 6:(i % 3) * 6 + 6]  # each order its own row: only the cap can refuse
            wanted = row[(i // 3) % 3:(i // 3) % 3 + 3 + (i // 3) % 2]  # 3 or 4 seats: 3 orders could want 12
            return await http.post(f"/orders/{order_id}/seats", json={"seats": wanted}, headers=auth(token))

        watcher = asyncio.create_task(watch())
        responses = await asyncio.gather(*(one(i) for i in range(50)))
        stop.set()
        await watcher
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 409} and 200 in statuses, statuses
    refused = [r.json() for r in responses if r.status_code == 409]
    # 17 concurrent swaps of one order may also give up on its ever-changing seats (409 conflict)
    assert {body["error"] for body in refused} <= {"subject_limit_reached", "conflict"}
    capped = [body for body in refused if body["error"] == "subject_limit_reached"]
    assert capped, "with 3 orders of up to 4 seats the cap of 10 must refuse some holds"
    assert all(body["details"]["limit"] == 10 and body["details"]["current"] <= 10 for body in capped)
    assert max([*peaks, held_now()]) <= 10


async def new_order_async(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """Create an order over a real connection; returns (order id, token)."""
    response = await http.post("/orders", json={"flightId": "FL-001"}, headers=headers or {})
    assert response.status_code == 201, response.text
    return response.json()["orderId"], response.json()["token"]


def test_cap_counts_a_failed_orders_kept_seats(make_client: Callable[..., Any]) -> None:
    """Seats a FAILED order keeps until its deadline still count against its subject's cap."""
    from tests.conftest import run_worker_burst

    client = make_client(max_held_seats_per_subject=3, payment_failure_rate=1.0, payment_attempts=1)
    first, first_token = new_order(client)
    assert hold(client, first, first_token, ["1A", "1B"]).status_code == 200
    assert client.post(f"/orders/{first}/payment", json={"code": "12345"}, headers=auth(first_token)).status_code == 202
    run_worker_burst(client.app.state.services.settings)
    assert client.get(f"/orders/{first}", headers=auth(first_token)).json()["state"] == "FAILED"
    second, second_token = new_order(client)
    refused = hold(client, second, second_token, ["2A", "2B"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["details"] == {"limit": 3, "current": 2, "kind": "seats"}
    assert hold(client, second, second_token, ["2A"]).status_code == 200


def test_cancelled_and_expired_orders_stop_counting(make_client: Callable[..., Any]) -> None:
    """A cancelled order gives its seats and its open-order place back to the subject at once."""
    client = make_client(max_held_seats_per_subject=2, max_open_orders_per_subject=1)
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["1A", "1B"]).status_code == 200
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 409
    assert client.delete(f"/orders/{order_id}", headers=auth(token)).status_code == 200
    again, again_token = new_order(client)
    assert hold(client, again, again_token, ["1A", "1B"]).status_code == 200


# --- idle orders -------------------------------------------------------------------------------------------


def test_idle_order_expires_and_stops_counting(make_client: Callable[..., Any]) -> None:
    """An order that never held a seat is EXPIRED after SEATS_PENDING_ORDER_SECONDS and frees its place."""
    client = make_client(pending_order_seconds=0.3, max_open_orders_per_subject=1)
    order_id, token = new_order(client)
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 409
    time.sleep(0.35)
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 201  # the idle one no longer counts
    order = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert order["state"] == "EXPIRED" and "held no seats" in order["lastError"]
    refused = hold(client, order_id, token, ["1A"])
    assert refused.status_code == 409 and refused.json()["error"] == "order_closed"


async def test_sweeper_expires_idle_orders(make_settings: Callable[..., Settings], redis_url: str) -> None:
    """The worker's sweeper expires an idle PENDING order by itself, and Redis forgets it after retention."""
    from service.expiry import sweep_once
    from tests.helpers import CALLER, open_rig

    settings = make_settings(pending_order_seconds=0.2)
    rig = await open_rig(settings)
    client, store, order_scripts = rig.redis, rig.orders, rig.order_scripts
    created = await store.create("FL-001", "idle-1", CALLER)
    assert created.order.state == "PENDING"
    await asyncio.sleep(0.25)
    assert await sweep_once(order_scripts) == 1
    state = await client.hget(keys.order("FL-001", "idle-1"), "state")
    ttl = await client.pttl(keys.order("FL-001", "idle-1"))
    assert state == "EXPIRED" and 0 < ttl <= settings.order_retention_seconds * 1000
    await rig.close()


# --- the stream cap ----------------------------------------------------------------------------------------


async def test_stream_cap_per_subject(live_server: Callable[..., LiveServer]) -> None:
    """A subject may keep 2 streams open: the third is 429 with Retry-After; closing one frees a place."""
    server = live_server(max_streams_per_subject=2, trusted_proxies=("127.0.0.1/32",))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        first = await http.send(http.build_request("GET", "/flights/FL-001/events", headers=xff("203.0.113.5")),
                                stream=True)
        second = await http.send(http.build_request("GET", "/flights/FL-001/events", headers=xff("203.0.113.5")),
                                 stream=True)
        assert first.status_code == second.status_code == 200
        third = await http.get("/flights/FL-001/events", headers=xff("203.0.113.5"))
        assert third.status_code == 429 and third.json()["error"] == "rate_limited"
        assert int(third.headers["Retry-After"]) >= 1
        other = await http.send(http.build_request("GET", "/flights/FL-001/events", headers=xff("203.0.113.6")),
                                stream=True)
        assert other.status_code == 200  # another subject is not affected
        await first.aclose()
        for _ in range(100):  # the place is given back when the server notices the stream ended
            again = await http.send(http.build_request("GET", "/flights/FL-001/events",
                                                       headers=xff("203.0.113.5")), stream=True)
            if again.status_code == 200:
                break
            await again.aclose()
            await asyncio.sleep(0.05)
        assert again.status_code == 200
        for response in (second, other, again):
            await response.aclose()


async def test_stream_places_of_a_dead_process_lapse(redis_url: str, make_settings: Callable[..., Settings]) -> None:
    """A place not renewed within its lease (its process died) no longer counts against the cap."""
    from tests.helpers import open_rig

    rig = await open_rig(make_settings())
    scripts = rig.scripts
    key = keys.streams("a:203.0.113.9")
    assert await scripts.run("stream_slot", [key], ["open", 1, 150, "dead:1"]) == 1
    assert await scripts.run("stream_slot", [key], ["open", 1, 150, "live:1"]) == 0
    await asyncio.sleep(0.2)
    assert await scripts.run("stream_slot", [key], ["open", 1, 150, "live:1"]) == 1
    await rig.close()


# --- Idempotency-Key ---------------------------------------------------------------------------------------


def key(value: str = "6f2c1b0e-3a1d-4c55-9b7e-2a4f0c9d8e11") -> dict[str, str]:
    """An Idempotency-Key header (a UUID, as the draft recommends)."""
    return {"Idempotency-Key": value}


def test_replayed_create_returns_the_same_order_and_token_and_stores_no_token(
    make_client: Callable[..., Any], redis_url: str,
) -> None:
    """POST /orders twice with one key: one order, the same body and token, Idempotent-Replayed: true."""
    client = make_client()
    first = client.post("/orders", json={"flightId": "FL-001"}, headers=key())
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    snapshot = dump(redis_url)
    second = client.post("/orders", json={"flightId": "FL-001"}, headers=key())
    assert second.status_code == 201 and second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert dump(redis_url) == snapshot, "a replay must not change anything"
    token = first.json()["token"]
    assert client.get(f"/orders/{first.json()['orderId']}", headers=auth(token)).status_code == 200
    leaks = [k for k, v in snapshot.items() if token in k or token in v]
    assert not leaks, f"the token is stored in clear in {leaks}"
    assert not [k for k, v in snapshot.items() if key()["Idempotency-Key"] in k + v], "the key is stored in clear"


def test_key_with_another_body_is_422_and_changes_nothing(make_client: Callable[..., Any], redis_url: str) -> None:
    """The same key with a different body is 422 idempotency_key_reused; nothing runs."""
    client = make_client()
    assert client.post("/orders", json={"flightId": "FL-001"}, headers=key()).status_code == 201
    before = dump(redis_url)
    reused = client.post("/orders", json={"flightId": "FL-001", "orderId": "other"}, headers=key())
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
    assert dump(redis_url) == before


def test_hold_replay_does_not_refresh_and_body_order_is_canonical(make_client: Callable[..., Any]) -> None:
    """A replayed hold answers the first response without holding again (same deadline, same version)."""
    client = make_client()
    order_id, token = new_order(client)
    headers = {**auth(token), **key("hold-1")}
    first = client.post(f"/orders/{order_id}/seats", content=b'{"seats": ["1A", "1B"]}', headers=headers)
    time.sleep(0.01)
    again = client.post(f"/orders/{order_id}/seats", content=b'{ "seats":["1A","1B"] }', headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    now = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert now["version"] == first.json()["version"] and now["holdExpiresAt"] == first.json()["holdExpiresAt"]


def test_payment_key_ignores_the_code_and_replays_the_202(make_client: Callable[..., Any]) -> None:
    """The payment fingerprint leaves the code out: the same key with another code replays the first 202."""
    client = make_client()
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["2A"]).status_code == 200
    headers = {**auth(token), **key("pay-1")}
    first = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=headers)
    again = client.post(f"/orders/{order_id}/payment", json={"code": "54321"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    unkeyed = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    assert unkeyed.status_code == 409 and unkeyed.json()["error"] == "payment_in_progress"


def test_refusals_are_replayed_too(make_client: Callable[..., Any]) -> None:
    """A keyed request the service refused (409 seats taken) replays that refusal, even once the seat is free."""
    client = make_client()
    holder, holder_token = new_order(client)
    assert hold(client, holder, holder_token, ["3A"]).status_code == 200
    order_id, token = new_order(client)
    headers = {**auth(token), **key("hold-3a")}
    refused = client.post(f"/orders/{order_id}/seats", json={"seats": ["3A"]}, headers=headers)
    assert refused.status_code == 409 and refused.json()["error"] == "seats_unavailable"
    assert client.delete(f"/orders/{holder}", headers=auth(holder_token)).status_code == 200
    again = client.post(f"/orders/{order_id}/seats", json={"seats": ["3A"]}, headers=headers)
    assert again.status_code == 409 and again.json() == refused.json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_rate_limited_keyed_request_is_not_kept(make_client: Callable[..., Any]) -> None:
    """A 429 is not the key's answer: once the bucket refills, the same key runs."""
    client = make_client(rate_limit_writes="1/1")
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 201
    assert client.post("/orders", json={"flightId": "FL-001"}, headers=key("k-429")).status_code == 429
    time.sleep(1.05)
    assert client.post("/orders", json={"flightId": "FL-001"}, headers=key("k-429")).status_code == 201


def test_key_in_flight_is_409_with_retry_after(make_client: Callable[..., Any], redis_url: str) -> None:
    """While the first request with a key runs (its claim is pending), the same key answers 409 + Retry-After."""
    client = make_client()
    order_id, token = new_order(client)
    fingerprint = idempotency.fingerprint(None)
    pending = idempotency.keyed_request("FL-001", str(Subject("address", "testclient")), "DELETE",
                                        f"/orders/{order_id}", "k-running", fingerprint, 200)
    redis.Redis.from_url(redis_url).set(pending.record_key, idempotency.pending(pending), px=5000)
    response = client.delete(f"/orders/{order_id}", headers={**auth(token), **key("k-running")})
    assert response.status_code == 409 and response.json()["error"] == "idempotency_in_progress"
    assert response.headers["Retry-After"] == "1"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "PENDING"


async def test_concurrent_requests_with_one_key_run_once(live_server: Callable[..., LiveServer],
                                                         redis_url: str) -> None:
    """20 concurrent POST /orders with one key: one order; every answer is it (replayed) or 409 in progress."""
    server = live_server()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        responses = await asyncio.gather(*(
            http.post("/orders", json={"flightId": "FL-001"}, headers=key("concurrent")) for _ in range(20)
        ))
    created = [r.json() for r in responses if r.status_code == 201]
    in_progress = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_progress) == 20, [r.status_code for r in responses]
    assert created and all(body == created[0] for body in created)
    assert all(r.json()["error"] == "idempotency_in_progress" for r in in_progress)
    assert len(list(redis.Redis.from_url(redis_url).scan_iter("seats:{FL-001}:order:*"))) == 1


def test_lost_reply_is_replayed_not_run_again(make_client: Callable[..., Any]) -> None:
    """A write whose script ran but whose answer never reached the client replays on retry with the same key."""
    client = make_client()
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["4A"]).status_code == 200
    services = client.app.state.services
    from service.orders import Caller

    caller = Caller(Subject("address", "testclient"), "lost-reply", idempotency.fingerprint(None))
    # The cancel runs to completion in Redis; pretend its HTTP answer was lost on the way.
    written = client.blocking_portal.call(services.orders.cancel, order_id, token, caller)
    assert written.order.state == "CANCELLED"
    retried = client.delete(f"/orders/{order_id}", headers={**auth(token), **key("lost-reply")})
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["state"] == "CANCELLED" and retried.json()["version"] == written.order.version


def test_keys_are_scoped_to_the_subject(make_client: Callable[..., Any]) -> None:
    """Two buyers using the same key value get their own orders."""
    client = make_client(buyer_secret=SECRET)
    a = client.post("/orders", json={"flightId": "FL-001"}, headers={**buyer("alice"), **key("shared")})
    b = client.post("/orders", json={"flightId": "FL-001"}, headers={**buyer("bob"), **key("shared")})
    assert a.status_code == b.status_code == 201
    assert a.json()["orderId"] != b.json()["orderId"] and "Idempotent-Replayed" not in b.headers


@pytest.mark.parametrize("value", ["x" * 256, "", "naïve", "has space", "tab\there"])
def test_malformed_keys_are_422(make_client: Callable[..., Any], redis_url: str, value: str) -> None:
    """An Idempotency-Key that is not 1-255 visible ASCII characters is 422 validation_failed; nothing runs."""
    client = make_client()
    before = dump(redis_url)
    response = client.post("/orders", json={"flightId": "FL-001"},
                           headers={"Idempotency-Key": value.encode("utf-8")})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert response.json()["details"]["field"] == "Idempotency-Key"
    assert value not in response.text or value == ""
    assert dump(redis_url) == before


def test_script_replays_when_a_lapsed_claim_let_a_second_run_start(make_client: Callable[..., Any]) -> None:
    """Two runs of one keyed write that both got past the claim (its lease lapsed): the second replays."""
    client = make_client()
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["5A"]).status_code == 200
    services = client.app.state.services
    from service.orders import hash_token

    keyed = idempotency.keyed_request("FL-001", "a:testclient", "DELETE", f"/orders/{order_id}", "k-lapsed",
                                      idempotency.fingerprint(None), 200)
    scripts = services.orders._scripts

    def cancel() -> Any:
        return client.blocking_portal.call(functools.partial(
            scripts.run, "cancel_order", "FL-001", order_id, hash_token(token), controls="0|1000|0|0|60000",
            keyed=keyed))

    first, second = cancel(), cancel()
    assert first.status == "OK" and first.order.state == "CANCELLED"
    assert second.status == "REPLAY" and second.record is not None and second.record.s == 200
    assert second.record.o is not None and "CANCELLED" in second.record.o
