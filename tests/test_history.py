"""Seat and order history (spec §13) against a real redis-server: every cause, written by the script
that makes the change; pages that return each entry exactly once while writes go on; retention; who may
read what."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import TestClient

from service.models import iso_ms
from service.store import keys
from tests.conftest import run_worker_burst
from tests.helpers import auth, hold, new_order

ADMIN = {"Authorization": "Bearer admin-secret"}
Entry = dict[str, Any]


pytestmark = pytest.mark.both_planes


def history(client: TestClient[Any], path: str, headers: dict[str, str] | None = None, **query: Any) -> Any:
    """GET one history page (admin token unless ``headers``); the answer must be 200."""
    response = client.get(path, headers=headers or ADMIN, params=query)
    assert response.status_code == 200, response.text
    return response.json()


def seat_entries(client: TestClient[Any], seat: str, flight: str = "FL-001") -> list[Entry]:
    """Every entry of a seat's history, newest first (one page of the maximum size)."""
    page = history(client, f"/admin/flights/{flight}/seats/{seat}/history", limit=500)
    assert page["next"] is None
    entries: list[Entry] = page["entries"]
    return entries


def order_entries(client: TestClient[Any], order_id: str) -> list[Entry]:
    """Every entry of an order's history, newest first."""
    page = history(client, f"/admin/orders/{order_id}/history", limit=500)
    assert page["next"] is None
    entries: list[Entry] = page["entries"]
    return entries


def changes(entries: list[Entry]) -> list[tuple[str | None, str | None, str | None, str]]:
    """(seat, from, to, cause) of each entry, oldest first, for comparing a history with what happened."""
    return [(e["seat"], e["from"], e["to"], e["cause"]) for e in reversed(entries)]


def test_hold_swap_pay_confirm_are_recorded_with_their_cause_version_and_time(
    make_client: Callable[..., Any], make_settings: Callable[..., Any], data_redis: Any
) -> None:
    """An order's first selection is cause hold, every later change swap (added available -> held, dropped
    held -> available, kept held -> held with the new deadline), paying payment (held -> held, extended),
    the worker's confirmation confirm (held -> confirmed); each entry carries the flight version and
    lastUpdated of the change that made it, as the change log announced it."""
    client = make_client()
    order_id, token = new_order(client)
    assert hold(client, order_id, token, ["1A", "1B"]).status_code == 200
    swapped = hold(client, order_id, token, ["1B", "1C"]).json()
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 202
    run_worker_burst(make_settings())
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "CONFIRMED"

    entries = order_entries(client, order_id)
    assert changes(entries) == [
        ("1A", "available", "held", "hold"), ("1B", "available", "held", "hold"),
        ("1A", "held", "available", "swap"), ("1B", "held", "held", "swap"), ("1C", "available", "held", "swap"),
        ("1B", "held", "held", "payment"), ("1C", "held", "held", "payment"),
        ("1B", "held", "confirmed", "confirm"), ("1C", "held", "confirmed", "confirm"),
    ]
    assert {e["orderId"] for e in entries} == {order_id} and {e["reason"] for e in entries} == {None}
    kept = next(e for e in entries if e["cause"] == "swap" and e["seat"] == "1B")
    assert kept["expiresAt"] == swapped["holdExpiresAt"]  # a refreshed deadline is an entry of its own
    assert all(e["expiresAt"] is None for e in entries if e["to"] != "held")
    log = data_redis.xrange(keys.changes("FL-001"))
    logged = {int(entry_id.split("-")[0]): json.loads(fields["d"]) for entry_id, fields in log}
    for entry in entries:  # same version, same seat change, same time as the announcement
        announced = logged[entry["version"]]
        assert announced["c"][entry["seat"]]["status"] == entry["to"]
        assert entry["at"] == iso_ms(announced["u"])
    assert seat_entries(client, "1B") == [e for e in entries if e["seat"] == "1B"]



def test_cancel_expire_and_a_failed_payment_release_are_recorded(make_client: Callable[..., Any],
                                                                  make_settings: Callable[..., Any]) -> None:
    """Cancelling releases with cause cancel; a lapsed hold is released with cause expire (held -> available,
    though the key had already lapsed); a FAILED order under SEATS_RELEASE_ON_FAILURE=immediate releases
    with cause payment."""
    client = make_client(hold_seconds=0.3)
    cancelled, cancelled_token = new_order(client)
    hold(client, cancelled, cancelled_token, ["2A"])
    assert client.delete(f"/orders/{cancelled}", headers=auth(cancelled_token)).status_code == 200
    lapsed, lapsed_token = new_order(client)
    hold(client, lapsed, lapsed_token, ["2B"])
    time.sleep(0.5)
    assert client.get(f"/orders/{lapsed}", headers=auth(lapsed_token)).json()["state"] == "EXPIRED"

    settings = {"release_on_failure": "immediate", "payment_failure_rate": 1.0, "payment_attempts": 1}
    failing = make_client(**settings)
    failed, failed_token = new_order(failing)
    hold(failing, failed, failed_token, ["2C"])
    failing.post(f"/orders/{failed}/payment", json={"code": "12345"}, headers=auth(failed_token))
    run_worker_burst(make_settings(**settings))
    assert failing.get(f"/orders/{failed}", headers=auth(failed_token)).json()["state"] == "FAILED"

    assert changes(order_entries(client, cancelled)) == [("2A", "available", "held", "hold"),
                                                         ("2A", "held", "available", "cancel")]
    assert changes(order_entries(client, lapsed)) == [("2B", "available", "held", "hold"),
                                                      ("2B", "held", "available", "expire")]
    assert changes(order_entries(client, failed)) == [("2C", "available", "held", "hold"),
                                                      ("2C", "held", "held", "payment"),
                                                      ("2C", "held", "available", "payment")]


def test_pages_return_each_entry_exactly_once_while_writes_go_on(make_client: Callable[..., Any]) -> None:
    """Paging a seat's and an order's history (limit 5 and 4) with new changes written between pages returns
    exactly the entries that existed at the first page, newest first, none twice and none skipped; the new
    ones are on a fresh first page."""
    client = make_client()
    order_id, token = new_order(client)
    selections = [["1A", "1B", "1C"], ["1A", "2B"], ["3C", "1A", "1B"], ["1A"]]

    def write(rounds: int) -> None:
        for i in range(rounds):
            assert hold(client, order_id, token, selections[i % len(selections)]).status_code == 200

    write(14)
    for path, limit in (("/admin/flights/FL-001/seats/1A/history", 5), (f"/admin/orders/{order_id}/history", 4)):
        before = history(client, path, limit=500)["entries"]
        assert len(before) > 2 * limit
        collected: list[Entry] = []
        cursor = None
        while True:
            page = history(client, path, limit=limit, **({"cursor": cursor} if cursor else {}))
            assert len(page["entries"]) <= limit
            collected += page["entries"]
            write(2)  # more entries for this seat and order while the operator pages
            cursor = page["next"]
            if cursor is None:
                break
        assert collected == before
        keys_seen = [(e["version"], e["seat"]) for e in collected]
        assert len(set(keys_seen)) == len(keys_seen)
        assert [v for v, _ in keys_seen] == sorted((v for v, _ in keys_seen), reverse=True)
        newest = history(client, path, limit=limit)["entries"]
        assert newest[0]["version"] > before[0]["version"]


def test_entries_older_than_the_retention_are_never_shown_and_streams_are_trimmed(
    make_client: Callable[..., Any], data_redis: Any
) -> None:
    """With SEATS_HISTORY_SECONDS=4: entries older than that are never shown, even before trimming removed
    them; the next write trims them (XADD MINID ~, whole nodes); a stream nobody writes to expires."""
    retention = 4
    client = make_client(history_seconds=retention)
    order_id, token = new_order(client)
    for i in range(110):
        assert hold(client, order_id, token, ["4A"] if i % 2 else ["4B"]).status_code == 200
    stream = keys.history_seat("FL-001", "4A")
    assert data_redis.xlen(stream) == 109  # every write but the first moved 4A
    assert len(seat_entries(client, "4A")) == 109  # generous: the writes take well under the retention
    time.sleep(retention * 0.6)
    assert hold(client, order_id, token, ["4A"]).status_code == 200  # (4A kept: an entry, the TTL renewed)
    time.sleep(retention * 0.6)  # the first 109 entries are now older than the retention, the last is not
    assert len(seat_entries(client, "4A")) == 1 and data_redis.xlen(stream) == 110  # hidden, not yet trimmed
    assert hold(client, order_id, token, ["4B"]).status_code == 200
    assert len(seat_entries(client, "4A")) == 2 and data_redis.xlen(stream) < 100  # old nodes trimmed
    assert 0 < data_redis.pttl(stream) <= retention * 1000
    assert 0 < data_redis.pttl(keys.history_order("FL-001", order_id)) <= retention * 1000
    time.sleep(retention + 0.2)
    assert not data_redis.exists(stream) and seat_entries(client, "4A") == []


def test_who_may_read_which_history(make_client: Callable[..., Any]) -> None:
    """No bearer: 401. Seat history: admin token only (another bearer 403). Order history: the admin token or
    the order's own token; any other bearer 404, word for word what an unknown order gets (no probing: issue
    12). Unknown flights and seats are 404; bad paging is 422/400."""
    client = make_client()
    order_id, token = new_order(client)
    other_id, other_token = new_order(client)
    hold(client, order_id, token, ["5A"])
    seat_path, order_path = "/admin/flights/FL-001/seats/5A/history", f"/admin/orders/{order_id}/history"

    assert client.get(seat_path).status_code == 401
    assert client.get(order_path).status_code == 401
    assert client.get(seat_path, headers=auth("wrong")).json()["error"] == "forbidden"
    assert client.get(seat_path, headers=auth(token)).status_code == 403  # an order's token is not an admin's
    assert history(client, order_path, auth(token)) == history(client, order_path)
    assert len(history(client, order_path, auth(token))["entries"]) == 1
    def answer(path: str, headers: dict[str, str]) -> tuple[int, str, str]:
        response = client.get(path, headers=headers)
        return response.status_code, response.json()["error"], response.json()["message"]

    unknown = answer("/admin/orders/no-such-order/history", ADMIN)
    assert unknown == (404, "order_not_found", "Order no-such-order does not exist.")
    assert answer("/admin/orders/no-such-order/history", auth(token)) == unknown
    for path, bearer in ((order_path, other_token), (order_path, "made-up"), (order_path, "wrong")):
        assert answer(path, auth(bearer)) == (404, "order_not_found", f"Order {order_id} does not exist.")
    assert answer(f"/admin/orders/{other_id}/history", auth(token))[:2] == (404, "order_not_found")

    for path, status, error in (
        ("/admin/flights/NOPE/seats/1A/history", 404, "flight_not_found"),
        ("/admin/flights/FL-001/seats/9Z/history", 404, "seat_not_found"),
        (f"{seat_path}?limit=0", 422, "validation_failed"),
        (f"{seat_path}?limit=501", 422, "validation_failed"),
        (f"{order_path}?cursor=not-a-cursor", 422, "validation_failed"),
        (f"{order_path}?cursor=1-0", 422, "validation_failed"),  # not a 'next' this API gives out
        (f"{order_path}?cursor=18446744073709551616-0:1", 422, "validation_failed"),  # past a stream id's range
        (f"{seat_path}?limit=ten", 400, "invalid_request"),
    ):
        response = client.get(path, headers=ADMIN)
        assert (response.status_code, response.json()["error"]) == (status, error), path
    for cursor in ("0-0:0", "0-0:9", "18446744073709551615-18446744073709551615:1"):  # the smallest, largest ids
        page = history(client, order_path, cursor=cursor)
        assert len(page["entries"]) == (0 if cursor.startswith("0-0") else 1) and page["next"] is None


@pytest.mark.parametrize("seat", ["1A", "5F"])
def test_history_keys_are_in_the_flights_slot(make_client: Callable[..., Any], data_redis: Any, seat: str) -> None:
    """The streams the scripts write are the ones service.store.keys names, and they carry the flight's hash tag."""
    from redis.crc import key_slot

    client = make_client()
    order_id, token = new_order(client)
    hold(client, order_id, token, [seat])
    written = set(data_redis.scan_iter("seats:*history*"))
    assert written == {keys.history_seat("FL-001", seat), keys.history_order("FL-001", order_id)}
    assert {key_slot(k.encode()) for k in written} == {key_slot(keys.flight("FL-001").encode())}
