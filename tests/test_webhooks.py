"""Webhooks (spec §13, Standard Webhooks) against a real redis-server (and the local Redis Cluster), a real
``seats worker`` process and a local HTTP receiver: each terminal order state is POSTed once, signed; a
failing receiver gets the same id again; a worker that was down delivers what happened meanwhile."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
import redis
from litestar.testing import TestClient
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.settings import Settings, SettingsError, load_settings
from service.store import keys, open_store
from service.webhooks import Deliverer, relay_once, retry_delay
from tests.conftest import Processes, free_port
from tests.helpers import auth, hold, new_order

SECRET = "whsec_" + base64.b64encode(b"a test key of 24 bytes!!").decode()
FAST = {"webhook_first_retry_seconds": 0.2, "webhook_max_retry_seconds": 0.4, "webhook_relay_interval_seconds": 0.05,
        "webhook_timeout_seconds": 2.0, "sweep_interval_seconds": 0.05}


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP receiver: records every POST; fails the first ``fail_first`` of each webhook-id (with
    ``failure``: an HTTP status, or "timeout": no answer for 3 s), then answers 204."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    fail_first: int = 0
    failure: int | str = 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_type(self, event_type: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if json.loads(d.body)["type"] == event_type]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"no {what} in {timeout}s; got {[d.body for d in self.deliveries]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on a free port, in a thread of this process."""
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            rec: Receiver = state["receiver"]
            with rec.lock:
                rec.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                seen = sum(1 for d in rec.deliveries if d.headers["webhook-id"] == self.headers["webhook-id"])
            if seen <= rec.fail_first and rec.failure == "timeout":
                time.sleep(3)
            self.send_response(int(rec.failure) if seen <= rec.fail_first and rec.failure != "timeout" else 204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = rec = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The ``SEATS_*`` environment of a worker process on the same data plane, queue and webhooks as ``settings``."""
    env = {"SEATS_REDIS_URL": settings.redis_url, "SEATS_WEBHOOK_URL": str(settings.webhook_url),
           "SEATS_WEBHOOK_SECRET": SECRET, "SEATS_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
           "SEATS_QUEUE_REDIS_URL": settings.queue_url}
    env.update({f"SEATS_{name.upper()}": str(value) for name, value in FAST.items()})
    env.update(extra)
    return env


def check_documented(client: TestClient[Any], body: dict[str, Any]) -> None:
    """``body`` matches the OpenAPI document's ``webhooks`` entry for its type (the Order schema included)."""
    import jsonschema_rs  # schemathesis's validator (a test dependency)

    doc = client.get("/schema/openapi.json").json()
    schema = doc["webhooks"][body["type"]]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jsonschema_rs.validator_for({**schema, "components": doc["components"]}).validate(body)


def verified(delivery: Delivery) -> dict[str, Any]:
    """The body, verified with the Standard Webhooks library's own check (raises if the signature is wrong)."""
    body: dict[str, Any] = Webhook(SECRET).verify(delivery.body, delivery.headers)
    return body


@pytest.mark.both_planes
class TestDelivery:
    """Delivery is checked on a single Redis and on the local Redis Cluster (queue on its own Redis)."""

    def test_each_terminal_state_is_posted_once_and_signed(
            self, make_client: Callable[..., TestClient[Any]], receiver: Receiver, processes: Processes) -> None:
        """order.confirmed, order.cancelled (by the customer and by an operator's release), order.expired and
        order.failed each reach the receiver with a signature the library verifies, the body
        {type, timestamp, data: <the order>} matching the order's final state and the OpenAPI document's
        ``webhooks``."""
        client = make_client(webhook_url=receiver.url, webhook_secret=SECRET, pending_order_seconds=1.0, **FAST)
        settings: Settings = client.app.state.services.settings
        processes.worker(env=worker_env(settings))

        paid, paid_token = new_order(client)
        assert hold(client, paid, paid_token, ["1A"]).status_code == 200
        assert client.post(f"/orders/{paid}/payment", json={"code": "12345"}, headers=auth(paid_token)).status_code \
            in {200, 202}
        cancelled, cancelled_token = new_order(client)
        hold(client, cancelled, cancelled_token, ["2A"])
        assert client.delete(f"/orders/{cancelled}", headers=auth(cancelled_token)).status_code == 200
        released, released_token = new_order(client)
        hold(client, released, released_token, ["3A"])
        assert client.post(f"/admin/orders/{released}/release", json={"reason": "test"},
                           headers={"Authorization": "Bearer admin-secret"}).status_code == 200
        expired, _ = new_order(client)  # never holds a seat: expires after pending_order_seconds

        receiver.wait_for(lambda: len(receiver.deliveries) >= 4, 20, "four deliveries")
        by_order = {verified(d)["data"]["orderId"]: (d, verified(d)) for d in receiver.deliveries}
        assert {order: body["type"] for order, (_, body) in by_order.items()} == {
            paid: "order.confirmed", cancelled: "order.cancelled", released: "order.cancelled",
            expired: "order.expired"}
        tokens = {paid: paid_token, cancelled: cancelled_token, released: released_token}
        for order_id, (delivery, body) in by_order.items():
            if order_id in tokens:  # the order as its owner reads it (the expired one's token is not kept)
                assert body["data"] == client.get(f"/orders/{order_id}", headers=auth(tokens[order_id])).json()
            assert body["data"]["state"] == body["type"].removeprefix("order.").upper()
            assert delivery.headers["webhook-id"].startswith(f"msg_{order_id}_")
            assert delivery.headers["content-type"] == "application/json"
            assert set(body) == {"type", "timestamp", "data"}
            check_documented(client, body)
        assert by_order[paid][1]["data"]["confirmationId"]
        assert len(receiver.deliveries) == 4, "one event per terminal state, delivered once (2xx)"

        # order.failed: a worker whose gateway declines everything
        processes.stop_all()
        processes.started.clear()
        processes.worker(env=worker_env(settings, SEATS_PAYMENT_FAILURE_RATE="1"))
        failed, failed_token = new_order(client)
        hold(client, failed, failed_token, ["4A"])
        client.post(f"/orders/{failed}/payment", json={"code": "12345"}, headers=auth(failed_token))
        receiver.wait_for(lambda: bool(receiver.of_type("order.failed")), 20, "order.failed")
        [delivery] = receiver.of_type("order.failed")
        body = verified(delivery)
        assert body["data"]["orderId"] == failed and body["data"]["state"] == "FAILED"
        check_documented(client, body)

    @pytest.mark.parametrize(("failure", "outcome"), [(503, "server_error"), (400, "client_error"),
                                                      ("timeout", "timeout")])
    def test_a_failing_receiver_gets_the_same_id_until_it_answers_2xx(
            self, make_client: Callable[..., TestClient[Any]], receiver: Receiver, processes: Processes,
            failure: int | str, outcome: str) -> None:
        """A receiver that fails twice (a 5xx, a 4xx, or no answer within the timeout) then answers 204 sees the
        same webhook-id and body three times, each attempt signed (with its own timestamp), then no more; the
        worker's /metrics counts two failed attempts and one delivery."""
        receiver.fail_first, receiver.failure = 2, failure
        client = make_client(webhook_url=receiver.url, webhook_secret=SECRET, **FAST)
        metrics_port = free_port()
        processes.worker(env=worker_env(client.app.state.services.settings, SEATS_WEBHOOK_TIMEOUT_SECONDS="0.5",
                                        SEATS_WORKER_METRICS_PORT=str(metrics_port)))
        order_id, token = new_order(client)
        hold(client, order_id, token, ["1B"])
        client.delete(f"/orders/{order_id}", headers=auth(token))
        receiver.wait_for(lambda: len(receiver.deliveries) >= 3, 20, "three attempts")
        time.sleep(1.0)  # past two more backoffs: a 2xx ended it
        assert len(receiver.deliveries) == 3
        assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
        assert len({d.body for d in receiver.deliveries}) == 1
        for delivery in receiver.deliveries:
            assert verified(delivery)["type"] == "order.cancelled"
        exposition = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert f'seats_webhook_attempts_total{{outcome="{outcome}",type="order.cancelled"}} 2.0' in exposition
        assert 'seats_webhook_attempts_total{outcome="delivered",type="order.cancelled"} 1.0' in exposition


def test_an_event_made_while_the_worker_is_down_is_delivered_when_it_starts(
        make_client: Callable[..., TestClient[Any]], receiver: Receiver, processes: Processes,
        redis_url: str) -> None:
    """An order cancelled with no worker running waits in the flight's outbox (nothing is sent); the first
    worker to start delivers it, and the outbox is emptied once its job is queued."""
    client = make_client(webhook_url=receiver.url, webhook_secret=SECRET, **FAST)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["5A"])
    assert client.delete(f"/orders/{order_id}", headers=auth(token)).status_code == 200
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    assert data.xlen(keys.outbox("FL-001")) == 1
    time.sleep(0.5)
    assert receiver.deliveries == []
    processes.worker(env=worker_env(client.app.state.services.settings))
    receiver.wait_for(lambda: bool(receiver.deliveries), 20, "the delivery")
    body = verified(receiver.deliveries[0])
    assert (body["type"], body["data"]["orderId"]) == ("order.cancelled", order_id)
    receiver.wait_for(lambda: data.xlen(keys.outbox("FL-001")) == 0, 5, "an empty outbox")
    data.close()


def test_a_tampered_body_does_not_verify(
        make_client: Callable[..., TestClient[Any]], receiver: Receiver, processes: Processes) -> None:
    """Changing one byte of a delivered body (or its id) makes the library's verification fail."""
    client = make_client(webhook_url=receiver.url, webhook_secret=SECRET, **FAST)
    processes.worker(env=worker_env(client.app.state.services.settings))
    order_id, token = new_order(client)
    client.delete(f"/orders/{order_id}", headers=auth(token))
    receiver.wait_for(lambda: bool(receiver.deliveries), 20, "the delivery")
    delivery = receiver.deliveries[0]
    verified(delivery)
    tampered = delivery.body.replace(b"CANCELLED", b"CONFIRMED")
    assert tampered != delivery.body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(delivery.body, {**delivery.headers, "webhook-id": "msg_other"})


def test_without_webhooks_no_outbox_is_written(client: TestClient[Any], redis_url: str) -> None:
    """With SEATS_WEBHOOK_URL unset, ending an order writes no outbox entry (no cost on the path)."""
    order_id, token = new_order(client)
    hold(client, order_id, token, ["1C"])
    assert client.delete(f"/orders/{order_id}", headers=auth(token)).status_code == 200
    data = redis.Redis.from_url(redis_url)
    assert data.exists(keys.outbox("FL-001")) == 0
    data.close()


@pytest.mark.parametrize(("env", "message"), [
    ({"SEATS_WEBHOOK_URL": "http://x/h"}, "set together"),
    ({"SEATS_WEBHOOK_URL": "http://x/h", "SEATS_WEBHOOK_SECRET": "not-a-secret"}, "whsec_"),
    ({"SEATS_WEBHOOK_URL": "http://x/h", "SEATS_WEBHOOK_SECRET": "whsec_%%%"}, "whsec_"),
    ({"SEATS_WEBHOOK_URL": "http://x/h", "SEATS_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()},
     "16 bytes"),
    ({"SEATS_WEBHOOK_URL": "ftp://x/h", "SEATS_WEBHOOK_SECRET": SECRET}, "http"),
])
def test_webhook_settings_are_checked_at_start_up(env: dict[str, str], message: str) -> None:
    """A half-configured webhook, a secret that is not whsec_<base64 key> or a URL that is not http(s)
    stops start-up with a message naming the setting (never echoing the secret)."""
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(env)
    assert "not-a-secret" not in str(caught.value)


def test_retry_delays_double_with_jitter_up_to_the_cap() -> None:
    """The wait before try n+1 lies in [c/2, c] with c = first retry * 2^(n-1), capped (spec: first retry
    within 5 s, doubling, at most 1 h apart)."""
    settings = load_settings({})
    assert retry_delay(1, settings, lambda lo, hi: lo) == 2.5
    assert retry_delay(1, settings, lambda lo, hi: hi) == 5.0
    assert retry_delay(3, settings, lambda lo, hi: hi) == 20.0
    assert retry_delay(30, settings, lambda lo, hi: hi) == 3600.0
    assert retry_delay(30, settings, lambda lo, hi: lo) == 1800.0
    assert retry_delay(5000, settings, lambda lo, hi: hi) == 3600.0  # a 1 s cap reaches such tries in ~1.4 h


def test_an_event_a_dead_relay_read_but_never_queued_is_taken_over(
        make_client: Callable[..., TestClient[Any]], make_settings: Callable[..., Settings]) -> None:
    """A relay that read an entry and died before queueing it (its enqueue fails) leaves it pending in the
    group; another consumer's pass with the claim takes it over and queues it, then the outbox is empty and
    consumers with nothing pending can be forgotten."""
    client = make_client(webhook_url="http://127.0.0.1:9/hooks", webhook_secret=SECRET)
    order_id, token = new_order(client)
    client.delete(f"/orders/{order_id}", headers=auth(token))

    async def run() -> tuple[list[str], int, int]:
        store = await open_store(make_settings(webhook_url="http://127.0.0.1:9/hooks", webhook_secret=SECRET))
        queued: list[str] = []

        async def dies(webhook_id: str, event_type: str, body: str, at_ms: int) -> None:
            raise ConnectionError("the queue went away")

        async def enqueue(webhook_id: str, event_type: str, body: str, at_ms: int) -> None:
            queued.append(webhook_id)

        try:
            with pytest.raises(ConnectionError):
                await relay_once(store.outbox, dies, "dead-worker", None)
            assert await relay_once(store.outbox, enqueue, "live-worker", None) == 0  # nothing new to read
            assert await store.outbox.forget_consumers("FL-001", 0) == 0  # the dead one holds an entry: kept
            taken = await relay_once(store.outbox, enqueue, "live-worker", 0)  # claims the idle entry
            # the dead worker's consumer, now with nothing pending, is forgotten; a busy one would be kept
            assert await store.outbox.forget_consumers("FL-001", 10**9) == 0  # not idle that long
            assert await store.outbox.forget_consumers("FL-001", 0) == 2
            return queued, taken, await store.outbox.pending("FL-001")
        finally:
            await store.aclose()

    queued, taken, left = asyncio.run(run())
    assert taken == 1 and left == 0
    assert len(queued) == 1 and queued[0].startswith(f"msg_{order_id}_cancelled_")


def test_an_event_past_its_max_age_is_abandoned_unsent(receiver: Receiver, make_settings: Callable[..., Settings],
                                                       ) -> None:
    """A delivery job that runs after the event's max age sends nothing and ends (counted abandoned); a retry
    that would land past it is brought forward to just before it, and none is scheduled once none fits."""
    settings = make_settings(webhook_url=receiver.url, webhook_secret=SECRET, webhook_max_age_seconds=60.0)

    async def run() -> tuple[str, float | None, float | None, float | None]:
        deliverer = Deliverer(settings)
        try:
            now = int(time.time() * 1000)
            attempt = await deliverer.attempt("msg_old", "order.expired", "{}", now - 61_000)
            return (attempt.outcome, deliverer.retry_in(now, 30.0), deliverer.retry_in(now, 600.0),
                    deliverer.retry_in(now - 59_500, 30.0))
        finally:
            await deliverer.aclose()

    outcome, soon, capped, none = asyncio.run(run())
    assert (outcome, soon, none) == ("abandoned", 30.0, None)
    assert capped is not None and 58.0 < capped <= 59.0
    assert receiver.deliveries == []


def test_an_answer_trickled_past_the_timeout_is_a_timed_out_attempt(make_settings: Callable[..., Settings]) -> None:
    """SEATS_WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt: a receiver that sends its status line a byte at a
    time (each read well inside httpx's per-read timeout) still ends the attempt as `timeout` on time, so it is
    retried; unbounded, it would outlast arq's job timeout, and a job that times out is never retried."""
    settings = make_settings(webhook_url="http://127.0.0.1:9/hooks", webhook_secret=SECRET,
                             webhook_timeout_seconds=0.5)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        writer.close()

    async def run() -> tuple[str, float]:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        deliverer = Deliverer(msgspec.structs.replace(settings, webhook_url=f"http://127.0.0.1:{port}/hooks"))
        try:
            started = time.monotonic()
            attempt = await deliverer.attempt("msg_slow", "order.cancelled", "{}", int(time.time() * 1000))
            return attempt.outcome, time.monotonic() - started
        finally:
            await deliverer.aclose()
            server.close()

    outcome, took = asyncio.run(run())
    assert outcome == "timeout"
    assert took < 2.0  # the trickle alone takes ~4 s


def test_one_flights_broken_outbox_does_not_stop_the_others(
        make_client: Callable[..., TestClient[Any]], make_settings: Callable[..., Settings], redis_url: str) -> None:
    """A flight whose outbox the relay cannot read (here a key of another type, sorted before FL-001) is logged
    and skipped; the events of the flights after it are still queued in the same pass."""
    client = make_client(webhook_url="http://127.0.0.1:9/hooks", webhook_secret=SECRET)
    order_id, token = new_order(client)
    client.delete(f"/orders/{order_id}", headers=auth(token))
    data = redis.Redis.from_url(redis_url)
    data.sadd(keys.CATALOG, "AA-000")
    data.set(keys.outbox("AA-000"), "not a stream")
    data.close()

    async def run() -> tuple[int, list[str]]:
        store = await open_store(make_settings(webhook_url="http://127.0.0.1:9/hooks", webhook_secret=SECRET))
        queued: list[str] = []

        async def enqueue(webhook_id: str, event_type: str, body: str, at_ms: int) -> None:
            queued.append(event_type)

        try:
            return await relay_once(store.outbox, enqueue, "worker", None), queued
        finally:
            await store.aclose()

    assert asyncio.run(run()) == (1, ["order.cancelled"])
