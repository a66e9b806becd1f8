"""A Hypothesis state machine drives the Lua scripts on a real redis-server and compares every
step with a pure-Python model of seats and orders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from service.expiry import sweep_once
from service.models import PutFlightRequest
from service.orders import TRUSTED, hash_token
from service.settings import Settings
from service.store import keys
from service.store.errors import Refusal
from tests.helpers import open_rig

FLIGHT = "SM-1"
SEATS = [f"{row}{col}" for row in (1, 2) for col in "ABC"]
ORDERS = [f"o{i}" for i in range(4)]
LONG_MS = 3_600_000
SHORT_MS = 1  # a hold that has lapsed by the next step
TERMINAL = {"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"}


@dataclass
class ModelOrder:
    """What the model believes about one order."""

    state: str = "PENDING"
    seats: set[str] = field(default_factory=set)
    lapsed: bool = False  # its hold deadline has passed
    attempts_left: int = 3


class ReservationMachine(RuleBasedStateMachine):
    """Rules call the real scripts; the model predicts each reply and the resulting seat map."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.settings = settings
        self.rig = self.run(open_rig(self.settings))
        self.client = self.rig.redis
        self.run(self.client.flushall())
        self.order_scripts = self.rig.order_scripts
        self.run(self.rig.flights.put(FLIGHT, PutFlightRequest(2, "ABC")))
        self.model = {o: ModelOrder() for o in ORDERS}
        self.sold: dict[str, str] = {}
        for order_id in ORDERS:
            self.call("create_order", order_id, hash_token(order_id), [3, LONG_MS * 10, "a:192.0.2.1", LONG_MS * 10])

    def teardown(self) -> None:
        self.run(self.rig.close())
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, name: str, order_id: str, token_hash: str, args: list[Any], new_seats: list[str] = ()
             ) -> tuple[str, Any]:
        """Run a script; returns (status or refusal code, order or refusal detail)."""
        try:
            result = self.run(self.order_scripts.run(name, FLIGHT, order_id, token_hash, args, new_seats))
        except Refusal as refusal:
            return refusal.code, refusal.detail
        return result.status, result.order

    # --- the model's view of ownership ---------------------------------------------------

    def live_owner(self, seat: str) -> str | None:
        if seat in self.sold:
            return self.sold[seat]
        for order_id, order in self.model.items():
            if seat in order.seats and not order.lapsed and order.state in ("SEATS_SELECTED", "PAYING", "FAILED"):
                return order_id
        return None

    def release(self, order: ModelOrder) -> None:
        order.seats = set()

    # --- rules ---------------------------------------------------------------------------

    @rule(order_id=st.sampled_from(ORDERS), seats=st.sets(st.sampled_from(SEATS), min_size=1, max_size=3),
          short=st.booleans())
    def hold(self, order_id: str, seats: set[str], short: bool) -> None:
        order = self.model[order_id]
        wanted = sorted(seats)
        status, detail = self.call(
            "hold_seats", order_id, hash_token(order_id),
            [SHORT_MS if short else LONG_MS, LONG_MS * 2, "1", LONG_MS * 10, ",".join(wanted)], wanted,
        )
        if order.state in TERMINAL:
            assert status == "CLOSED", (status, detail)
            return
        if order.state == "PAYING":
            assert status == "PAYING"
            return
        if order.lapsed:
            assert status == "EXPIRED"
            order.state, order.lapsed = "EXPIRED", False
            self.release(order)
            return
        taken = sorted(s for s in wanted if self.live_owner(s) not in (None, order_id))
        if taken:
            assert status == "CONFLICT", (status, detail)
            assert sorted(c.split(":")[0] for c in detail.split(",")) == taken
            return
        assert status == "OK", (status, detail)
        order.state, order.seats, order.lapsed = "SEATS_SELECTED", set(wanted), short
        if short:
            time.sleep(0.003)

    @rule(order_id=st.sampled_from(ORDERS))
    def cancel(self, order_id: str) -> None:
        order = self.model[order_id]
        status, _ = self.call("cancel_order", order_id, hash_token(order_id), [])
        if order.state in TERMINAL:
            assert status == "CLOSED"
        elif order.lapsed:  # every action sees a lapsed hold as EXPIRED, as a read does (spec §11)
            assert status == "EXPIRED"
            order.state, order.lapsed = "EXPIRED", False
            self.release(order)
        elif order.state == "PAYING":
            assert status == "PAYING"
        else:
            assert status == "OK"
            order.state, order.lapsed = "CANCELLED", False
            self.release(order)

    @rule(order_id=st.sampled_from(ORDERS))
    def begin_payment(self, order_id: str) -> None:
        order = self.model[order_id]
        status, _ = self.call("begin_payment", order_id, hash_token(order_id), [f"pay-{order_id}", LONG_MS])
        if order.state in TERMINAL:
            assert status == "CLOSED"
        elif order.state == "PAYING":
            assert status == "PAYING"
        elif not order.seats:
            assert status == "NO_SEATS"
        elif order.lapsed:
            assert status == "EXPIRED"
            order.state, order.lapsed = "EXPIRED", False
            self.release(order)
        else:
            assert status == "OK"
            order.state = "PAYING"

    @precondition(lambda self: any(o.state == "PAYING" for o in self.model.values()))
    @rule(data=st.data(), success=st.booleans(), duplicate=st.booleans())
    def attempt(self, data: st.DataObject, success: bool, duplicate: bool) -> None:
        order_id = data.draw(st.sampled_from([o for o, m in self.model.items() if m.state == "PAYING"]))
        order = self.model[order_id]
        left = str(order.attempts_left)
        args = [f"pay-{order_id}", left, "success" if success else "declined", "declined", "CNF-1", "deadline", 3]
        status, _ = self.call("record_attempt", order_id, TRUSTED, args)
        if duplicate:  # arq re-running the same attempt must record nothing
            assert self.call("record_attempt", order_id, TRUSTED, args)[0] == "NOOP"
        if success:
            assert status == "CONFIRMED"
            order.state = "CONFIRMED"
            for seat in order.seats:
                self.sold[seat] = order_id
            return
        order.attempts_left -= 1
        if order.attempts_left == 0:
            assert status == "FAILED"
            order.state = "FAILED"
        else:
            assert status == "RETRY"

    @rule()
    def sweep(self) -> None:
        self.run(sweep_once(self.order_scripts))
        for order in self.model.values():
            if order.lapsed and order.state in ("SEATS_SELECTED", "PAYING"):
                order.state = "EXPIRED"
            if order.lapsed:
                order.lapsed = False
                self.release(order)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def redis_matches_model(self) -> None:
        values = self.run(self.client.mget([keys.seat(FLIGHT, s) for s in SEATS]))
        owners: dict[str, str] = {}
        for seat, value in zip(SEATS, values, strict=True):
            expected = self.live_owner(seat)
            if value is None:
                assert expected is None, f"{seat} should belong to {expected}"
                continue
            kind, owner, *_ = value.split("|")
            owners[seat] = owner
            assert owner == expected, f"{seat}: redis {value}, model {expected}"
            if kind == "C":
                assert self.sold.get(seat) == owner, "a sale appeared that the model did not make"
        for seat, owner in self.sold.items():  # sold is permanent
            assert owners.get(seat) == owner

    @invariant()
    def orders_match_model(self) -> None:
        for order_id, model in self.model.items():
            fields = self.run(self.client.hgetall(keys.order(FLIGHT, order_id)))
            assert fields["state"] == model.state
            if model.state in ("CANCELLED", "EXPIRED"):
                held = self.run(self.client.mget([keys.seat(FLIGHT, s) for s in SEATS]))
                assert not any(v and v.startswith(f"H|{order_id}|") for v in held), "a terminal order holds seats"


pytestmark = pytest.mark.both_planes


@pytest.mark.timeout(600)
def test_reservation_state_machine(make_settings: Callable[..., Settings]) -> None:
    """Random sequences of holds, swaps, cancels, payments, duplicate attempts and sweeps keep every invariant."""
    settings = make_settings(release_on_failure="deadline")
    run_state_machine_as_test(
        lambda: ReservationMachine(settings),
        settings=hsettings(max_examples=60, stateful_step_count=30, deadline=None),
    )
