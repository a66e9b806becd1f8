"""Serving the app with uvicorn: bounded request heads and connections, SSE streams drained on stop.

Headers are parsed before the ASGI app sees anything, so their bounds are the server's job.
uvicorn's httptools protocol (the fast one: the h11 protocol cost +84 µs of API CPU per hold,
README "HTTP limits") has none: no limit on the size of a head or the number of its headers, and
no timeout for reading it. ``BoundedHttpToolsProtocol`` adds those three to it; uvicorn's own
``limit_concurrency`` and ``timeout_keep_alive`` bound connections and idle keep-alive.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from itertools import chain
from typing import Any

import httptools
import msgspec
import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.live.broker import broker_of
from service.live.streams import DIRECT_BODY
from service.logs import logging_config
from service.models import ErrorBody
from service.settings import Settings

HEADER_LINE_OVERHEAD = 4  # ": " and CRLF around each header's name and value


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds of one request head (request line + headers) and of the connections a process keeps.

    Sizes in bytes, the timeout in seconds (from a connection's open, or a request's first
    byte, to the last byte of its body), connections per process.
    """

    max_head_bytes: int
    max_headers: int
    timeout_seconds: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        """The ``SEATS_HTTP_*`` settings."""
        return cls(settings.http_max_head_bytes, settings.http_max_headers, settings.http_head_timeout_seconds,
                   settings.http_max_connections)


class HeadRejected(Exception):
    """A request head over a bound (or unparsable); answered with ``status`` and the connection closed."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _head_too_large() -> HeadRejected:
    return HeadRejected(431, "headers_too_large", "The request head is too large.")


def _uri_too_long() -> HeadRejected:
    return HeadRejected(414, "uri_too_long", "The request URL is too long.")


def _bad_request() -> HeadRejected:
    return HeadRejected(400, "invalid_request", "Invalid HTTP request received.")


class CycleBody:
    """A streaming response's connection for the fan-out (``streams.DirectBody``): one chunk written
    as uvicorn's ``send`` would write it, without an ASGI message, middleware or task switch per event.

    It writes only into a chunked response already under way, on a connected transport below its
    high-water mark; otherwise it declines, and the stream's own ``send`` (which waits for a paused
    transport to drain) writes the bytes, so slow clients still back up into their bounded outbox.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def write(self, chunk: bytes) -> bool:
        """Write one pre-framed chunk now, or decline (False)."""
        cycle = self._cycle
        transport = cycle.transport
        if (not cycle.chunked_encoding or cycle.response_complete or cycle.disconnected or cycle.flow.write_paused
                or transport.is_closing()):  # closing before uvicorn hears of it: a write would raise
            return False
        transport.write(chunk)
        return True


class BoundedConfig(uvicorn.Config):
    """uvicorn's Config serving with ``BoundedHttpToolsProtocol`` under ``limits``."""

    def __init__(self, app: Litestar, limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(app, http=BoundedHttpToolsProtocol, **kwargs)
        self.head_limits = limits


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head bounds it lacks, checked as bytes arrive.

    - a head (request line + headers) over ``max_head_bytes``: 431 (414 for the URL alone), closed;
    - more than ``max_headers`` header lines: 431, closed;
    - a request not read completely ``timeout_seconds`` after its first byte (or a connection
      that sends nothing that long after opening): closed;
    - a connection opened while ``max_connections`` are open: closed at once.

    httptools buffers a header until its last byte, so the size of an unfinished head is
    counted from the bytes received: a 16 MB header is refused after about
    ``max_head_bytes`` plus one read, never buffered whole.
    """

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: HeadLimits = config.head_limits  # type: ignore[attr-defined]  # always a BoundedConfig
        self._limits = limits
        self._reading_head = True  # between two requests, or inside a head
        self._head_received = 0  # bytes read while a head was unfinished: bounds what httptools buffers
        self._read_timer: asyncio.TimerHandle | None = None
        self.url = b""  # uvicorn sets it when a request begins; bytes can arrive before that (CRLFs)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Register the connection; refuse it past the bound; the first head's clock starts."""
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self.logger.warning("Connection refused: %d connections open.", len(self.connections) - 1)
            transport.close()
            return
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the timer with the connection."""
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed httptools, refusing heads over the bounds (uvicorn's own version, plus the bounds)."""
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_received += len(data)
            if self._read_timer is None:
                self._arm_read_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # a callback's exception is the parser error's context
            bound = exc.__context__
            self._refuse(bound if isinstance(bound, HeadRejected) else _bad_request())
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_head and self._head_received > self._limits.max_head_bytes:
            self._refuse(_uri_too_long() if len(self.url) > self._limits.max_head_bytes else _head_too_large())

    # --- httptools callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        """The head is in: check its exact size and header count, then let the app run.

        Checked once per request rather than per header: a head that completes inside one read
        was parsed whole anyway, and one that does not is bounded by ``data_received``.
        """
        self._reading_head = False
        headers = self.headers
        if len(headers) > self._limits.max_headers:
            raise HeadRejected(431, "too_many_headers", "The request has too many header lines.")
        if len(self.url) > self._limits.max_head_bytes:
            raise _uri_too_long()
        size = len(self.url) + sum(map(len, chain.from_iterable(headers))) + HEADER_LINE_OVERHEAD * len(headers)
        if size > self._limits.max_head_bytes:
            raise _head_too_large()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and self.scope["path"].endswith("/events"):
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]  # ASGI types extensions as dicts
            scope["extensions"] = {**scope.get("extensions", {}), DIRECT_BODY: CycleBody(cycle)}

    def on_message_complete(self) -> None:
        """The request (body included) is in: stop its clock; the next head may begin."""
        super().on_message_complete()
        self._cancel_read_timer()
        self._reading_head = True
        self._head_received = 0

    # --- helpers -------------------------------------------------------------------------

    def _arm_read_timer(self) -> None:
        self._read_timer = self.loop.call_later(self._limits.timeout_seconds, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        """Nothing sent, or a request trickled in too slowly: close, as nginx's client_header_timeout."""
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, rejected: HeadRejected) -> None:
        """Answer a head over a bound in the API's error shape (unless a response is under way), close."""
        self.logger.warning("Request refused: %s", rejected.message)
        if self.cycle is None or self.cycle.response_complete:
            body = msgspec.json.encode(ErrorBody(rejected.code, rejected.message, {}))
            self.transport.write(b"".join([
                STATUS_LINE[rejected.status], b"content-type: application/json\r\n",
                b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body,
            ]))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn that ends the app's SSE streams as soon as its shutdown begins.

    uvicorn's graceful shutdown waits for open connections and runs the lifespan shutdown only
    after them, so without this every SSE client would hold the process for the whole
    ``timeout_graceful_shutdown`` and then be cut off.
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the streams (they end after what is queued), then shut down as usual."""
        broker = broker_of(self._app)
        if broker is not None:
            broker.drain()
        await super().shutdown(sockets)


def build_server(app: Litestar, settings: Settings) -> DrainingServer:
    """The server ``seats api`` runs, bounded by the ``SEATS_HTTP_*`` settings.

    No uvicorn access log (query strings may carry order tokens): ``service.api.request_id`` logs paths.
    ``limit_concurrency`` makes uvicorn answer 503 to requests while ``SEATS_HTTP_MAX_CONNECTIONS``
    connections (or requests) are open; the protocol closes connections past it.
    """
    config = BoundedConfig(
        app,
        HeadLimits.from_settings(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=max(1, round(settings.graceful_shutdown_seconds)),  # uvicorn takes whole seconds
        timeout_keep_alive=settings.http_keepalive_seconds,  # typed int, used as call_later's delay: floats work
        limit_concurrency=settings.http_max_connections,
        access_log=False,  # service.api.request_id writes one line per request, its path without the query
        log_config=logging_config(),  # the one JSON format of service.logs, uvicorn's own loggers included
        # X-Forwarded-For is ours to judge (SEATS_TRUSTED_PROXIES, service.subjects): uvicorn's own
        # proxy_headers would believe it from 127.0.0.1 by default and rewrite the peer before we see it.
        proxy_headers=False,
    )
    return DrainingServer(config, app)
