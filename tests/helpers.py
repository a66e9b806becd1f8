"""Small helpers shared by the API tests."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from litestar.testing import TestClient

from service.orders import Caller
from service.settings import Settings
from service.subjects import Subject
from service.wiring import Domain

CALLER = Caller(Subject("address", "192.0.2.1"))  # the subject of writes that tests make on OrderStore directly


def auth(token: str) -> dict[str, str]:
    """The bearer header for an order token."""
    return {"Authorization": f"Bearer {token}"}


def new_order(client: TestClient[Any], flight_id: str = "FL-001", **extra: Any) -> tuple[str, str]:
    """Create an order; returns (order id, token)."""
    response = client.post("/orders", json={"flightId": flight_id, **extra})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["orderId"], body["token"]


def hold(client: TestClient[Any], order_id: str, token: str, seats: list[str]) -> Any:
    """POST a selection; returns the response."""
    return client.post(f"/orders/{order_id}/seats", json={"seats": seats}, headers=auth(token))


def seat_statuses(client: TestClient[Any], flight_id: str = "FL-001") -> dict[str, str]:
    """Seat id -> status from the public seat map."""
    response = client.get(f"/flights/{flight_id}/seats")
    assert response.status_code == 200, response.text
    return {seat: view["status"] for seat, view in response.json()["seats"].items()}


async def open_rig(settings: Settings, enqueue: Any = None) -> DomainRig:
    """The domain on the test's Redis, built as the service builds it (``service.wiring``)."""
    from service.wiring import open_domain

    domain = await open_domain(settings, enqueue) if enqueue is not None else await open_domain(settings)
    inspect: Any = (aioredis.RedisCluster.from_url(settings.redis_url.split(",")[0], decode_responses=True)
                    if settings.redis_cluster else aioredis.Redis.from_url(settings.redis_url, decode_responses=True))
    return DomainRig(domain, inspect)


class DomainRig:
    """``service.wiring``'s domain plus a redis-py client to look inside Redis; ``close()`` both."""

    def __init__(self, domain: Domain, redis: aioredis.Redis) -> None:
        self.domain = domain
        self.redis = redis
        self.orders = domain.orders
        self.order_scripts = domain.order_scripts
        self.flights = domain.flights
        self.scripts = domain.store.scripts

    async def close(self) -> None:
        await self.redis.aclose()
        await self.domain.close()
