"""Redis Cluster hurt while the service works (issue 11, spec §12): a primary killed, a graceful failover, a
slot migrated, each during contended holds and payments on one busy flight, with SSE watchers connected.

Each test starts a cluster of its own (``local_cluster()``; never the session one) and real ``seats api`` +
``seats worker`` processes on it, runs buyers racing for the same seats and paying, hurts the shard that
serves the flight, and then checks what the contract promises: no seat sold twice, every confirmation a
client saw still stands, the watchers that stayed connected converge to the seat map, and the errors of the
window are 503 ``store_unavailable`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from service.store import keys
from service.store.transport import slot_of
from tests.cluster import LocalCluster, cluster_env, local_cluster
from tests.conftest import Processes
from tests.helpers import auth
from tests.sse import Watch, apply

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

FLIGHT = "BUSY"
LAYOUT = {"rows": 25, "columns": "ABCDEF"}  # 150 seats: enough for ~15 s of buyers, few enough to collide
ADMIN = {"Authorization": "Bearer admin-secret"}
BUYERS = 6
WATCHERS = 3
FRONT = 6  # buyers pick among the first FRONT available seats: they collide on purpose
TERMINAL = {"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"}
# The refusals a buyer may meet, by kind of request: a seat someone else took first. Nothing else is a
# right answer to these buyers (they only hold seats of their own live orders and pay them once).
REFUSALS = {"hold": {(409, "seats_unavailable")}}


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A 6-node cluster of this test's own: it will be hurt."""
    with local_cluster() as cluster:
        yield cluster


# --- what the clients saw -------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every answer the buyers got, the orders they made and the confirmations they saw."""

    statuses: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # (kind, status, error code)
    wrong: list[str] = field(default_factory=list)  # answers the contract forbids
    tokens: dict[str, str] = field(default_factory=dict)  # order id -> token
    confirmed: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)  # seen: seats, confirmation
    outages: list[float] = field(default_factory=list)  # monotonic times of 503 answers
    slowest: float = 0.0  # the longest a request took (s): one that met the fault waited for it

    def record(self, kind: str, response: httpx.Response) -> None:
        code = ""
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = str(response.json()["error"])
        self.statuses[(kind, response.status_code, code)] += 1
        if response.status_code == 503:
            self.outages.append(time.monotonic())
            if code != "store_unavailable":
                self.wrong.append(f"{kind}: 503 {code} {response.text[:200]}")
        elif response.status_code >= 400 and (response.status_code, code) not in REFUSALS.get(kind, set()):
            self.wrong.append(f"{kind}: {response.status_code} {code} {response.text[:200]}")

    def saw(self, order: dict[str, Any]) -> None:
        """An order as an answer or an order event showed it: a CONFIRMED is remembered for good."""
        if order.get("state") == "CONFIRMED":
            self.confirmed[order["orderId"]] = (tuple(sorted(order["seats"])), order["confirmationId"])

    def count(self, kind: str, status: int) -> int:
        return sum(n for (k, s, _), n in self.statuses.items() if k == kind and s == status)


async def send(http: httpx.AsyncClient, ledger: Ledger, kind: str, method: str, url: str,
               **kwargs: Any) -> httpx.Response | None:
    """One request, recorded; a transport error (the API dropped the connection) is a wrong answer too."""
    started = time.monotonic()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        ledger.wrong.append(f"{kind}: {exc!r}")
        return None
    ledger.slowest = max(ledger.slowest, time.monotonic() - started)
    ledger.record(kind, response)
    return response


# --- the buyers -----------------------------------------------------------------------------------


async def buyer(http: httpx.AsyncClient, ledger: Ledger, rng: random.Random, stop: asyncio.Event) -> None:
    """Until ``stop``: pick 1-2 of the first available seats, order them, then pay (or now and then cancel)
    and follow the order to its end, on its stream or by polling."""
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.05, 0.25))
        listing = await send(http, ledger, "map", "GET", f"/flights/{FLIGHT}/seats")
        if listing is None or listing.status_code != 200:
            continue
        free = [seat for seat, view in listing.json()["seats"].items() if view["status"] == "available"]
        if not free:
            continue
        created = await send(http, ledger, "create", "POST", "/orders", json={"flightId": FLIGHT})
        if created is None or created.status_code != 201:
            continue
        order_id, token = created.json()["orderId"], created.json()["token"]
        ledger.tokens[order_id] = token
        seats = rng.sample(free[:FRONT], min(len(free), rng.choice((1, 2))))
        held = await send(http, ledger, "hold", "POST", f"/orders/{order_id}/seats", json={"seats": seats},
                          headers=auth(token))
        if held is None or held.status_code != 200:
            continue
        if rng.random() < 0.2:
            await send(http, ledger, "cancel", "DELETE", f"/orders/{order_id}", headers=auth(token))
            continue
        paid = await send(http, ledger, "pay", "POST", f"/orders/{order_id}/payment", json={"code": "12345"},
                          headers=auth(token))
        if paid is not None and paid.status_code in (202, 503):  # 503: maybe sent; the order will say
            await follow(http, ledger, order_id, token, on_stream=rng.random() < 0.5)


async def follow(http: httpx.AsyncClient, ledger: Ledger, order_id: str, token: str, *, on_stream: bool,
                 timeout: float = 8.0) -> None:
    """Watch the order until it ends (its stream's events, else GET every 50 ms), noting what it showed."""
    deadline = time.monotonic() + timeout
    if on_stream:
        watch = await Watch(http, f"/orders/{order_id}/events", auth(token)).open()
        ledger.statuses[("order-stream", watch.status or 0, "")] += 1
        if watch.status not in (200, 503):
            ledger.wrong.append(f"order-stream: {watch.status}")
        try:
            with contextlib.suppress(AssertionError):
                await watch.until(lambda events: any(e.json()["state"] in TERMINAL for e in events), timeout)
        finally:
            await watch.close()
        for event in watch.data_events():
            ledger.saw(event.json())
        if any(e.json()["state"] in TERMINAL for e in watch.data_events()):
            return
    while time.monotonic() < deadline:
        response = await send(http, ledger, "read", "GET", f"/orders/{order_id}", headers=auth(token))
        if response is not None and response.status_code == 200:
            ledger.saw(response.json())
            if response.json()["state"] in TERMINAL:
                return
        await asyncio.sleep(0.05)


# --- one run: load, a fault, the checks -----------------------------------------------------------


@dataclass
class Outcome:
    """What a run measured (for the report and the assertions)."""

    ledger: Ledger
    fault_seconds: float  # how long the fault itself took (kill: until the cluster settled again)
    outage_seconds: float  # first to last 503 answer (0 without one)
    confirmed_after_fault: int  # confirmations seen after the fault ended: the service kept working
    watcher_snapshots: list[int]  # snapshots each watcher got (the first, then one per resync)


async def run(base: str, cluster: LocalCluster, fault: Callable[[], None], *, before: float = 2.5,
              after: float = 3.0) -> Outcome:
    """Buyers and watchers on the busy flight; ``fault`` (blocking, run in a thread) ``before`` s into the
    load; the load goes on ``after`` s once it returned; then every check of the contract."""
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10.0, read=None),
                                 limits=httpx.Limits(max_connections=200)) as http:
        ledger = Ledger()
        watches = [await Watch(http, f"/flights/{FLIGHT}/events").open() for _ in range(WATCHERS)]
        for watch in watches:
            await watch.until(lambda events: len(events) >= 1)
        stop = asyncio.Event()
        buyers = [asyncio.create_task(buyer(http, ledger, random.Random(i), stop)) for i in range(BUYERS)]
        try:
            await asyncio.sleep(before)
            assert ledger.count("hold", 200) > 0, f"no hold went through before the fault: {ledger.statuses}"
            await next_confirmation(ledger)  # strike right after a client saw one: the freshest must survive
            started = time.monotonic()
            await asyncio.to_thread(fault)
            ended = time.monotonic()
            confirmed_before = set(ledger.confirmed)
            await asyncio.to_thread(wait_subscribed_on_owner, cluster)
            await asyncio.sleep(after)
        finally:
            stop.set()
            ends = await asyncio.wait_for(asyncio.gather(*buyers, return_exceptions=True), 30)
        assert not [end for end in ends if end is not None], f"buyers failed: {ends}"
        await settle(http, ledger)
        seat_map = await read_map(http)
        check_no_seat_sold_twice(ledger, seat_map, await final_orders(http, ledger))
        await check_watchers_converge(http, watches)
        assert not ledger.wrong, f"answers the contract forbids: {ledger.wrong[:10]}"
        outage = ledger.outages[-1] - ledger.outages[0] if ledger.outages else 0.0
        outcome = Outcome(ledger, ended - started, outage, len(set(ledger.confirmed) - confirmed_before),
                          [[e.event for e in w.data_events()].count("snapshot") for w in watches])
        for watch in watches:
            await watch.close()
        print(f"fault {outcome.fault_seconds:.2f} s, 503s over {outcome.outage_seconds:.2f} s, slowest answer "
              f"{ledger.slowest:.2f} s, confirmed "
              f"{len(ledger.confirmed)} ({outcome.confirmed_after_fault} after it), snapshots per watcher "
              f"{outcome.watcher_snapshots}, answers {dict(ledger.statuses)}")
        return outcome


async def next_confirmation(ledger: Ledger, timeout: float = 10.0) -> None:
    """Until a client sees a confirmation it had not seen before."""
    seen = len(ledger.confirmed)
    deadline = time.monotonic() + timeout
    while len(ledger.confirmed) == seen:
        assert time.monotonic() < deadline, "no payment was confirmed"
        await asyncio.sleep(0.005)


def wait_subscribed_on_owner(cluster: LocalCluster, timeout: float = 10.0) -> None:
    """Until the API's one subscription to the flight's channel sits on the primary serving its slot now,
    and on no other node (a moved channel is subscribed again where it lives, not twice)."""
    channel = keys.events_channel(FLIGHT)
    deadline = time.monotonic() + timeout
    while True:
        owner = cluster.primary_of(keys.flight(FLIGHT))
        counts = {n.port: int(n.client().pubsub_shardnumsub(channel)[0][1]) for n in cluster.alive()}
        if counts[owner.port] == 1 and sum(counts.values()) == 1:
            return
        assert time.monotonic() < deadline, f"the channel's subscribers by node: {counts} (owner {owner.port})"
        time.sleep(0.1)


async def settle(http: httpx.AsyncClient, ledger: Ledger, timeout: float = 30.0) -> None:
    """Until no order is PAYING any more (jobs retried after the fault, the sweeper's recovery)."""
    deadline = time.monotonic() + timeout
    pending = set(ledger.tokens)
    while pending:
        for order_id in list(pending):
            response = await http.get(f"/orders/{order_id}", headers=auth(ledger.tokens[order_id]))
            if response.status_code == 200:
                ledger.saw(response.json())
                if response.json()["state"] != "PAYING":
                    pending.discard(order_id)
            elif response.status_code == 404:
                pending.discard(order_id)
        assert time.monotonic() < deadline, f"orders still PAYING {timeout} s after the load: {sorted(pending)}"
        if pending:
            await asyncio.sleep(0.2)


async def read_map(http: httpx.AsyncClient) -> dict[str, Any]:
    """The public seat map (the fault is over: it answers)."""
    response = await http.get(f"/flights/{FLIGHT}/seats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def final_orders(http: httpx.AsyncClient, ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Every order the buyers created, as it stands now (404: lost with the primary, spec §12 allows it)."""
    orders = {}
    for order_id, token in ledger.tokens.items():
        response = await http.get(f"/orders/{order_id}", headers=auth(token))
        assert response.status_code in (200, 404), response.text
        if response.status_code == 200:
            orders[order_id] = response.json()
    return orders


def check_no_seat_sold_twice(ledger: Ledger, seat_map: dict[str, Any], orders: dict[str, dict[str, Any]]) -> None:
    """Confirmed orders own disjoint seats, each shown sold; every confirmation a client saw still stands."""
    owner: dict[str, str] = {}
    for order_id, order in orders.items():
        if order["state"] != "CONFIRMED":
            continue
        for seat in order["seats"]:
            assert seat not in owner, f"seat {seat} sold to {owner[seat]} and {order_id}"
            owner[seat] = order_id
            assert seat_map["seats"][seat]["status"] == "confirmed", (seat, seat_map["seats"][seat])
    sold = {seat for seat, view in seat_map["seats"].items() if view["status"] == "confirmed"}
    assert sold == set(owner), f"seats sold without a confirmed order of ours: {sorted(sold - set(owner))}"
    for order_id, (seats, confirmation) in ledger.confirmed.items():
        now = orders.get(order_id)
        assert now is not None, f"order {order_id} was seen CONFIRMED and is gone"
        assert (now["state"], tuple(sorted(now["seats"])), now["confirmationId"]) == ("CONFIRMED", seats,
                                                                                       confirmation), now
    assert ledger.confirmed, "no confirmation at all: the run proved nothing"


async def check_watchers_converge(http: httpx.AsyncClient, watches: list[Watch], timeout: float = 10.0) -> None:
    """Every watcher is still connected and its applied map (and last hash) equal the seat map."""
    deadline = time.monotonic() + timeout
    while True:
        current = await read_map(http)
        behind = [i for i, w in enumerate(watches)
                  if apply({}, w.data_events()) != current["seats"] or last_hash(w) != current["hash"]]
        if not behind:
            break
        assert time.monotonic() < deadline, f"watchers {behind} never reached version {current['version']}"
        await asyncio.sleep(0.2)
    for i, watch in enumerate(watches):
        assert not watch.ended.is_set(), f"watcher {i} was disconnected ({watch.error!r})"


def last_hash(watch: Watch) -> Any:
    """The hash of the last map a watcher got (every snapshot and seats event carries it)."""
    return watch.data_events()[-1].json().get("hash")


def start_service(processes: Processes, cluster: LocalCluster, queue_url: str) -> str:
    """One ``seats api`` and one ``seats worker`` on ``cluster``; the busy flight created; the API's URL."""
    env = {**cluster_env(cluster.url, queue_url), "SEATS_PAYMENT_LATENCY_SECONDS": "0.05"}
    base = processes.api(env=env)
    processes.worker(env=env)
    with httpx.Client(base_url=base, timeout=10) as http:
        response = http.put(f"/flights/{FLIGHT}", json=LAYOUT, headers=ADMIN)
        assert response.status_code == 201, response.text
    return base


# --- the faults -------------------------------------------------------------------------------------


def test_primary_killed_during_holds_and_payments(processes: Processes, fresh_cluster: LocalCluster,
                                                  redis_url: str) -> None:
    """kill -9 of the primary serving a busy flight: its replica takes over; no seat is sold twice, every
    confirmation seen stands, connected watchers converge, and the window's errors are 503s only."""
    base = start_service(processes, fresh_cluster, redis_url)
    victim = fresh_cluster.primary_of(keys.flight(FLIGHT))
    successor = fresh_cluster.replica_of(victim)

    def kill() -> None:
        victim.kill()
        fresh_cluster.wait_ok()

    outcome = asyncio.run(run(base, fresh_cluster, kill))
    assert fresh_cluster.primary_of(keys.flight(FLIGHT)) is successor
    # The kill met requests: they waited for the new primary (up to the 2 s retry budget), or got a 503.
    assert outcome.ledger.outages or outcome.ledger.slowest > 1.0, "the fault missed the load"
    assert outcome.confirmed_after_fault > 0, "nothing was confirmed after the failover"


def test_graceful_failover_during_holds_and_payments(processes: Processes, fresh_cluster: LocalCluster,
                                                     redis_url: str) -> None:
    """CLUSTER FAILOVER on the replica of the busy flight's primary: the same promises hold."""
    base = start_service(processes, fresh_cluster, redis_url)
    primary = fresh_cluster.primary_of(keys.flight(FLIGHT))
    replica = fresh_cluster.replica_of(primary)

    def failover() -> None:
        fresh_cluster.failover(replica)
        fresh_cluster.wait_ok()

    outcome = asyncio.run(run(base, fresh_cluster, failover))
    assert fresh_cluster.primary_of(keys.flight(FLIGHT)) is replica
    assert outcome.confirmed_after_fault > 0, "nothing was confirmed after the failover"


def test_slot_migrated_during_holds_with_watchers(processes: Processes, fresh_cluster: LocalCluster,
                                                  redis_url: str) -> None:
    """The busy flight's slot moves to another primary (IMPORTING/MIGRATING, MIGRATE a few keys at a time,
    SETSLOT NODE) while holds run: the same promises hold, and the watchers follow the channel there."""
    base = start_service(processes, fresh_cluster, redis_url)
    slot = slot_of(keys.flight(FLIGHT))
    source = fresh_cluster.primary_of_slot(slot)
    target = next(n for n in fresh_cluster.primaries() if n is not source)
    moved: list[int] = []

    def migrate() -> None:
        moved.append(fresh_cluster.migrate_slot(slot, target, batch=5, pause=0.02))
        fresh_cluster.wait_ok()

    outcome = asyncio.run(run(base, fresh_cluster, migrate))
    assert fresh_cluster.primary_of_slot(slot) is target and moved[0] > 0
    print(f"{moved[0]} keys migrated")
    assert outcome.confirmed_after_fault > 0, "nothing was confirmed after the slot moved"


def test_script_runs_on_a_promoted_replica_before_the_slot_map_catches_up(
    fresh_cluster: LocalCluster, make_client: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a failover, while the process's slot map still names the old primary (its refresh runs in
    the background), a script reaches the promoted replica, whose script cache is empty (Redis 7 does not
    replicate SCRIPT LOAD), and runs there: 201, never a 500 for NOSCRIPT."""
    client = make_client(redis_url=fresh_cluster.url, redis_cluster=True, queue_redis_url=redis_url)
    assert client.post("/orders", json={"flightId": "FL-001"}).status_code == 201
    primary = fresh_cluster.primary_of(keys.flight("FL-001"))
    replica = fresh_cluster.replica_of(primary)
    fresh_cluster.failover(replica)
    fresh_cluster.wait_ok()
    transport = client.app.state.services.store.transport
    monkeypatch.setattr(transport, "_refresh_soon", lambda: None)  # the MOVED's map refresh has not finished yet

    created = client.post("/orders", json={"flightId": "FL-001"})
    assert created.status_code == 201, created.text
    assert fresh_cluster.primary_of(keys.flight("FL-001")) is replica
