"""Hold expiry on a real redis-server: reads never show a lapsed hold, the sweeper ends orders in time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from service.expiry import run_sweeper, sweep_once
from service.flights import FlightStore
from service.orders import OrderScripts, OrderStore
from service.settings import Settings
from service.store import keys
from tests.helpers import CALLER, DomainRig, open_rig

RIGS: list[DomainRig] = []


async def _rig(settings: Settings) -> tuple[Any, OrderStore, OrderScripts, FlightStore]:
    rig = await open_rig(settings)
    RIGS.append(rig)
    return rig.redis, rig.orders, rig.order_scripts, rig.flights


async def test_lapsed_hold_reads_available_before_sweep(make_settings: Callable[..., Settings]) -> None:
    """Right after the deadline, with no sweeper, the map shows the seat available and the order EXPIRED."""
    _client, store, _, flights = await _rig(make_settings(hold_seconds=0.2))
    created = await store.create("FL-001", "lapse", CALLER)
    held = (await store.select_seats("lapse", created.token, ["1A"], CALLER)).order
    snapshot, _ = await flights.snapshot("FL-001")
    assert snapshot.seats["1A"].status == "held"
    await asyncio.sleep(0.25)
    snapshot, _ = await flights.snapshot("FL-001")
    assert snapshot.seats["1A"].status == "available"
    assert snapshot.hash != "" and snapshot.version == held.version - 1  # the sweeper has not bumped it yet
    order = await store.get("lapse", created.token)
    assert order.state == "EXPIRED" and order.last_error
    await RIGS.pop().close()


async def test_sweeper_expires_within_a_second(make_settings: Callable[..., Settings]) -> None:
    """The sweeper marks a lapsed order EXPIRED, releases its seats and bumps the version within 1 s."""
    settings = make_settings(hold_seconds=0.5, sweep_interval_seconds=0.1)
    client, store, order_scripts, _ = await _rig(settings)
    created = await store.create("FL-001", "sweep", CALLER)
    await store.select_seats("sweep", created.token, ["1B", "1C"], CALLER)
    deadline = int(await client.hget(keys.order("FL-001", "sweep"), "holdExpiresAt"))
    version_before = int(await client.hget(keys.flight("FL-001"), "version"))
    sweeper = asyncio.create_task(run_sweeper(order_scripts, settings.sweep_interval_seconds))
    try:
        while await client.hget(keys.order("FL-001", "sweep"), "state") != "EXPIRED":
            await asyncio.sleep(0.02)
        expired_at = time.time() * 1000
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    assert expired_at - deadline < 1000
    assert int(await client.hget(keys.flight("FL-001"), "version")) == version_before + 1
    assert await client.zcard(keys.deadlines("FL-001")) == 0
    await RIGS.pop().close()


async def test_failed_order_releases_at_its_deadline(make_settings: Callable[..., Settings]) -> None:
    """In deadline mode a FAILED order keeps its seats until holdExpiresAt, then the sweeper releases them."""
    client, store, order_scripts, flights = await _rig(make_settings())
    created = await store.create("FL-001", "failed", CALLER)
    await store.select_seats("failed", created.token, ["5A"], CALLER)
    args = [60, 60_000, "1", 600_000, "5A"]
    await order_scripts.run("hold_seats", "FL-001", "failed", "*", args, ["5A"])  # shorten to 60 ms
    await client.hset(keys.order("FL-001", "failed"), mapping={"state": "FAILED"})
    await asyncio.sleep(0.1)
    assert await sweep_once(order_scripts) == 1
    assert await client.hget(keys.order("FL-001", "failed"), "state") == "FAILED"
    assert await client.get(keys.seat("FL-001", "5A")) is None
    assert await client.zcard(keys.deadlines("FL-001")) == 0
    snapshot, _ = await flights.snapshot("FL-001")
    assert snapshot.seats["5A"].status == "available"
    await RIGS.pop().close()
