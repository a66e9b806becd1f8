"""What the history (spec §13) costs Redis per hold: ``hold_seats`` swaps of 4 seats for 4 others (8 seat
changes each), with the history written and without it (the scripts skip it without its argument), in
alternating rounds on a private redis-server. Prints, per round, Redis's own time per ``EVALSHA``
(``INFO commandstats``) and the memory the history took per seat change.

Run as ``python -m loadtest.bench_history [--swaps 8000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import redis

from loadtest.system import alternate_rounds
from service.orders import OrderScripts, hash_token
from service.settings import load_settings
from service.store import keys, open_store

FLIGHT = "HB-1"
ORDERS = 32  # concurrent callers, each swapping its own two sets of four seats
FAR_MS = 10**9


async def _round(url: str, swaps: int, history: bool) -> tuple[float, int]:
    """(µs of Redis time per hold_seats call, bytes of used memory) after ``swaps`` swaps."""
    settings = load_settings({}, redis_url=url)
    store = await open_store(settings)
    scripts = store.scripts
    await scripts.load_all()
    order_scripts = OrderScripts(store, settings)
    if not history:
        order_scripts._history_ms = ""  # type: ignore[assignment]  # the one switch the benchmark needs
    admin = redis.Redis.from_url(url)
    try:
        await scripts.run("put_flight", [keys.flight(FLIGHT), keys.changes(FLIGHT), keys.deadlines(FLIGHT)],
                          [keys.events_channel(FLIGHT), 1000, FLIGHT, 3 * ORDERS, "ABCD", 12 * ORDERS, "ensure"])
        orders = [f"o{i}" for i in range(ORDERS)]
        for order in orders:
            await order_scripts.run("create_order", FLIGHT, order, hash_token(order), [3, FAR_MS, "a:x", FAR_MS])
        selections = [([f"{3 * i + 1}{c}" for c in "ABCD"], [f"{3 * i + 2}{c}" for c in "ABCD"])
                      for i in range(ORDERS)]
        memory_before = int(admin.info("memory")["used_memory"])
        admin.config_resetstat()
        for k in range(swaps // ORDERS):
            wanted = [selections[i][k % 2] for i in range(ORDERS)]
            await asyncio.gather(*[
                order_scripts.run("hold_seats", FLIGHT, order, hash_token(order),
                                  [600_000, 7_200_000, "1", FAR_MS, ",".join(wanted[i])], wanted[i])
                for i, order in enumerate(orders)])
        stats = admin.info("commandstats")["cmdstat_evalsha"]
        return float(stats["usec_per_call"]), int(admin.info("memory")["used_memory"]) - memory_before
    finally:
        admin.close()
        await store.aclose()


def main() -> None:
    """Alternate rounds without and with the history; print each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = alternate_rounds(
        args.rounds, "seats-bench-history-", lambda url, history: _round(url, args.swaps, history),
        lambda history, result: print(f"{'with' if history else 'without'} history: {result[0]:.1f} µs per "
                                      f"hold_seats, {result[1] / 1e6:.2f} MB"))
    off, on = (statistics.median(usec for usec, _ in results[h]) for h in (False, True))
    extra_memory = statistics.median(m for _, m in results[True]) - statistics.median(m for _, m in results[False])
    changes = (args.swaps // ORDERS) * ORDERS * 8  # seat changes: 4 held and 4 released per swap
    print(f"median: {off:.1f} -> {on:.1f} µs per 4-seat swap (+{on - off:.1f} µs, x{on / off:.2f}); "
          f"history memory ~{extra_memory / changes:.0f} bytes per seat change")


if __name__ == "__main__":
    main()
