"""The transports' own CPU per ``EVALSHA``: ``StandaloneTransport`` (one pipelined connection) against
``ClusterTransport`` (one per primary, routed by slot) in one process, in alternating rounds.

A private redis-server and a private 6-node cluster (``service.devcluster``) each get a flight and
``--callers`` orders; each order swaps its 4 seats for 4 others through ``OrderScripts`` until the exact
``EVALSHA hold_seats`` commands of two consecutive swaps are known; then every caller replays its two
commands in turn with ``transport.call`` (64 concurrent callers by default, as the issue's figure), and
this process's CPU time (``time.process_time``) divided by the calls is the transport's cost per call:
packing, routing, the socket, hiredis's parsing, the event loop, and nothing of the service around it.
Redis's work is in other processes and not counted.

Run as ``python -m loadtest.bench_transport [--calls 20000] [--rounds 5] [--callers 64]``, or through
``seats loadtest --spawn --cluster``, which prints it with the hold ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.devcluster import start_cluster
from service.devrunner import start_redis, stop_all
from service.orders import OrderScripts, hash_token
from service.settings import load_settings
from service.store import Store, keys, open_store
from service.store.connection import Arg
from service.store.transport import Address, Transport

FLIGHT = f"BT-{secrets.token_hex(3)}"  # a Redis that served an earlier run keeps its flight and orders
FAR_MS = 10**9


@dataclass
class _Recording:
    """A transport that remembers the ``EVALSHA hold_seats`` commands it forwards, per order."""

    inner: Transport
    sha: str
    seen: dict[str, list[tuple[str, tuple[Arg, ...]]]] = field(default_factory=dict)

    async def call(self, route: str, *args: Arg) -> Any:
        if args[:2] == ("EVALSHA", self.sha):
            prefix = keys.order(FLIGHT, "")
            order = next(str(a) for a in args if str(a).startswith(prefix))
            self.seen.setdefault(order, []).append((route, args))
        return await self.inner.call(route, *args)

    async def batch(self, route: str, commands: Sequence[Sequence[Arg]], *, atomic: bool = False) -> list[Any]:
        return await self.inner.batch(route, commands, atomic=atomic)

    async def each_primary(self, *args: Arg) -> list[Any]:
        return await self.inner.each_primary(*args)

    def primaries(self) -> list[Address]:
        return self.inner.primaries()

    def address_for(self, route: str) -> Any:
        return self.inner.address_for(route)

    async def refresh(self) -> None:
        await self.inner.refresh()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _prepare(url: str, cluster: bool, callers: int) -> tuple[Store, list[list[tuple[str, tuple[Arg, ...]]]]]:
    """A store on ``url`` and, per caller, the two EVALSHA commands of its next two swaps."""
    env = {"SEATS_REDIS_CLUSTER": "true", "SEATS_QUEUE_REDIS_URL": "redis://127.0.0.1:1"} if cluster else {}
    settings = load_settings(env, redis_url=url)
    store = await open_store(settings)
    await store.scripts.load_all()
    recording = _Recording(store.transport, store.scripts._shas["hold_seats"])
    watched = Store(settings, recording)
    order_scripts = OrderScripts(watched, settings)
    await watched.scripts.run("put_flight", [keys.flight(FLIGHT), keys.changes(FLIGHT), keys.deadlines(FLIGHT)],
                              [keys.events_channel(FLIGHT), 1000, FLIGHT, 3 * callers, "ABCD", 12 * callers, "ensure"])
    orders = [f"o{i}" for i in range(callers)]
    for order in orders:
        await order_scripts.run("create_order", FLIGHT, order, hash_token(order), [3, FAR_MS, "a:x", FAR_MS])
    selections = [([f"{3 * i + 1}{c}" for c in "ABCD"], [f"{3 * i + 2}{c}" for c in "ABCD"]) for i in range(callers)]
    for swap in range(3):  # the first swap has nothing to release; the 2nd and 3rd are what repeats
        await asyncio.gather(*[
            order_scripts.run("hold_seats", FLIGHT, order, hash_token(order),
                              [600_000, 7_200_000, "1", FAR_MS, ",".join(selections[i][swap % 2])],
                              selections[i][swap % 2])
            for i, order in enumerate(orders)])
    commands = [recording.seen[keys.order(FLIGHT, order)][1:3] for order in orders]
    return store, commands


async def _replay(transport: Transport, commands: list[list[tuple[str, tuple[Arg, ...]]]], calls: int) -> float:
    """µs of this process's CPU per ``transport.call`` over ``calls`` calls by every caller at once."""
    per_caller = max(2, calls // len(commands)) // 2 * 2  # even: each caller ends where it began

    async def caller(mine: list[tuple[str, tuple[Arg, ...]]]) -> None:
        for index in range(per_caller):
            route, args = mine[index % 2]
            await transport.call(route, *args)

    started = time.process_time()
    await asyncio.gather(*[caller(mine) for mine in commands])
    return (time.process_time() - started) / (per_caller * len(commands)) * 1e6


@dataclass
class Deployments:
    """The private Redis deployments of a run, with their processes' pids for CPU accounting."""

    standalone_url: str
    cluster_seeds: str
    pids: dict[str, dict[str, int]]  # deployment -> process name -> pid


@contextlib.contextmanager
def private_redis(*, replica: bool = False) -> Iterator[Deployments]:
    """A private redis-server (``replica``: with a replica of its own) and a private 6-node cluster."""
    from loadtest.system import _start_replica

    with tempfile.TemporaryDirectory(prefix="seats-bench-transport-") as tmp:
        processes: list[Any] = []
        try:
            redis_process, url = start_redis(Path(tmp))
            processes.append(redis_process)
            standalone = {"primary": redis_process.pid}
            if replica:
                standalone["replica"] = _start_replica(Path(tmp), url, processes)
            (Path(tmp) / "cluster").mkdir()
            cluster = start_cluster(Path(tmp) / "cluster", started=processes)
            nodes = {f"node {port}": p.pid for port, p in zip(cluster.ports, cluster.processes, strict=True)}
            yield Deployments(url, cluster.seeds, {"standalone": standalone, "cluster": nodes})
        finally:
            stop_all(processes)


async def compare(standalone_url: str, cluster_seeds: str, *, calls: int, rounds: int, callers: int,
                  pids: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Alternating rounds on both transports: µs of CPU per EVALSHA each (median, every round), and the ratio.

    With ``pids`` (deployment -> process name -> pid), also the Redis processes' CPU per call, each
    process that used more than 1 µs per call named (the flight's primary, its replica).
    """
    from loadtest.system import cpu_seconds

    redis_us: dict[str, list[dict[str, float]]] = {"standalone": [], "cluster": []}

    async def measured(name: str, transport: Transport, commands: list[list[tuple[str, tuple[Arg, ...]]]]) -> float:
        watched = (pids or {}).get(name, {})
        before = {process: cpu_seconds(pid) for process, pid in watched.items()}
        us = await _replay(transport, commands, calls)
        done = max(2, calls // len(commands)) // 2 * 2 * len(commands)
        redis_us[name].append({process: (cpu_seconds(pid) - before[process]) / done * 1e6
                               for process, pid in watched.items()})
        return us

    stores: list[Store] = []
    try:
        standalone, standalone_commands = await _prepare(standalone_url, False, callers)
        stores.append(standalone)
        cluster, cluster_commands = await _prepare(cluster_seeds, True, callers)
        stores.append(cluster)
        await _replay(standalone.transport, standalone_commands, calls // 4)  # warm both up
        await _replay(cluster.transport, cluster_commands, calls // 4)
        results: dict[str, list[float]] = {"standalone": [], "cluster": []}
        for _ in range(rounds):
            results["standalone"].append(await measured("standalone", standalone.transport, standalone_commands))
            results["cluster"].append(await measured("cluster", cluster.transport, cluster_commands))
    finally:
        for store in stores:
            await store.aclose()
    medians = {name: round(statistics.median(values), 2) for name, values in results.items()}
    redis = {name: {process: round(statistics.median(r[process] for r in per_round), 1)
                    for process in per_round[0] if statistics.median(r[process] for r in per_round) > 1}
             for name, per_round in redis_us.items() if per_round and per_round[0]}
    return {"callers": callers, "calls_per_round": calls, "rounds": rounds,
            "us_per_call": medians, "rounds_us_per_call": {k: [round(v, 2) for v in vs] for k, vs in results.items()},
            "cluster_over_standalone": round(medians["cluster"] / medians["standalone"], 3),
            "redis_us_per_call": redis}


def run(calls: int = 20_000, rounds: int = 5, callers: int = 64, *, replica: bool = False) -> dict[str, Any]:
    """Start both Redis deployments, compare, stop them (``compare``'s figures, with the Redis processes' CPU)."""
    import uvloop

    with private_redis(replica=replica) as found:
        result: dict[str, Any] = uvloop.run(compare(found.standalone_url, found.cluster_seeds, calls=calls,
                                                    rounds=rounds, callers=callers, pids=found.pids))
    return result


def describe(result: dict[str, Any]) -> str:
    """One line per transport and the ratio."""
    us = result["us_per_call"]
    return (f"transport CPU per EVALSHA hold_seats ({result['callers']} callers, median of {result['rounds']} "
            f"alternating rounds): standalone {us['standalone']:.1f} µs, cluster {us['cluster']:.1f} µs, "
            f"cluster/standalone {result['cluster_over_standalone']:.2f} (target <= 1.5)"
            + "".join(f"; Redis CPU per call, {name}: " + ", ".join(f"{p} {us:.0f} µs" for p, us in processes.items())
                      for name, processes in result.get("redis_us_per_call", {}).items()))


def main(argv: list[str] | None = None) -> None:
    """Print both transports' CPU per call and their ratio."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_transport", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and transport (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (default 64)")
    parser.add_argument("--standalone-url", help="use this Redis instead of starting one (with --cluster-seeds)")
    parser.add_argument("--cluster-seeds", help="use this cluster (comma-separated seed URLs) instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    parser.add_argument("--replica", action="store_true",
                        help="give the private standalone Redis a replica (the cluster's primaries have one each)")
    args = parser.parse_args(argv)
    if bool(args.standalone_url) != bool(args.cluster_seeds):
        parser.error("--standalone-url and --cluster-seeds go together")
    if args.standalone_url:
        import uvloop

        result = uvloop.run(compare(args.standalone_url, args.cluster_seeds, calls=args.calls, rounds=args.rounds,
                                    callers=args.callers))
    else:
        result = run(args.calls, args.rounds, args.callers, replica=args.replica)
    if args.json:
        print(json.dumps(result))
        return
    for name, values in result["rounds_us_per_call"].items():
        print(f"{name:10s} rounds: {', '.join(f'{v:.1f}' for v in values)} µs per call")
    print(describe(result))


if __name__ == "__main__":
    main()
