"""How commands reach Redis: one pipelined connection per primary, every command routed by its slot.

``StandaloneTransport`` is one ``MultiplexedRedis`` (a single Redis: every route goes there);
``ClusterTransport`` keeps one per primary of a Redis Cluster. Both offer the same four calls:
``call(route, *command)``, ``batch(route, commands, atomic=...)``, ``each_primary(*command)`` and
``primaries()``; ``route`` is a key the command touches (its slot picks the node).

The slot map comes from redis-py's cluster client (``CLUSTER SLOTS``, its ``NodesManager``), which the
service also uses for commands off the hot path; this module only keeps a ``MultiplexedRedis`` per
primary and follows the cluster's answers (Redis Cluster specification, "Redirection and resharding"):

- ``MOVED <slot> <host:port>``: the slot lives elsewhere now: refresh the slot map, send it there;
- ``ASK <slot> <host:port>``: the slot is migrating: send ``ASKING`` then the command, once, there;
- ``TRYAGAIN`` (a multi-key command during a migration), ``CLUSTERDOWN`` (a failover in progress) and a
  primary that cannot be reached before anything was sent: wait a little, refresh, try again.

A command follows at most MAX_REDIRECTS redirections and gives up (StoreUnavailable, 503) after
RETRY_BUDGET_SECONDS of trying (spec §12). A command that may have reached Redis is never sent twice:
a connection lost with it in flight is StoreUnavailable at once (unknown outcome, as standalone).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from service import errors
from service.store.connection import TLS_OPTIONS, Arg, MultiplexedRedis, NotSent, RedisAddress, RedisReplyError

Address = tuple[str, int]

SUBSCRIBER_NAME: Final = "seats-events"
MAX_REDIRECTS: Final = 3
RETRY_BUDGET_SECONDS: Final = 2.0
FIRST_PAUSE_SECONDS: Final = 0.05


def slot_of(key: str) -> int:
    """The cluster slot of ``key`` (its ``{hash tag}`` when it has one)."""
    return key_slot(key.encode())


def seed_urls(value: str) -> list[str]:
    """``SEATS_REDIS_URL`` in cluster mode: comma-separated seed nodes."""
    seeds = [part.strip() for part in value.split(",") if part.strip()]
    if not seeds:
        raise ValueError("SEATS_REDIS_URL names no cluster seed node")
    return seeds


def topology_client(seeds: Sequence[str], *, connect_timeout: float, reply_timeout: float) -> RedisCluster:
    """redis-py's cluster client on ``seeds`` (credentials and TLS from the first): the slot map's source."""
    first: dict[str, Any] = dict(parse_url(seeds[0]))
    parsed: list[dict[str, Any]] = [dict(parse_url(seed)) for seed in seeds]
    nodes = [ClusterNode(str(p.get("host", "127.0.0.1")), int(p.get("port", 6379))) for p in parsed]
    tls = {name: first[name] for name in TLS_OPTIONS if name in first}
    return RedisCluster(  # type: ignore[abstract]  # redis-py 5.2's stub marks it abstract; it is not
        startup_nodes=nodes, username=first.get("username"), password=first.get("password"),
        ssl=first.get("connection_class") is SSLConnection, decode_responses=True,
        socket_connect_timeout=connect_timeout, socket_timeout=reply_timeout, require_full_coverage=False,
        **tls,
    )


class Transport(Protocol):
    """What the store sends commands through (see the module docstring)."""

    async def call(self, route: str, *args: Arg) -> Any:
        """One command to the node serving ``route``; an error reply is raised as ``RedisReplyError``."""

    async def batch(self, route: str, commands: Sequence[Sequence[Arg]], *, atomic: bool = False) -> list[Any]:
        """Commands for one slot, adjacent on the wire (``atomic``: in MULTI/EXEC); their replies in order,
        error replies as ``RedisReplyError`` values."""

    async def each_primary(self, *args: Arg) -> list[Any]:
        """A keyless command on every primary (``SCRIPT LOAD``, ``CONFIG GET``)."""

    def primaries(self) -> list[Address]:
        """The primaries as (host, port)."""

    def address_for(self, route: str) -> RedisAddress:
        """Where a connection of its own to the node serving ``route`` goes (the sharded subscription)."""

    async def refresh(self) -> None:
        """Read the slot map again (nothing to do on a single Redis)."""

    async def aclose(self) -> None:
        """Close every connection."""


def _transaction(commands: Sequence[Sequence[Arg]]) -> list[Sequence[Arg]]:
    return [("MULTI",), *commands, ("EXEC",)]


def _exec_result(replies: list[Any]) -> list[Any]:
    """The EXEC reply of a MULTI block's replies; a queued command's error reply (MOVED included) is raised."""
    result = replies[-1]
    if isinstance(result, RedisReplyError):
        queued_errors = [r for r in replies[1:-1] if isinstance(r, RedisReplyError)]
        raise queued_errors[0] if queued_errors else result
    return list(result)


class StandaloneTransport:
    """A single Redis over one pipelined connection: every route leads there."""

    def __init__(self, connection: MultiplexedRedis, address: Address, url: str) -> None:
        self.connection = connection
        self._address = address
        self._subscriber_address = RedisAddress.from_url(url, SUBSCRIBER_NAME)

    async def call(self, route: str, *args: Arg) -> Any:
        """See ``Transport.call``."""
        return await self.connection.execute(*args)

    async def batch(self, route: str, commands: Sequence[Sequence[Arg]], *, atomic: bool = False) -> list[Any]:
        """See ``Transport.batch``."""
        if not atomic:
            return await self.connection.execute_many(commands)
        return _exec_result(await self.connection.execute_many(_transaction(commands)))

    async def each_primary(self, *args: Arg) -> list[Any]:
        """See ``Transport.each_primary``."""
        return [await self.connection.execute(*args)]

    def primaries(self) -> list[Address]:
        """See ``Transport.primaries``."""
        return [self._address]

    def address_for(self, route: str) -> RedisAddress:
        """See ``Transport.address_for``."""
        return self._subscriber_address

    async def refresh(self) -> None:
        """See ``Transport.refresh``."""

    async def aclose(self) -> None:
        """See ``Transport.aclose``."""
        await self.connection.aclose()


class ClusterTransport:
    """``call(route, *command)``: the command goes to the primary serving ``route``'s slot.

    ``route`` is a key the command touches (a script's first key); keyless commands the cluster must
    see everywhere (``SCRIPT LOAD``) go through :meth:`each_primary`.
    """

    def __init__(self, seeds: Sequence[str], *, connect_timeout: float = 2.0, reply_timeout: float = 5.0,
                 max_in_flight: int = 10_000, client_name: str = "seats-pipelined") -> None:
        self.topology = topology_client(seeds, connect_timeout=connect_timeout, reply_timeout=reply_timeout)
        self._template = RedisAddress.from_url(seeds[0], client_name)
        self._subscriber_template = RedisAddress.from_url(seeds[0], SUBSCRIBER_NAME)
        self._timeouts = (connect_timeout, reply_timeout)
        self._max_in_flight = max_in_flight
        self._connections: dict[tuple[str, int], MultiplexedRedis] = {}
        # slot -> the connection to its primary, filled as slots are used, emptied by every refresh: the hot
        # path's one dict lookup instead of the slot map's node objects (bench: loadtest.bench_transport)
        self._by_slot: dict[int, MultiplexedRedis] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Read the slot map (raises StoreUnavailable when no seed answers)."""
        await self.refresh()
        self._started = True

    async def refresh(self) -> None:
        """Read the slot map again; concurrent callers share one refresh."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        try:
            await asyncio.shield(self._refreshing)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise errors.StoreUnavailable("The seat store (Redis Cluster) cannot be reached.") from exc

    async def _refresh(self) -> None:
        await self.topology.nodes_manager.initialize()
        self._by_slot.clear()

    def primaries(self) -> list[tuple[str, int]]:
        """The primaries of the current slot map."""
        return sorted({(str(n.host), int(n.port)) for n in self.topology.nodes_manager.nodes_cache.values()
                       if n.server_type == "primary"})

    def primary_of(self, slot: int) -> tuple[str, int]:
        """The primary serving ``slot`` in the current map (StoreUnavailable when none does)."""
        try:
            node = self.topology.nodes_manager.get_node_from_slot(slot)
        except (RedisClusterException, KeyError) as exc:
            raise errors.StoreUnavailable(f"No primary serves slot {slot} now.") from exc
        return str(node.host), int(node.port)

    def address_for(self, route: str) -> RedisAddress:
        """See ``Transport.address_for`` (the primary serving the slot now)."""
        host, port = self.primary_of(slot_of(route))
        return self._subscriber_template.moved_to(host, port)

    def connection(self, address: tuple[str, int]) -> MultiplexedRedis:
        """The pipelined connection to one node (created on first use)."""
        connection = self._connections.get(address)
        if connection is None:
            connection = MultiplexedRedis.at(self._template.moved_to(*address), connect_timeout=self._timeouts[0],
                                             reply_timeout=self._timeouts[1], max_in_flight=self._max_in_flight)
            self._connections[address] = connection
        return connection

    async def call(self, route: str, *args: Arg) -> Any:
        """Send one command to the primary of ``route``'s slot, following the cluster's redirections.

        Fast path: the slot's connection is known, the command goes out at once. A redirection reply or a
        node that cannot be reached (nothing ran, nothing was sent) falls back to the routed path, which
        refreshes the slot map and retries; a connection lost with the command in flight is
        StoreUnavailable at once, as there.
        """
        slot = slot_of(route)
        known = self._by_slot.get(slot)
        if known is not None:
            try:
                return await known.execute(*args)
            except RedisReplyError as exc:
                if not _redirection(exc):
                    raise
            except NotSent:
                pass
            self._by_slot.pop(slot, None)
        return await self._call_routed(route, args)

    async def _call_routed(self, route: str, args: tuple[Arg, ...]) -> Any:
        async def send(connection: MultiplexedRedis, asking: bool) -> Any:
            return await (connection.execute_asking(*args) if asking else connection.execute(*args))

        reply = await self._routed(route, send)
        slot = slot_of(route)
        with contextlib.suppress(errors.StoreUnavailable):  # the slot's primary answered: remember it
            self._by_slot[slot] = self.connection(self.primary_of(slot))
        return reply

    async def batch(self, route: str, commands: Sequence[Sequence[Arg]], *, atomic: bool = False) -> list[Any]:
        """See ``Transport.batch`` (the whole batch follows a redirection; an ASK redirection is not
        followed for a batch: the slot is migrating, the batch is tried again after a pause)."""

        async def send(connection: MultiplexedRedis, asking: bool) -> list[Any]:
            replies: list[Any] = await connection.execute_many(_transaction(commands) if atomic else commands)
            if atomic:
                return _exec_result(replies)
            redirected = [r for r in replies if isinstance(r, RedisReplyError) and _redirection(r)]
            if redirected:
                raise redirected[0]
            return replies

        replies: list[Any] = await self._routed(route, send, follow_ask=False)
        return replies

    async def _routed(self, route: str, send: Callable[[MultiplexedRedis, bool], Awaitable[Any]], *,
                      follow_ask: bool = True) -> Any:
        slot = slot_of(route)
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        redirects, pause = 0, FIRST_PAUSE_SECONDS
        target: Address | None = None
        asking = False
        while True:
            try:
                target = target or self.primary_of(slot)
                return await send(self.connection(target), asking)
            except RedisReplyError as exc:
                word, _, rest = str(exc).partition(" ")
                if word == "ASK" and not follow_ask:
                    word = "TRYAGAIN"
                if word in ("MOVED", "ASK"):
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise errors.StoreUnavailable("The seat store kept redirecting the command.") from exc
                    host, _, port = rest.split(" ")[-1].rpartition(":")
                    target, asking = (host, int(port)), word == "ASK"
                    if word == "MOVED":
                        self._refresh_soon()
                    continue
                if word not in ("TRYAGAIN", "CLUSTERDOWN"):
                    raise
                failure: Exception = exc
            except NotSent as exc:  # the node is gone (a failover?): nothing was sent, so try again
                failure = exc
            except errors.StoreUnavailable as exc:
                if target is not None:  # lost with the command in flight: its outcome is unknown
                    raise
                failure = exc  # no primary serves the slot (yet): a failover in progress
            if time.monotonic() + pause > deadline:
                raise errors.StoreUnavailable("The seat store (Redis Cluster) is not serving this now.") from failure
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
            with contextlib.suppress(errors.StoreUnavailable):
                await self.refresh()
            target, asking = None, False

    async def each_primary(self, *args: Arg) -> list[Any]:
        """Send a keyless command (``SCRIPT LOAD``) to every primary; their replies in order."""
        return [await self.connection(address).execute(*args) for address in self.primaries()]

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
            self._refreshing.add_done_callback(_retrieve)

    async def aclose(self) -> None:
        """Close every connection."""
        for connection in self._connections.values():
            await connection.aclose()
        self._connections.clear()
        await self.topology.aclose()


def _redirection(reply: RedisReplyError) -> bool:
    return str(reply).partition(" ")[0] in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
