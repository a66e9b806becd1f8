"""What one flight costs a shard: memory of a flight whose every seat was held once (4-seat orders,
history written), and Redis's own time per ``EVALSHA`` of those holds. The figures behind README's
capacity model ("Redis Cluster"); the holds/s a shard serves under load come from
``seats loadtest --spawn --cluster`` (the primary's CPU per hold).

Run as ``python -m loadtest.bench_capacity [--flights 40] [--rows 30] [--columns ABCDEF]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import redis

from service.devrunner import start_redis, stop_all
from service.orders import OrderScripts, hash_token
from service.settings import load_settings
from service.store import keys, open_store

SEATS_PER_ORDER = 4
FAR_MS = 10**9


async def _fill(url: str, flights: int, rows: int, columns: str, *, history: bool,
                node_bytes: int | None) -> dict[str, Any]:
    settings = load_settings({}, redis_url=url)
    store = await open_store(settings)
    await store.scripts.load_all()
    order_scripts = OrderScripts(store, settings)
    if not history:
        order_scripts._history_ms = ""  # type: ignore[assignment]  # as loadtest.bench_history
    admin = redis.Redis.from_url(url)
    try:
        if node_bytes is not None:
            admin.config_set("stream-node-max-bytes", node_bytes)
        before = int(admin.info("memory")["used_memory"])  # type: ignore[index]
        admin.config_resetstat()
        seats = [f"{r}{c}" for r in range(1, rows + 1) for c in columns]
        for index in range(flights):
            flight = f"CAP-{index}"
            await store.scripts.run("put_flight", [keys.flight(flight), keys.changes(flight), keys.deadlines(flight)],
                                    [keys.events_channel(flight), settings.change_log_length, flight, rows, columns,
                                     len(seats), "ensure"])
            groups = [seats[i:i + SEATS_PER_ORDER] for i in range(0, len(seats), SEATS_PER_ORDER)]
            for number, group in enumerate(groups):
                order = f"{flight}-o{number}"
                await order_scripts.run("create_order", flight, order, hash_token(order), [3, FAR_MS, "a:x", FAR_MS])
                await order_scripts.run("hold_seats", flight, order, hash_token(order),
                                        [600_000, 7_200_000, "1", FAR_MS, ",".join(group)], group)
        used = int(admin.info("memory")["used_memory"]) - before  # type: ignore[index]
        evalsha: dict[str, Any] = admin.info("commandstats")["cmdstat_evalsha"]  # type: ignore[index]
        return {"flights": flights, "seats_per_flight": len(seats), "bytes_per_flight": used // flights,
                "evalsha_usec_per_call": float(evalsha["usec_per_call"])}
    finally:
        admin.close()
        await store.aclose()


def main(argv: list[str] | None = None) -> None:
    """Print a held flight's memory and Redis's time per call of the scripts that filled it."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_capacity", description=__doc__.split("\n")[0])
    parser.add_argument("--flights", type=int, default=40)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--columns", default="ABCDEF")
    parser.add_argument("--no-history", action="store_true", help="the scripts skip the seat/order history")
    parser.add_argument("--stream-node-max-bytes", type=int,
                        help="CONFIG SET stream-node-max-bytes first (Redis 7 preallocates a new stream node up to it)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seats-bench-capacity-") as tmp:
        process, url = start_redis(Path(tmp))
        try:
            result = asyncio.run(_fill(url, args.flights, args.rows, args.columns, history=not args.no_history,
                                       node_bytes=args.stream_node_max_bytes))
        finally:
            stop_all([process])
    node = f"stream-node-max-bytes {args.stream_node_max_bytes}: " if args.stream_node_max_bytes else ""
    print(("without history: " if args.no_history else node)
          + f"{result['flights']} flights of {result['seats_per_flight']} seats, every seat held once by "
          f"{SEATS_PER_ORDER}-seat orders: {result['bytes_per_flight'] / 1024:.0f} KiB per flight; Redis "
          f"{result['evalsha_usec_per_call']:.1f} µs per EVALSHA (create_order and hold_seats alike)")


if __name__ == "__main__":
    main()
