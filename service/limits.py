"""The subject's limits as the API states them, and the cap on its open SSE streams (spec §10).

- The write limiter itself runs inside the write's own Lua script (``take_token`` in ``lua/_lib.lua``:
  no extra round trip); here its state becomes the IETF ``RateLimit-Policy`` / ``RateLimit`` headers
  (draft-ietf-httpapi-ratelimit-headers-10: ``"writes";q=<count>;w=<seconds>`` and
  ``"writes";r=<remaining>;t=<seconds until the bucket is full>``) and 429's ``Retry-After`` (RFC 9110
  §10.2.3: whole seconds, rounded up, at least 1).
- Streams: every open stream holds a place in its subject's zset (``keys.streams``) for a lease that its
  API process renews; a process that dies stops renewing, so its places lapse instead of leaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
from collections import defaultdict
from typing import Final

from service import errors
from service.settings import Settings
from service.store import keys
from service.store.errors import Refusal
from service.store.scripts import Scripts
from service.subjects import Subject

log = logging.getLogger("seats.limits")

POLICY: Final = "writes"
STREAM_LEASE_SECONDS: Final = 60.0  # a dead process's stream places lapse this long after its last renewal
STREAM_RENEW_SECONDS: Final = 20.0


def retry_after(milliseconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(milliseconds / 1000)))


def rate_headers(state: str | None) -> dict[str, str]:
    """The RateLimit headers from a script's limiter state ``remaining|reset ms|count|window ms``."""
    if not state:
        return {}
    remaining, reset_ms, policy = state.split("|", 2)
    return {"RateLimit-Policy": _policy(policy),
            "RateLimit": f'"{POLICY}";r={remaining};t={-(-int(reset_ms) // 1000)}'}


@functools.lru_cache(maxsize=16)
def _policy(count_and_window_ms: str) -> str:
    """``RateLimit-Policy`` of ``<count>|<window ms>``: one setting per process, formatted once."""
    count, window_ms = count_and_window_ms.split("|")
    return f'"{POLICY}";q={count};w={math.ceil(int(window_ms) / 1000)}'


def rate_limited(refusal: Refusal) -> errors.RateLimited:
    """The 429 for a script's ``RATE_LIMITED <retry ms> <count> <window ms>``."""
    retry_ms, count, window_ms = (int(part) for part in refusal.detail.split())
    window = math.ceil(window_ms / 1000)
    return errors.RateLimited(
        f"Too many writes: at most {count} per {window} s for one buyer or address on a flight.",
        {"limit": count, "windowSeconds": window},
        {
            "Retry-After": retry_after(retry_ms),
            "RateLimit-Policy": f'"{POLICY}";q={count};w={window}',
            "RateLimit": f'"{POLICY}";r=0;t={retry_after(retry_ms)}',
        },
    )


def subject_limit(refusal: Refusal) -> errors.SubjectLimitReached:
    """The 409 for a script's ``SUBJECT_LIMIT <seats|orders> <limit> <current>``."""
    what, limit, current = refusal.detail.split()
    noun = "seats held" if what == "seats" else "open orders"
    return errors.SubjectLimitReached(
        f"One buyer or address may have at most {limit} {noun} on this flight.",
        {"limit": int(limit), "current": int(current), "kind": what},
    )


def controls_spec(settings: Settings, subject_ttl_ms: int) -> str:
    """The scripts' controls argument ``rate|window ms|max held|max orders|subject TTL ms`` (lua/_lib.lua)."""
    rate, window = settings.write_limit or (0, 1.0)
    return (f"{rate}|{round(window * 1000)}|{settings.max_held_seats_per_subject}|"
            f"{settings.max_open_orders_per_subject}|{subject_ttl_ms}")


class StreamSlots:
    """This process's places in its subjects' stream caps (``SEATS_MAX_STREAMS_PER_SUBJECT``)."""

    def __init__(self, scripts: Scripts, settings: Settings) -> None:
        self._scripts = scripts
        self._cap = settings.max_streams_per_subject
        self._retry = retry_after(settings.sse_retry_ms)
        self._process = secrets.token_hex(6)
        self._numbers = itertools.count()
        self._held: dict[str, set[str]] = defaultdict(set)  # stream zset key -> members of this process
        self._lease_ms = round(STREAM_LEASE_SECONDS * 1000)
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, subject: Subject) -> tuple[str, str] | None:
        """A place for one more stream of ``subject`` (None when there is no cap).

        Raises RateLimited (429, ``Retry-After``) when the subject already has its cap of open streams.
        """
        if self._cap <= 0:
            return None
        key, member = keys.streams(str(subject)), f"{self._process}:{next(self._numbers)}"
        admitted = await self._scripts.run("stream_slot", [key], ["open", self._cap, self._lease_ms, member])
        if not admitted:
            raise errors.RateLimited(
                f"Too many open event streams: at most {self._cap} for one buyer or address.",
                {"limit": self._cap, "kind": "streams"}, {"Retry-After": self._retry},
            )
        self._held[key].add(member)
        return key, member

    async def release(self, place: tuple[str, str] | None) -> None:
        """Give the place back (best effort: a place that cannot be given back lapses with its lease)."""
        if place is None:
            return
        key, member = place
        members = self._held.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._held[key]
        with contextlib.suppress(errors.StoreUnavailable):
            await self._scripts.run("stream_slot", [key], ["close", self._cap, self._lease_ms, member])

    def release_soon(self, place: tuple[str, str] | None) -> None:
        """:meth:`release` from a stream's ``finally`` (a closing stream must not wait on Redis)."""
        if place is None:
            return
        task = asyncio.get_running_loop().create_task(self.release(place))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def renew_forever(self) -> None:
        """Renew this process's places every STREAM_RENEW_SECONDS until cancelled."""
        while True:
            await asyncio.sleep(STREAM_RENEW_SECONDS)
            for key, members in list(self._held.items()):
                try:
                    await self._scripts.run("stream_slot", [key], ["renew", self._cap, self._lease_ms, *members])
                except errors.StoreUnavailable as exc:
                    log.warning("stream places not renewed", extra={"error": str(exc)})
