"""The pipelined connection the scripts and the gateway run over, on a real redis-server.

Replies are matched to callers by position, so every test here is about that match surviving
concurrency, errors, cancellation, a killed connection and a server that stops answering.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service import errors
from service.store.connection import CLIENT_NAME, MultiplexedRedis, RedisReplyError
from service.store.errors import Refusal
from service.store.scripts import Scripts
from service.store.subscription import Subscriber
from service.store.transport import StandaloneTransport
from tests.conftest import RedisServer, free_port


def standalone(client: MultiplexedRedis) -> StandaloneTransport:
    """The transport the store builds around one connection to a single Redis."""
    return StandaloneTransport(client, ("127.0.0.1", 0), "redis://127.0.0.1")


@pytest.fixture
async def mux(redis_url: str) -> AsyncIterator[MultiplexedRedis]:
    client = MultiplexedRedis(redis_url, reply_timeout=0.5)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_concurrent_callers_each_get_their_own_reply(mux: MultiplexedRedis) -> None:
    """2,000 commands in flight at once, mixed types: every caller gets the reply to its command."""
    async def one(i: int) -> None:
        if i % 3 == 0:
            assert await mux.execute("ECHO", f"echo-{i}") == f"echo-{i}"
        elif i % 3 == 1:
            assert await mux.execute("INCRBY", f"n:{i}", i) == i
        else:
            assert await mux.execute("SET", f"s:{i}", i, "GET") is None

    await asyncio.gather(*(one(i) for i in range(2000)))
    assert await mux.execute("GET", "s:2") == "2"


async def test_error_reply_is_raised_and_does_not_shift_later_replies(mux: MultiplexedRedis) -> None:
    await mux.execute("SET", "text", "not a number")
    results = await asyncio.gather(
        mux.execute("ECHO", "before"), mux.execute("INCR", "text"), mux.execute("ECHO", "after"),
        return_exceptions=True,
    )
    assert results[0] == "before"
    assert isinstance(results[1], RedisReplyError)
    assert "not an integer" in str(results[1])
    assert results[2] == "after"


async def test_a_cancelled_caller_does_not_shift_the_replies_of_others(mux: MultiplexedRedis) -> None:
    await mux.execute("PING")  # connected
    doomed = asyncio.create_task(mux.execute("ECHO", "doomed"))
    survivor = asyncio.create_task(mux.execute("ECHO", "survivor"))
    await asyncio.sleep(0)  # both written
    doomed.cancel()
    assert await survivor == "survivor"
    assert await mux.execute("ECHO", "next") == "next"
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_killed_connection_fails_in_flight_commands_and_reconnects(
    mux: MultiplexedRedis, admin: aioredis.Redis
) -> None:
    """A lost connection is a 503 for what was in flight (never a wrong reply), then it reconnects."""
    await mux.execute("PING")
    in_flight = asyncio.create_task(mux.execute("BLPOP", "never-filled", 5))  # still waiting when killed
    await asyncio.sleep(0.1)
    clients = await admin.client_list()
    ours = [c["id"] for c in clients if c["name"] == CLIENT_NAME]
    assert len(ours) == 1
    assert await admin.execute_command("CLIENT", "KILL", "ID", ours[0]) == 1
    with pytest.raises(errors.StoreUnavailable):
        await in_flight
    assert await mux.execute("ECHO", "again") == "again"


async def test_a_silent_server_trips_the_reply_timeout(mux: MultiplexedRedis, admin: aioredis.Redis) -> None:
    """Redis paused for 2 s: the 0.5 s reply timeout closes the connection instead of waiting."""
    await mux.execute("PING")
    await admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable):
        await mux.execute("ECHO", "stuck")
    waited = time.monotonic() - started
    assert 0.4 < waited < 1.9, waited
    await admin.execute_command("CLIENT", "UNPAUSE")
    assert await mux.execute("ECHO", "back") == "back"


async def test_unreachable_server_is_store_unavailable() -> None:
    client = MultiplexedRedis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    try:
        with pytest.raises(errors.StoreUnavailable):
            await client.execute("PING")
    finally:
        await client.aclose()


async def test_restarted_server_is_reached_again_and_scripts_reload(redis_server: RedisServer) -> None:
    """After a restart the cache of scripts is empty: the next call loads the script and runs it."""
    client = MultiplexedRedis(redis_server.url)
    scripts = Scripts(standalone(client))
    try:
        assert await scripts.run("due_orders", ["seats:{X}:deadlines"], [1]) == []
        redis_server.restart()
        with pytest.raises(errors.StoreUnavailable):  # the old connection is gone with the old server
            await client.execute("PING")
        assert await scripts.run("due_orders", ["seats:{X}:deadlines"], [1]) == []
        with pytest.raises(Refusal):  # refusals still arrive as refusals
            await scripts.run("hold_seats", ["seats:{X}:flight", "c", "d", "seats:{X}:order:o"],
                              ["ch", 10, "X", "o", "*", "", 1000, 1, 1, "0", 1, "1A"])
    finally:
        await client.aclose()


async def test_credentials_and_database_from_the_url(redis_url: str, admin: aioredis.Redis) -> None:
    """``redis://user:password@host:port/db``: AUTH and SELECT happen before the first command."""
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    host_port = redis_url.removeprefix("redis://").rsplit("/", 1)[0]
    client = MultiplexedRedis(f"redis://{user}:{password}@{host_port}/3")
    try:
        await client.execute("SET", "where", "db3")
        assert await admin.execute_command("SELECT", 0) and await admin.get("where") is None
        names = await admin.execute_command("CLIENT", "LIST")
        assert CLIENT_NAME in str(names)
    finally:
        await client.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
    on_db3 = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    assert await on_db3.get("where") == "db3"
    await on_db3.aclose()

    wrong = MultiplexedRedis(f"redis://{user}:wrong@{host_port}/0")
    try:
        with pytest.raises(errors.StoreUnavailable):
            await wrong.execute("PING")
    finally:
        await wrong.aclose()


async def test_past_max_in_flight_a_command_fails_at_once(redis_url: str, admin: aioredis.Redis) -> None:
    """Redis stalls: the 4th command in flight is refused with 503 at once instead of queueing."""
    client = MultiplexedRedis(redis_url, max_in_flight=3)
    try:
        await client.execute("PING")
        await admin.execute_command("CLIENT", "PAUSE", 500, "ALL")
        stalled = [asyncio.create_task(client.execute("ECHO", str(i))) for i in range(3)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable, match="not keeping up"):
            await client.execute("ECHO", "one too many")
        assert time.monotonic() - started < 0.2
        assert await asyncio.gather(*stalled) == ["0", "1", "2"]
        assert await client.execute("ECHO", "room again") == "room again"
    finally:
        await client.aclose()


async def test_unix_socket_url_reaches_the_same_server(tmp_path: Path) -> None:
    """``unix:///path?db=N`` (as redis-py reads it): scripts and subscription use the socket, not TCP."""
    socket_path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", str(socket_path),
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}?db=4"
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        client = MultiplexedRedis(url)
        try:
            await client.execute("SET", "via", "unix")
            check = aioredis.Redis.from_url(url, decode_responses=True)
            assert await check.get("via") == "unix"
            await check.aclose()
        finally:
            await client.aclose()
        heard: list[bytes] = []
        subscriber = Subscriber(StandaloneTransport(MultiplexedRedis(url), ("unix", 0), url),
                                lambda channel, data: heard.append(data), lambda channel: None)
        running = asyncio.create_task(subscriber.run_forever())
        state = subscriber.want("u:1")
        deadline = time.monotonic() + 5
        while not state.ready.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        publisher = aioredis.Redis.from_url(url)
        await publisher.execute_command("SPUBLISH", "u:1", "hello")
        await publisher.aclose()
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        running.cancel()
        subscriber.close()
        assert heard == [b"hello"]
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_redis_errors_are_not_refusals(mux: MultiplexedRedis, admin: aioredis.Redis) -> None:
    """Only the scripts' own codes are refusals (4xx); a script bug stays an error (500) and an
    out-of-memory Redis is StoreUnavailable (503), never "Unexpected refusal OOM"."""
    scripts = Scripts(standalone(mux))
    with pytest.raises(RedisReplyError) as raised:  # too few arguments: HSET of a nil fails in Lua
        await scripts.run("put_flight", ["seats:{X}:flight", "seats:{X}:changes", "seats:{X}:deadlines"],
                          ["seats:{X}:events", 10, "X"])
    assert not isinstance(raised.value, Refusal)
    await admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(errors.StoreUnavailable, match="OOM"):
            await scripts.run("put_flight", ["seats:{X}:flight", "seats:{X}:changes", "seats:{X}:deadlines"],
                              ["seats:{X}:events", 10, "X", 2, "AB", 4, "put"])
    finally:
        await admin.config_set("maxmemory", 0)


async def test_a_primary_short_of_replicas_is_unavailable(mux: MultiplexedRedis, admin: aioredis.Redis) -> None:
    """``min-replicas-to-write`` (README "Redis Cluster": durability over availability) refuses writes with
    NOREPLICAS while too few replicas are connected: a 503 (StoreUnavailable), never a 500."""
    scripts = Scripts(standalone(mux))
    await admin.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(errors.StoreUnavailable, match="NOREPLICAS"):
            await scripts.run("put_flight", ["seats:{X}:flight", "seats:{X}:changes", "seats:{X}:deadlines"],
                              ["seats:{X}:events", 10, "X", 2, "AB", 4, "put"])
    finally:
        await admin.config_set("min-replicas-to-write", 0)


async def test_script_cache_flush_is_survived(mux: MultiplexedRedis, admin: aioredis.Redis) -> None:
    """After SCRIPT FLUSH a script is loaded again when called, and readiness's check loads them all."""
    scripts = Scripts(standalone(mux))
    await scripts.load_all()
    await admin.script_flush()
    assert await scripts.run("due_orders", ["seats:{X}:deadlines"], [1]) == []
    assert await admin.script_exists(*scripts._shas.values()) != [True] * len(scripts._shas)
    await scripts.ensure_loaded()
    assert await admin.script_exists(*scripts._shas.values()) == [True] * len(scripts._shas)


async def test_close_while_connecting_is_store_unavailable() -> None:
    """A server that accepts but never answers: closing the client fails the waiting caller with 503."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client hangs up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0", connect_timeout=5)
    try:
        waiting = asyncio.create_task(client.execute("PING"))
        await asyncio.sleep(0.1)
        await client.aclose()
        with pytest.raises(errors.StoreUnavailable):
            await waiting
    finally:
        server.close()
        await server.wait_closed()


async def test_an_undecodable_value_does_not_break_the_connection(mux: MultiplexedRedis, admin: aioredis.Redis) -> None:
    await admin.set("binary", b"\xff\xfeok")
    results = await asyncio.gather(mux.execute("ECHO", "before"), mux.execute("GET", "binary"),
                                   mux.execute("ECHO", "after"))
    assert results == ["before", "\ufffd\ufffdok", "after"]


def test_every_code_the_scripts_refuse_with_is_known_as_a_refusal() -> None:
    """REFUSAL_CODES must list each ``fail('CODE'`` in lua/: an unlisted one would reach clients as a 500."""
    from service.store.errors import REFUSAL_CODES

    lua_dir = Path(__file__).resolve().parent.parent / "lua"
    used = {code for path in lua_dir.glob("*.lua") for code in re.findall(r"fail\('([A-Z_]+)'", path.read_text())}
    assert used and used == REFUSAL_CODES, (sorted(used - REFUSAL_CODES), sorted(REFUSAL_CODES - used))
