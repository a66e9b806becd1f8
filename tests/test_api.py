"""The HTTP API against a real redis-server: contract, ownership and bad input."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import run_worker_burst, standalone_only
from tests.helpers import auth, hold, new_order, seat_statuses

pytestmark = pytest.mark.both_planes


def test_catalogue_lists_default_flight(client: Any) -> None:
    """GET /flights lists FL-001 with its 5 x A-F layout."""
    flights = client.get("/flights").json()
    assert {"flightId": "FL-001", "rows": 5, "columns": "ABCDEF", "capacity": 30} in flights
    assert client.get("/flights/FL-001").json()["capacity"] == 30
    assert client.get("/flights/NOPE").json()["error"] == "flight_not_found"


def test_order_lifecycle_hold_swap_pay_confirm(make_client: Any, make_settings: Any) -> None:
    """An order holds seats, swaps them atomically, pays and ends CONFIRMED with its seats sold."""
    client = make_client()
    order_id, token = new_order(client)
    order = hold(client, order_id, token, ["1A", "1B"]).json()
    assert order["state"] == "SEATS_SELECTED" and order["seats"] == ["1A", "1B"]
    swapped = hold(client, order_id, token, ["1B", "1C"]).json()
    assert swapped["seats"] == ["1B", "1C"]
    assert swapped["holdExpiresAt"] >= order["holdExpiresAt"]
    statuses = seat_statuses(client)
    assert statuses["1A"] == "available" and statuses["1B"] == statuses["1C"] == "held"

    paying = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    assert paying.status_code == 202
    assert paying.json()["state"] == "PAYING" and paying.json()["paymentStatus"] == "trying"
    run_worker_burst(make_settings())

    final = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert final["state"] == "CONFIRMED" and final["paymentStatus"] == "success"
    assert final["confirmationId"] and final["attemptsLeft"] == 3
    statuses = seat_statuses(client)
    assert statuses["1B"] == statuses["1C"] == "confirmed"
    assert client.get(f"/orders/{order_id}/status", headers=auth(token)).json()["state"] == "CONFIRMED"


def test_payment_failure_immediate_release(make_client: Any, make_settings: Any) -> None:
    """With SEATS_RELEASE_ON_FAILURE=immediate a FAILED order's seats go back on sale at once."""
    client = make_client(payment_failure_rate=1.0, release_on_failure="immediate")
    order_id, token = new_order(client)
    hold(client, order_id, token, ["2B"])
    client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    run_worker_burst(make_settings(payment_failure_rate=1.0, release_on_failure="immediate"))
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "FAILED"
    assert seat_statuses(client)["2B"] == "available"


def test_conflict_reports_taken_seats_and_changes_nothing(client: Any) -> None:
    """A hold that hits a taken seat answers 409 with the conflicts and leaves both orders as they were."""
    a_id, a_token = new_order(client)
    b_id, b_token = new_order(client)
    hold(client, a_id, a_token, ["3A"])
    before = hold(client, b_id, b_token, ["3C"]).json()
    refused = hold(client, b_id, b_token, ["3A", "3B"])
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "seats_unavailable"
    assert body["details"]["conflicts"] == [{"seat": "3A", "status": "held"}]
    after = client.get(f"/orders/{b_id}", headers=auth(b_token)).json()
    assert after["seats"] == ["3C"] and after["version"] == before["version"]
    assert seat_statuses(client)["3B"] == "available"


def test_cancel_releases_seats(client: Any) -> None:
    """DELETE cancels the order and its seats are available at once; further changes are 409."""
    order_id, token = new_order(client)
    hold(client, order_id, token, ["4A", "4B"])
    cancelled = client.delete(f"/orders/{order_id}", headers=auth(token))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    statuses = seat_statuses(client)
    assert statuses["4A"] == statuses["4B"] == "available"
    assert hold(client, order_id, token, ["4A"]).json()["error"] == "order_closed"


def test_seat_map_etag_and_mine(client: Any) -> None:
    """The seat map sends a quoted ETag, answers 304 to it, and marks only the token holder's seats."""
    order_id, token = new_order(client)
    first = client.get("/flights/FL-001/seats")
    etag = first.headers["etag"]
    assert etag == f'"{first.json()["hash"]}"'
    for candidate in (etag, f"W/{etag}", "*"):
        assert client.get("/flights/FL-001/seats", headers={"If-None-Match": candidate}).status_code == 304
    hold(client, order_id, token, ["5F"])
    changed = client.get("/flights/FL-001/seats", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    mine = client.get(f"/flights/FL-001/seats?orderId={order_id}&token={token}").json()["seats"]["5F"]
    assert mine["mine"] is True and mine["status"] == "held" and mine["expiresAt"].endswith("Z")
    wrong = client.get(f"/flights/FL-001/seats?orderId={order_id}&token=wrong").json()["seats"]["5F"]
    assert "mine" not in wrong
    version = client.get("/flights/FL-001/seats/version").json()
    assert version["hash"] == changed.json()["hash"] and version["version"] == changed.json()["version"]
    summary = client.get("/flights/FL-001/available-seats").json()
    assert summary["held"] == ["5F"] and summary["total"] == 30 and len(summary["available"]) == 29


def test_hold_expires_at_matches_order_deadline(client: Any) -> None:
    """A held seat's expiresAt is the same instant as its order's holdExpiresAt."""
    order_id, token = new_order(client)
    order = hold(client, order_id, token, ["1D"]).json()
    seats = client.get("/flights/FL-001/seats").json()["seats"]
    assert seats["1D"]["expiresAt"] == order["holdExpiresAt"]


def test_order_ids_and_legacy_fields(client: Any) -> None:
    """POST /orders accepts orderId and the first version's flightID/orderID; a taken id is 409."""
    created = client.post("/orders", json={"flightID": "FL-001", "orderID": "legacy-1"})
    assert created.status_code == 201 and created.json()["orderId"] == "legacy-1"
    again = client.post("/orders", json={"flightId": "FL-001", "orderId": "legacy-1"})
    assert again.status_code == 409 and again.json()["error"] == "order_exists"


def test_admin_put_flight(client: Any) -> None:
    """PUT /flights needs the admin token; creates (201), replaces (200), refuses when seats are held (409)."""
    body = {"rows": 60, "columns": "ABCDEF"}
    assert client.put("/flights/BIG-1", json=body).status_code == 401
    assert client.put("/flights/BIG-1", json=body, headers=auth("nope")).status_code == 403
    created = client.put("/flights/BIG-1", json=body, headers=auth("admin-secret"))
    assert created.status_code == 201 and created.json()["capacity"] == 360
    replaced = client.put("/flights/BIG-1", json={"rows": 10, "columns": "ABC"}, headers=auth("admin-secret"))
    assert replaced.status_code == 200 and replaced.json()["capacity"] == 30
    order_id, token = new_order(client, "BIG-1")
    assert hold(client, order_id, token, ["10C"]).status_code == 200
    in_use = client.put("/flights/BIG-1", json=body, headers=auth("admin-secret"))
    assert in_use.status_code == 409 and in_use.json()["error"] == "flight_in_use"
    # "BIG-1\n" would be a second set of keys for the same flight name: refused, nothing created
    newline = client.put("/flights/BIG-1%0A", json=body, headers=auth("admin-secret"))
    assert newline.status_code == 404 and newline.json()["error"] == "flight_not_found"
    assert [f["flightId"] for f in client.get("/flights").json()].count("BIG-1") == 1


def test_large_flight_map(client: Any) -> None:
    """A 50,000-seat flight serves its full map and holds seats anywhere in it."""
    created = client.put("/flights/ARENA", json={"rows": 5000, "columns": "ABCDEFGHIJ"}, headers=auth("admin-secret"))
    assert created.json()["capacity"] == 50_000
    order_id, token = new_order(client, "ARENA")
    assert hold(client, order_id, token, ["4999J", "1A"]).status_code == 200
    seats = client.get("/flights/ARENA/seats").json()["seats"]
    assert len(seats) == 50_000 and seats["4999J"]["status"] == "held"


@pytest.fixture
def held_order(client: Any) -> tuple[str, str, int]:
    """An order holding 1A; returns (id, token, version)."""
    order_id, token = new_order(client)
    order = hold(client, order_id, token, ["1A"]).json()
    return order_id, token, order["version"]


BAD_SEAT_BODIES = [
    (b"{not json", 400, "invalid_request"),
    (b'{"seats": "1A"}', 400, "invalid_request"),
    (b'{"seats": [1, 2]}', 400, "invalid_request"),
    (b'{"seats": ["1A"], "extra": 1}', 400, "invalid_request"),
    (b"{}", 400, "invalid_request"),
    (b'{"seats": []}', 422, "validation_failed"),
    (b'{"seats": ["1a"]}', 422, "validation_failed"),
    # Look-alikes of 1A would be other Redis keys, i.e. the same seat sold twice: a trailing newline
    # (which `$` in a regex lets through), spaces, a leading zero, non-ASCII digits and letters.
    (b'{"seats": ["1A\\n"]}', 422, "validation_failed"),
    (b'{"seats": ["1A "]}', 422, "validation_failed"),
    (b'{"seats": [" 1A"]}', 422, "validation_failed"),
    (b'{"seats": ["01A"]}', 422, "validation_failed"),
    ('{"seats": ["\u0661A"]}'.encode(), 422, "validation_failed"),
    ('{"seats": ["1\uff21"]}'.encode(), 422, "validation_failed"),
    (b'{"seats": ["' + b"9" * 5000 + b'A"]}', 422, "validation_failed"),
    (b'{"seats": ["9Z"]}', 422, "validation_failed"),
    (b'{"seats": ["6A"]}', 422, "validation_failed"),
    (b'{"seats": ["1B", "1B"]}', 422, "validation_failed"),
    (b'{"seats": ["1A","1B","1C","1D","1E","1F","2A","2B","2C","2D","2E"]}', 422, "validation_failed"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_SEAT_BODIES)
def test_bad_selection_is_refused_without_change(
    client: Any, held_order: tuple[str, str, int], body: bytes, status: int, code: str
) -> None:
    """Bad selections answer the documented 4xx with a JSON body and leave the order's version unchanged."""
    order_id, token, version = held_order
    response = client.post(f"/orders/{order_id}/seats", content=body,
                           headers={**auth(token), "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"]
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["version"] == version


BAD_CODES = ["1234", "123456", "12345\n", "١٢٣٤٥", "１２３４５", "12a45", " 1234", ""]


@pytest.mark.parametrize("code", BAD_CODES)
def test_bad_payment_code_is_422_and_costs_nothing(client: Any, held_order: tuple[str, str, int], code: str) -> None:
    """A code that is not exactly five ASCII digits is 422 and changes nothing."""
    order_id, token, version = held_order
    response = client.post(f"/orders/{order_id}/payment", json={"code": code}, headers=auth(token))
    assert response.status_code == 422 and response.json()["details"]["field"] == "code"
    order = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert order["version"] == version and order["state"] == "SEATS_SELECTED" and order["attemptsLeft"] == 3


def test_payment_code_wrong_type_is_400(client: Any, held_order: tuple[str, str, int]) -> None:
    """A numeric code is a wrong JSON type: 400."""
    order_id, token, _ = held_order
    response = client.post(f"/orders/{order_id}/payment", json={"code": 12345}, headers=auth(token))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_tokens_missing_wrong_and_unknown(client: Any, held_order: tuple[str, str, int]) -> None:
    """No token is 401; a wrong token is 404 exactly like an unknown order, on every order endpoint."""
    order_id, token, version = held_order
    calls = [
        ("GET", f"/orders/{order_id}", None),
        ("POST", f"/orders/{order_id}/seats", {"seats": ["2C"]}),
        ("POST", f"/orders/{order_id}/payment", {"code": "12345"}),
        ("DELETE", f"/orders/{order_id}", None),
    ]
    for method, path, body in calls:
        assert client.request(method, path, json=body).status_code == 401
        wrong = client.request(method, path, json=body, headers=auth("not-the-token"))
        unknown = client.request(method, path.replace(order_id, "no-such-order"), json=body, headers=auth(token))
        assert wrong.status_code == unknown.status_code == 404
        assert wrong.json()["error"] == unknown.json()["error"] == "order_not_found"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["version"] == version


def test_body_limit_is_413(client: Any, held_order: tuple[str, str, int]) -> None:
    """A body over the limit answers 413 in the JSON error shape."""
    order_id, token, _ = held_order
    response = client.post(f"/orders/{order_id}/seats", content=b"[" + b"1," * 100_000 + b"1]",
                           headers={**auth(token), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_paying_blocks_changes(client: Any, held_order: tuple[str, str, int]) -> None:
    """While PAYING, a second payment, a seat change and a cancel are all 409 payment_in_progress."""
    order_id, token, _ = held_order
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 202
    for response in (
        client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)),
        hold(client, order_id, token, ["2D"]),
        client.delete(f"/orders/{order_id}", headers=auth(token)),
    ):
        assert response.status_code == 409 and response.json()["error"] == "payment_in_progress"


def test_pay_without_seats_is_409(client: Any) -> None:
    """Paying an order that holds nothing is 409 no_seats_held."""
    order_id, token = new_order(client)
    response = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    assert response.status_code == 409 and response.json()["error"] == "no_seats_held"


def test_redis_down_is_503(make_client: Any, redis_server: Any, plane: str) -> None:
    """With Redis unreachable the API answers 503 store_unavailable, never a guessed map."""
    standalone_only(plane, "stops the redis-server")
    client = make_client()
    redis_server.stop()
    try:
        for response in (client.get("/flights/FL-001/seats"), client.post("/orders", json={"flightId": "FL-001"}),
                         client.get("/readyz")):
            assert response.status_code == 503, response.text
        assert client.get("/flights/FL-001/seats").json()["error"] == "store_unavailable"
    finally:
        redis_server.start()


def test_openapi_and_health(client: Any) -> None:
    """The OpenAPI document is served and health endpoints answer."""
    schema = client.get("/schema/openapi.json").json()
    assert "/orders/{order_id}/seats" in schema["paths"]
    for path, item in schema["paths"].items():  # service.api.request_id answers it on every response
        for method, operation in item.items():
            assert any(p["name"] == "X-Request-Id" for p in operation.get("parameters", [])), (method, path)
            for status, response in operation["responses"].items():
                assert "X-Request-Id" in response.get("headers", {}), (method, path, status)
    docs = client.get("/schema")
    assert docs.status_code == 200 and "/orders/{order_id}/seats" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN: works on a closed network
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ok"] == ["redis", "queue", "scripts", "subscription", "maxmemory-policy"]


def test_readyz_reloads_flushed_scripts(client: Any, data_redis: Any) -> None:
    """After SCRIPT FLUSH (as after a Redis restart; every primary) scripts are reloaded on NOSCRIPT and holds work."""
    data_redis.script_flush()
    assert client.get("/readyz").status_code == 200
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["2F"]).status_code == 200


def test_configured_flight_survives_redis_data_loss(client: Any, data_redis: Any) -> None:
    """After Redis loses its data (a restart without AOF), FL-001 is recreated on first use instead of 404."""
    data_redis.flushall()
    assert client.get("/flights/FL-001/seats").status_code == 200
    assert any(f["flightId"] == "FL-001" for f in client.get("/flights").json())
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["1A"]).status_code == 200


def test_refresh_is_capped_by_max_hold(make_client: Any) -> None:
    """A swap refreshes the hold, but never past SEATS_MAX_HOLD_SECONDS from the first hold."""
    client = make_client(hold_seconds=1.0, max_hold_seconds=1.5)
    order_id, token = new_order(client)
    first = hold(client, order_id, token, ["2E"]).json()
    time.sleep(0.8)
    refreshed = hold(client, order_id, token, ["2E", "2F"]).json()
    first_deadline = datetime.fromisoformat(first["holdExpiresAt"])
    capped = datetime.fromisoformat(refreshed["holdExpiresAt"])
    # first hold + 1.5 s, not refresh time + 1 s (which would be first + ~1.8 s)
    assert 0.45 <= (capped - first_deadline).total_seconds() <= 0.55
