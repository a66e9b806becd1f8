"""The domain error hierarchy. ``service.api.errors`` maps it to HTTP in one place."""

from __future__ import annotations

from typing import Any

ECHO_CHARS = 64  # a client-supplied value quoted in an error: at most this many characters
MESSAGE_ECHO_CHARS = 160  # a decoder's message quoting client input (an unknown field's name)


def echo(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` as an error may quote it: its first ``limit`` characters, then ``…(+N chars)``.

    Every client-supplied value an error message or its ``details`` repeats goes through here,
    so an error never grows with the input (OWASP API4: a 60 KB seat id was echoed twice).
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit} chars)"


class SeatsError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 400
    code = "invalid_request"

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}  # e.g. Retry-After on 429 and on 409 idempotency_in_progress


class InvalidRequest(SeatsError):
    """Malformed JSON or wrong JSON types."""


class ValidationFailed(SeatsError):
    """Well-formed input that breaks a rule (seat ids, selection size, payment code)."""

    status_code = 422
    code = "validation_failed"


class Unauthorized(SeatsError):
    """No token where one is required."""

    status_code = 401
    code = "unauthorized"


class InvalidBuyerPass(Unauthorized):
    """A ``Seats-Buyer`` pass that is malformed, forged or expired, or missing where one is required."""

    code = "invalid_buyer_pass"


class Forbidden(SeatsError):
    """A wrong admin token (on the history of an order: neither the admin token nor the order's)."""

    status_code = 403
    code = "forbidden"


class FlightNotFound(SeatsError):
    """The flight does not exist."""

    status_code = 404
    code = "flight_not_found"


class OrderNotFound(SeatsError):
    """The order does not exist, or the token is wrong (indistinguishable on purpose)."""

    status_code = 404
    code = "order_not_found"


class SeatNotFound(SeatsError):
    """The flight has no such seat."""

    status_code = 404
    code = "seat_not_found"


class Conflict(SeatsError):
    """Base of the 409 refusals."""

    status_code = 409
    code = "conflict"


class SeatsUnavailable(Conflict):
    """A requested seat is held or sold by another order."""

    code = "seats_unavailable"


class OrderClosed(Conflict):
    """The order is terminal."""

    code = "order_closed"


class PaymentInProgress(Conflict):
    """The order is paying; it cannot pay again, change seats or cancel."""

    code = "payment_in_progress"


class NoSeatsHeld(Conflict):
    """Paying an order that holds no seats."""

    code = "no_seats_held"


class OrderExists(Conflict):
    """The order id is taken."""

    code = "order_exists"


class FlightInUse(Conflict):
    """The flight's layout cannot change while seats are held or sold."""

    code = "flight_in_use"


class HoldCapReached(Conflict):
    """An extension would not move the hold's deadline: it is at the cap of SEATS_MAX_HOLD_SECONDS."""

    code = "hold_cap_reached"


class SubjectLimitReached(Conflict):
    """The subject (buyer or client address) holds as many seats or open orders on the flight as it may."""

    code = "subject_limit_reached"


class IdempotencyInProgress(Conflict):
    """The first request with this Idempotency-Key is still running (retry after ``Retry-After`` seconds)."""

    code = "idempotency_in_progress"


class IdempotencyKeyReused(ValidationFailed):
    """The Idempotency-Key was first used with another request body."""

    code = "idempotency_key_reused"


class RateLimited(SeatsError):
    """The subject sent more writes than its token bucket allows (``Retry-After`` says when to retry)."""

    status_code = 429
    code = "rate_limited"


class PayloadTooLarge(SeatsError):
    """The body is over the limit."""

    status_code = 413
    code = "payload_too_large"


class StoreUnavailable(SeatsError):
    """Redis cannot be reached: the service answers 503 rather than guess."""

    status_code = 503
    code = "store_unavailable"


class InternalError(SeatsError):
    """A reply the service cannot explain (e.g. a Lua refusal code it does not know): a bug, 500."""

    status_code = 500
    code = "internal_error"
