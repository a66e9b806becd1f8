"""Every plain Redis command the service sends, named for what it means (writes go through Lua scripts,
``store.scripts``; these are the reads around them, and the few single-key writes of keys outside a
flight: the catalogue, the order → flight index, an Idempotency-Key's claim).

Each method is one round trip to the node serving its key's slot; multi-key reads stay within one
flight's ``{F}`` slot (Redis Cluster). Failures are translated by ``store.errors``: StoreUnavailable
(503) when Redis cannot answer, never a guess.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from service.store import keys
from service.store.clock import redis_now_ms
from service.store.connection import RedisReplyError
from service.store.errors import mapped
from service.store.transport import Transport

HEAD_FIELDS = ("version", "layoutRev", "createdAt")
# After a WAIT fell short on a node, WAITs to it are skipped this long: a node without its replicas
# would make every WAIT run to its timeout, and a WAIT blocks the pipelined connection it is sent on.
WAIT_COOLDOWN_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class FlightHead:
    """A flight's version, layout revision and creation time (None: no such flight), Redis's time (ms)
    and, when asked for, an order's stored token hash."""

    version: int | None
    layout_rev: str | None
    created_at: str | None
    now_ms: int
    token_hash: str | None = None


def _check(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
    return replies


def _head(reply: Sequence[Any], now_ms: int, token_hash: str | None = None) -> FlightHead:
    version, rev, created_at = reply
    return FlightHead(None if version is None else int(version), rev, created_at, now_ms, token_hash)


class Reads:
    """The store's reads (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._short_until: dict[tuple[str, int], float] = {}  # node -> monotonic end of its WAIT cooldown

    async def _call(self, route: str, *args: str | int) -> Any:
        with mapped():
            return await self._transport.call(route, *args)

    async def _batch(self, route: str, commands: Sequence[Sequence[str | int]], *, atomic: bool = False) -> list[Any]:
        with mapped():
            return _check(await self._transport.batch(route, commands, atomic=atomic))

    # -- flights ------------------------------------------------------------------------------------

    async def catalogue(self) -> set[str]:
        """The flight ids of the catalogue."""
        return set(await self._call(keys.CATALOG, "SMEMBERS", keys.CATALOG))

    async def add_to_catalogue(self, flight_id: str) -> None:
        """Put a flight in the catalogue (idempotent)."""
        await self._call(keys.CATALOG, "SADD", keys.CATALOG, flight_id)

    async def flight(self, flight_id: str) -> dict[str, str]:
        """The flight hash (empty when the flight does not exist)."""
        flat = await self._call(keys.flight(flight_id), "HGETALL", keys.flight(flight_id))
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def flight_head(self, flight_id: str, order_id: str | None = None) -> FlightHead:
        """Version, layout revision, creation time and Redis's time in one transaction (and an order's
        token hash, for ``mine`` marks)."""
        commands: list[Sequence[str | int]] = [("HMGET", keys.flight(flight_id), *HEAD_FIELDS), ("TIME",)]
        if order_id is not None:
            commands.append(("HGET", keys.order(flight_id, order_id), "tokenHash"))
        replies = await self._batch(keys.flight(flight_id), commands, atomic=True)
        return _head(replies[0], redis_now_ms(replies[1]), replies[2] if order_id is not None else None)

    async def flight_heads(self, flight_ids: Sequence[str]) -> list[FlightHead]:
        """:meth:`flight_head` of several flights (each in its own slot: one transaction each)."""
        return list(await asyncio.gather(*(self.flight_head(f) for f in flight_ids)))

    async def seats(self, flight_id: str, seat_keys: Sequence[str]) -> tuple[dict[str, str], list[str | None], int]:
        """The flight hash, every seat key's value and Redis's time (ms), in one transaction."""
        flight_key = keys.flight(flight_id)
        flat, values, time_reply = await self._batch(
            flight_key, [("HGETALL", flight_key), ("MGET", *seat_keys), ("TIME",)], atomic=True)
        return dict(zip(flat[::2], flat[1::2], strict=True)), list(values), redis_now_ms(time_reply)

    async def changes_since(self, flight_id: str, version: int) -> tuple[FlightHead, list[str]]:
        """The flight's head and the announcements logged after ``version`` (oldest first), in one transaction."""
        flight_key = keys.flight(flight_id)
        head, entries, time_reply = await self._batch(flight_key, [
            ("HMGET", flight_key, *HEAD_FIELDS), ("XRANGE", keys.changes(flight_id), f"{version + 1}-0", "+"),
            ("TIME",)], atomic=True)
        return _head(head, redis_now_ms(time_reply)), [_field(entry[1], "d") for entry in entries]

    async def lineage(self, flight_id: str) -> str:
        """The replication id of the primary serving the flight: it changes when a replica takes over
        (or a Redis restarts), so versions it hands out may repeat ones seen before (``live`` epochs)."""
        info = await self._call(keys.flight(flight_id), "INFO", "replication")
        for line in str(info).splitlines():
            if line.startswith("master_replid:"):
                return line.split(":", 1)[1].strip()
        return ""

    # -- orders -------------------------------------------------------------------------------------

    async def order(self, flight_id: str, order_id: str) -> tuple[dict[str, str], int]:
        """The order hash (empty when absent) and Redis's time (ms)."""
        order_key = keys.order(flight_id, order_id)
        flat, time_reply = await self._batch(order_key, [("HGETALL", order_key), ("TIME",)])
        return dict(zip(flat[::2], flat[1::2], strict=True)), redis_now_ms(time_reply)

    async def paying_orders(self, flight_id: str) -> list[tuple[str, str]]:
        """(order id, payment id) of every PAYING order of the flight (the deadline index holds every open
        order; two round trips, whatever their number)."""
        deadlines = keys.deadlines(flight_id)
        order_ids = list(await self._call(deadlines, "ZRANGE", deadlines, 0, -1))
        if not order_ids:
            return []
        replies = await self._batch(deadlines, [("HMGET", keys.order(flight_id, o), "state", "paymentId")
                                                for o in order_ids])
        return [(o, str(payment)) for o, (state, payment) in zip(order_ids, replies, strict=True)
                if state == "PAYING" and payment]

    async def order_fields(self, flight_id: str, order_id: str, *fields: str) -> list[str | None]:
        """Some fields of an order hash (None where absent)."""
        order_key = keys.order(flight_id, order_id)
        return list(await self._call(order_key, "HMGET", order_key, *fields))

    async def flight_of_order(self, order_id: str) -> str | None:
        """The flight an order id belongs to (the order → flight index), or None."""
        value = await self._call(keys.order_flight(order_id), "GET", keys.order_flight(order_id))
        return None if value is None else str(value)

    async def claim_order_id(self, order_id: str, flight_id: str, lease_ms: int) -> bool:
        """Claim an order id for ``flight_id`` on a lease (SET NX PX); False when it is taken."""
        key = keys.order_flight(order_id)
        return await self._call(key, "SET", key, flight_id, "NX", "PX", lease_ms) is not None

    async def index_order(self, order_id: str, flight_id: str, ttl_ms: int) -> None:
        """Make the order → flight index entry last the order's life (it may have been a claim's lease)."""
        key = keys.order_flight(order_id)
        await self._call(key, "SET", key, flight_id, "PX", ttl_ms)

    async def keep_order_index_until(self, order_id: str, at_ms: int) -> None:
        """Make the order → flight index entry last at least until ``at_ms`` (epoch ms; never shortened):
        an operator's extension past the hold cap makes an order outlive the TTL its index got."""
        key = keys.order_flight(order_id)
        await self._call(key, "PEXPIREAT", key, at_ms, "GT")

    async def release_order_id(self, order_id: str) -> None:
        """Forget a claimed order id (its order was never created)."""
        await self._call(keys.order_flight(order_id), "DEL", keys.order_flight(order_id))

    async def claim_idempotency_key(self, record_key: str, pending: str, lease_ms: int) -> str | None:
        """Claim an Idempotency-Key record if absent (SET NX GET PX): None when claimed, else the record."""
        value = await self._call(record_key, "SET", record_key, pending, "NX", "GET", "PX", lease_ms)
        return None if value is None else str(value)

    async def wait_for_replicas(self, flight_id: str, replicas: int, timeout_ms: int) -> int | None:
        """``WAIT replicas timeout_ms`` on the connection that made the flight's last writes: how many
        replicas have them now (Redis docs, WAIT: the writes of this connection so far; on the shared
        pipelined connection that includes other callers' earlier writes, never fewer).

        None: skipped, because a WAIT on the same node fell short less than WAIT_COOLDOWN_SECONDS ago.
        Redis blocks the whole connection for a WAIT, so a primary that lost its replica would stall
        every command of this process to it for ``timeout_ms`` per confirmation; a skipped WAIT gives
        up nothing a timed-out one would have given. Raises StoreUnavailable.
        """
        route = keys.flight(flight_id)
        address = self._transport.address_for(route)
        node = (address.host, address.port)
        if self._short_until.get(node, 0.0) > time.monotonic():
            return None
        acknowledged = int(await self._call(route, "WAIT", replicas, timeout_ms))
        if acknowledged < replicas:
            self._short_until[node] = time.monotonic() + WAIT_COOLDOWN_SECONDS
        else:
            self._short_until.pop(node, None)
        return acknowledged

    # -- the gateway, the nodes -------------------------------------------------------------------

    async def gateway_books(self) -> tuple[int, int]:
        """The simulated gateway's books: (charged, refunded)."""
        charged, refunded = await self._call(keys.GATEWAY_BOOKS, "HMGET", keys.GATEWAY_BOOKS, "charged", "refunded")
        return int(charged or 0), int(refunded or 0)

    async def ping_primaries(self) -> int:
        """PING every primary; how many answered (raises StoreUnavailable when one does not)."""
        with mapped():
            return len(await self._transport.each_primary("PING"))

    async def eviction_policies(self) -> list[str]:
        """Each primary's ``maxmemory-policy`` (read with ``INFO memory``: ``CONFIG GET`` is often disabled
        on managed Redis)."""
        with mapped():
            infos = await self._transport.each_primary("INFO", "memory")
        return [_info_field(str(info), "maxmemory_policy") for info in infos]


def _field(flat: Sequence[str], name: str) -> str:
    return str(flat[list(flat[::2]).index(name) * 2 + 1])


def _info_field(info: str, name: str) -> str:
    for line in info.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return "unknown"
