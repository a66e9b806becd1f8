"""The history and the operators' scripts on a real Redis Cluster (spec §12, §13): the history streams are
not declared in KEYS (lua/_lib.lua derives them from the flight key), which Redis Cluster allows only for
keys of the script's own slot; this runs them on a 6-node cluster, where any other key would be refused."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service import keys
from service.operators import decode_entries
from service.orders import TRUSTED, OrderScripts, hash_token
from service.scripts import Scripts, load_sources
from service.settings import load_settings
from tests.cluster import local_cluster

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli is needed to join a cluster")]

FLIGHT = "CL-1"


def test_history_and_operator_scripts_run_on_a_cluster() -> None:
    """create, hold, swap, an operator's extend, release, block and unblock, and history pages run on a real
    cluster: every history stream lands on the node that owns the flight's slot, and reads back in order."""
    with local_cluster() as cluster:
        for node in cluster.nodes:  # every node knows every script (what the cluster transport does)
            for source in load_sources().values():
                node.client().script_load(source)
        asyncio.run(_scenario(cluster.nodes[0].url))
        owner = cluster.primary_of(keys.flight(FLIGHT))
        written = set(owner.client().scan_iter("seats:*history*"))
        assert written == {keys.history_seat(FLIGHT, s) for s in ("1A", "1B", "2A", "2B")} | {
            keys.history_order(FLIGHT, "o1")}
        assert {key_slot(k.encode()) for k in written} == {key_slot(keys.flight(FLIGHT).encode())}


async def _scenario(url: str) -> None:
    settings = load_settings({}, redis_url=url)
    client: Any = RedisCluster.from_url(url, decode_responses=True)
    try:
        scripts = Scripts(client)
        order_scripts = OrderScripts(client, scripts, settings)
        history_ms = int(settings.history_seconds * 1000)
        await scripts.run("put_flight", [keys.flight(FLIGHT), keys.changes(FLIGHT), keys.deadlines(FLIGHT)],
                          [keys.events_channel(FLIGHT), 100, FLIGHT, 2, "AB", 4, "ensure"])
        token = hash_token("t")
        await order_scripts.run("create_order", FLIGHT, "o1", token, [3, 600_000, "a:x", 600_000])
        hold_args = [600_000, 1_200_000, "1", 600_000]
        await order_scripts.run("hold_seats", FLIGHT, "o1", token, [*hold_args, "1A,1B"], ["1A", "1B"])
        await order_scripts.run("hold_seats", FLIGHT, "o1", token, [*hold_args, "1B"], ["1B"])
        await order_scripts.run("admin_extend", FLIGHT, "o1", TRUSTED, ["r", 60_000, 1_200_000, "0", 600_000])
        await order_scripts.run("admin_release", FLIGHT, "o1", TRUSTED, ["r"])
        for mode in ("block", "unblock"):
            await scripts.run("block_seats", [keys.flight(FLIGHT), keys.changes(FLIGHT), keys.seat(FLIGHT, "2A"),
                                              keys.seat(FLIGHT, "2B")],
                              [keys.events_channel(FLIGHT), 100, FLIGHT, mode, "1", "r", history_ms])
        page = await scripts.run("history_page", [keys.history_order(FLIGHT, "o1")], [history_ms, "", 100])
        causes = [entry.cause for _, flat in page for entry in decode_entries(_fields(flat))]
        assert causes == ["admin", "admin", "swap", "swap", "hold", "hold"]  # release, extend of 1B, then...
        page = await scripts.run("history_page", [keys.history_seat(FLIGHT, "2A")], [history_ms, "", 100])
        assert [decode_entries(_fields(flat))[0].to for _, flat in page] == ["available", "blocked"]
    except redis.RedisError as exc:  # pragma: no cover - the failure says which command the cluster refused
        raise AssertionError(f"the cluster refused a script: {exc}") from exc
    finally:
        await client.aclose()


def _fields(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
