"""The harness's HTTP and SSE client: aiohttp with keep-alive, msgspec for JSON, 127.0.0.1 only."""

from __future__ import annotations

import asyncio
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
        """
        sent_headers = dict(headers or {})
        data = None
        if json is not None:
            data = _encode(json)
            sent_headers.update(JSON_HEADERS)
        if token is not None:
            sent_headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic() if scheduled is None else scheduled
        try:
            async with self.session.request(method, self.base + path, data=data, headers=sent_headers) as response:
                reply = Reply(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError):
            reply = Reply(0, b"")
        if name is not None:
            label = name if isinstance(name, str) else name(reply)
            self.recorder.record(label, started, time.monotonic(), reply.status, conflict=reply.conflict)
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


async def watch_flight(session: aiohttp.ClientSession, url: str, stop: float, stats: StreamStats) -> None:
    """Follow one flight's SSE stream until ``stop``; record change-to-delivery delays.

    A ``seats`` event carries ``lastUpdated``, stamped by Redis's clock when the change happened;
    on one machine that clock is this one's, so ``now - lastUpdated`` is the delivery delay.
    Versions must arrive in order without holes: a hole is counted as a gap.
    """
    if stats.delays is None:
        stats.delays = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    try:
        async with session.get(url, timeout=timeout, headers={"Accept": "text/event-stream"}) as response:
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
