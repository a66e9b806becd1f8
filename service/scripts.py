"""Loads the Lua scripts of ``lua/`` and calls them by SHA, mapping their refusals to errors.

Each script is ``lua/_lib.lua`` followed by the script's own file (Redis has no ``require``).
redis-py's ``Script`` objects reload a script on ``NOSCRIPT`` (after a restart, failover or
``SCRIPT FLUSH``), so callers never see the script cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import errors

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


def load_sources() -> dict[str, str]:
    """The full source of every script (library prepended), by name."""
    package = resources.files("lua")
    library = package.joinpath("_lib.lua").read_text(encoding="utf-8")
    return {
        name: library + "\n" + package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPT_NAMES
    }


def parse_refusal(exc: ResponseError) -> Refusal | None:
    """Turn a script's error reply into a Refusal; ``None`` for a genuine Redis error."""
    code, _, detail = str(exc).partition(" ")
    detail = detail.split(" script:", 1)[0].strip()
    if code == "STALE":
        return StaleView(code, detail)
    if code == "LAYOUT":
        return StaleLayout(code, detail)
    if code.isupper() and code.replace("_", "").isalpha():
        return Refusal(code, detail)
    return None


class Scripts:
    """The registered scripts of one Redis client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source) for name, source in load_sources().items()
        }

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script; raise Refusal for its refusals and StoreUnavailable when Redis is gone."""
        try:
            return await self._scripts[name](keys=list(keys), args=list(args))
        except ResponseError as exc:
            refusal = parse_refusal(exc)
            if refusal is None:
                raise
            raise refusal from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.StoreUnavailable("The seat store (Redis) cannot be reached.") from exc

    async def load_all(self) -> None:
        """Load every script into Redis's cache now (readiness proves they are there)."""
        for script in self._scripts.values():
            try:
                await script.registered_client.script_load(script.script)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise errors.StoreUnavailable("The seat store (Redis) cannot be reached.") from exc
