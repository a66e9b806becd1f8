"""Serving the app with uvicorn, with open SSE streams drained when the server stops."""

from __future__ import annotations

import socket

import uvicorn
from litestar import Litestar

from service.events import broker_of
from service.settings import Settings


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
    """The server ``seats api`` runs: no access log (query strings may carry order tokens)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=max(1, round(settings.graceful_shutdown_seconds)),  # uvicorn takes whole seconds
        access_log=False,
        log_config=None,
        # X-Forwarded-For is ours to judge (SEATS_TRUSTED_PROXIES, service.subjects): uvicorn's own
        # proxy_headers would believe it from 127.0.0.1 by default and rewrite the peer before we see it.
        proxy_headers=False,
    )
    return DrainingServer(config, app)
