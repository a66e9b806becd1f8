"""``X-Request-Id`` on every response, on every log line of its request, and one access line per request.

:class:`RequestContext` wraps the whole Litestar ASGI handler (``create_app`` installs it around
``app.asgi_handler``, as Litestar's OpenTelemetry plugin does), so it also sees what no route handles
(404, 405) and the exception handlers' answers. A caller's ``X-Request-Id`` is kept when it is well formed
(1-128 characters of ``A-Z a-z 0-9 . _ : -``: it is echoed in a header and written to logs), otherwise a
new one (32 hex digits) is made. The id lives in ``service.logs.REQUEST_ID`` for the request's task.

The access line (``msg`` ``request``; only with ``SEATS_ACCESS_LOG=true``) has ``method``, ``path`` (never the query
string: SSE streams carry tokens there), ``status`` and ``durationMs``; it is written when the response
ends (a stream's when the stream ends).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from service.logs import REQUEST_ID

log = logging.getLogger("seats.access")

HEADER: Final = b"x-request-id"
MAX_LENGTH: Final = 128
MAX_PATH_LOGGED: Final = 512
_ALLOWED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_FALLBACK: Final = (b'{"error":"internal_error","message":"The server failed to handle the request.",'
                    b'"details":{}}')


def well_formed(value: bytes) -> bool:
    """Whether a caller's request id may be kept (checked byte by byte: no regex ``$`` surprises)."""
    return 0 < len(value) <= MAX_LENGTH and all(byte in _ALLOWED for byte in value)


def request_id_of(scope: Scope) -> str:
    """The caller's well-formed ``X-Request-Id``, or a new random one."""
    for name, value in scope.get("headers", ()):
        if name == HEADER and well_formed(value):
            return value.decode("ascii")
    return os.urandom(16).hex()


class RequestContext:
    """ASGI wrapper: the request id (header, log context) and the access line (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self._app = app
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request or WebSocket with its id set."""
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        header = (HEADER, request_id.encode("ascii"))
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        except Exception:
            # Litestar's exception handlers answer everything they can; this is what escaped them.
            log.exception("unhandled error outside the exception handlers")
            if status:
                raise
            start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 500,
                                             "headers": [(b"content-type", b"application/json")]}
            body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": _FALLBACK, "more_body": False}
            await send_with_id(start)
            await send(body)
        finally:
            if self._access_log:
                log.info("request", extra={
                    "method": scope.get("method"), "path": str(scope.get("path", ""))[:MAX_PATH_LOGGED],
                    "status": status, "durationMs": round((time.perf_counter() - started) * 1000, 2)})
            REQUEST_ID.reset(token)
