"""Operators' actions (spec §13) against a real redis-server: release, extend, block and unblock, each one
atomic script, each recorded in the history with cause admin and its reason; and every refusal, which
changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from litestar.testing import TestClient

from service.expiry import sweep_once
from service.store import keys
from service.wiring import open_worker
from tests.conftest import run_worker_burst
from tests.helpers import auth, hold, new_order, seat_statuses

ADMIN = {"Authorization": "Bearer admin-secret"}


pytestmark = pytest.mark.both_planes


def admin_post(client: TestClient[Any], path: str, body: Any) -> Any:
    """POST an admin action with the admin token."""
    return client.post(path, json=body, headers=ADMIN)


def ms(iso: str) -> int:
    """Epoch ms of an RFC 3339 timestamp."""
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def version(client: TestClient[Any]) -> int:
    """The flight's current version."""
    body: dict[str, Any] = client.get("/flights/FL-001/seats/version").json()
    return int(body["version"])


def last_entries(client: TestClient[Any], order_id: str, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` entries of an order's history."""
    response = client.get(f"/admin/orders/{order_id}/history", headers=ADMIN, params={"limit": count})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def test_release_cancels_the_order_frees_its_seats_and_records_the_reason(client: TestClient[Any]) -> None:
    """Releasing a holding order makes it CANCELLED, its seats available on the map at once (one new flight
    version), each release an entry with cause admin and the reason; a PENDING order is cancelled with one
    order entry (no seat)."""
    order_id, token = new_order(client)
    hold(client, order_id, token, ["1A", "1B"])
    before = version(client)
    released = admin_post(client, f"/admin/orders/{order_id}/release", {"reason": "suspected scalper"})
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "CANCELLED"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "CANCELLED"
    statuses = seat_statuses(client)
    assert statuses["1A"] == statuses["1B"] == "available" and version(client) == before + 1
    assert [(e["seat"], e["from"], e["to"], e["cause"], e["reason"]) for e in last_entries(client, order_id, 2)] == [
        ("1B", "held", "available", "admin", "suspected scalper"),
        ("1A", "held", "available", "admin", "suspected scalper")]

    pending, _ = new_order(client)
    assert admin_post(client, f"/admin/orders/{pending}/release", {"reason": "idle"}).json()["state"] == "CANCELLED"
    [entry] = last_entries(client, pending, 5)
    assert (entry["seat"], entry["from"], entry["to"], entry["cause"], entry["reason"]) == (
        None, None, None, "admin", "idle")


def test_release_of_a_paying_order_refunds_what_it_was_charged(make_client: Callable[..., Any],
                                                               make_settings: Callable[..., Any]) -> None:
    """A PAYING order released by an operator is CANCELLED and owes a settlement (paymentStatus refunding):
    the sweeper settles it and the worker's payment job confirms nothing; charged - refunded stays 0."""
    client = make_client()
    order_id, token = new_order(client)
    hold(client, order_id, token, ["3A"])
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 202
    released = admin_post(client, f"/admin/orders/{order_id}/release", {"reason": "chargeback risk"}).json()
    assert (released["state"], released["paymentStatus"]) == ("CANCELLED", "refunding")
    run_worker_burst(make_settings())  # the payment job finds the order no longer PAYING
    asyncio.run(_sweep(make_settings()))
    order = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert order["state"] == "CANCELLED" and order["paymentStatus"] in ("failed", "refunded")
    books = client.get("/admin/payments/summary", headers=ADMIN).json()
    assert books["charged"] == books["refunded"]
    assert seat_statuses(client)["3A"] == "available"


async def _sweep(settings: Any) -> None:
    """One expiry sweep that settles what is owed, as the worker's sweeper runs it."""
    worker = await open_worker(settings, sweep=False)
    try:
        await sweep_once(worker.order_scripts, worker.settle)
    finally:
        await worker.close()


def test_release_of_a_failed_order_frees_the_seats_it_kept(make_client: Callable[..., Any],
                                                          make_settings: Callable[..., Any]) -> None:
    """A FAILED order keeps its seats until its deadline (deadline mode); a release frees them now and the
    order stays FAILED; a second release has nothing left to release (409 order_closed)."""
    settings = {"payment_failure_rate": 1.0, "payment_attempts": 1}
    client = make_client(**settings)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["3B"])
    client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    run_worker_burst(make_settings(**settings))
    assert seat_statuses(client)["3B"] == "held"
    released = admin_post(client, f"/admin/orders/{order_id}/release", {"reason": "free it for the queue"})
    assert released.status_code == 200 and released.json()["state"] == "FAILED"
    assert seat_statuses(client)["3B"] == "available"
    again = admin_post(client, f"/admin/orders/{order_id}/release", {"reason": "twice"})
    assert (again.status_code, again.json()["error"]) == (409, "order_closed")


def test_release_refusals_change_nothing(make_client: Callable[..., Any], make_settings: Callable[..., Any]) -> None:
    """A CONFIRMED or CANCELLED order cannot be released (409 order_closed), an unknown one is 404, a lapsed
    one answers 409 with state EXPIRED (it is expired, as every action sees it); none moves the flight
    version except the expiry itself."""
    client = make_client(hold_seconds=0.3)
    sold, sold_token = new_order(client)
    hold(client, sold, sold_token, ["4A"])
    client.post(f"/orders/{sold}/payment", json={"code": "12345"}, headers=auth(sold_token))
    run_worker_burst(make_settings(hold_seconds=0.3))
    before = version(client)
    for order_id, error in ((sold, "order_closed"), ("no-such-order", "order_not_found")):
        response = admin_post(client, f"/admin/orders/{order_id}/release", {"reason": "try"})
        assert response.json()["error"] == error
    assert version(client) == before and seat_statuses(client)["4A"] == "confirmed"

    lapsed, lapsed_token = new_order(client)
    hold(client, lapsed, lapsed_token, ["4B"])
    time.sleep(0.5)
    response = admin_post(client, f"/admin/orders/{lapsed}/release", {"reason": "late"})
    assert (response.status_code, response.json()["details"]["state"]) == (409, "EXPIRED")
    assert client.get(f"/orders/{lapsed}", headers=auth(lapsed_token)).json()["state"] == "EXPIRED"


def test_extend_moves_every_seat_within_the_cap_unless_told_otherwise(make_client: Callable[..., Any],
                                                                     data_redis: Any) -> None:
    """Extending moves the order's deadline and every seat's (keys, map, deadline index) by N minutes, up to
    SEATS_MAX_HOLD_SECONDS after the first hold; at the cap it is 409 hold_cap_reached; beyondCap goes past
    it, and a customer's later swap neither loses the seats nor gets a deadline past the extension."""
    client = make_client(hold_seconds=600, max_hold_seconds=1200)
    order_id, token = new_order(client)
    first = hold(client, order_id, token, ["2A", "2B"]).json()
    data = data_redis

    extended = admin_post(client, f"/admin/orders/{order_id}/extend", {"reason": "phone", "minutes": 5}).json()
    assert ms(extended["holdExpiresAt"]) == ms(first["holdExpiresAt"]) + 5 * 60_000
    capped = admin_post(client, f"/admin/orders/{order_id}/extend", {"reason": "phone", "minutes": 60}).json()
    cap = ms(first["createdAt"])  # the first hold came right after creation
    assert 0 <= ms(capped["holdExpiresAt"]) - (cap + 1_200_000) < 1_000
    deadline = ms(capped["holdExpiresAt"])
    assert data.get(keys.seat("FL-001", "2B")) == f"H|{order_id}|{deadline}"
    assert data.zscore(keys.deadlines("FL-001"), order_id) == deadline
    seat_map = client.get("/flights/FL-001/seats").json()["seats"]
    assert seat_map["2A"]["expiresAt"] == capped["holdExpiresAt"]
    refused = admin_post(client, f"/admin/orders/{order_id}/extend", {"reason": "phone", "minutes": 1})
    assert (refused.status_code, refused.json()["error"]) == (409, "hold_cap_reached")

    beyond = admin_post(client, f"/admin/orders/{order_id}/extend",
                        {"reason": "VIP", "minutes": 30, "beyondCap": True}).json()
    assert ms(beyond["holdExpiresAt"]) == deadline + 30 * 60_000
    assert data.pexpiretime(keys.order_flight(order_id)) > ms(beyond["holdExpiresAt"])  # the id index lives on
    swapped = hold(client, order_id, token, ["2A"]).json()
    assert ms(swapped["updatedAt"]) < ms(swapped["holdExpiresAt"]) <= ms(beyond["holdExpiresAt"])
    causes = [(e["seat"], e["cause"], e["reason"]) for e in last_entries(client, order_id, 8)]
    assert causes[2:8] == [("2B", "admin", "VIP"), ("2A", "admin", "VIP"), ("2B", "admin", "phone"),
                           ("2A", "admin", "phone"), ("2B", "admin", "phone"), ("2A", "admin", "phone")]


def test_extend_refusals(client: TestClient[Any]) -> None:
    """A PENDING order has no hold to extend (409 no_seats_held), a cancelled one is closed (409), an unknown
    one 404; bodies are strict: a missing or blank reason, minutes out of 1..1440 or of the wrong type, an
    unknown field are 400/422; nothing changes."""
    pending, _ = new_order(client)
    cancelled, token = new_order(client)
    hold(client, cancelled, token, ["5A"])
    client.delete(f"/orders/{cancelled}", headers=auth(token))
    before = version(client)
    for order_id, body, status, error in (
        (pending, {"reason": "r", "minutes": 5}, 409, "no_seats_held"),
        (cancelled, {"reason": "r", "minutes": 5}, 409, "order_closed"),
        ("no-such-order", {"reason": "r", "minutes": 5}, 404, "order_not_found"),
        (cancelled, {"minutes": 5}, 400, "invalid_request"),
        (cancelled, {"reason": "   ", "minutes": 5}, 422, "validation_failed"),
        (cancelled, {"reason": "x" * 501, "minutes": 5}, 422, "validation_failed"),
        (cancelled, {"reason": "r", "minutes": 0}, 422, "validation_failed"),
        (cancelled, {"reason": "r", "minutes": 1441}, 422, "validation_failed"),
        (cancelled, {"reason": "r", "minutes": "5"}, 400, "invalid_request"),
        (cancelled, {"reason": "r", "minutes": 5, "beyond": True}, 400, "invalid_request"),
    ):
        response = admin_post(client, f"/admin/orders/{order_id}/extend", body)
        assert (response.status_code, response.json()["error"]) == (status, error), body
    assert version(client) == before


def test_blocked_seats_are_not_for_sale_anywhere(client: TestClient[Any]) -> None:
    """Blocking takes available seats off sale in one flight version: the map and the summary say blocked,
    the map's hash changes, a customer's hold of one is 409 seats_unavailable with status blocked and
    nothing held; blocking again changes nothing; unblocking puts them back."""
    before = client.get("/flights/FL-001/seats").json()
    blocked = admin_post(client, "/admin/flights/FL-001/seats/block", {"reason": "broken", "seats": ["1C", "1D"]})
    assert blocked.status_code == 200, blocked.text
    assert blocked.json() == {"flightId": "FL-001", "version": before["version"] + 1, "changed": ["1C", "1D"],
                              "unchanged": []}
    after = client.get("/flights/FL-001/seats").json()
    assert after["seats"]["1C"] == {"status": "blocked"} and after["hash"] != before["hash"]
    assert client.get("/flights/FL-001/available-seats").json()["blocked"] == ["1C", "1D"]

    order_id, token = new_order(client)
    refused = hold(client, order_id, token, ["1B", "1C"])
    assert refused.status_code == 409
    assert refused.json()["details"]["conflicts"] == [{"seat": "1C", "status": "blocked"}]
    assert seat_statuses(client)["1B"] == "available"

    again = admin_post(client, "/admin/flights/FL-001/seats/block", {"reason": "broken", "seats": ["1C"]}).json()
    assert (again["changed"], again["unchanged"], again["version"]) == ([], ["1C"], before["version"] + 1)
    unblocked = admin_post(client, "/admin/flights/FL-001/seats/unblock",
                           {"reason": "fixed", "seats": ["1C", "1D", "1E"]}).json()
    assert (unblocked["changed"], unblocked["unchanged"]) == (["1C", "1D"], ["1E"])
    assert hold(client, order_id, token, ["1C"]).status_code == 200
    entries = client.get("/admin/flights/FL-001/seats/1C/history", headers=ADMIN).json()["entries"]
    assert [(e["from"], e["to"], e["cause"], e["reason"], e["orderId"]) for e in entries] == [
        ("available", "held", "hold", None, order_id), ("blocked", "available", "admin", "fixed", None),
        ("available", "blocked", "admin", "broken", None)]


def test_blocking_a_held_or_sold_seat_names_the_order_and_changes_nothing(
    make_client: Callable[..., Any], make_settings: Callable[..., Any]
) -> None:
    """A block that includes a held or a sold seat is refused whole (409 seats_unavailable naming each seat's
    order and status); the free seat in the same request stays available, the version does not move."""
    client = make_client()
    holder, holder_token = new_order(client)
    hold(client, holder, holder_token, ["2C"])
    buyer, buyer_token = new_order(client)
    hold(client, buyer, buyer_token, ["2D"])
    client.post(f"/orders/{buyer}/payment", json={"code": "12345"}, headers=auth(buyer_token))
    run_worker_burst(make_settings())
    before = version(client)
    refused = admin_post(client, "/admin/flights/FL-001/seats/block", {"reason": "r", "seats": ["2C", "2D", "2E"]})
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "seats_unavailable"
    assert body["details"]["conflicts"] == [{"seat": "2C", "status": "held", "orderId": holder},
                                            {"seat": "2D", "status": "confirmed", "orderId": buyer}]
    assert holder in body["message"] and buyer in body["message"]
    assert seat_statuses(client)["2E"] == "available" and version(client) == before


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"reason": "r", "seats": []}, 422, "validation_failed"),
    ({"reason": "r", "seats": ["1A", "1A"]}, 422, "validation_failed"),
    ({"reason": "r", "seats": ["9Z"]}, 422, "validation_failed"),
    ({"reason": "r", "seats": ["1a"]}, 422, "validation_failed"),
    ({"reason": "r", "seats": ["1A"] * 1001}, 422, "validation_failed"),
    ({"reason": "", "seats": ["1A"]}, 422, "validation_failed"),
    ({"seats": ["1A"]}, 400, "invalid_request"),
    ({"reason": "r", "seats": "1A"}, 400, "invalid_request"),
    ({"reason": "r", "seats": ["1A"], "force": True}, 400, "invalid_request"),
])
def test_block_bad_bodies_are_refused(client: TestClient[Any], body: dict[str, Any], status: int, error: str) -> None:
    """Block bodies are strict and checked before anything is written (the version stays)."""
    before = version(client)
    response = admin_post(client, "/admin/flights/FL-001/seats/block", body)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert len(response.text) < 2000  # bounded echoes
    assert version(client) == before


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/admin/orders/o1/release", {"reason": "r"}),
    ("POST", "/admin/orders/o1/extend", {"reason": "r", "minutes": 1}),
    ("POST", "/admin/flights/FL-001/seats/block", {"reason": "r", "seats": ["1A"]}),
    ("POST", "/admin/flights/FL-001/seats/unblock", {"reason": "r", "seats": ["1A"]}),
    ("GET", "/admin/orders/o1", None),
    ("GET", "/admin/flights/FL-001/seats/1A/history", None),
    ("GET", "/admin/flights/FL-001/events", None),
])
def test_admin_routes_need_the_admin_token(client: TestClient[Any], method: str, path: str, body: Any) -> None:
    """No token: 401; a wrong one (an order's token included): 403; before any body is read."""
    order_id, token = new_order(client)
    for headers, status in (({}, 401), (auth("wrong"), 403), (auth(token), 403)):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == status, (path, headers)
    assert client.request(method, path, content=b"{not json", headers=auth("wrong")).status_code == 403
    assert seat_statuses(client)["1A"] == "available"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "PENDING"


def test_admin_reads_any_order_by_id(client: TestClient[Any]) -> None:
    """GET /admin/orders/{id} answers any order without its token; an unknown id is 404."""
    order_id, token = new_order(client)
    hold(client, order_id, token, ["5C"])
    assert client.get(f"/admin/orders/{order_id}", headers=ADMIN).json() == client.get(
        f"/orders/{order_id}", headers=auth(token)).json()
    assert client.get("/admin/orders/nope", headers=ADMIN).json()["error"] == "order_not_found"
