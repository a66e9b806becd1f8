"""The single boundary where errors become HTTP responses: ``{"error", "message", "details"}``."""

from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from service import errors
from service.models import ErrorBody

log = logging.getLogger("seats.api")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    503: "store_unavailable",
}


def _json(status: int, code: str, message: str, details: dict[str, object], headers: dict[str, str] | None = None
          ) -> Response[ErrorBody]:
    return Response(
        ErrorBody(code, message, details), status_code=status, media_type=MediaType.JSON, headers=headers
    )


def domain_error(_: Request[object, object, State], exc: errors.SeatsError) -> Response[ErrorBody]:
    """A domain error, as it says (with its headers: ``Retry-After`` on 429 and on 409 in progress)."""
    return _json(exc.status_code, exc.code, exc.message, exc.details, exc.headers or None)


def http_error(_: Request[object, object, State], exc: HTTPException) -> Response[ErrorBody]:
    """Litestar's own errors (unknown route, wrong method, body too large) in our shape."""
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error")
    message = exc.detail if status != 413 else "The request body is too large."
    headers = dict(exc.headers or {})
    return _json(status, code, str(message), {}, headers)


def unexpected_error(_: Request[object, object, State], exc: Exception) -> Response[ErrorBody]:
    """Anything else is a bug: log it, answer a JSON 500."""
    log.exception("unhandled error", exc_info=exc)
    return _json(500, "internal_error", "An unexpected error occurred.", {})


EXCEPTION_HANDLERS = {
    errors.SeatsError: domain_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
