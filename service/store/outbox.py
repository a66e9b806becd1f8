"""The webhook outbox: the flights' ``seats:{F}:outbox`` streams, read through one consumer group.

The order scripts append an entry when an order ends (``lua/_lib.lua`` "webhooks"), in the same script as
the change, so an event exists exactly when its change does. The worker's relay (``service.webhooks``)
reads new entries with ``XREADGROUP`` (group ``relay``, one consumer per worker process), queues one arq
job per entry, then ``XACK``s and ``XDEL``s it: an entry is removed only after its job is queued. Entries a
dead worker read but never queued stay pending in the group and are taken over with ``XAUTOCLAIM`` once
idle for ``SEATS_WEBHOOK_CLAIM_IDLE_SECONDS``. A job queued twice (a relay that died between queueing and
acking) carries the same job id, the entry's ``webhook-id``: arq refuses the duplicate while it knows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from service.settings import Settings
from service.store import keys
from service.store.connection import RedisReplyError
from service.store.errors import mapped
from service.store.transport import Transport

GROUP: Final = "relay"  # lua/_lib.lua OUTBOX_GROUP


class OutboxEvent(msgspec.Struct, frozen=True):
    """One outbox entry: where it is (flight, stream entry id) and what it says.

    ``webhook_id`` is the Standard Webhooks ``webhook-id`` (stable across retries), ``type`` e.g.
    ``order.confirmed``, ``at_ms`` when the order ended (Redis ``TIME``, ms), ``order`` the order's public
    hash fields as the script saw them (``service.orders.order_from_hash`` reads them).
    """

    flight_id: str
    entry_id: str
    webhook_id: str
    type: str
    at_ms: int
    order: dict[str, str]


def outbox_spec(settings: Settings) -> str:
    """The order scripts' outbox argument (lua/_lib.lua): ``outbox|<max age ms>`` or ``''`` (no webhooks)."""
    if not settings.webhooks:
        return ""
    return f"outbox|{int(settings.webhook_max_age_seconds * 1000)}"


_order_decoder = msgspec.json.Decoder(dict[str, str])


def _event(flight_id: str, entry: Sequence[Any]) -> OutboxEvent | None:
    entry_id, flat = entry[0], entry[1]
    if flat is None:  # XAUTOCLAIM of an entry deleted meanwhile (Redis 7 lists those ids separately)
        return None
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return OutboxEvent(flight_id, entry_id, fields["id"], fields["type"], int(fields["at"]),
                       _order_decoder.decode(fields["o"]))


class Outbox:
    """Reads and acknowledges the flights' outbox streams (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def flights(self) -> set[str]:
        """The flight ids of the catalogue (every flight that can have an outbox)."""
        with mapped():
            return set(await self._transport.call(keys.CATALOG, "SMEMBERS", keys.CATALOG))

    async def read(self, flight_id: str, consumer: str, count: int) -> list[OutboxEvent]:
        """Up to ``count`` entries no consumer has read yet (now pending for ``consumer``); none when the
        flight never had an outbox. Raises StoreUnavailable."""
        stream = keys.outbox(flight_id)
        try:
            with mapped():
                reply = await self._transport.call(stream, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count,
                                                   "STREAMS", stream, ">")
        except RedisReplyError as exc:
            if str(exc).startswith("NOGROUP"):  # no order of this flight ended with webhooks on yet
                return []
            raise
        if not reply:
            return []
        return [e for e in (_event(flight_id, entry) for entry in reply[0][1]) if e is not None]

    async def claim_stale(self, flight_id: str, consumer: str, idle_ms: int, count: int) -> list[OutboxEvent]:
        """Entries another consumer read at least ``idle_ms`` ago and never acknowledged (a worker that died
        between reading and queueing), now pending for ``consumer``. Raises StoreUnavailable."""
        stream = keys.outbox(flight_id)
        try:
            with mapped():
                reply = await self._transport.call(stream, "XAUTOCLAIM", stream, GROUP, consumer, idle_ms, "0-0",
                                                   "COUNT", count)
        except RedisReplyError as exc:
            if str(exc).startswith("NOGROUP"):
                return []
            raise
        return [e for e in (_event(flight_id, entry) for entry in reply[1]) if e is not None]

    async def done(self, flight_id: str, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete entries whose delivery job is queued (one round trip, one slot)."""
        if not entry_ids:
            return
        stream = keys.outbox(flight_id)
        with mapped():
            replies = await self._transport.batch(stream, [("XACK", stream, GROUP, *entry_ids),
                                                           ("XDEL", stream, *entry_ids)])
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                raise reply

    async def forget_consumers(self, flight_id: str, idle_ms: int) -> int:
        """Remove the group's consumers that hold no pending entry and did nothing for ``idle_ms`` (workers
        long gone: each worker process is a consumer of its own); returns how many. One with pending entries
        is kept: removing it would drop them from the group (their events would never be read again)."""
        stream = keys.outbox(flight_id)
        try:
            with mapped():
                consumers = await self._transport.call(stream, "XINFO", "CONSUMERS", stream, GROUP)
        except RedisReplyError as exc:
            if str(exc).startswith("NOGROUP") or "no such key" in str(exc):
                return 0
            raise
        gone = 0
        for flat in consumers:
            info = dict(zip(flat[::2], flat[1::2], strict=True))
            if int(info["pending"]) == 0 and int(info["idle"]) >= idle_ms:
                with mapped():
                    await self._transport.call(stream, "XGROUP", "DELCONSUMER", stream, GROUP, info["name"])
                gone += 1
        return gone

    async def pending(self, flight_id: str) -> int:
        """How many entries the flight's outbox holds (read or not): the relay's backlog."""
        with mapped():
            return int(await self._transport.call(keys.outbox(flight_id), "XLEN", keys.outbox(flight_id)))
