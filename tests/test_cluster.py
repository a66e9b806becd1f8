"""Cluster mode's own rules (spec §12) on the session's local Redis Cluster; its faults are in
tests/test_cluster_faults.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from arq import create_pool
from arq.connections import RedisSettings

from service import metrics
from service.expiry import recover_payments
from service.orders import TRUSTED
from service.payments import SimulatedGateway, process_payment
from service.settings import Settings
from service.store import keys
from service.wiring import job_enqueuer
from tests.conftest import REPO
from tests.helpers import CALLER, open_rig


@pytest.fixture
def plane() -> str:
    """These tests are about the cluster."""
    return "cluster"


def _move_slot(slot: int, src: Any, dst: Any) -> None:
    """Move ``slot`` from primary ``src`` to primary ``dst`` with its keys, telling only those two."""
    src_id, dst_id = src.client().execute_command("CLUSTER MYID"), dst.client().execute_command("CLUSTER MYID")
    dst.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while batch := src.client().execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.client().execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *batch)
    for node in (dst, src):
        node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)


@pytest.mark.parametrize("command", ["api", "worker"])
def test_cluster_mode_without_a_queue_redis_refuses_to_start(command: str, data_url: str) -> None:
    """SEATS_REDIS_CLUSTER=true without SEATS_QUEUE_REDIS_URL: exit non-zero within 10 s, naming the variable."""
    env = {**os.environ, "SEATS_REDIS_CLUSTER": "true", "SEATS_REDIS_URL": data_url}
    env.pop("SEATS_QUEUE_REDIS_URL", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "service.cli", command], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode != 0 and time.monotonic() - started < 10
    assert "SEATS_QUEUE_REDIS_URL" in done.stderr and "Traceback" not in done.stderr


async def test_every_primary_has_every_script_and_each_flight_one_node(make_settings: Callable[..., Settings],
                                                                      redis_cluster: Any) -> None:
    """Scripts are loaded on every primary; a flight's keys all live on the primary serving its slot."""
    rig = await open_rig(make_settings())
    try:
        primaries = rig.domain.store.transport.primaries()
        assert len(primaries) == 3
        shas = list(rig.scripts._shas.values())
        for host, port in primaries:
            node = redis.Redis(host=host, port=port)
            assert node.script_exists(*shas) == [True] * len(shas)
            node.close()
        created = await rig.orders.create("FL-001", "o-slot", CALLER)
        await rig.orders.select_seats("o-slot", created.token or "", ["1A", "2B"], CALLER)
        owner = redis_cluster.primary_of(keys.flight("FL-001")).client()
        assert owner.exists(keys.flight("FL-001"), keys.order("FL-001", "o-slot"), keys.seat("FL-001", "1A"),
                            keys.seat("FL-001", "2B"), keys.deadlines("FL-001")) == 5
    finally:
        await rig.close()


async def test_a_confirmation_waits_for_a_replica(make_settings: Callable[..., Settings], redis_cluster: Any) -> None:
    """After the confirming script the job WAITs for SEATS_REDIS_WAIT_REPLICAS (1 in cluster mode): when it
    reports CONFIRMED the primary's replica already has the sold seats, and the WAIT is counted."""
    settings = make_settings()
    assert settings.wait_replicas == 1
    rig = await open_rig(settings)
    acknowledged = metrics.REPLICATION_WAITS.labels("acknowledged")
    before = acknowledged._value.get()
    try:
        created = await rig.orders.create("FL-001", "o-wait", CALLER)
        await rig.orders.select_seats("o-wait", created.token or "", ["3C"], CALLER)
        await rig.order_scripts.run("begin_payment", "FL-001", "o-wait", TRUSTED, ["p-wait", 60_000])
        gateway = SimulatedGateway(rig.scripts, settings)
        assert await process_payment(rig.order_scripts, gateway, settings, "FL-001", "o-wait", "p-wait") == "CONFIRMED"
        replica = redis_cluster.replica_of(redis_cluster.primary_of(keys.flight("FL-001"))).client()
        replica.execute_command("READONLY")
        assert replica.get(keys.seat("FL-001", "3C")) == "C|o-wait"
        assert acknowledged._value.get() == before + 1
    finally:
        await rig.close()


async def test_a_paying_order_whose_job_vanished_gets_it_back(make_settings: Callable[..., Settings],
                                                              redis_url: str) -> None:
    """The queue's Redis lost a payment job: the sweeper's recovery enqueues it again under the same id,
    and only then (a job the queue still knows is never enqueued twice)."""
    settings = make_settings()
    rig = await open_rig(settings)
    queue = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        created = await rig.orders.create("FL-001", "o-lost", CALLER)
        await rig.orders.select_seats("o-lost", created.token or "", ["4D"], CALLER)
        await rig.order_scripts.run("begin_payment", "FL-001", "o-lost", TRUSTED, ["p-lost", 60_000])
        enqueue = job_enqueuer(queue)
        assert await recover_payments(rig.order_scripts, enqueue) == 1  # no job at all: it gets one
        assert await queue.exists("arq:job:p-lost") == 1
        assert await recover_payments(rig.order_scripts, enqueue) == 0  # the queue knows it now
        await queue.flushdb()  # the queue's Redis loses it again
        assert await recover_payments(rig.order_scripts, enqueue) == 1
    finally:
        await queue.aclose()
        await rig.close()


async def test_commands_follow_a_moved_slot(make_settings: Callable[..., Settings], redis_cluster: Any) -> None:
    """A slot map that went stale (the slot moved to another primary) is followed: MOVED, a refresh, the
    command on the new owner; then the slot is moved back."""
    rig = await open_rig(make_settings())
    transport = rig.domain.store.transport
    flight_key = keys.flight("FL-001")
    slot = redis.crc.key_slot(flight_key.encode())
    source = redis_cluster.primary_of(flight_key)
    target = next(n for n in redis_cluster.nodes[:6] if n.port != source.port
                  and n.client().info("replication")["role"] == "master")

    def move(src: Any, dst: Any) -> None:
        _move_slot(slot, src, dst)

    try:
        version = (await rig.domain.store.reads.flight_head("FL-001")).version
        move(source, target)
        assert transport.primary_of(slot)[1] == source.port  # our map is stale now
        head = await rig.domain.store.reads.flight_head("FL-001")
        assert head.version == version
        created = await rig.orders.create("FL-001", "o-moved", CALLER)
        assert created.order.state == "PENDING"
        await asyncio.sleep(0.2)
        assert transport.primary_of(slot)[1] == target.port  # refreshed after the MOVED
    finally:
        move(target, source)
        redis_cluster.wait_ok()
        await rig.close()


async def test_a_script_on_a_remembered_connection_follows_a_moved_slot(make_settings: Callable[..., Settings],
                                                                         redis_cluster: Any) -> None:
    """The transport's fast path (the slot's connection remembered after a first script) meets MOVED once the
    slot moved: the script runs on the new owner, nothing is refused, and the next one goes there directly."""
    rig = await open_rig(make_settings())
    flight_key = keys.flight("FL-001")
    slot = redis.crc.key_slot(flight_key.encode())
    source = redis_cluster.primary_of(flight_key)
    target = next(n for n in redis_cluster.nodes[:6] if n.port != source.port
                  and n.client().info("replication")["role"] == "master")
    try:
        await rig.orders.create("FL-001", "o-fast-1", CALLER)  # the slot's connection is remembered now
        _move_slot(slot, source, target)
        for order_id in ("o-fast-2", "o-fast-3"):
            created = await rig.orders.create("FL-001", order_id, CALLER)
            assert created.order.state == "PENDING"
            assert target.client().exists(keys.order("FL-001", order_id)) == 1, order_id
        assert rig.domain.store.transport.primary_of(slot)[1] == target.port
    finally:
        _move_slot(slot, target, source)
        redis_cluster.wait_ok()
        await rig.close()
