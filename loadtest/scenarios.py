"""The scenarios: what a crowd does to the service, each bounded in time.

``hold``       each user holds and swaps a 4-seat block of its own on a 50,000-seat flight
               (the uncontended hot path: one request = one hold script);
``contended``  buyers race for the same few seats of a 60-seat flight, then pay, cancel or walk
               away (a new flight opens when one is mostly sold);
``full``       create → hold → swap → pay / cancel / abandon on a 10,000-seat flight, with passive
               flight-stream (SSE) watchers measuring change-to-delivery delay;
``read``       the seat map of a 50,000-seat flight polled with ``If-None-Match`` (304),
               ``/seats/version``, and the full map;
``pay``        pre-held orders all pay at once: payments confirmed per second, end to end;
``scalper``    50 honest subjects swap small blocks at a human pace, alone and then while one
               subject tries to take the flight (``loadtest.scalper``).

Every user, buyer and order owner is a subject of its own (``Context.new_address``, sent as
``X-Forwarded-For``): the spec §10 limits count per subject, as they would for a real crowd.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from loadtest.client import Client, Reply, StreamStats, request_headers, subject_address, watch_flight
from loadtest.pacing import PacingStats, closed_loop, open_loop
from loadtest.stats import Recorder, percentile
from service.store import keys

Probe = Callable[[], Awaitable[dict[str, float]]]
TERMINAL = frozenset({"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"})
PAY_CODE = {"code": "12345"}
SETUP_CONCURRENCY = 64
POLL_INTERVAL = 0.1


class SetupFailed(RuntimeError):
    """The service refused the set-up (flights, orders): no measurement is possible."""


@dataclass(frozen=True)
class Load:
    """How hard and how long: ``rate`` arrivals/s (open loop) or ``users`` (closed loop)."""

    duration: float
    warmup: float
    rate: float | None
    users: int


@dataclass
class Context:
    """What every scenario shares."""

    base_url: str
    admin_token: str
    load: Load
    rng: random.Random
    run_id: str
    redis_url: str | None = None
    probe: Probe | None = None
    watchers: int = 20
    pay_orders: int = 3000
    pause_worker: Callable[[bool], None] | None = None
    scalper_loops: int = 16
    flights: list[str] = field(default_factory=list)
    subjects: Iterator[int] = field(default_factory=itertools.count)

    def new_address(self) -> str:
        """A client address no other simulated user of this run has had (its ``X-Forwarded-For``)."""
        return subject_address(next(self.subjects))

    def crowd_headers(self, count: int, *, json: bool = False, extra: dict[str, str] | None = None,
                      ) -> list[dict[str, str]]:
        """The prebuilt headers of ``count`` anonymous users, one new address each."""
        return [request_headers(address=self.new_address(), json=json, extra=extra) for _ in range(count)]


@dataclass
class Phase:
    """One measured run of one load pattern."""

    name: str
    recorder: Recorder
    headline: list[str] | None
    pacing: PacingStats
    usage: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)  # the scenario's own invariants (scalper: the caps)


@dataclass(frozen=True, slots=True)
class Owner:
    """An order and its owner: the headers of its requests, built once (token, JSON, the owner's address)."""

    order_id: str
    token: str
    headers: dict[str, str]


async def bounded(coros: list[Coroutine[Any, Any, Reply]], limit: int = SETUP_CONCURRENCY) -> list[Reply]:
    """Await ``coros`` with at most ``limit`` running at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Coroutine[Any, Any, Reply]) -> Reply:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def new_flight(ctx: Context, client: Client, tag: str, rows: int, columns: str) -> str:
    """Create a fresh flight for this run (admin API); remembered for the invariant check."""
    flight_id = f"LT-{tag}-{ctx.run_id}-{len(ctx.flights)}"[:32]
    reply = await client.call(None, "PUT", f"/flights/{flight_id}", json={"rows": rows, "columns": columns},
                              token=ctx.admin_token)
    if reply.status not in (200, 201):
        raise SetupFailed(f"PUT /flights/{flight_id} answered {reply.status}: {reply.body[:200]!r}")
    ctx.flights.append(flight_id)
    return flight_id


async def create_orders(ctx: Context, client: Client, flight_id: str, count: int) -> list[Owner]:
    """``count`` orders on ``flight_id``, each created by a subject of its own."""
    addresses = [ctx.new_address() for _ in range(count)]
    replies = await bounded([client.call(None, "POST", "/orders", json={"flightId": flight_id},
                                         headers=request_headers(address=address, json=True))
                             for address in addresses])
    orders = []
    for address, reply in zip(addresses, replies, strict=True):
        if reply.status != 201:
            raise SetupFailed(f"POST /orders answered {reply.status}: {reply.body[:200]!r}")
        body = reply.json()
        orders.append(Owner(body["orderId"], body["token"],
                            request_headers(address=address, token=body["token"], json=True)))
    return orders


async def _sample(probe: Probe | None, start: float, stop: float) -> dict[str, float]:
    if probe is None:
        return {}
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    before = await probe()
    await asyncio.sleep(max(0.0, stop - time.monotonic()))
    after = await probe()
    return {name: round(after[name] - before.get(name, 0.0), 4) for name in after}


async def drive(
    ctx: Context,
    recorder: Recorder,
    user_step: Callable[[int], Coroutine[Any, Any, None]],
    open_step: Callable[[float], Coroutine[Any, Any, None]] | None,
    load: Load | None = None,
) -> tuple[PacingStats, dict[str, float]]:
    """Run one load pattern: warm-up, then the measured window; resource usage over the window.

    ``open_step`` may be None for a pattern that is closed loop only (``load.rate`` must be None).
    """
    load = load or ctx.load
    start = time.monotonic() + 0.05
    measure_from = start + load.warmup
    stop = measure_from + load.duration
    recorder.window(measure_from, stop)
    sampler = asyncio.create_task(_sample(ctx.probe, measure_from, stop))
    if load.rate:
        if open_step is None:
            raise ValueError("this load pattern is closed loop only")
        pacing = await open_loop(open_step, load.rate, start, stop)
    else:
        async def user(index: int, until: float) -> None:
            while time.monotonic() < until:
                await user_step(index)

        pacing = await closed_loop(user, load.users, stop)
    return pacing, await sampler


def _pool_size(load: Load) -> int:
    """Orders (or connections) needed: the users, or enough for the rate's concurrency."""
    if load.rate is None:
        return load.users
    return max(64, min(2000, int(load.rate * 0.25)))


# --------------------------------------------------------------------------- hold

HOLD_ROWS, HOLD_COLUMNS, HOLD_BLOCK = 5000, "ABCDEFGHIJ", 4


async def run_hold(ctx: Context) -> list[Phase]:
    """Uncontended holds: each order swaps between 4-seat blocks of its own rows."""
    recorder = Recorder()
    pool = _pool_size(ctx.load)
    client = Client(ctx.base_url, recorder, connections=pool)
    try:
        flight = await new_flight(ctx, client, "H", HOLD_ROWS, HOLD_COLUMNS)
        orders = await create_orders(ctx, client, flight, pool)
        rows_per_order = max(1, HOLD_ROWS // pool)
        rng = ctx.rng

        def block(index: int) -> dict[str, list[str]]:
            row = (index * rows_per_order) % HOLD_ROWS + 1 + rng.randrange(rows_per_order)
            first = rng.randrange(len(HOLD_COLUMNS) - HOLD_BLOCK + 1)
            return {"seats": [f"{row}{c}" for c in HOLD_COLUMNS[first : first + HOLD_BLOCK]]}

        def hold(index: int, scheduled: float | None) -> Coroutine[Any, Any, Reply]:
            owner = orders[index]
            return client.call("hold", "POST", f"/orders/{owner.order_id}/seats", json=block(index),
                               headers=owner.headers, scheduled=scheduled)

        await bounded([hold(i, None) for i in range(pool)])  # first holds: every later one is a swap
        idle: asyncio.Queue[int] = asyncio.Queue()
        for index in range(pool):
            idle.put_nowait(index)

        async def user_step(index: int) -> None:
            await hold(index, None)

        async def open_step(scheduled: float) -> None:
            index = await idle.get()  # waiting for a free user is queueing: it counts as latency
            try:
                await hold(index, scheduled)
            finally:
                idle.put_nowait(index)

        pacing, usage = await drive(ctx, recorder, user_step, open_step)
    finally:
        await client.close()
    return [Phase("hold", recorder, ["hold"], pacing, usage, {"orders": pool, "flight": flight})]


# --------------------------------------------------------------------------- buyers (contended, full)


@dataclass
class Crowd:
    """Shared state of the buyers of one scenario."""

    flight: str
    capacity: int
    sold: int = 0
    refused_in_a_row: int = 0
    flights_opened: int = 1
    hold_attempts: int = 0
    sessions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    rotating: asyncio.Lock = field(default_factory=asyncio.Lock)

    def outcome(self, name: str) -> None:
        """Count how a buyer's session ended."""
        self.outcomes[name] = self.outcomes.get(name, 0) + 1


async def _poll_terminal(client: Client, owner: Owner, limit: float) -> str:
    """GET the order until it is terminal or ``limit`` (monotonic) passes; its last state."""
    state = "PAYING"
    while time.monotonic() < limit:
        await asyncio.sleep(POLL_INTERVAL)
        reply = await client.call("order", "GET", f"/orders/{owner.order_id}", headers=owner.headers)
        if reply.status == 200:
            state = reply.json()["state"]
            if state in TERMINAL:
                break
    return state


def _hold_name(reply: Reply) -> str:
    return "hold.accepted" if reply.status == 200 else "hold.refused" if reply.conflict else "hold.other"


async def _buyer_session(
    ctx: Context, client: Client, crowd: Crowd, pick: Callable[[int], list[str]], *,
    scheduled: float | None, swap: float, pay: float, cancel: float, on_full: Callable[[], Awaitable[None]] | None,
) -> None:
    """One buyer (a subject of its own): create, hold (retrying refusals), maybe swap, then pay, cancel or walk away."""
    rng = ctx.rng
    crowd.sessions += 1
    flight = crowd.flight
    address = ctx.new_address()
    reply = await client.call("create", "POST", "/orders", json={"flightId": flight}, scheduled=scheduled,
                              headers=request_headers(address=address, json=True))
    if reply.status != 201:
        crowd.outcome("create_failed")
        return
    created = reply.json()
    owner = Owner(created["orderId"], created["token"],
                  request_headers(address=address, token=created["token"], json=True))
    path = f"/orders/{owner.order_id}"
    seats: list[str] = []
    for _ in range(4):
        wanted = pick(rng.randint(1, 4))
        crowd.hold_attempts += 1
        reply = await client.call(_hold_name, "POST", f"{path}/seats", json={"seats": wanted}, headers=owner.headers)
        if reply.status == 200:
            seats = wanted
            crowd.refused_in_a_row = 0
            break
        crowd.refused_in_a_row += 1
        if not reply.conflict:
            crowd.outcome("hold_failed")
            return
    if not seats:
        crowd.outcome("gave_up")
        if on_full is not None and crowd.refused_in_a_row >= 50:
            await on_full()
        await client.call("cancel", "DELETE", path, headers=owner.headers)
        return
    await _after_hold(ctx, client, crowd, pick, owner=owner, seats=seats, swap=swap, pay=pay, cancel=cancel,
                      on_full=on_full)


async def _after_hold(
    ctx: Context, client: Client, crowd: Crowd, pick: Callable[[int], list[str]], *, owner: Owner,
    seats: list[str], swap: float, pay: float, cancel: float, on_full: Callable[[], Awaitable[None]] | None,
) -> None:
    """The rest of a buyer's session once seats are held: swap, then pay, cancel or walk away."""
    rng = ctx.rng
    path = f"/orders/{owner.order_id}"
    if rng.random() < swap:
        wanted = seats[: (len(seats) + 1) // 2] + pick(rng.randint(1, 2))
        wanted = list(dict.fromkeys(wanted))
        crowd.hold_attempts += 1
        reply = await client.call("swap", "POST", f"{path}/seats", json={"seats": wanted}, headers=owner.headers)
        if reply.status == 200:
            seats = wanted
    roll = rng.random()
    if roll < cancel:
        await client.call("cancel", "DELETE", path, headers=owner.headers)
        crowd.outcome("cancelled")
        return
    if roll >= cancel + pay:
        crowd.outcome("abandoned")
        return
    reply = await client.call("pay", "POST", f"{path}/payment", json=PAY_CODE, headers=owner.headers)
    if reply.status != 202:
        crowd.outcome("pay_refused")
        return
    state = await _poll_terminal(client, owner, time.monotonic() + 20)
    crowd.outcome(state.lower())
    if state == "CONFIRMED":
        crowd.sold += len(seats)
        if on_full is not None and crowd.sold >= 0.6 * crowd.capacity:
            await on_full()


CONTENDED_ROWS, CONTENDED_COLUMNS = 10, "ABCDEF"
CONTENDED_POPULAR = 12  # seats most buyers want (the front rows): the race


async def _run_crowd(ctx: Context, name: str, rows: int, columns: str, *, rotate: bool,
                     pick_factory: Callable[[list[str]], Callable[[int], list[str]]],
                     swap: float, pay: float, cancel: float,
                     on_flight: Callable[[str], Awaitable[None]] | None = None,
                     ) -> tuple[Recorder, Crowd, PacingStats, dict[str, float]]:
    recorder = Recorder()
    client = Client(ctx.base_url, recorder, connections=_crowd_connections(ctx.load))
    try:
        seat_ids = [f"{r}{c}" for r in range(1, rows + 1) for c in columns]
        crowd = Crowd(await new_flight(ctx, client, name[0].upper(), rows, columns), len(seat_ids))
        if on_flight is not None:
            await on_flight(crowd.flight)
        pick = pick_factory(seat_ids)

        async def next_flight() -> None:
            """Open a fresh flight when the current one is mostly sold (or nobody gets a seat)."""
            current = crowd.flight
            async with crowd.rotating:
                if crowd.flight != current:
                    return
                crowd.flight = await new_flight(ctx, client, name[0].upper(), rows, columns)
                crowd.sold = crowd.refused_in_a_row = 0
                crowd.flights_opened += 1

        async def session(scheduled: float | None) -> None:
            await _buyer_session(ctx, client, crowd, pick, scheduled=scheduled, swap=swap, pay=pay, cancel=cancel,
                                 on_full=next_flight if rotate else None)

        async def user_step(_index: int) -> None:
            await session(None)

        pacing, usage = await drive(ctx, recorder, user_step, session)
    finally:
        await client.close()
    return recorder, crowd, pacing, usage


def _crowd_connections(load: Load) -> int:
    """One connection per buyer in flight: sessions last ~1-2 s (paying, polling), so 2 x the rate."""
    if load.rate is None:
        return max(64, load.users)
    return max(64, min(4000, int(load.rate * 2)))


def _crowd_extra(crowd: Crowd) -> dict[str, Any]:
    return {"sessions": crowd.sessions, "hold_attempts": crowd.hold_attempts, "flights": crowd.flights_opened,
            "outcomes": dict(sorted(crowd.outcomes.items()))}


async def run_contended(ctx: Context) -> list[Phase]:
    """A crowd racing for the same seats of a small flight, then paying."""
    rng = ctx.rng

    def pick_factory(seat_ids: list[str]) -> Callable[[int], list[str]]:
        popular = seat_ids[:CONTENDED_POPULAR]

        def pick(count: int) -> list[str]:
            return rng.sample(popular if rng.random() < 0.7 else seat_ids, count)

        return pick

    recorder, crowd, pacing, usage = await _run_crowd(
        ctx, "contended", CONTENDED_ROWS, CONTENDED_COLUMNS, rotate=True, pick_factory=pick_factory,
        swap=0.0, pay=0.8, cancel=0.1,
    )
    return [Phase("contended", recorder, ["hold.accepted", "hold.refused"], pacing, usage, _crowd_extra(crowd))]


FULL_ROWS, FULL_COLUMNS = 500, "ABCDEFGHIJKLMNOPQRST"


async def run_full(ctx: Context) -> list[Phase]:
    """The whole life of orders on a 10,000-seat flight, watched by passive SSE clients."""
    rng = ctx.rng
    width = len(FULL_COLUMNS)

    def pick_factory(seat_ids: list[str]) -> Callable[[int], list[str]]:
        def pick(count: int) -> list[str]:
            start = rng.randrange(len(seat_ids) - 2 * width)  # neighbours: mild contention
            return rng.sample(seat_ids[start : start + 2 * width], count)

        return pick

    stream = StreamStats(watchers=ctx.watchers)
    watch_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ctx.watchers + 1))
    watchers: list[asyncio.Task[None]] = []

    async def watch(flight_id: str) -> None:
        stop = time.monotonic() + ctx.load.warmup + ctx.load.duration + 1.0
        url = f"{ctx.base_url}/flights/{flight_id}/events"
        watchers.extend(asyncio.create_task(watch_flight(watch_session, url, stop, stream, ctx.new_address()))
                        for _ in range(ctx.watchers))
        await asyncio.sleep(0.5)  # let the watchers subscribe before the crowd arrives

    try:
        recorder, crowd, pacing, usage = await _run_crowd(
            ctx, "full", FULL_ROWS, FULL_COLUMNS, rotate=False, pick_factory=pick_factory,
            swap=0.7, pay=0.6, cancel=0.15, on_flight=watch,
        )
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await watch_session.close()
    delays = sorted(stream.delays or [])
    sse = {
        "watchers": stream.watchers, "connected": stream.connected, "snapshots": stream.snapshots,
        "events": stream.events, "gaps": stream.gaps, "unavailable": stream.unavailable or None,
        "delivery_p50_ms": round(percentile(delays, 50) * 1000, 2) if delays else None,
        "delivery_p99_ms": round(percentile(delays, 99) * 1000, 2) if delays else None,
        "delivery_max_ms": round(delays[-1] * 1000, 2) if delays else None,
    }
    return [Phase("full", recorder, None, pacing, usage, {**_crowd_extra(crowd), "sse": sse})]


READ_ROWS, READ_COLUMNS = 5000, "ABCDEFGHIJ"
FULL_MAP_USERS, FULL_MAP_RATE = 4, 50.0


async def run_read(ctx: Context) -> list[Phase]:
    """Seat-map polling on a 50,000-seat flight: 304 revalidation, the version poll, the full map."""
    phases = []
    recorder = Recorder()
    client = Client(ctx.base_url, recorder, connections=_pool_size(ctx.load))
    try:
        flight = await new_flight(ctx, client, "R", READ_ROWS, READ_COLUMNS)
        first = await client.call(None, "GET", f"/flights/{flight}/seats")
        if first.status != 200:
            raise SetupFailed(f"GET /flights/{flight}/seats answered {first.status}")
        etag = {"If-None-Match": f'"{first.json()["hash"]}"'}
        full_rate = min(ctx.load.rate, FULL_MAP_RATE) if ctx.load.rate else None
        full_load = Load(ctx.load.duration, ctx.load.warmup, full_rate, min(ctx.load.users, FULL_MAP_USERS))
        pool = _pool_size(ctx.load)
        for name, path, users, load in (
            ("seats 304", f"/flights/{flight}/seats", ctx.crowd_headers(pool, extra=etag), ctx.load),
            ("seats/version", f"/flights/{flight}/seats/version", ctx.crowd_headers(pool), ctx.load),
            ("seats full map", f"/flights/{flight}/seats", ctx.crowd_headers(pool), full_load),
        ):
            recorder = client.recorder = Recorder()
            turns = itertools.cycle(users)

            async def user_step(index: int, path: str = path, users: list[dict[str, str]] = users,
                                name: str = name) -> None:
                await client.call(name, "GET", path, headers=users[index])

            async def open_step(scheduled: float, path: str = path, turns: Iterator[dict[str, str]] = turns,
                                name: str = name) -> None:
                await client.call(name, "GET", path, headers=next(turns), scheduled=scheduled)

            pacing, usage = await drive(ctx, recorder, user_step, open_step, load)
            extra: dict[str, Any] = {"flight": flight, "seats": READ_ROWS * len(READ_COLUMNS)}
            if name == "seats full map":
                extra["bytes"] = len(first.body)
            phases.append(Phase(name, recorder, [name], pacing, usage, extra))
    finally:
        await client.close()
    return phases


PAY_ROWS, PAY_COLUMNS = 5000, "ABCDEFGHIJ"
PAY_SETTLE_SECONDS = 120.0


async def run_pay(ctx: Context) -> list[Phase]:
    """``pay_orders`` held orders pay as fast as the users can submit; how fast are they confirmed?

    The figure is confirmed orders / (last confirmation - start), read from the orders themselves
    (``updatedAt``, Redis's clock). Start = the first submission (end to end, API and worker
    sharing the machine) or, with ``pause_worker`` (``--pay-drain``), the moment the stopped
    worker resumes with every payment queued: the worker's own ceiling. Needs the Redis URL.
    """
    if ctx.redis_url is None:
        raise SetupFailed("the pay scenario reads the orders from Redis: give --redis-url or use --spawn")
    recorder = Recorder()
    client = Client(ctx.base_url, recorder, connections=max(ctx.load.users, 64))
    store = aioredis.Redis.from_url(ctx.redis_url, decode_responses=True)
    try:
        flight = await new_flight(ctx, client, "P", PAY_ROWS, PAY_COLUMNS)
        count = min(ctx.pay_orders, PAY_ROWS * len(PAY_COLUMNS))
        orders = await create_orders(ctx, client, flight, count)
        seat_ids = [f"{r}{c}" for r in range(1, PAY_ROWS + 1) for c in PAY_COLUMNS]
        held = await bounded([client.call(None, "POST", f"/orders/{o.order_id}/seats", json={"seats": [seat_ids[i]]},
                                          headers=o.headers) for i, o in enumerate(orders)])
        if any(r.status != 200 for r in held):
            raise SetupFailed("holding the pay scenario's seats failed")
        queue = iter(range(count))
        started_wall = time.time()
        started = time.monotonic()
        recorder.window(started, started + ctx.load.duration + PAY_SETTLE_SECONDS)
        stop = started + ctx.load.duration

        async def payer(_index: int, until: float) -> None:
            for i in queue:
                if time.monotonic() >= until:
                    return
                owner = orders[i]
                await client.call("pay", "POST", f"/orders/{owner.order_id}/payment", json=PAY_CODE,
                                  headers=owner.headers)

        before = await ctx.probe() if ctx.probe else {}
        drain = ctx.pause_worker is not None
        if drain:  # submit everything first, then measure the worker alone draining the queue
            ctx.pause_worker(True)  # type: ignore[misc]
        try:
            pacing = await closed_loop(payer, ctx.load.users, stop)
        finally:
            submitted_in = time.monotonic() - started
            if drain:
                started_wall = time.time()
                ctx.pause_worker(False)  # type: ignore[misc]
        states = await _settle(store, flight, [o.order_id for o in orders], time.monotonic() + PAY_SETTLE_SECONDS)
        after = await ctx.probe() if ctx.probe else {}
    finally:
        await client.close()
        await store.aclose()
    confirmed = [updated for state, updated in states if state == "CONFIRMED"]
    elapsed = (max(confirmed) / 1000 - started_wall) if confirmed else 0.0
    recorder.window(started, started + submitted_in)
    outcome: dict[str, int] = {}
    for state, _ in states:
        outcome[state] = outcome.get(state, 0) + 1
    extra = {
        "orders": count, "states": outcome, "submitted_in_s": round(submitted_in, 3),
        "measured": "worker draining a full queue" if drain else "end to end, submissions and worker together",
        "confirmed_in_s": round(elapsed, 3),
        "payments_per_s": round(len(confirmed) / elapsed, 1) if elapsed > 0 else None,
    }
    usage = {k: round(after[k] - before.get(k, 0.0), 4) for k in after}
    return [Phase("pay", recorder, ["pay"], pacing, usage, extra)]


async def _settle(store: aioredis.Redis, flight: str, order_ids: list[str], limit: float) -> list[tuple[str, int]]:
    """Wait until no order is PAYING (or ``limit``); (state, updatedAt ms) of every order.

    Polls twice a second and only the orders still open: the figure comes from each order's own
    ``updatedAt``, so polling more often would only load the system under test.
    """
    settled: dict[str, tuple[str, int]] = {}
    pending = list(order_ids)
    while True:
        pipe = store.pipeline(transaction=False)
        for order_id in pending:
            pipe.hmget(keys.order(flight, order_id), ["state", "updatedAt"])
        for order_id, (state, updated) in zip(pending, await pipe.execute(), strict=True):
            if state != "PAYING":
                settled[order_id] = (str(state), int(updated or 0))
        pending = [o for o in pending if o not in settled]
        if not pending or time.monotonic() > limit:
            return [settled.get(o, ("PAYING", 0)) for o in order_ids]
        await asyncio.sleep(0.5)


def _run_scalper(ctx: Context) -> Awaitable[list[Phase]]:
    from loadtest.scalper import run_scalper  # imports this module

    return run_scalper(ctx)


SCENARIOS: dict[str, Callable[[Context], Awaitable[list[Phase]]]] = {
    "hold": run_hold,
    "contended": run_contended,
    "full": run_full,
    "read": run_read,
    "pay": run_pay,
    "scalper": _run_scalper,
}
