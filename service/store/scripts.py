"""Loads the Lua scripts of ``lua/`` and calls them by SHA, routed by their first key.

Each script is ``lua/_lib.lua`` followed by the script's own file (Redis has no ``require``).
Scripts are loaded on every primary at start-up; a script missing from the serving node's cache (a
restart, a failover, ``SCRIPT FLUSH``) is run there once with ``EVAL`` (which caches it), so callers
never see the script cache. Replies and failures are translated by ``store.errors`` (refusals, 503s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from service.store.connection import Arg
from service.store.errors import code_of, mapped
from service.store.transport import Transport

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

def load_sources() -> dict[str, str]:
    """The full source of every script (library prepended), by name."""
    package = resources.files("lua")
    library = package.joinpath("_lib.lua").read_text(encoding="utf-8")
    return {
        name: library + "\n" + package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPT_NAMES
    }


class Scripts:
    """The scripts, called by SHA over the store's transport (``EVALSHA``, routed by the first key)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._sources = load_sources()
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._sources.items()}  # noqa: S324 - Redis names scripts by SHA-1

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script; raises Refusal for its refusals and StoreUnavailable when Redis is gone
        (``store.errors``)."""
        route = keys[0]
        with mapped():
            try:
                return await self._transport.call(route, "EVALSHA", self._shas[name], len(keys), *keys, *args)
            except Exception as exc:
                if code_of(str(exc)) != "NOSCRIPT":
                    raise
            # The serving node lacks it: a restart, SCRIPT FLUSH, or a failover (Redis 7 does not replicate
            # SCRIPT LOAD, so a promoted replica starts empty). EVAL is routed and redirected like EVALSHA, so
            # the source reaches whichever node serves the slot (a keyless SCRIPT LOAD would follow a stale
            # slot map to the old primary), runs once there and stays in its cache.
            return await self._transport.call(route, "EVAL", self._sources[name], len(keys), *keys, *args)

    async def ensure_loaded(self) -> None:
        """Every script in every primary's cache (``SCRIPT EXISTS``); a primary missing one gets them all again."""
        with mapped():
            for present in await self._transport.each_primary("SCRIPT", "EXISTS", *self._shas.values()):
                if not all(present):
                    await self.load_all()
                    return

    async def load_all(self) -> None:
        """Load every script into every primary's cache now (readiness proves they are there)."""
        with mapped():
            for source in self._sources.values():
                await self._transport.each_primary("SCRIPT", "LOAD", source)
