"""Redis Cluster on the hot path: one pipelined connection per primary, every command routed by its slot.

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
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from service import errors
from service.multiplexed import Arg, MultiplexedRedis, NotSent, RedisAddress, RedisReplyError

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
    return RedisCluster(  # type: ignore[abstract]  # redis-py 5.2's stub marks it abstract; it is not
        startup_nodes=nodes, username=first.get("username"), password=first.get("password"),
        ssl=first.get("connection_class") is SSLConnection, decode_responses=True,
        socket_connect_timeout=connect_timeout, socket_timeout=reply_timeout, require_full_coverage=False,
    )


class ClusterTransport:
    """``call(route, *command)``: the command goes to the primary serving ``route``'s slot.

    ``route`` is a key the command touches (a script's first key); keyless commands the cluster must
    see everywhere (``SCRIPT LOAD``) go through :meth:`each_primary`.
    """

    def __init__(self, seeds: Sequence[str], *, connect_timeout: float = 2.0, reply_timeout: float = 5.0,
                 max_in_flight: int = 10_000, client_name: str = "seats-pipelined") -> None:
        self.topology = topology_client(seeds, connect_timeout=connect_timeout, reply_timeout=reply_timeout)
        self._template = RedisAddress.from_url(seeds[0], client_name)
        self._timeouts = (connect_timeout, reply_timeout)
        self._max_in_flight = max_in_flight
        self._connections: dict[tuple[str, int], MultiplexedRedis] = {}
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

    def connection(self, address: tuple[str, int]) -> MultiplexedRedis:
        """The pipelined connection to one node (created on first use)."""
        connection = self._connections.get(address)
        if connection is None:
            connection = MultiplexedRedis.at(self._template.moved_to(*address), connect_timeout=self._timeouts[0],
                                             reply_timeout=self._timeouts[1], max_in_flight=self._max_in_flight)
            self._connections[address] = connection
        return connection

    async def call(self, route: str, *args: Arg) -> Any:
        """Send one command to the primary of ``route``'s slot, following the cluster's redirections."""
        slot = slot_of(route)
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        redirects, pause = 0, FIRST_PAUSE_SECONDS
        target, asking = self.primary_of(slot), False
        while True:
            try:
                connection = self.connection(target)
                if asking:
                    return await connection.execute_asking(*args)
                return await connection.execute(*args)
            except RedisReplyError as exc:
                word, _, rest = str(exc).partition(" ")
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
            if time.monotonic() + pause > deadline:
                raise errors.StoreUnavailable("The seat store (Redis Cluster) is not serving this now.") from failure
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
            with contextlib.suppress(errors.StoreUnavailable):
                await self.refresh()
            target, asking = self.primary_of(slot), False

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


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
