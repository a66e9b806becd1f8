"""SSE framing and the per-stream outbox: what the fan-out hands each open stream.

Frames are encoded once and shared by every stream that sends them; a stream only picks the
bytes (public, or with its own order's ``mine`` marks) and writes them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

HEARTBEAT_BYTES: Final = b": keep-alive\n\n"  # a comment: browsers dispatch no event for it
DIRECT_BODY: Final = "seats.direct_body"  # the ASGI scope extension holding a stream's DirectBody (server.py)


@runtime_checkable
class DirectBody(Protocol):
    """A streaming response's connection, written without the ASGI ``send`` machinery.

    The server puts one in ``scope["extensions"][DIRECT_BODY]`` for requests that may stream; the
    fan-out hands it pre-framed chunks (``http_chunk``) of a response already started.
    """

    def write(self, chunk: bytes) -> bool:
        """Write one HTTP/1.1 chunk now; False (nothing written) when the response is not a chunked
        one under way, the client left, or the connection's send buffer is over its high-water mark
        (a slow client: the caller queues instead, and the stream's own ``send`` waits for it)."""
        ...


def direct_body_of(scope: Mapping[str, Any]) -> DirectBody | None:
    """The request's DirectBody, when the server offers one."""
    direct = (scope.get("extensions") or {}).get(DIRECT_BODY)
    return direct if isinstance(direct, DirectBody) else None


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body (RFC 9112 §7.1): what ``send`` would write."""
    return b"%x\r\n%s\r\n" % (len(data), data)


HEARTBEAT_CHUNK: Final = http_chunk(HEARTBEAT_BYTES)


def sse_frame(event: str, event_id: int | str, data: bytes) -> bytes:
    """One SSE event. ``data`` is compact JSON, so it never contains a newline."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (str(event_id).encode(), event.encode(), data)


def event_id(epoch: str, version: int) -> str:
    """A flight event's id: ``<epoch>-<version>``. The epoch names the data's lifetime (it changes
    whenever versions may have been handed out again: the flight created anew, a replica took over,
    Redis restarted), so a client resuming from another epoch gets a snapshot, never deltas."""
    return f"{epoch}-{version}"


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """``Last-Event-ID`` as (epoch, version); None when absent or not of this form (a bare version
    from before epochs, or garbage: the client gets a snapshot)."""
    if not value:
        return None
    epoch, sep, version = value.rpartition("-")
    if not sep or not epoch or not version.isascii() or not version.isdigit() or len(version) > 18:
        return None
    return epoch, int(version)


def retry_frame(milliseconds: int) -> bytes:
    """The reconnection delay hint; a block without ``data`` dispatches no event."""
    return b"retry: %d\n\n" % milliseconds


class Heartbeat:
    """The marker an outbox yields when a heartbeat comment is due."""


HEARTBEAT: Final = Heartbeat()


class Outbox(Generic[T]):
    """A bounded queue between the fan-out (producer, never blocks) and one stream (consumer).

    A consumer that falls ``limit`` items behind is dropped: its queue is emptied and closed, so
    one slow client costs the others nothing. It reconnects with ``Last-Event-ID`` and resumes.
    """

    __slots__ = ("_items", "_limit", "_wakeup", "closed", "overflowed")

    def __init__(self, limit: int) -> None:
        self._items: deque[T | Heartbeat] = deque()
        self._limit = limit
        self._wakeup = asyncio.Event()
        self.closed = False
        self.overflowed = False

    @property
    def limit(self) -> int:
        """How many items may wait before the consumer counts as too slow."""
        return self._limit

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T | Heartbeat) -> bool:
        """Queue ``item``; False when the outbox is closed or has just overflowed (and closed)."""
        if self.closed:
            return False
        if len(self._items) >= self._limit:
            self.overflowed = True
            self._items.clear()
            self.close()
            return False
        self._items.append(item)
        self._wakeup.set()
        return True

    def close(self) -> None:
        """No more items: the consumer gets what is queued, then ``None``."""
        self.closed = True
        self._wakeup.set()

    async def get(self) -> T | Heartbeat | None:
        """The next item, waiting for one; ``None`` once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()

    def take(self, most: int) -> list[T | Heartbeat]:
        """Up to ``most`` items already queued (a stream that fell behind writes them at once)."""
        items = self._items
        return [items.popleft() for _ in range(min(most, len(items)))]
