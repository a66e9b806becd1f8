"""Loads the Lua scripts of ``lua/`` and calls them by SHA, mapping their refusals to errors.

Each script is ``lua/_lib.lua`` followed by the script's own file (Redis has no ``require``).
A script missing from Redis's cache (after a restart, failover or ``SCRIPT FLUSH``) is loaded
again and run once more, so callers never see the script cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import errors
from service.multiplexed import MultiplexedRedis, RedisReplyError

SCRIPT_NAMES = (
    "create_order",
    "hold_seats",
    "cancel_order",
    "begin_payment",
    "mark_trying",
    "record_attempt",
    "expire_order",
    "due_orders",
    "put_flight",
    "stream_slot",
    "idempotency_settle",
    "settle_payment",
    "gateway_charge",
    "gateway_lookup",
    "gateway_refund",
    "admin_release",
    "admin_extend",
    "block_seats",
    "history_page",
)

Arg = str | int | float


class Refusal(Exception):
    """A script refused a change (``redis.error_reply('CODE detail')``); nothing was written."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code} {detail}".strip())
        self.code = code
        self.detail = detail


class StaleView(Refusal):
    """The caller's view of an order's seats was out of date; ``detail`` is the current csv."""


class StaleLayout(Refusal):
    """The flight's layout changed since the caller validated seat ids against it."""


class OtherSubject(Refusal):
    """The order's subject is not the one the caller assumed; ``detail`` is the order's subject key."""


def load_sources() -> dict[str, str]:
    """The full source of every script (library prepended), by name."""
    package = resources.files("lua")
    library = package.joinpath("_lib.lua").read_text(encoding="utf-8")
    return {
        name: library + "\n" + package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPT_NAMES
    }


# The codes our scripts refuse with (``fail(...)`` in lua/); any other error reply is Redis's own.
REFUSAL_CODES = frozenset({
    "CLOSED", "CONFLICT", "FLIGHT_IN_USE", "FLIGHT_NOT_FOUND", "HOLD_CAP", "IDEMPOTENCY_REUSED", "KEYS_MISMATCH",
    "LAYOUT", "NOT_CHARGED", "NOT_FOUND", "NO_SEATS", "ORDER_EXISTS", "PAYING", "RATE_LIMITED", "SEAT_TAKEN",
    "STALE", "SUBJECT", "SUBJECT_LIMIT",
})
# Redis errors that mean "the store cannot take this now" (a 503, like a lost connection).
UNAVAILABLE_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "OOM", "CLUSTERDOWN"})


def parse_refusal(message: str) -> Refusal | None:
    """Turn a script's error reply into a Refusal; ``None`` for a genuine Redis error."""
    code, _, detail = message.partition(" ")
    if code not in REFUSAL_CODES:
        return None
    detail = detail.split(" script:", 1)[0].strip()
    if code == "STALE":
        return StaleView(code, detail)
    if code == "LAYOUT":
        return StaleLayout(code, detail)
    if code == "SUBJECT":
        return OtherSubject(code, detail)
    return Refusal(code, detail)


def _is_unavailable(message: str) -> bool:
    return message.partition(" ")[0] in UNAVAILABLE_CODES


class Scripts:
    """The scripts, called by SHA over ``client``; a script missing from Redis's cache is loaded again.

    ``client`` is the process's ``MultiplexedRedis`` in the API and the worker (the hot path), or a
    redis-py client (tools and tests); both send the same ``EVALSHA``.
    """

    def __init__(self, client: aioredis.Redis | MultiplexedRedis) -> None:
        self._execute = client.execute if isinstance(client, MultiplexedRedis) else client.execute_command
        self._sources = load_sources()
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._sources.items()}  # noqa: S324 - Redis names scripts by SHA-1

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script; raise Refusal for its refusals and StoreUnavailable when Redis is gone."""
        try:
            try:
                return await self._execute("EVALSHA", self._shas[name], len(keys), *keys, *args)
            except (ResponseError, RedisReplyError) as exc:
                if not (isinstance(exc, NoScriptError) or str(exc).startswith("NOSCRIPT")):
                    raise
            # The cache was flushed (a restart, a failover, SCRIPT FLUSH): load it, run it once more.
            await self._execute("SCRIPT", "LOAD", self._sources[name])
            return await self._execute("EVALSHA", self._shas[name], len(keys), *keys, *args)
        except BusyLoadingError as exc:  # redis-py strips the LOADING code from its message
            raise errors.StoreUnavailable("The seat store (Redis) is loading its data.") from exc
        except (ResponseError, RedisReplyError) as exc:
            message = str(exc)
            if _is_unavailable(message):
                raise errors.StoreUnavailable(f"The seat store (Redis) cannot take this now: {message}") from exc
            refusal = parse_refusal(message)
            if refusal is None:
                raise
            raise refusal from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.StoreUnavailable("The seat store (Redis) cannot be reached.") from exc

    async def execute(self, *args: Arg) -> Any:
        """One plain command over the same connection (e.g. the Idempotency-Key claim).

        Raises StoreUnavailable when Redis is gone or cannot take it now; other error replies as they are.
        """
        try:
            return await self._execute(*args)
        except BusyLoadingError as exc:
            raise errors.StoreUnavailable("The seat store (Redis) is loading its data.") from exc
        except (ResponseError, RedisReplyError) as exc:
            if _is_unavailable(str(exc)):
                raise errors.StoreUnavailable(f"The seat store (Redis) cannot take this now: {exc}") from exc
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.StoreUnavailable("The seat store (Redis) cannot be reached.") from exc

    async def load_all(self) -> None:
        """Load every script into Redis's cache now (readiness proves they are there)."""
        for source in self._sources.values():
            try:
                await self._execute("SCRIPT", "LOAD", source)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise errors.StoreUnavailable("The seat store (Redis) cannot be reached.") from exc
