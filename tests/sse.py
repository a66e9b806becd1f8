"""A small SSE client for tests: parses a streaming httpx response the way EventSource does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    """One dispatched event; heartbeats and ``retry:`` hints are recorded as kind ``comment``/``retry``."""

    event: str
    id: str | None
    data: str
    received: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def version(self) -> int:
        """The version the id names: a flight event's ``<epoch>-<version>``, an order event's ``<version>``."""
        return int((self.id or "0").rpartition("-")[2])

    @property
    def epoch(self) -> str:
        """A flight event's epoch (empty for an order event)."""
        return (self.id or "").rpartition("-")[0]


async def parse(response: httpx.Response) -> AsyncIterator[Event]:
    """Events of an SSE body, in order (comments and retry hints included, for assertions)."""
    kind, event_id, data = "message", None, []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Event(kind, event_id, "\n".join(data))
            kind, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            yield Event("comment", None, line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        elif name == "retry":
            yield Event("retry", None, value)


class Watch:
    """A stream read in the background into ``events`` until it ends or is closed."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        self._client = client
        self._url = url
        self._headers = headers or {}
        self.events: list[Event] = []
        self.status: int | None = None
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, timeout: float = 5.0) -> Watch:
        """Start reading; returns once the response status is known."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), timeout)
        return self

    async def _run(self) -> None:
        try:
            async with self._client.stream("GET", self._url, headers=self._headers) as response:
                self.status = response.status_code
                self._opened.set()
                if response.status_code != 200:
                    await response.aread()
                    return
                async for event in parse(response):
                    self.events.append(event)
                    self._changed.set()
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self._opened.set()
            self.ended.set()
            self._changed.set()

    def data_events(self) -> list[Event]:
        """Dispatched events only (no comments or retry hints)."""
        return [e for e in self.events if e.event not in ("comment", "retry")]

    async def until(self, predicate: Callable[[list[Event]], bool], timeout: float = 10.0) -> list[Event]:
        """Wait until ``predicate(data events)`` holds; fails with what arrived on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.data_events()
            if predicate(events):
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended.is_set():
                summary = [(e.event, e.id) for e in events][-10:]
                raise AssertionError(f"stream condition not met (ended={self.ended.is_set()}, last={summary})")
            self._changed.clear()  # no await since the check above: no wake-up is lost
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        """Stop reading (the client disconnects)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def versions(events: list[Event], kind: str = "seats") -> list[int]:
    """The ``id`` of every event of ``kind``, as integers."""
    return [e.version for e in events if e.event == kind and e.id is not None]


def apply(seat_map: dict[str, dict[str, Any]], events: list[Event]) -> dict[str, dict[str, Any]]:
    """The seat map a client holds after ``events`` (snapshots replace, ``seats`` events patch)."""
    seats = dict(seat_map)
    for event in events:
        if event.event == "snapshot":
            seats = dict(event.json()["seats"])
        elif event.event == "seats":
            seats.update(event.json()["changes"])
    return seats
