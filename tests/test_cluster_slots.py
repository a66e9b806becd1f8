"""Every script call touches one Redis Cluster slot (fakeredis would not raise CROSSSLOT, so we check)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.crc import key_slot

from service.store import keys
from service.store.connection import Arg
from service.store.scripts import Scripts
from tests.conftest import run_worker_burst
from tests.helpers import auth, hold, new_order


def test_key_builders_share_the_flight_tag() -> None:
    """All per-flight keys hash to the flight's slot; different flights may differ; the gateway's keys
    share one slot of their own."""
    flight_keys = [
        keys.flight("FL-001"), keys.seat("FL-001", "1A"), keys.seat("FL-001", "5F"),
        keys.order("FL-001", "any-order"), keys.deadlines("FL-001"), keys.changes("FL-001"),
        keys.history_seat("FL-001", "5F"), keys.history_order("FL-001", "any-order"),
    ]
    assert len({key_slot(k.encode()) for k in flight_keys}) == 1
    assert key_slot(keys.flight("FL-001").encode()) != key_slot(keys.flight("FL-002").encode())
    gateway_keys = [keys.gateway_charge("pay-1:1"), keys.gateway_charge("pay-2:3"), keys.GATEWAY_BOOKS]
    assert len({key_slot(k.encode()) for k in gateway_keys}) == 1  # a charge and its count: one script


def test_every_script_call_in_a_full_flow_is_single_slot(
    make_client: Any, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create, hold, swap, conflict, pay, confirm, cancel and expire, an operator's extend, release, block,
    unblock and history pages: each EVALSHA's KEYS share one slot."""
    calls: list[tuple[str, list[str]]] = []
    original = Scripts.run

    async def recording(self: Scripts, name: str, key_list: Sequence[str], args: Sequence[Arg]) -> Any:
        calls.append((name, list(key_list)))
        return await original(self, name, key_list, args)

    monkeypatch.setattr(Scripts, "run", recording)
    client = make_client()
    a_id, a_token = new_order(client)
    b_id, b_token = new_order(client)
    hold(client, a_id, a_token, ["1A", "1B"])
    hold(client, a_id, a_token, ["1B", "1C"])
    hold(client, b_id, b_token, ["1C"])
    hold(client, b_id, b_token, ["2A"])
    client.delete(f"/orders/{b_id}", headers=auth(b_token))
    client.post(f"/orders/{a_id}/payment", json={"code": "12345"}, headers=auth(a_token))
    run_worker_burst(make_settings())
    c_id, c_token = new_order(client)
    hold(client, c_id, c_token, ["3A"])
    admin = {"Authorization": "Bearer admin-secret"}
    client.post(f"/admin/orders/{c_id}/extend", json={"reason": "r", "minutes": 1}, headers=admin)
    client.post(f"/admin/orders/{c_id}/release", json={"reason": "r"}, headers=admin)
    client.post("/admin/flights/FL-001/seats/block", json={"reason": "r", "seats": ["4A", "4B"]}, headers=admin)
    client.post("/admin/flights/FL-001/seats/unblock", json={"reason": "r", "seats": ["4A"]}, headers=admin)
    client.get(f"/admin/orders/{c_id}/history", headers=admin)
    client.get("/admin/flights/FL-001/seats/4A/history", headers=admin)
    names = {name for name, _ in calls}
    assert {"create_order", "hold_seats", "cancel_order", "begin_payment", "mark_trying", "record_attempt",
            "gateway_charge", "admin_extend", "admin_release", "block_seats", "history_page"} <= names
    for name, key_list in calls:
        slots = {key_slot(k.encode()) for k in key_list}
        assert len(slots) == 1, f"{name} touches slots {slots}: {key_list}"
