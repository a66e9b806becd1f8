"""The harness's HTTP and SSE client: aiohttp with keep-alive, msgspec for JSON, 127.0.0.1 only.

Every simulated user, buyer or order owner is its own *subject* (spec §10): the harness plays the
trusted proxy in front of the API and names each user's client address in ``X-Forwarded-For``. The
addresses come from 198.18.0.0/15, the range set aside for benchmarking (RFC 2544 appendix C.2.2,
RFC 6890), IPv4 only (the API groups IPv6 clients by /64). The API believes the header only from a
peer inside ``SEATS_TRUSTED_PROXIES`` (``--spawn`` sets 127.0.0.1/32); otherwise every user is one
subject and the limits refuse the crowd.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from loadtest.stats import Recorder

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
JSON_HEADERS = {"Content-Type": "application/json"}
SUBJECT_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
_SUBJECT_FIRST = int(SUBJECT_NETWORK.network_address) + 1  # neither the network nor the broadcast address
_SUBJECT_COUNT = SUBJECT_NETWORK.num_addresses - 2
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class NotLocal(ValueError):
    """The harness only ever targets this machine."""


def check_local(url: str) -> str:
    """``url`` without a trailing slash, or NotLocal when it points anywhere but 127.0.0.1."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
        raise NotLocal(f"{url!r}: the load harness targets http://127.0.0.1 only")
    return url.rstrip("/")


def subject_address(index: int) -> str:
    """The client address of simulated user ``index``: distinct for 131,070 users, then reused."""
    return str(ipaddress.IPv4Address(_SUBJECT_FIRST + index % _SUBJECT_COUNT))


def request_headers(*, address: str | None = None, token: str | None = None, json: bool = False,
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A request's headers, built once per user and reused (``Client.call`` sends them as they are).

    ``address``: the user's client address (``X-Forwarded-For``); ``token``: its order's bearer token;
    ``json``: the request carries a JSON body; ``extra``: any other header (e.g. ``If-None-Match``).
    """
    headers = dict(extra or {})
    if json:
        headers.update(JSON_HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if address is not None:
        headers["X-Forwarded-For"] = address
    return headers


@dataclass(frozen=True, slots=True)
class Reply:
    """One response (``status`` 0: no response at all)."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The decoded JSON body."""
        return _decode(self.body)

    @property
    def conflict(self) -> bool:
        """A 409 ``seats_unavailable``: a refused hold, not an error."""
        return self.status == 409 and b"seats_unavailable" in self.body

    @property
    def refusal(self) -> str | None:
        """Which control refused the request (``rate_limited``, ``subject_limit_reached``), if one did."""
        if self.status == 429:
            return "rate_limited"
        if self.status == 409 and b"subject_limit_reached" in self.body:
            return "subject_limit_reached"
        return None


class Client:
    """Keep-alive connections to one base URL; every timed call lands in the recorder."""

    def __init__(self, base_url: str, recorder: Recorder, connections: int, timeout: float = 10.0) -> None:
        self.base = check_local(base_url)
        self.recorder = recorder
        self._connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
        self.session = aiohttp.ClientSession(
            connector=self._connector, timeout=aiohttp.ClientTimeout(total=timeout), skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        """Close every connection."""
        await self.session.close()

    async def call(
        self,
        name: str | Callable[[Reply], str] | None,
        method: str,
        path: str,
        *,
        json: object = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        scheduled: float | None = None,
    ) -> Reply:
        """Send one request; record it under ``name`` (None: untimed, e.g. set-up) from ``scheduled``.

        ``name`` may be a function of the reply, to record e.g. accepted and refused holds apart.
        ``headers`` without ``token`` are sent as they are, so the hot path builds nothing: prebuild
        them with :func:`request_headers` (Content-Type included when there is a body). With
        ``token``, or no ``headers``, they are built here (set-up calls).
        """
        if token is not None or headers is None:
            headers = request_headers(token=token, json=json is not None, extra=headers)
        data = None if json is None else _encode(json)
        started = time.monotonic() if scheduled is None else scheduled
        try:
            async with self.session.request(method, self.base + path, data=data, headers=headers) as response:
                reply = Reply(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError):
            reply = Reply(0, b"")
        if name is not None:
            label = name if isinstance(name, str) else name(reply)
            self.recorder.record(label, started, time.monotonic(), reply.status, conflict=reply.conflict,
                                 refused=reply.refusal is not None)
        return reply


def iso_to_epoch(value: str) -> float:
    """``2026-11-24T10:15:00.123Z`` → POSIX seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True)
class StreamStats:
    """What passive flight-stream watchers saw."""

    watchers: int = 0
    connected: int = 0
    snapshots: int = 0
    events: int = 0
    gaps: int = 0
    unavailable: str = ""
    delays: list[float] | None = None


async def watch_flight(session: aiohttp.ClientSession, url: str, stop: float, stats: StreamStats,
                       address: str | None = None) -> None:
    """Follow one flight's SSE stream until ``stop`` as client ``address``; record change-to-delivery delays.

    A ``seats`` event carries ``lastUpdated``, stamped by Redis's clock when the change happened;
    on one machine that clock is this one's, so ``now - lastUpdated`` is the delivery delay.
    Versions must arrive in order without holes: a hole is counted as a gap.
    """
    if stats.delays is None:
        stats.delays = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    try:
        headers = request_headers(address=address, extra={"Accept": "text/event-stream"})
        async with session.get(url, timeout=timeout, headers=headers) as response:
            if response.status != 200:
                stats.unavailable = f"HTTP {response.status}"
                return
            stats.connected += 1
            await asyncio.wait_for(_read_events(response, stats), max(0.0, stop - time.monotonic()))
    except (TimeoutError, aiohttp.ClientError, asyncio.CancelledError):
        return


async def _read_events(response: aiohttp.ClientResponse, stats: StreamStats) -> None:
    assert stats.delays is not None
    event, data, last_version = "message", [], -1
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(":")
            if field == "event":
                event = value.strip()
            elif field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            continue
        if data:
            payload = _decode("\n".join(data))
            received = time.time()
            version = int(payload.get("version", -1)) if isinstance(payload, dict) else -1
            if event == "snapshot":
                stats.snapshots += 1
            elif event == "seats":
                stats.events += 1
                if last_version >= 0 and version > last_version + 1:
                    stats.gaps += 1
                if payload.get("lastUpdated"):
                    stats.delays.append(received - iso_to_epoch(payload["lastUpdated"]))
            last_version = max(last_version, version)
        event, data = "message", []
