"""The sharded subscription (service/store/subscription.py) on a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from service.store.connection import MultiplexedRedis
from service.store.subscription import BURST, Subscriber
from service.store.transport import SUBSCRIBER_NAME, StandaloneTransport


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def transport(url: str) -> StandaloneTransport:
    """A standalone transport on ``url`` (the subscriber connects on its own)."""
    return StandaloneTransport(MultiplexedRedis(url), ("127.0.0.1", 0), url)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def subscriber(redis_url: str) -> AsyncIterator[tuple[Subscriber, list[tuple[bytes, bytes]], list[str]]]:
    """A running subscriber: what it heard, and which channels it saw confirmed."""
    heard: list[tuple[bytes, bytes]] = []
    confirmed: list[str] = []
    sub = Subscriber(transport(redis_url), lambda c, d: heard.append((c, d)), confirmed.append)
    task = asyncio.create_task(sub.run_forever())
    yield sub, heard, confirmed
    task.cancel()
    sub.close()


async def test_every_message_arrives_in_order_a_burst_at_a_time(subscriber: tuple[Subscriber, list[tuple[bytes, bytes]],
                                                                                    list[str]],
                                                                admin: aioredis.Redis) -> None:
    """5,000 messages published at once on 7 channels arrive complete and in order, and the event loop
    gets a turn at least every 2 x BURST messages (the SSE streams write while a burst is handed over)."""
    sub, heard, _ = subscriber
    states = [sub.want(f"seats:{{T{i}}}:events") for i in range(7)]
    await until(lambda: all(s.ready.is_set() for s in states))
    per_turn: list[int] = []
    total = 5000

    async def ticker() -> None:
        seen = 0
        while len(heard) < total:
            await asyncio.sleep(0)
            per_turn.append(len(heard) - seen)
            seen = len(heard)

    ticking = asyncio.create_task(ticker())
    pipe = admin.pipeline(transaction=False)
    for i in range(total):
        pipe.execute_command("SPUBLISH", f"seats:{{T{i % 7}}}:events", f"m{i}")
    await pipe.execute()
    await asyncio.wait_for(ticking, 30)
    assert [d for _, d in heard] == [f"m{i}".encode() for i in range(total)]
    assert heard[8] == (b"seats:{T1}:events", b"m8")
    assert max(per_turn) <= 2 * BURST


async def test_only_wanted_channels_are_heard_and_released_ones_stop(
    subscriber: tuple[Subscriber, list[tuple[bytes, bytes]], list[str]], admin: aioredis.Redis,
) -> None:
    """A channel nobody wants is not subscribed; the last release unsubscribes it."""
    sub, heard, confirmed = subscriber
    state = sub.want("seats:{A}:events")
    await until(state.ready.is_set)
    assert confirmed == ["seats:{A}:events"]
    await admin.execute_command("SPUBLISH", "seats:{B}:events", "not for us")
    await admin.execute_command("SPUBLISH", "seats:{A}:events", "for us")
    await until(lambda: len(heard) == 1)
    sub.release("seats:{A}:events")
    deadline = time.monotonic() + 5
    while await admin.execute_command("PUBSUB", "SHARDNUMSUB", "seats:{A}:events") != [b"seats:{A}:events", 0]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await admin.execute_command("SPUBLISH", "seats:{A}:events", "late")
    await asyncio.sleep(0.1)
    assert heard == [(b"seats:{A}:events", b"for us")]


async def test_a_killed_connection_is_replaced_and_reported(
    subscriber: tuple[Subscriber, list[tuple[bytes, bytes]], list[str]], admin: aioredis.Redis,
) -> None:
    """CLIENT KILL of the subscription: the channel is confirmed again (reported, so feeds resync) and
    messages flow again."""
    sub, heard, confirmed = subscriber
    state = sub.want("seats:{K}:events")
    await until(state.ready.is_set)
    ours = [c["id"] for c in await admin.client_list() if c["name"] == SUBSCRIBER_NAME]
    assert len(ours) == 1
    await admin.execute_command("CLIENT", "KILL", "ID", ours[0])
    await until(lambda: len(confirmed) == 2 and state.ready.is_set(), 10)
    assert state.generation == 2
    await admin.execute_command("SPUBLISH", "seats:{K}:events", "again")
    await until(lambda: heard == [(b"seats:{K}:events", b"again")])


async def test_wrong_credentials_never_subscribe_right_ones_do(redis_url: str, admin: aioredis.Redis) -> None:
    """An ACL user with a wrong password never gets a subscription; with the right one (and a database
    in the URL, which sharded pub/sub ignores) it does."""
    user = f"u{uuid.uuid4().hex[:8]}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">right", "~*", "&*", "+@all", "-client")
    host_port = redis_url.removeprefix("redis://").rsplit("/", 1)[0]
    wrong = Subscriber(transport(f"redis://{user}:wrong@{host_port}/0"), lambda c, d: None, lambda c: None)
    right = Subscriber(transport(f"redis://{user}:right@{host_port}/2"), lambda c, d: None, lambda c: None)
    tasks = [asyncio.create_task(s.run_forever()) for s in (wrong, right)]
    try:
        wrong_state, right_state = wrong.want("seats:{W}:events"), right.want("seats:{W}:events")
        await until(right_state.ready.is_set)  # no CLIENT SETNAME for this user: a name is a courtesy
        await asyncio.sleep(0.3)
        assert not wrong_state.ready.is_set()
    finally:
        for task in tasks:
            task.cancel()
        wrong.close()
        right.close()
        await admin.execute_command("ACL", "DELUSER", user)
