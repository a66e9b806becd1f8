"""SSE fan-out benchmark: N subscribers on one ``seats api`` process, paced seat changes.

For each subscriber count it starts a private redis-server and one ``seats api`` (no worker),
opens N flight streams from client processes, then makes ``rate`` changes per second for
``duration`` seconds (one order swapping between two seats: one flight version per change) and
reports:

* change-to-delivery latency, p50 / p99 / max: arrival time at the subscriber minus the
  ``lastUpdated`` the Lua script stamped on the change (Redis's clock; one machine, one clock);
* deliveries missing (every subscriber must get every version);
* memory per connection: the API's RSS growth from no stream to N streams, divided by N;
* CPU per delivery: the API's CPU seconds over the change phase, divided by deliveries.

Everything runs on 127.0.0.1 and every loop is bounded in time. Clients run in their own
processes (``--client-processes``), but share the machine's cores with the server and Redis.

    python -m loadtest.bench_sse --subscribers 1000 --subscribers 5000 --report bench-sse.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import redis

from loadtest.system import cpu_seconds, spawn_system
from service.store import keys

FLIGHT = "FL-001"
READY_TIMEOUT = 180.0  # seconds for N streams to connect and get their snapshot
GRACE = 3.0  # seconds after the last change for deliveries to arrive


# --- subscriber processes ------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """One raw SSE connection that only records when each ``id:`` line arrives (cheap on purpose)."""

    def __init__(self, request: bytes, on_first: Callable[[], None]) -> None:
        self._request = request
        self._on_first: Callable[[], None] | None = on_first
        self._buffer = b""
        self.ids: list[int] = []
        self.times: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line.startswith(b"id: "):
                self.ids.append(int(line[4:]))
                self.times.append(now)
                if self._on_first is not None:
                    self._on_first()
                    self._on_first = None


async def _subscribe(port: int, count: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET /flights/{FLIGHT}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    started = asyncio.Event()
    ready = 0

    def first() -> None:
        nonlocal ready
        ready += 1
        if ready == count:
            started.set()

    transports: list[asyncio.BaseTransport] = []
    subscribers: list[Subscriber] = []
    for index in range(count):
        transport, subscriber = await loop.create_connection(lambda: Subscriber(request, first), "127.0.0.1", port)
        transports.append(transport)
        subscribers.append(subscriber)
        if index % 100 == 99:
            await asyncio.sleep(0.02)  # stay under the listen backlog
    await asyncio.wait_for(started.wait(), READY_TIMEOUT)
    conn.send(("ready", count))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    conn.send(("result", [(s.ids, s.times) for s in subscribers]))
    for open_transport in transports:
        open_transport.close()


def subscriber_process(port: int, count: int, conn: Connection) -> None:
    """Entry point of one client process: ``count`` streams until told to stop."""
    try:
        import uvloop

        uvloop.run(_subscribe(port, count, conn))
    except ImportError:
        asyncio.run(_subscribe(port, count, conn))


# --- the driver ----------------------------------------------------------------------------------


def _post(base: str, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    assert base.startswith("http://127.0.0.1:")  # this benchmark only ever targets this machine
    request = urllib.request.Request(  # noqa: S310 - checked above: http://127.0.0.1 only
        base + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
        reply: dict[str, Any] = json.loads(response.read())
        return reply


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


def start_subscribers(port: int, subscribers: int, processes: int) -> list[tuple[Connection, Any]]:
    """Client processes holding ``subscribers`` streams; returns once every stream got its snapshot."""
    context = multiprocessing.get_context("spawn")
    clients = []
    for index in range(processes):
        share = subscribers // processes + (1 if index < subscribers % processes else 0)
        parent, child = context.Pipe()
        worker = context.Process(target=subscriber_process, args=(port, share, child), daemon=True)
        worker.start()
        clients.append((parent, worker))
    for pipe, worker in clients:
        deadline = time.monotonic() + READY_TIMEOUT
        while not pipe.poll(0.5):
            if not worker.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("subscribers did not connect in time")
        pipe.recv()
    return clients


def stop_subscribers(clients: list[tuple[Connection, Any]]) -> list[tuple[list[int], list[float]]]:
    """Stop the client processes; every stream's (versions, arrival times)."""
    arrivals: list[tuple[list[int], list[float]]] = []
    for pipe, _ in clients:
        pipe.send("stop")
    for pipe, worker in clients:
        if not pipe.poll(60):
            raise RuntimeError("subscriber results did not arrive")
        arrivals.extend(pipe.recv()[1])
        worker.join(10)
    return arrivals


def change_times(redis_url: str) -> dict[int, float]:
    """Version -> when the change happened (the ``lastUpdated`` its Lua script stamped), from the change log."""
    data = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = data.xrange(keys.changes(FLIGHT))  # type: ignore[assignment]
    finally:
        data.close()  # type: ignore[no-untyped-call]
    payloads = [json.loads(fields["d"]) for _, fields in entries]
    return {int(p["v"]): int(p["u"]) / 1000 for p in payloads}


def delivery_delays(arrivals: list[tuple[list[int], list[float]]], stamped: dict[int, float], changes: int
                    ) -> tuple[list[float], int]:
    """Every delivery's delay for the last ``changes`` versions, and how many deliveries are missing."""
    last = max(stamped)
    wanted = range(last - changes + 1, last + 1)
    delays: list[float] = []
    missing = 0
    for ids, times in arrivals:
        seen = dict(zip(ids, times, strict=True))
        delays.extend(seen[v] - stamped[v] for v in wanted if v in seen)
        missing += sum(1 for v in wanted if v not in seen)
    return delays, missing


def run_round(subscribers: int, processes: int, rate: float, duration: float) -> dict[str, Any]:
    """One subscriber count on a fresh Redis and API process."""
    with spawn_system({}, worker=False, shared_metrics=False) as system:
        base, api = system.base_url, system.roots["api"]
        created = _post(base, "/orders", {"flightId": FLIGHT})
        order_id, token = created["orderId"], created["token"]
        _post(base, f"/orders/{order_id}/seats", {"seats": ["1A"]}, token)
        time.sleep(0.5)
        rss_idle = rss_bytes(api)
        connect_started = time.monotonic()
        clients = start_subscribers(int(base.rsplit(":", 1)[1]), subscribers, processes)
        connect_seconds = time.monotonic() - connect_started
        time.sleep(1.0)
        rss_streams = rss_bytes(api)

        changes = max(1, int(rate * duration))
        cpu_before, started = cpu_seconds(api), time.monotonic()
        for i in range(changes):  # paced: change i is due at started + i / rate
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            _post(base, f"/orders/{order_id}/seats", {"seats": ["1B" if i % 2 == 0 else "1A"]}, token)
        time.sleep(GRACE)
        cpu_used, wall = cpu_seconds(api) - cpu_before, time.monotonic() - started
        delays, missing = delivery_delays(stop_subscribers(clients), change_times(system.redis_url), changes)
    return {
        "subscribers": subscribers,
        "changes": changes,
        "rate_per_second": rate,
        "connect_seconds": round(connect_seconds, 2),
        "deliveries": len(delays),
        "missing": missing,
        "latency_ms": {
            "p50": round(1000 * statistics.median(delays), 1),
            "p99": round(1000 * percentile(delays, 0.99), 1),
            "max": round(1000 * max(delays), 1),
        },
        "memory_per_connection_kb": round((rss_streams - rss_idle) / subscribers / 1024, 1),
        "api_rss_mb": round(rss_streams / 2**20, 1),
        "cpu_per_delivery_us": round(1e6 * cpu_used / max(1, len(delays)), 1),
        "api_cpu_share": round(cpu_used / wall, 2),  # cores the API used over the change phase
    }


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_sse", description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, action="append", help="streams (repeatable; default 1000, 5000)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second (default 10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of changes per round (default 10)")
    parser.add_argument("--client-processes", type=int, default=2, help="subscriber processes (default 2)")
    parser.add_argument("--report", metavar="PATH", help="write the results as JSON here")
    args = parser.parse_args(argv)
    counts = args.subscribers or [1000, 5000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(counts) + 1024
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))  # inherited by the API

    results = [run_round(n, args.client_processes, args.rate, args.duration) for n in counts]
    print(f"{'subscribers':>11} {'changes':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'missing':>7} "
          f"{'KB/conn':>7} {'CPU us/delivery':>15} {'API CPU':>7}")
    for r in results:
        lat = r["latency_ms"]
        print(f"{r['subscribers']:>11} {r['changes']:>7} {lat['p50']:>7} {lat['p99']:>7} {lat['max']:>7} "
              f"{r['missing']:>7} {r['memory_per_connection_kb']:>7} {r['cpu_per_delivery_us']:>15} "
              f"{r['api_cpu_share']:>7}")
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
