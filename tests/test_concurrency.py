"""Races on a real redis-server: one holder per seat, all-or-nothing confirmation at the deadline."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from service import errors
from service.models import PutFlightRequest
from service.orders import TRUSTED
from service.settings import Settings
from service.store import keys
from tests.helpers import CALLER, open_rig


async def test_racing_orders_end_with_one_holder_per_seat(make_settings: Callable[..., Settings]) -> None:
    """200 orders on two 'API processes' race for overlapping blocks of 8 seats: every seat ends with at most
    one holder, each successful order holds exactly its block, and refused orders hold nothing."""
    settings = make_settings()
    rig_a, rig_b = await open_rig(settings), await open_rig(settings)
    client_a, store_a, store_b, flights = rig_a.redis, rig_a.orders, rig_b.orders, rig_a.flights
    await flights.put("RACE", PutFlightRequest(rows=4, columns="ABCD"))
    seat_ids = [f"{r}{c}" for r in range(1, 5) for c in "ABCD"]
    rng = random.Random(7)
    created = [await (store_a if i % 2 else store_b).create("RACE", f"race-{i}", CALLER) for i in range(200)]
    tokens = {written.order.order_id: written.token or "" for written in created}
    wanted = {order_id: rng.sample(seat_ids, 8) for order_id in tokens}

    async def attempt(order_id: str, index: int) -> tuple[str, bool]:
        store = store_a if index % 2 else store_b
        try:
            await store.select_seats(order_id, tokens[order_id], wanted[order_id], CALLER)
        except errors.SeatsUnavailable:
            return order_id, False
        return order_id, True

    results = await asyncio.gather(*(attempt(order_id, i) for i, order_id in enumerate(tokens)))
    winners = [order_id for order_id, ok in results if ok]
    assert winners, "at least the first hold must succeed"
    values = await client_a.mget([keys.seat("RACE", s) for s in seat_ids])
    holder_of = {s: v.split("|")[1] for s, v in zip(seat_ids, values, strict=True) if v}
    for order_id, ok in results:
        fields = await client_a.hgetall(keys.order("RACE", order_id))
        held = {s for s, owner in holder_of.items() if owner == order_id}
        if ok:
            assert held == set(wanted[order_id]) and fields["state"] == "SEATS_SELECTED"
        else:
            assert not held and fields["seats"] == ""
    # winners' blocks are pairwise disjoint: no seat held by two orders
    claimed = [s for w in winners for s in wanted[w]]
    assert len(claimed) == len(set(claimed))
    await rig_a.close()
    await rig_b.close()


async def test_payment_success_around_deadline_confirms_all_or_nothing(make_settings: Callable[..., Settings]) -> None:
    """A success recorded just before or just after the (payment-extended) deadline confirms every seat or none."""
    settings = make_settings()
    rig = await open_rig(settings)
    client, store, order_scripts = rig.redis, rig.orders, rig.order_scripts
    outcomes = set()
    for i in range(30):
        order = (await store.create("FL-001", f"edge-{i}", CALLER)).order
        seats = ["1A", "1B", "1C"]
        hold_args = [60, 60_000, "1", 600_000, ",".join(seats)]
        await order_scripts.run("hold_seats", "FL-001", order.order_id, TRUSTED, hold_args, seats)
        begun = await order_scripts.run("begin_payment", "FL-001", order.order_id, TRUSTED, ["p", 1])
        if begun.status == "EXPIRED":
            outcomes.add("EXPIRED-before-payment")
            continue
        await asyncio.sleep(random.Random(i).uniform(0.0, 0.12))
        recorded = await order_scripts.run(
            "record_attempt", "FL-001", order.order_id, TRUSTED, ["p", "3", "success", "", "CNF", "deadline", 3]
        )
        values = await client.mget([keys.seat("FL-001", s) for s in seats])
        confirmed = [v for v in values if v == f"C|{order.order_id}"]
        if recorded.status == "CONFIRMED":
            assert len(confirmed) == 3
        else:
            assert recorded.status == "LATE" and not confirmed
            assert recorded.order is not None and recorded.order.state == "EXPIRED"
            assert not any(v and v.startswith(f"H|{order.order_id}") for v in values)
        outcomes.add(recorded.status)
        if recorded.status == "CONFIRMED":  # free the seats for the next round by using a fresh flight layout
            await client.delete(*[keys.seat("FL-001", s) for s in seats])
            await client.hset(keys.flight("FL-001"), "sold", 0)
    assert {"CONFIRMED", "LATE"} <= outcomes, outcomes
    await rig.close()
