"""The lean pattern subscription (service/subscription.py) on a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.multiplexed import RedisReplyError
from service.subscription import BURST, CLIENT_NAME, open_pattern_subscription


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_every_message_arrives_in_order_a_burst_at_a_time(redis_url: str, admin: aioredis.Redis) -> None:
    """5,000 messages published at once arrive complete and in order, and the event loop gets a turn
    at least every 2 x BURST messages (the SSE streams write while a burst is handed over)."""
    received: list[tuple[bytes, bytes]] = []
    subscription = await open_pattern_subscription(redis_url, "test:*", lambda c, d: received.append((c, d)))
    per_turn: list[int] = []
    total = 5000

    async def ticker() -> None:
        seen = 0
        while len(received) < total:
            await asyncio.sleep(0)
            per_turn.append(len(received) - seen)
            seen = len(received)

    try:
        ticking = asyncio.create_task(ticker())
        pipe = admin.pipeline(transaction=False)
        for i in range(total):
            pipe.publish(f"test:{i % 7}", f"m{i}")
        await pipe.execute()
        await asyncio.wait_for(ticking, 30)
    finally:
        subscription.close()
    assert [d for _, d in received] == [f"m{i}".encode() for i in range(total)]
    assert received[8] == (b"test:1", b"m8")
    assert max(per_turn) <= 2 * BURST


async def test_ping_is_a_sign_of_life_and_a_kill_completes_lost(redis_url: str, admin: aioredis.Redis) -> None:
    subscription = await open_pattern_subscription(redis_url, "test:*", lambda c, d: None)
    try:
        before = subscription.last_heard
        await asyncio.sleep(0.05)
        subscription.ping()
        deadline = time.monotonic() + 5
        while subscription.last_heard == before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert subscription.last_heard > before
        ours = [c["id"] for c in await admin.client_list() if c["name"] == CLIENT_NAME]
        assert len(ours) == 1
        await admin.execute_command("CLIENT", "KILL", "ID", ours[0])
        await asyncio.wait_for(subscription.lost, 5)
    finally:
        subscription.close()


async def test_wrong_credentials_fail_the_handshake(redis_url: str, admin: aioredis.Redis) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">right", "~*", "&*", "+@all")
    host_port = redis_url.removeprefix("redis://").rsplit("/", 1)[0]
    try:
        with pytest.raises(RedisReplyError):
            await open_pattern_subscription(f"redis://{user}:wrong@{host_port}/0", "test:*", lambda c, d: None)
        subscription = await open_pattern_subscription(f"redis://{user}:right@{host_port}/2", "t:*", lambda c, d: None)
        subscription.close()
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
