"""End to end: redis-server, ``seats api`` and ``seats worker`` as real processes, as a user runs them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import redis

from service.store import keys
from tests.conftest import Processes, RedisServer, free_port

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Api:
    """A tiny client for one running API."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=5)

    def create(self) -> tuple[str, str]:
        body = self.http.post("/orders", json={"flightId": "FL-001"}).json()
        return body["orderId"], body["token"]

    def order(self, order_id: str, token: str) -> dict[str, Any]:
        response = self.http.get(f"/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def hold(self, order_id: str, token: str, seats: list[str]) -> httpx.Response:
        return self.http.post(f"/orders/{order_id}/seats", json={"seats": seats},
                              headers={"Authorization": f"Bearer {token}"})

    def pay(self, order_id: str, token: str) -> httpx.Response:
        return self.http.post(f"/orders/{order_id}/payment", json={"code": "12345"},
                              headers={"Authorization": f"Bearer {token}"})

    def wait_state(self, order_id: str, token: str, state: str, timeout: float) -> dict[str, Any]:
        return wait_for(lambda: (o := self.order(order_id, token))["state"] == state and o, timeout,
                        f"order {order_id} to be {state}")

    def statuses(self) -> dict[str, str]:
        seats = self.http.get("/flights/FL-001/seats").json()["seats"]
        return {seat: view["status"] for seat, view in seats.items()}


def kill_group(process: Any) -> None:
    """SIGKILL a process group: the worker dies mid-job, like a crashed container."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_e2e_full_flow(processes: Processes) -> None:
    """Create, hold, swap, pay and confirm through real processes; the seat map follows each step,
    and the worker's own /metrics (SEATS_WORKER_METRICS_PORT) counts the confirmation."""
    api = Api(processes.api())
    metrics_port = free_port()
    processes.worker(env={"SEATS_WORKER_METRICS_PORT": str(metrics_port)})
    order_id, token = api.create()
    assert api.hold(order_id, token, ["1A", "1B"]).status_code == 200
    assert api.hold(order_id, token, ["1B", "1C"]).status_code == 200
    assert api.statuses()["1A"] == "available"
    assert api.pay(order_id, token).status_code == 202
    final = api.wait_state(order_id, token, "CONFIRMED", 15)
    assert final["paymentStatus"] == "success" and final["confirmationId"]
    statuses = api.statuses()
    assert statuses["1B"] == statuses["1C"] == "confirmed"
    worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert "seats_confirmations_total 1.0" in worker_metrics, worker_metrics[-2000:]
    assert 'seats_payment_attempts_total{outcome="success"} 1.0' in worker_metrics


def test_e2e_worker_killed_mid_payment(processes: Processes, redis_url: str) -> None:
    """A worker killed mid-attempt: the job re-runs on a new worker; charged once, confirmed once, no attempt lost."""
    env = {"SEATS_PAYMENT_LATENCY_SECONDS": "1.5", "SEATS_PAYMENT_TIMEOUT_SECONDS": "2", "SEATS_PAYMENT_ATTEMPTS": "1"}
    api = Api(processes.api(env))
    worker = processes.worker(env)
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    order_id, token = api.create()
    api.hold(order_id, token, ["2A", "2B"])
    assert api.pay(order_id, token).status_code == 202
    wait_for(lambda: data.keys("arq:in-progress:*"), 10, "the worker to start the job")
    time.sleep(0.3)
    kill_group(worker)
    assert api.order(order_id, token)["state"] == "PAYING"
    assert int(data.hget(keys.GATEWAY_BOOKS, "charged") or 0) == 0
    processes.worker(env)
    final = api.wait_state(order_id, token, "CONFIRMED", 40)
    assert final["attemptsLeft"] == 1
    assert int(data.hget(keys.GATEWAY_BOOKS, "charged") or 0) == 1
    assert api.statuses()["2A"] == "confirmed"


def test_e2e_redis_restart_worker_recovers(processes: Processes, persistent_redis: RedisServer) -> None:
    """After a Redis restart the API answers 503 while it is down, then both API and worker carry on by themselves."""
    env = {"SEATS_REDIS_URL": persistent_redis.url}
    api = Api(processes.api(env))
    processes.worker(env)
    order_id, token = api.create()
    api.hold(order_id, token, ["3A"])
    api.pay(order_id, token)
    api.wait_state(order_id, token, "CONFIRMED", 15)

    persistent_redis.stop()
    assert api.http.get("/flights/FL-001/seats").status_code == 503
    assert api.http.get("/readyz").status_code == 503
    time.sleep(1.5)  # long enough for the arq worker to notice and exit
    persistent_redis.start()

    wait_for(lambda: api.http.get("/readyz").status_code == 200, 15, "the API to be ready again")
    second_id, second_token = api.create()
    assert api.hold(second_id, second_token, ["3B"]).status_code == 200
    assert api.pay(second_id, second_token).status_code == 202
    api.wait_state(second_id, second_token, "CONFIRMED", 40)
    assert api.statuses()["3A"] == "confirmed"  # AOF kept the first sale
    assert "restarting" in processes.output(), "the supervisor should have restarted the arq worker"
