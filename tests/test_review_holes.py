"""Issue 10, items 5 and 7: every action sees a lapsed order as EXPIRED, and the holes a review found,
each pinned by a test that failed on the code before the fix."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from service import errors, idempotency
from service.orders import refusal_error
from service.settings import Settings
from service.store import keys
from service.store.errors import Refusal, StaleView
from service.store.scripts import Scripts
from tests.conftest import REPO
from tests.helpers import auth, hold, new_order, open_rig, seat_statuses

ADMIN = auth("admin-secret")


def lapse(redis_url: str, order_id: str) -> None:
    """Move an order's hold deadline into the past without the sweeper seeing it (none runs here)."""
    data = redis.Redis.from_url(redis_url)
    data.hset(keys.order("FL-001", order_id), "holdExpiresAt", 1)
    data.close()


# --- item 5: every action sees EXPIRED ----------------------------------------------------------


def test_delete_of_a_lapsed_order_is_order_closed_and_expired(make_client: Callable[..., Any]) -> None:
    """DELETE of an order whose hold lapsed (not swept yet) answers 409 order_closed, and the order is
    EXPIRED from then on, exactly as GET shows it."""
    client = make_client(hold_seconds=0.3)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["1A"])
    time.sleep(0.4)
    refused = client.delete(f"/orders/{order_id}", headers=auth(token))
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "order_closed" and refused.json()["details"]["state"] == "EXPIRED"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "EXPIRED"
    assert seat_statuses(client)["1A"] == "available"


def test_hold_on_a_lapsed_paying_order_expires_it(make_client: Callable[..., Any], redis_url: str) -> None:
    """A seat change on a PAYING order whose hold lapsed (its payment window ran out) expires the order
    (409 order_closed, not payment_in_progress), which then owes a settlement of its payment."""
    client = make_client()
    order_id, token = new_order(client)
    hold(client, order_id, token, ["1B"])
    assert client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token)).status_code == 202
    lapse(redis_url, order_id)
    refused = hold(client, order_id, token, ["1C"])
    assert refused.status_code == 409 and refused.json()["error"] == "order_closed", refused.text
    order = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert (order["state"], order["paymentStatus"]) == ("EXPIRED", "refunding")
    assert seat_statuses(client)["1B"] == "available"


# --- item 7: the review's holes -------------------------------------------------------------------


def test_begin_payment_never_overwrites_a_seat_another_order_holds(make_client: Callable[..., Any],
                                                                   redis_url: str) -> None:
    """Paying for a seat that another order took meanwhile answers 409 seats_unavailable and leaves that
    order's hold untouched (begin_payment used to re-SET it as ours)."""
    client = make_client()
    order_id, token = new_order(client)
    hold(client, order_id, token, ["2A", "2B"])
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    data.set(keys.seat("FL-001", "2B"), "H|intruder|9999999999999")
    refused = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    assert refused.status_code == 409 and refused.json()["error"] == "seats_unavailable", refused.text
    assert refused.json()["details"]["conflicts"] == [{"seat": "2B", "status": "held"}]
    assert data.get(keys.seat("FL-001", "2B")) == "H|intruder|9999999999999"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "SEATS_SELECTED"
    data.close()


def test_flight_created_over_a_surviving_change_log_keeps_announcing(make_client: Callable[..., Any],
                                                                     redis_url: str) -> None:
    """A flight created while its change log survived (its hash lost) starts the log afresh: later
    changes are logged, where every XADD used to fail after the script's writes."""
    client = make_client()
    assert client.put("/flights/LOG-1", json={"rows": 2, "columns": "AB"}, headers=ADMIN).status_code == 201
    order_id, token = new_order(client, "LOG-1")
    for seats in (["1A"], ["1B"], ["2A"]):
        assert hold(client, order_id, token, seats).status_code == 200
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    data.delete(keys.flight("LOG-1"))  # the hash is lost, the stream (ids up to 3-1) is not
    assert client.put("/flights/LOG-1", json={"rows": 2, "columns": "AB"}, headers=ADMIN).status_code == 201
    other_id, other_token = new_order(client, "LOG-1")
    assert hold(client, other_id, other_token, ["2B"]).status_code == 200
    logged = data.xrange(keys.changes("LOG-1"))
    assert [entry_id for entry_id, _ in logged] == ["1-1"] and '"2B"' in logged[0][1]["d"]
    data.close()


def test_hold_script_refuses_keys_out_of_step_with_the_selection(make_settings: Callable[..., Settings]) -> None:
    """hold_seats checks that KEYS name exactly the current and wanted seats of this flight: a wanted seat
    without a key, a current seat left out, a stray key or a duplicate changes nothing (a caller's bug:
    500, not the client's)."""
    settings = make_settings()

    async def scenario() -> None:
        rig = await open_rig(settings)
        client, scripts = rig.redis, rig.scripts
        try:
            await scripts.run("put_flight", [keys.flight("KM"), keys.changes("KM"), keys.deadlines("KM")],
                              [keys.events_channel("KM"), 100, "KM", 2, "AB", 4, "ensure"])
            await scripts.run("create_order", order_keys([]), [*base_args(""), 3, 60_000, "a:x", 60_000, *NO_CONTROLS])
            assert (await hold_with(scripts, [], ["1A"], "1A"))[0] == "OK"
            for current, wanted, csv in (
                ("1A", ["1A"], "1A,1B"),   # a wanted seat without a key: it would be listed, never held
                ("1A", ["1B"], "1B"),      # the current seat left out: it would stay held, unlisted
                ("1A", ["1A", "2A"], "1A"),  # a stray key
                ("1A", ["1A", "1A"], "1A,1A"),  # a duplicate
            ):
                with pytest.raises(Refusal) as refused:
                    await hold_with(scripts, current.split(","), wanted, csv)
                assert refused.value.code == "KEYS_MISMATCH", (current, wanted, csv)
                assert refusal_error(refused.value, "o1").status_code == 500
            foreign = [keys.seat("OTHER", "1B")]
            with pytest.raises(Refusal):
                await scripts.run("hold_seats", order_keys([keys.seat("KM", "1A"), *foreign]),
                                  [*base_args("1A"), 60_000, 120_000, "1", 60_000, "1A,1B", *NO_CONTROLS])
            assert await client.get(keys.seat("KM", "1B")) is None
            assert await client.get(keys.seat("OTHER", "1B")) is None
            assert await client.hget(keys.order("KM", "o1"), "seats") == "1A"
        finally:
            await rig.close()

    asyncio.run(scenario())


NO_CONTROLS = (60_000, "", "")  # the order scripts' last three arguments: history retention (ms), no limits,
# no Idempotency-Key (lua/_lib.lua)


def order_keys(seat_keys: list[str]) -> list[str]:
    """KEYS of an order script on flight KM, order o1."""
    return [keys.flight("KM"), keys.changes("KM"), keys.deadlines("KM"), keys.order("KM", "o1"),
            keys.subject("KM", ""), keys.idempotency("KM", ""), *seat_keys]


def base_args(expected_seats: str) -> list[str | int]:
    """ARGV[1..7] of an order script on flight KM, order o1 (trusted caller)."""
    return [keys.events_channel("KM"), 100, "KM", "o1", "*", expected_seats, 60_000]


async def hold_with(scripts: Scripts, current: list[str], key_seats: list[str], csv: str) -> Any:
    """hold_seats with seat keys for ``key_seats`` and ``csv`` as the new selection."""
    return await scripts.run("hold_seats", order_keys([keys.seat("KM", s) for s in key_seats]),
                             [*base_args(",".join(current)), 60_000, 120_000, "1", 60_000, csv, *NO_CONTROLS])


def test_store_failure_after_claiming_an_order_id_frees_it(make_client: Callable[..., Any], redis_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 between claiming an order id and creating the order frees the id at once, and when Redis
    cannot even be told, the claim is a short lease (SEATS_ORDER_CLAIM_SECONDS), not a week."""
    client = make_client(order_claim_seconds=30)
    services = client.app.state.services
    real_run = services.store.scripts.run

    async def create_fails(name: str, *args: Any) -> Any:
        if name == "create_order":
            raise errors.StoreUnavailable("Redis went away")
        return await real_run(name, *args)

    monkeypatch.setattr(services.store.scripts, "run", create_fails)
    body = {"flightId": "FL-001", "orderId": "claimed-1"}
    assert client.post("/orders", json=body).status_code == 503
    async def release_fails(*_: Any) -> None:
        raise errors.StoreUnavailable("Redis went away")

    monkeypatch.setattr(services.store.reads, "release_order_id", release_fails)  # Redis cannot even be told
    assert client.post("/orders", json={"flightId": "FL-001", "orderId": "claimed-2"}).status_code == 503
    monkeypatch.undo()
    data = redis.Redis.from_url(redis_url)
    assert 0 < data.pttl(keys.order_flight("claimed-2")) <= 30_000
    data.close()
    assert client.post("/orders", json=body).status_code == 201  # the id was freed


def test_an_unknown_refusal_code_is_a_500(make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lua refusal code the service does not map is its own bug: 500 internal_error, never a 4xx."""
    client = make_client()
    order_id, token = new_order(client)

    async def new_code(*_: Any) -> Any:
        raise Refusal("BRAND_NEW", "something")

    monkeypatch.setattr(client.app.state.services.store.scripts, "run", new_code)
    response = hold(client, order_id, token, ["3A"])
    assert response.status_code == 500, response.text
    assert response.json()["error"] == "internal_error"


# --- the documented error codes ------------------------------------------------------------------


def documented_409_codes() -> set[str]:
    """The 409 codes README's "Status codes" paragraph lists."""
    readme = (REPO / "README.md").read_text()
    paragraph = readme.split("Status codes:", 1)[1].split("\n\n", 1)[0]
    listed = re.search(r"409 \(([^)]*)\)", paragraph)
    assert listed, paragraph
    return set(re.findall(r"`([a-z_]+)`", listed.group(1)))


def produce_409s(client: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Make the API answer every 409 it can; returns {code the recipe is for: code it got}."""
    got: dict[str, str] = {}
    a_id, a_token = new_order(client)
    b_id, b_token = new_order(client)
    hold(client, a_id, a_token, ["4A"])
    got["seats_unavailable"] = hold(client, b_id, b_token, ["4A"]).json()["error"]
    got["no_seats_held"] = client.post(f"/orders/{b_id}/payment", json={"code": "12345"},
                                       headers=auth(b_token)).json()["error"]
    got["order_exists"] = client.post("/orders", json={"flightId": "FL-001", "orderId": a_id}).json()["error"]
    client.post(f"/orders/{a_id}/payment", json={"code": "12345"}, headers=auth(a_token))
    got["payment_in_progress"] = client.delete(f"/orders/{a_id}", headers=auth(a_token)).json()["error"]
    got["flight_in_use"] = client.put("/flights/FL-001", json={"rows": 5, "columns": "ABCDEF"},
                                      headers=ADMIN).json()["error"]
    client.delete(f"/orders/{b_id}", headers=auth(b_token))
    got["order_closed"] = hold(client, b_id, b_token, ["4B"]).json()["error"]
    c_id, c_token = new_order(client)
    # the client's subject now has 2 open orders (a paying, c): its cap, in the test's settings
    got["subject_limit_reached"] = client.post("/orders", json={"flightId": "FL-001"}).json()["error"]
    hold(client, c_id, c_token, ["4C"])
    for _ in range(2):  # an operator's extension to the hold cap, then one past it
        capped = client.post(f"/admin/orders/{c_id}/extend", json={"reason": "r", "minutes": 1440}, headers=ADMIN)
    got["hold_cap_reached"] = capped.json()["error"]
    pending = idempotency.keyed_request("FL-001", "a:testclient", "DELETE", f"/orders/{c_id}", "k",
                                        idempotency.fingerprint(None), 200)
    data = redis.Redis.from_url(client.app.state.services.settings.redis_url)
    data.set(pending.record_key, idempotency.pending(pending), px=5000)
    data.close()
    got["idempotency_in_progress"] = client.delete(f"/orders/{c_id}", headers={**auth(c_token),
                                                                               "Idempotency-Key": "k"}).json()["error"]

    async def always_stale(*_: Any) -> Any:
        raise StaleView("STALE", "")  # another writer changes the order before every retry

    monkeypatch.setattr(client.app.state.services.store.scripts, "run", always_stale)
    got["conflict"] = hold(client, c_id, c_token, ["4C"]).json()["error"]
    return got


def test_every_documented_409_is_one_the_api_answers(make_client: Callable[..., Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """README's 409 list is exactly what the API can answer: `conflict` (4 stale retries) is listed and
    `hold_limit_reached`, which no request could reach, is gone (from the docs and the code)."""
    produced = produce_409s(make_client(max_open_orders_per_subject=2), monkeypatch)
    assert {code: got for code, got in produced.items() if got != code} == {}
    assert documented_409_codes() == set(produced)
    assert "hold_limit_reached" not in Path(errors.__file__).read_text()


# --- reconciliation ----------------------------------------------------------------------------


def test_payments_summary_is_admin_only_and_reads_the_books(make_client: Callable[..., Any], redis_url: str) -> None:
    """GET /admin/payments/summary needs the admin token (401 without, 403 wrong) and answers the
    gateway's books as {"charged", "refunded"}."""
    client = make_client()
    assert client.get("/admin/payments/summary").status_code == 401
    assert client.get("/admin/payments/summary", headers=auth("nope")).status_code == 403
    assert client.get("/admin/payments/summary", headers=ADMIN).json() == {"charged": 0, "refunded": 0}
    data = redis.Redis.from_url(redis_url)
    data.hset(keys.GATEWAY_BOOKS, mapping={"charged": 5, "refunded": 2})
    data.close()
    assert client.get("/admin/payments/summary", headers=ADMIN).json() == {"charged": 5, "refunded": 2}
