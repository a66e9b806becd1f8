"""What the webhook outbox (spec §13) costs Redis on the path that writes it: ``cancel_order`` of an order
holding 4 seats, with webhooks configured (one outbox entry per cancel) and without (the scripts write
nothing), in alternating rounds on a private redis-server. Holds and swaps never write the outbox (only a
terminal state does), so the hold path's cost is nil by construction. Prints Redis's own time per
``EVALSHA`` of the cancels (``INFO commandstats``, reset after the holds) and the medians.

Run as ``python -m loadtest.bench_outbox [--orders 4000] [--rounds 3]``.
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

FLIGHT = "OB-1"
BATCH = 32  # concurrent callers
FAR_MS = 10**9
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 ASCII bytes: a benchmark's key


async def _round(url: str, orders: int, webhooks: bool) -> float:
    """µs of Redis time per cancel_order call."""
    extra = {"webhook_url": "http://127.0.0.1:9/hooks", "webhook_secret": SECRET} if webhooks else {}
    settings = load_settings({}, redis_url=url, **extra)
    store = await open_store(settings)
    await store.scripts.load_all()
    order_scripts = OrderScripts(store, settings)
    admin = redis.Redis.from_url(url)
    try:
        rows = orders // 2 + 1
        await store.scripts.run("put_flight", [keys.flight(FLIGHT), keys.changes(FLIGHT), keys.deadlines(FLIGHT)],
                                [keys.events_channel(FLIGHT), 1000, FLIGHT, rows, "ABCDEFGH", rows * 8, "ensure"])
        ids = [f"o{i}" for i in range(orders)]
        seats = {order: [f"{i // 2 + 1}{c}" for c in ("ABCD" if i % 2 == 0 else "EFGH")]
                 for i, order in enumerate(ids)}
        for start in range(0, orders, BATCH):
            chunk = ids[start:start + BATCH]
            await asyncio.gather(*[order_scripts.run("create_order", FLIGHT, o, hash_token(o),
                                                     [3, FAR_MS, "a:x", FAR_MS]) for o in chunk])
            await asyncio.gather(*[order_scripts.run("hold_seats", FLIGHT, o, hash_token(o),
                                                     [600_000, 7_200_000, "1", FAR_MS, ",".join(seats[o])], seats[o])
                                   for o in chunk])
        admin.config_resetstat()
        for start in range(0, orders, BATCH):
            await asyncio.gather(*[order_scripts.run("cancel_order", FLIGHT, o, hash_token(o))
                                   for o in ids[start:start + BATCH]])
        assert admin.xlen(keys.outbox(FLIGHT)) == (orders if webhooks else 0)
        return float(admin.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    finally:
        admin.close()
        await store.aclose()


def main() -> None:
    """Alternate rounds without and with webhooks; print each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = alternate_rounds(
        args.rounds, "seats-bench-outbox-", lambda url, webhooks: _round(url, args.orders, webhooks),
        lambda webhooks, usec: print(f"{'with' if webhooks else 'without'} webhooks: {usec:.1f} µs per cancel_order"))
    off, on = (statistics.median(results[w]) for w in (False, True))
    print(f"median: {off:.1f} -> {on:.1f} µs per 4-seat cancel (+{on - off:.1f} µs, x{on / off:.2f})")


if __name__ == "__main__":
    main()
