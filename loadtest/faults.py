"""The fault run: buyers race for overlapping seats and pay while the system is broken on purpose,
every operation is recorded, and ``loadtest.history`` checks the history afterwards.

The system is the real one, spawned here so it can be hurt: ``redis-server`` with AOF (``everysec``)
and ``noeviction``, ``seats api`` and ``seats worker``. The gateway's latency sits at its timeout,
so answers arrive on both sides of it. Faults, one every ``fault_every`` seconds, drawn in shuffled
rounds so each kind comes up:

- ``worker_kill``: SIGKILL the worker (supervisor and arq child) at a random moment, start a new one;
- ``worker_pause``: SIGSTOP the worker for 0.5-4 s (a stalled VM): its jobs outlive arq's job timeout
  and are abandoned, so their orders end by their deadline and the sweeper settles their payments;
- ``redis_kill``: SIGKILL redis-server, restart it on the same port and AOF directory;
- ``script_flush``: ``SCRIPT FLUSH`` (every process reloads on NOSCRIPT);
- ``client_pause``: ``CLIENT PAUSE <200-600 ms> WRITE`` (or ``ALL``): Redis stalls mid-call;
- ``client_kill_pubsub``: ``CLIENT KILL TYPE pubsub``: the API's subscription drops;
- ``client_kill_normal``: ``CLIENT KILL TYPE normal``: every command connection drops mid-call, so
  payment attempts meet unknown outcomes.

After the load, faults stop, the system is made whole, and the run waits until every order has
settled (terminal, refunds done), then reads the final state and checks the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loadtest.client import Client, Reply
from loadtest.history import FinalState, History, Sample, Seen, Verdict, check
from loadtest.invariants import InvariantReport, check_all, read_orders, read_seats, redis_ms, seat_ids
from loadtest.stats import Recorder
from service.devrunner import free_port, redis_binary, stop_all, wait_for_ready, wait_for_redis
from service.store import keys

FAULT_KINDS = ("worker_kill", "worker_pause", "redis_kill", "script_flush", "client_pause",
               "client_kill_pubsub", "client_kill_normal")
# The service as the fault run configures it: short holds (abandoned orders expire inside the run),
# a gateway whose latency sits at its timeout (answers land on both sides), some declines, and no
# per-subject limits: every buyer comes from 127.0.0.1, and the run is about outcomes, not crowds.
SERVICE_ENV = {
    "SEATS_RATE_LIMIT_WRITES": "off",
    "SEATS_MAX_HELD_SEATS_PER_SUBJECT": "0",
    "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT": "0",
    "SEATS_HOLD_SECONDS": "3",
    "SEATS_PAYMENT_LATENCY_SECONDS": "0.29",
    "SEATS_PAYMENT_TIMEOUT_SECONDS": "0.3",
    "SEATS_PAYMENT_FAILURE_RATE": "0.2",
    "SEATS_PAYMENT_BACKOFF_SECONDS": "0.05",
}
ROWS, COLUMNS = 4, "ABCDEF"
POPULAR = 8  # the front seats half the buyers want: overlapping selections
ROTATE_SOLD_SHARE = 0.7  # a new flight opens once this share of seats was seen sold
ROTATE_CONFLICTS = 25  # ... or after this many refused holds in a row
POLL_SECONDS = 0.25
RETRY_PAUSE_SECONDS = 0.2
REQUEST_TIMEOUT_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class FaultConfig:
    """One fault run: how long, how many buyers, how often something breaks, how late is too late."""

    duration: float = 60.0
    buyers: int = 16
    seed: int = 1
    fault_every: tuple[float, float] = (0.6, 1.8)  # seconds between two faults (uniform)
    settle_timeout: float = 90.0
    # How long an order may stay open past its deadline (or a refund pending) while the sweeper's
    # worker is being killed and restarted: arq's restart backoff (<= 5 s) + a worker's start-up.
    bound_seconds: float = 15.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class FaultySystem:
    """redis-server (AOF everysec, noeviction), ``seats api`` and ``seats worker`` that the run may hurt."""

    data_dir: Path
    env: dict[str, str]
    preexec: Callable[[], None] | None = None
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers_started: int = 0

    @property
    def redis_url(self) -> str:
        """The data Redis."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        """The API."""
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Redis, then the API and one worker; returns once /readyz answers 200."""
        self.start_redis()
        self.api = self._python("api", "api.log")
        self.start_worker()
        wait_for_ready(self.base_url, [self.api], READY_TIMEOUT_SECONDS)

    def start_redis(self) -> None:
        """Start redis-server on its port and AOF directory (replaying the AOF) and wait for PING."""
        command = [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
                   "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log")]
        self.redis = subprocess.Popen(command, start_new_session=True, preexec_fn=self.preexec)  # noqa: PLW1509
        wait_for_redis(self.redis_url, self.redis, timeout=READY_TIMEOUT_SECONDS)

    def kill_redis(self) -> None:
        """SIGKILL redis-server: nothing is flushed but what the kernel already has."""
        self._kill(self.redis)

    def start_worker(self) -> None:
        """A new ``seats worker`` (supervisor + arq child)."""
        self.workers_started += 1
        self.worker = self._python("worker", f"worker-{self.workers_started}.log")

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group, mid-job or not."""
        self._kill(self.worker)

    def pause_worker(self, paused: bool) -> None:
        """SIGSTOP (or SIGCONT) the worker's process group."""
        if self.worker is not None and self.worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def heal(self) -> None:
        """Make sure Redis and a worker run (a fault may have left either down)."""
        if self.redis is None or self.redis.poll() is not None:
            self.start_redis()
        if self.worker is None or self.worker.poll() is not None:
            self.start_worker()

    def stop(self) -> None:
        """Stop everything that was started: nothing survives."""
        stop_all([p for p in (self.api, self.worker, self.redis, *self.retired) if p is not None])

    def _python(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "SEATS_REDIS_URL": self.redis_url, "SEATS_HOST": "127.0.0.1",
               "SEATS_PORT": str(self.api_port), "PYTHONUNBUFFERED": "1"}
        handle = (self.data_dir / log_name).open("wb")
        return subprocess.Popen([sys.executable, "-m", "service.cli", command], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self.preexec)  # noqa: PLW1509

    def _kill(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.retired.append(process)


@contextlib.contextmanager
def faulty_system(env: dict[str, str], preexec: Callable[[], None] | None = None) -> Iterator[FaultySystem]:
    """A started :class:`FaultySystem` in a temporary directory; everything stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="seats-faults-") as tmp:
        system = FaultySystem(Path(tmp), {**SERVICE_ENV, **env}, preexec)
        try:
            system.start()
            yield system
        finally:
            system.stop()


@dataclass
class Run:
    """What the buyers, the injector and the monitor share."""

    config: FaultConfig
    system: FaultySystem
    client: Client
    admin_token: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    history: History = field(default_factory=History)
    faults: Counter[str] = field(default_factory=Counter)
    flights: list[str] = field(default_factory=list)
    sold: Counter[str] = field(default_factory=Counter)
    refused_in_a_row: int = 0
    rotating: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: int = 0

    def clock(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    async def op(  # noqa: PLR0917 - who (process), what (f) on which order, and the request
        self, process: int, f: str, flight: str, order: str, method: str, path: str, *,
        body: object = None, token: str | None = None,
    ) -> Reply:
        """Invoke one operation and record it: ok (2xx), fail (4xx) or info (5xx / no answer)."""
        invoked = self.clock()
        reply = await self.client.call(f, method, path, json=body, token=token)
        seen, error = None, None
        if 200 <= reply.status < 300 and reply.body:
            payload = reply.json()
            seen = Seen.from_body(payload) if isinstance(payload, dict) and "state" in payload else None
        elif reply.status and reply.body:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                error = reply.json().get("error")
        kind = "ok" if 200 <= reply.status < 300 else "fail" if 400 <= reply.status < 500 else "info"
        self.history.add(process=process, f=f, flight=flight, order=order, invoked=invoked, completed=self.clock(),
                         type=kind, status=reply.status, seen=seen, error=error)
        return reply


async def run_faults(config: FaultConfig, preexec: Callable[[], None] | None = None,
                     history_path: Path | None = None) -> dict[str, Any]:
    """Spawn the system, run buyers and faults for ``config.duration`` s, settle, check; returns the report."""
    admin_token = secrets.token_urlsafe(16)
    env = {**config.env, "SEATS_ADMIN_TOKEN": admin_token}
    with faulty_system(env, preexec) as system:
        client = Client(system.base_url, Recorder(), connections=config.buyers + 8, timeout=REQUEST_TIMEOUT_SECONDS)
        run = Run(config, system, client, admin_token, random.Random(config.seed))  # noqa: S311 - reproducible
        try:
            await open_flight(run)
            load_until = run.started + config.duration
            settle_until = load_until + config.settle_timeout
            stop_monitor = asyncio.Event()
            monitor = asyncio.create_task(watch_orders(run, stop_monitor))
            buyers = [asyncio.create_task(buyer(run, index, load_until, settle_until))
                      for index in range(config.buyers)]
            await inject_faults(run, load_until)
            await asyncio.to_thread(system.heal)
            await asyncio.gather(*buyers)
            settled = await wait_settled(run, settle_until)
            stop_monitor.set()
            await monitor
            final = await read_final(run)
            verdict = check(run.history, final, int(config.bound_seconds * 1000))
            end_state = await check_all(system.redis_url, client, run.flights, settle_seconds=5.0)
        finally:
            await client.close()
        if history_path is not None:
            run.history.write(history_path)
        return report(run, verdict, end_state, final, settled)


async def open_flight(run: Run) -> None:
    """Create a fresh flight for the crowd (retrying while a fault makes the API answer 503)."""
    flight_id = f"FR-{run.config.seed}-{len(run.flights)}"
    for _ in range(100):
        reply = await run.client.call(None, "PUT", f"/flights/{flight_id}", json={"rows": ROWS, "columns": COLUMNS},
                                      token=run.admin_token)
        if reply.status in (200, 201):
            run.flights.append(flight_id)
            run.refused_in_a_row = 0
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not create flight {flight_id}")


async def rotate_if_full(run: Run, flight: str) -> None:
    """Open a new flight once the current one is mostly sold or nobody gets a seat any more."""
    capacity = ROWS * len(COLUMNS)
    if run.sold[flight] < ROTATE_SOLD_SHARE * capacity and run.refused_in_a_row < ROTATE_CONFLICTS:
        return
    async with run.rotating:
        if run.flights[-1] == flight:
            await open_flight(run)


async def buyer(run: Run, process: int, load_until: float, settle_until: float) -> None:
    """One buyer: sessions one after another until the load ends."""
    for number in itertools.count():
        if time.monotonic() >= load_until:
            return
        await session(run, process, f"{run.config.seed}-{process}-{number}", settle_until)


async def session(run: Run, process: int, order_id: str, settle_until: float) -> None:
    """Create, hold (retrying refusals), maybe swap, then pay and follow the order, cancel, or walk away."""
    run.sessions += 1
    rng, flight = run.rng, run.flights[-1]
    path = f"/orders/{order_id}"
    created = await run.op(process, "create", flight, order_id, "POST", "/orders",
                           body={"flightId": flight, "orderId": order_id})
    if created.status != 201:  # an unknown outcome leaves at most a PENDING order nobody holds a token for
        await asyncio.sleep(RETRY_PAUSE_SECONDS)  # as a client would before trying again
        return
    token = created.json()["token"]

    async def call(f: str, method: str, suffix: str = "", body: object = None) -> Reply:
        return await run.op(process, f, flight, order_id, method, path + suffix, body=body, token=token)

    seats: list[str] = []
    for _ in range(3):
        wanted = pick(rng, flight)
        held = await call("hold", "POST", "/seats", {"seats": wanted})
        if held.status == 200:
            seats, run.refused_in_a_row = wanted, 0
            break
        run.refused_in_a_row += held.conflict
        if not held.conflict:
            await call("read", "GET")  # the outcome may be unknown: look
            break
    if not seats:
        await call("cancel", "DELETE")
        await rotate_if_full(run, flight)
        return
    if rng.random() < 0.2:
        swapped = list(dict.fromkeys([seats[0], *pick(rng, flight)]))
        if (await call("hold", "POST", "/seats", {"seats": swapped})).status == 200:
            seats = swapped
    roll = rng.random()
    if roll < 0.1:
        await call("cancel", "DELETE")
        return
    if roll < 0.25:
        return  # walks away: the hold lapses
    await call("pay", "POST", "/payment", {"code": "12345"})
    state = await follow(run, call, settle_until)
    if state == "CONFIRMED":
        run.sold[flight] += len(seats)
        await rotate_if_full(run, flight)


async def follow(run: Run, call: Callable[..., Awaitable[Reply]], until: float) -> str:
    """Read the order until it has settled (terminal, no refund pending) or ``until``; its last state."""
    state = "PAYING"
    while time.monotonic() < until:
        await asyncio.sleep(POLL_SECONDS)
        reply = await call("read", "GET")
        if reply.status == 200:
            order = reply.json()
            state = order["state"]
            if state in ("CONFIRMED", "FAILED", "EXPIRED", "CANCELLED") and order["paymentStatus"] != "refunding":
                break
    return state


def pick(rng: random.Random, flight: str) -> list[str]:
    """1-2 seats, half the time among the popular front seats (selections overlap)."""
    ids = seat_ids(ROWS, COLUMNS)
    pool = ids[:POPULAR] if rng.random() < 0.5 else ids
    return rng.sample(pool, rng.randint(1, 2))


async def inject_faults(run: Run, until: float) -> None:
    """One fault every ``fault_every`` s until ``until``, the kinds drawn in shuffled rounds."""
    admin = aioredis.Redis.from_url(run.system.redis_url, socket_timeout=2, socket_connect_timeout=1)
    rng = random.Random(run.config.seed + 1)  # noqa: S311 - reproducible fault schedule
    kinds: list[str] = []
    try:
        while True:
            await asyncio.sleep(rng.uniform(*run.config.fault_every))
            if time.monotonic() >= until:
                return
            if not kinds:
                kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
            kind = kinds.pop()
            try:
                await FAULTS[kind](run, admin, rng)
                run.faults[kind] += 1
            except (RedisError, OSError):
                run.faults[f"{kind} (Redis was down)"] += 1
    finally:
        with contextlib.suppress(RedisError, OSError):
            await admin.client_unpause()
        await admin.aclose()


async def _worker_kill(run: Run, _admin: aioredis.Redis, rng: random.Random) -> None:
    await asyncio.to_thread(run.system.kill_worker)
    await asyncio.sleep(rng.uniform(0.2, 1.0))
    await asyncio.to_thread(run.system.start_worker)


async def _worker_pause(run: Run, _admin: aioredis.Redis, rng: random.Random) -> None:
    run.system.pause_worker(True)
    try:
        await asyncio.sleep(rng.uniform(0.5, 4.0))
    finally:
        run.system.pause_worker(False)


async def _redis_kill(run: Run, _admin: aioredis.Redis, rng: random.Random) -> None:
    await asyncio.to_thread(run.system.kill_redis)
    await asyncio.sleep(rng.uniform(0.2, 1.0))
    await asyncio.to_thread(run.system.start_redis)


async def _script_flush(_run: Run, admin: aioredis.Redis, _rng: random.Random) -> None:
    await admin.script_flush()


async def _client_pause(_run: Run, admin: aioredis.Redis, rng: random.Random) -> None:
    await admin.client_pause(rng.randint(200, 600), all=rng.random() < 0.5)  # all=False: writes only


async def _client_kill_pubsub(_run: Run, admin: aioredis.Redis, _rng: random.Random) -> None:
    await admin.client_kill_filter(_type="pubsub")


async def _client_kill_normal(_run: Run, admin: aioredis.Redis, _rng: random.Random) -> None:
    await admin.client_kill_filter(_type="normal", skipme=True)


FAULTS: dict[str, Callable[[Run, aioredis.Redis, random.Random], Awaitable[None]]] = {
    "worker_kill": _worker_kill, "worker_pause": _worker_pause, "redis_kill": _redis_kill,
    "script_flush": _script_flush, "client_pause": _client_pause, "client_kill_pubsub": _client_kill_pubsub,
    "client_kill_normal": _client_kill_normal,
}


async def watch_orders(run: Run, stop: asyncio.Event, interval: float = 0.5) -> None:
    """Sample every unsettled order (open, or refund pending) by Redis's clock until ``stop``."""
    client = aioredis.Redis.from_url(run.system.redis_url, decode_responses=True, socket_timeout=2,
                                     socket_connect_timeout=1)
    try:
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                await sample_orders(run, client)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await client.aclose()


async def sample_orders(run: Run, client: aioredis.Redis) -> int:
    """One monitor pass; returns how many unsettled orders it saw."""
    unsettled = 0
    for flight in list(run.flights):
        orders = await read_orders(client, flight)
        now = await redis_ms(client)
        for order_id, fields in orders.items():
            state, payment_status = fields.get("state", ""), fields.get("paymentStatus", "")
            if state in ("SEATS_SELECTED", "PAYING") or payment_status == "refunding":
                unsettled += 1
                deadline = fields.get("holdExpiresAt") or ""
                run.history.samples.append(Sample(now, flight, order_id, state, int(deadline) if deadline else None,
                                                  payment_status, int(fields.get("updatedAt") or now)))
    return unsettled


async def wait_settled(run: Run, until: float) -> bool:
    """Wait until no order of the run is open or owes a refund; False if ``until`` came first."""
    client = aioredis.Redis.from_url(run.system.redis_url, decode_responses=True, socket_timeout=2)
    try:
        while time.monotonic() < until:
            with contextlib.suppress(RedisError, OSError):
                if await sample_orders(run, client) == 0:
                    return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await client.aclose()


async def read_final(run: Run) -> FinalState:
    """Every order, seat and gateway record the run left, and the gateway's books."""
    client = aioredis.Redis.from_url(run.system.redis_url, decode_responses=True)
    try:
        orders: dict[tuple[str, str], dict[str, str]] = {}
        seats: dict[tuple[str, str], str] = {}
        for flight in run.flights:
            orders.update({(flight, o): f for o, f in (await read_orders(client, flight)).items()})
            values = await read_seats(client, flight, seat_ids(ROWS, COLUMNS))
            seats.update({(flight, seat): value for seat, value in values.items()})
        records = [await client.hgetall(name) async for name in client.scan_iter(match=keys.GATEWAY_RECORDS)]
        books = await client.hmget(keys.GATEWAY_BOOKS, ["charged", "refunded"])
        return FinalState(orders, seats, records, (int(books[0] or 0), int(books[1] or 0)))
    finally:
        await client.aclose()


def report(run: Run, verdict: Verdict, end_state: InvariantReport, final: FinalState, settled: bool) -> dict[str, Any]:
    """The run's figures: operations, faults, what the checker and the end-state check found."""
    states = Counter(fields.get("state", "?") for fields in final.orders.values())
    confirmed = states.get("CONFIRMED", 0)
    violations = verdict.as_dict()["violation_count"] + len(end_state.violations) + (not settled)
    return {
        "config": {"duration_s": run.config.duration, "buyers": run.config.buyers, "seed": run.config.seed,
                   "fault_every_s": list(run.config.fault_every), "bound_s": run.config.bound_seconds,
                   "settings": {**SERVICE_ENV, **run.config.env}},
        "history": {**run.history.summary(), "sessions": run.sessions, "flights": len(run.flights)},
        "faults": dict(sorted(run.faults.items())),
        "faults_total": sum(run.faults.values()),
        "workers_started": run.system.workers_started,
        "orders": dict(sorted(states.items())),
        "money": {"charged": final.books[0], "refunded": final.books[1], "confirmed": confirmed},
        "settled": settled,
        "checker": verdict.as_dict(),
        "end_state": end_state.as_dict(),
        "violations": violations,
    }


def table(result: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    checker = result["checker"]
    lines = [
        f"fault run: {result['config']['duration_s']:g} s, {result['config']['buyers']} buyers, "
        f"seed {result['config']['seed']}",
        f"operations: {result['history']['operations']} ({result['history']['sessions']} sessions on "
        f"{result['history']['flights']} flights), monitor samples: {result['history']['samples']}",
        f"faults injected: {result['faults_total']} " + ", ".join(f"{k} {v}" for k, v in result["faults"].items()),
        "orders: " + ", ".join(f"{k} {v}" for k, v in result["orders"].items()),
        f"money: charged {result['money']['charged']}, refunded {result['money']['refunded']}, "
        f"CONFIRMED {result['money']['confirmed']}",
        "checks: " + ", ".join(f"{k} {v}" for k, v in checker["checked"].items())
        + f"; max lateness {checker['max_lateness_ms'] / 1000:.1f} s (bound {result['config']['bound_s']:g} s)",
        f"violations: {result['violations']}",
    ]
    for check_name, found in checker["violations"].items():
        lines += [f"  {check_name}: {message}" for message in found[:10]]
    lines += [f"  end state: {message}" for message in result["end_state"]["violations"][:10]]
    if not result["settled"]:
        lines.append("  the run did not settle in time")
    return "\n".join(lines)
