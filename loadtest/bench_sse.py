"""SSE fan-out benchmark: N watchers on one ``seats api`` process while seats are taken, open loop.

For each watcher count it starts a private redis-server and one ``seats api`` (no worker), opens
N flight streams from client processes (raw asyncio sockets, in their own processes so the
client's CPU is not the API's), then *offers* ``rate`` changes per second for ``duration``
seconds, open loop: change ``i`` is requested at ``start + i / rate`` whether or not the earlier
ones were answered (10 orders each swapping its hold between two seats: one flight version per
change). It reports:

* changes achieved per second (changes made / time until the last one was answered): below the
  offered rate when the process cannot keep up;
* hold response time p50 / p99 / max (the ``POST /orders/{id}/seats`` that makes each change);
* delivery latency p50 / p99 / max, from when the change was *requested* (what a watcher sees)
  and from the ``lastUpdated`` the Lua script stamped when it ran;
* lost deliveries: every stream is checked for every version of the change phase, once, in order;
* API CPU per delivery (the API's CPU seconds over the change phase / deliveries) and memory per stream;
* the bare broadcast yardstick, in the same run right after: a minimal asyncio server holding the
  same number of connections from the same clients, writing the same pre-encoded frame bytes to
  each at the same rate; its CPU per delivery and the ratio API / yardstick.

Everything runs on 127.0.0.1 and every loop is bounded in time.

    python -m loadtest.bench_sse --subscribers 1000 --subscribers 5000 --report bench-sse.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis

from loadtest.system import cpu_seconds, spawn_system
from service.store import keys

FLIGHT = "FL-001"
SEATS = [f"{row}{letter}" for row in range(1, 6) for letter in "ABCDEF"]  # the default flight's 30 seats
ORDERS = 10  # each swaps its hold between two seats of its own
READY_TIMEOUT = 180.0  # seconds for N streams to connect and get their snapshot
GRACE = 3.0  # seconds after the last change for deliveries to arrive
HOLD_TIMEOUT = 60.0  # a hold not answered within this is counted as failed
# Every client here is one address (one subject): the per-subject caps and write limiter would
# measure themselves, not the fan-out (``bench_http`` measures what they cost).
NO_CAPS = {"SEATS_RATE_LIMIT_WRITES": "off", "SEATS_MAX_STREAMS_PER_SUBJECT": "0",
           "SEATS_MAX_HELD_SEATS_PER_SUBJECT": "0", "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT": "0"}
Arrivals = list[tuple[list[bytes], list[float]]]  # per stream: event ids and arrival times


# --- subscriber processes ------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """One raw SSE connection that only records when each ``id:`` line arrives (cheap on purpose)."""

    def __init__(self, request: bytes, on_first: Callable[[], None], sample: list[bytes] | None) -> None:
        self._request = request
        self._on_first: Callable[[], None] | None = on_first
        self._sample = sample  # the first ``seats`` event's bytes land here (the yardstick writes them)
        self._buffer = b""
        self.ids: list[bytes] = []
        self.times: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for index, line in enumerate(lines):
            if line.startswith(b"id: "):
                self.ids.append(line[4:])
                self.times.append(now)
                if self._on_first is not None:
                    self._on_first()
                    self._on_first = None
                elif self._sample is not None and index + 2 < len(lines) and lines[index + 1] == b"event: seats":
                    self._sample.append(lines[index + 2].removeprefix(b"data: "))
                    self._sample = None


async def _subscribe(port: int, path: str, count: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    started = asyncio.Event()
    ready = 0
    sample: list[bytes] = []

    def first() -> None:
        nonlocal ready
        ready += 1
        if ready == count:
            started.set()

    transports: list[asyncio.BaseTransport] = []
    subscribers: list[Subscriber] = []
    for index in range(count):
        transport, subscriber = await loop.create_connection(
            lambda: Subscriber(request, first, sample if not subscribers else None), "127.0.0.1", port)
        transports.append(transport)
        subscribers.append(subscriber)
        if index % 100 == 99:
            await asyncio.sleep(0.02)  # stay under the listen backlog
    await asyncio.wait_for(started.wait(), READY_TIMEOUT)
    conn.send(("ready", count))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    conn.send(("result", [(s.ids, s.times) for s in subscribers], sample[:1]))
    for open_transport in transports:
        open_transport.close()


def subscriber_process(port: int, path: str, count: int, conn: Connection) -> None:
    """Entry point of one client process: ``count`` streams until told to stop."""
    try:
        import uvloop

        uvloop.run(_subscribe(port, path, count, conn))
    except ImportError:
        asyncio.run(_subscribe(port, path, count, conn))


def start_subscribers(port: int, path: str, subscribers: int, processes: int) -> list[tuple[Connection, Any]]:
    """Client processes holding ``subscribers`` streams; returns once every stream got its first event."""
    context = multiprocessing.get_context("spawn")
    clients = []
    for index in range(processes):
        share = subscribers // processes + (1 if index < subscribers % processes else 0)
        parent, child = context.Pipe()
        worker = context.Process(target=subscriber_process, args=(port, path, share, child), daemon=True)
        worker.start()
        clients.append((parent, worker))
    for pipe, worker in clients:
        deadline = time.monotonic() + READY_TIMEOUT
        while not pipe.poll(0.5):
            if not worker.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("subscribers did not connect in time")
        pipe.recv()
    return clients


def stop_subscribers(clients: list[tuple[Connection, Any]]) -> tuple[Arrivals, bytes | None]:
    """Stop the client processes; every stream's (ids, arrival times), and one ``seats`` event's data line."""
    arrivals: Arrivals = []
    sample: bytes | None = None
    for pipe, _ in clients:
        pipe.send("stop")
    for pipe, worker in clients:
        if not pipe.poll(60):
            raise RuntimeError("subscriber results did not arrive")
        _, streams, samples = pipe.recv()
        arrivals.extend(streams)
        sample = sample or (samples[0] if samples else None)
        worker.join(10)
    return arrivals, sample


# --- the bare broadcast yardstick ----------------------------------------------------------------


class _Bare(asyncio.Protocol):
    def __init__(self, on_request: Callable[[asyncio.WriteTransport], None]) -> None:
        self._on_request = on_request
        self._head = b""
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            self._on_request(self._transport)
            self._transport = None


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


async def _bare_server(port_pipe: Connection) -> None:
    """Accept SSE requests, answer each with headers and a first event; on ("go", data, rate, changes)
    write one frame (the same bytes for every connection, framed once) to every connection per tick."""
    loop = asyncio.get_running_loop()
    streams: list[asyncio.WriteTransport] = []
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")

    def accept(transport: asyncio.WriteTransport) -> None:
        transport.write(head + _chunk(b"retry: 1000\n\nid: y-0\nevent: snapshot\ndata: {}\n\n"))
        streams.append(transport)

    server = await loop.create_server(lambda: _Bare(accept), "127.0.0.1", 0, backlog=4096)
    port_pipe.send(server.sockets[0].getsockname()[1])
    _, data, rate, changes = await loop.run_in_executor(None, port_pipe.recv)
    started = loop.time()
    for i in range(1, changes + 1):
        await asyncio.sleep(max(0.0, started + (i - 1) / rate - loop.time()))
        frame = _chunk(b"id: y-%d\nevent: seats\ndata: %s\n\n" % (i, data))
        for transport in streams:
            if not transport.is_closing():
                transport.write(frame)
    await loop.run_in_executor(None, port_pipe.recv)  # "stop"
    server.close()


def bare_process(port_pipe: Connection) -> None:
    """Entry point of the yardstick server process."""
    import uvloop

    uvloop.run(_bare_server(port_pipe))


def run_yardstick(subscribers: int, processes: int, rate: float, changes: int, data: bytes) -> dict[str, Any]:
    """The same clients and frame bytes against the bare broadcast server: its CPU per delivery."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=bare_process, args=(child,), daemon=True)
    server.start()
    try:
        port = parent.recv()
        clients = start_subscribers(port, "/events", subscribers, processes)
        cpu_before, started = cpu_seconds(cast(int, server.pid)), time.time()
        parent.send(("go", data, rate, changes))
        time.sleep(changes / rate + GRACE)
        cpu_used = cpu_seconds(cast(int, server.pid)) - cpu_before
        arrivals, _ = stop_subscribers(clients)
        parent.send("stop")
    finally:
        server.join(5)
        if server.is_alive():
            server.kill()
    delays: list[float] = []
    lost = deliveries = 0
    for ids, times in arrivals:
        got = [(int(i.rpartition(b"-")[2]), t) for i, t in zip(ids, times, strict=True)][1:]
        deliveries += len(got)
        lost += max(0, changes - len(got))
        delays.extend(t - (started + (v - 1) / rate) for v, t in got)
    return {"deliveries": deliveries, "lost": lost,
            "latency_ms": _summary(delays),
            "cpu_per_delivery_us": round(1e6 * cpu_used / max(1, deliveries), 1)}


# --- the change driver (open loop) ---------------------------------------------------------------


async def _hold(session: aiohttp.ClientSession, base: str, order: tuple[str, str], seat: str,
                ) -> tuple[float, float, int]:
    started = time.time()
    try:
        async with session.post(f"{base}/orders/{order[0]}/seats", json={"seats": [seat]},
                                headers={"Authorization": f"Bearer {order[1]}"}) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    return started, time.time(), status


async def drive(base: str, orders: list[tuple[str, str]], rate: float, changes: int
                ) -> list[tuple[int, str, float, float, int]]:
    """Offer ``changes`` swaps at ``rate`` per second whatever the answers; each as (order index,
    seat, requested, answered, status)."""
    timeout = aiohttp.ClientTimeout(total=HOLD_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks: list[tuple[int, str, asyncio.Task[tuple[float, float, int]]]] = []
        for i in range(changes):
            await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
            k, turn = i % len(orders), i // len(orders)
            seat = SEATS[2 * k + (1 if turn % 2 == 0 else 0)]
            tasks.append((k, seat, asyncio.create_task(_hold(session, base, orders[k], seat))))
        done = [(k, seat, *(await task)) for k, seat, task in tasks]
    return done


async def _setup(base: str) -> list[tuple[str, str]]:
    """ORDERS orders, each holding the first of its two seats."""
    orders = []
    async with aiohttp.ClientSession() as session:
        for k in range(ORDERS):
            async with session.post(f"{base}/orders", json={"flightId": FLIGHT}) as response:
                created = await response.json()
            order = (created["orderId"], created["token"])
            async with session.post(f"{base}/orders/{order[0]}/seats", json={"seats": [SEATS[2 * k]]},
                                    headers={"Authorization": f"Bearer {order[1]}"}) as response:
                response.raise_for_status()
            orders.append(order)
    return orders


# --- analysis ------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(1000 * statistics.median(values), 1), "p99": round(1000 * percentile(values, 0.99), 1),
            "max": round(1000 * max(values), 1)}


def change_log(redis_url: str) -> list[dict[str, Any]]:
    """The flight's change log: every announcement, in version order."""
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = data.xrange(keys.changes(FLIGHT))  # type: ignore[assignment]
    finally:
        data.close()  # type: ignore[no-untyped-call]
    return [json.loads(fields["d"]) for _, fields in entries]


def requested_at(log: list[dict[str, Any]], holds: list[tuple[int, str, float, float, int]],
                 orders: list[tuple[str, str]], after: int) -> dict[int, tuple[float, float]]:
    """Version (after ``after``) -> (when its change was requested, its ``lastUpdated``): each logged
    change is the next request of its order for the seat it now holds."""
    waiting: dict[tuple[str, str], deque[float]] = defaultdict(deque)
    for k, seat, started, _, _ in sorted(holds, key=lambda hold: hold[2]):
        waiting[(orders[k][0], seat)].append(started)
    times: dict[int, tuple[float, float]] = {}
    for entry in log:
        if entry["v"] <= after:
            continue
        held = [(change["o"], seat) for seat, change in entry.get("c", {}).items() if change.get("o")]
        queue = waiting.get(held[0]) if held else None
        if queue:
            times[entry["v"]] = (queue.popleft(), entry["u"] / 1000)
    return times


def check_streams(arrivals: Arrivals, versions: list[int]) -> tuple[dict[int, list[float]], int]:
    """Per version, its arrival times; and how many (stream, version) deliveries are lost: each stream
    must get each version once, in order (a duplicate or a version out of order counts as lost too)."""
    wanted = set(versions)
    arrived: dict[int, list[float]] = defaultdict(list)
    lost = 0
    for ids, times in arrivals:
        got = [(int(i.rpartition(b"-")[2]), t) for i, t in zip(ids, times, strict=True)]
        sequence = [v for v, _ in got if v in wanted]
        if sequence != versions:
            lost += max(1, len(set(versions) - set(sequence)))
        for v, t in got:
            if v in wanted:
                arrived[v].append(t)
    return arrived, lost


def run_round(subscribers: int, processes: int, rate: float, duration: float, *, profile: str | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """One watcher count on a fresh Redis and API process, then the yardstick with the same clients."""
    changes = max(1, int(rate * duration))
    with spawn_system({**NO_CAPS, **(env or {})}, worker=False, shared_metrics=False) as system:
        base, api = system.base_url, system.roots["api"]
        orders = asyncio.run(_setup(base))
        time.sleep(0.5)
        before = max(entry["v"] for entry in change_log(system.redis_url))
        rss_idle = rss_bytes(api)
        connect_started = time.monotonic()
        clients = start_subscribers(int(base.rsplit(":", 1)[1]), f"/flights/{FLIGHT}/events", subscribers, processes)
        connect_seconds = time.monotonic() - connect_started
        time.sleep(1.0)
        rss_streams = rss_bytes(api)
        profiler = None
        if profile is not None:  # py-spy samples the API over the change phase (a flame graph, SVG)
            spy = str(Path(sys.executable).with_name("py-spy"))
            profiler = subprocess.Popen([spy, "record", "--pid", str(api), "--duration", str(int(duration) + 1),
                                         "--rate", "200", "--output", f"{profile}-{subscribers}.svg"])
        cpu_before, started = cpu_seconds(api), time.time()
        holds = asyncio.run(drive(base, orders, rate, changes))
        time.sleep(GRACE)
        cpu_used, wall = cpu_seconds(api) - cpu_before, time.time() - started
        if profiler is not None:
            profiler.wait(30)
        arrivals, sample = stop_subscribers(clients)
        log = change_log(system.redis_url)
    versions = [entry["v"] for entry in log if entry["v"] > before]
    made = requested_at(log, holds, orders, before)
    arrived, lost = check_streams(arrivals, versions)
    from_request = [t - made[v][0] for v, ts in arrived.items() if v in made for t in ts]
    from_stamp = [t - made[v][1] for v, ts in arrived.items() if v in made for t in ts]
    deliveries = sum(len(ts) for ts in arrived.values())
    answered = [hold for hold in holds if hold[4] == 200]
    last_answer = max((hold[3] for hold in holds), default=started)
    api_us = 1e6 * cpu_used / max(1, deliveries)
    yard = run_yardstick(subscribers, processes, rate, changes, sample or b"{}")
    return {
        "subscribers": subscribers,
        "changes_offered": changes,
        "offered_per_second": rate,
        "changes_made": len(versions),
        "achieved_per_second": round(len(versions) / max(duration, last_answer - started), 2),
        "holds_failed": len(holds) - len(answered),
        "hold_ms": _summary([hold[3] - hold[2] for hold in holds]),
        "connect_seconds": round(connect_seconds, 2),
        "deliveries": deliveries,
        "lost": lost,
        "delivery_from_request_ms": _summary(from_request),
        "delivery_from_last_updated_ms": _summary(from_stamp),
        "memory_per_connection_kb": round((rss_streams - rss_idle) / subscribers / 1024, 1),
        "api_rss_mb": round(rss_streams / 2**20, 1),
        "cpu_per_delivery_us": round(api_us, 1),
        "api_cpu_share": round(cpu_used / wall, 2),  # cores the API used over the change phase
        "yardstick": yard,
        "cpu_ratio_to_yardstick": round(api_us / max(0.1, yard["cpu_per_delivery_us"]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_sse", description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, action="append", help="streams (repeatable; default 1000, 5000)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes offered per second (default 10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of changes per round (default 10)")
    parser.add_argument("--client-processes", type=int, default=2, help="subscriber processes (default 2)")
    parser.add_argument("--report", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the API (repeatable), e.g. SEATS_SSE_FANOUT_SLICE=100000")
    parser.add_argument("--py-spy", metavar="PREFIX", help="profile the API over each change phase with py-spy "
                        "(PREFIX-<streams>.svg)")
    args = parser.parse_args(argv)
    counts = args.subscribers or [1000, 5000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(counts) + 1024
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))  # inherited by the API

    env = dict(pair.split("=", 1) for pair in args.env)
    results = [run_round(n, args.client_processes, args.rate, args.duration, profile=args.py_spy, env=env)
               for n in counts]
    print(f"{'streams':>7} {'offered/s':>9} {'made/s':>6} {'hold p50/p99/max ms':>21} "
          f"{'delivery from request p50/p99 ms':>32} {'from lastUpdated p50/p99':>24} {'lost':>4} "
          f"{'KB/conn':>7} {'API us/dlv':>10} {'bare us/dlv':>11} {'ratio':>5} {'bare p50/p99 ms':>15}")
    for r in results:
        hold, req, stamp = r["hold_ms"], r["delivery_from_request_ms"], r["delivery_from_last_updated_ms"]
        holds = "/".join(str(hold[key]) for key in ("p50", "p99", "max"))
        from_request = f"{req['p50']}/{req['p99']}"
        from_stamp = f"{stamp['p50']}/{stamp['p99']}"
        bare = f"{r['yardstick']['latency_ms']['p50']}/{r['yardstick']['latency_ms']['p99']}"
        print(f"{r['subscribers']:>7} {r['offered_per_second']:>9} {r['achieved_per_second']:>6} {holds:>21} "
              f"{from_request:>32} {from_stamp:>24} {r['lost']:>4} {r['memory_per_connection_kb']:>7} "
              f"{r['cpu_per_delivery_us']:>10} {r['yardstick']['cpu_per_delivery_us']:>11} "
              f"{r['cpu_ratio_to_yardstick']:>5} {bare:>15}")
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
