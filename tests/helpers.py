"""Small helpers shared by the API tests."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from service.orders import Caller
from service.subjects import Subject

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
