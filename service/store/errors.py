"""The one place where Redis's answers become the service's errors (httpx's ``HTTPCORE_EXC_MAP`` is the model).

================================================  ===============================================
what Redis (or the network) did                   what the caller gets
================================================  ===============================================
connection refused, reset, timed out, closed      ``StoreUnavailable`` (503); a write in flight has
(``OSError``, ``TimeoutError``, redis-py's)       an unknown outcome: nothing is retried blindly
error reply ``LOADING``, ``BUSY``, ``OOM``,       ``StoreUnavailable``: Redis cannot take it *now*
``READONLY``, ``MASTERDOWN``, ``TRYAGAIN``,
``CLUSTERDOWN``, ``NOREPLICAS`` (a primary with
``min-replicas-to-write`` and too few replicas)
error reply ``NOSCRIPT``                          handled by ``store.scripts`` (run again with EVAL)
error reply ``MOVED`` / ``ASK``                   handled by ``store.transport`` (follow it)
a script's ``redis.error_reply('CODE detail')``   ``Refusal`` (or its subclass of REFUSAL_CLASSES):
with CODE in REFUSAL_CODES                        the domain maps it to a 4xx (``service.orders``)
any other error reply                             ``RedisReplyError`` as it is: a bug, answered 500
================================================  ===============================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import StoreUnavailable
from service.store.connection import RedisReplyError

CONNECTION_ERRORS: Final = (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError)
REPLY_ERRORS: Final = (RedisReplyError, ResponseError)
UNAVAILABLE_CODES: Final = frozenset({"LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "OOM", "CLUSTERDOWN",
                                      "NOREPLICAS"})
# The codes our scripts refuse with (``fail(...)`` in lua/; a test keeps this in step).
REFUSAL_CODES: Final = frozenset({
    "CLOSED", "CONFLICT", "FLIGHT_IN_USE", "FLIGHT_NOT_FOUND", "HOLD_CAP", "IDEMPOTENCY_REUSED", "KEYS_MISMATCH",
    "LAYOUT", "NOT_CHARGED", "NOT_FOUND", "NO_SEATS", "ORDER_EXISTS", "PAYING", "RATE_LIMITED", "SEAT_TAKEN",
    "STALE", "SUBJECT", "SUBJECT_LIMIT",
})


class Refusal(Exception):
    """A script refused a change (``redis.error_reply('CODE detail')``); nothing was written."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code} {detail}".strip())
        self.code = code
        self.detail = detail


class StaleView(Refusal):
    """The caller's view of an order's seats was out of date; ``detail`` is the current csv."""


class StaleLayout(Refusal):
    """The flight's layout changed since the caller validated seat ids against it."""


class OtherSubject(Refusal):
    """The order's subject is not the one the caller assumed; ``detail`` is the order's subject key."""


REFUSAL_CLASSES: Final[dict[str, type[Refusal]]] = {"STALE": StaleView, "LAYOUT": StaleLayout, "SUBJECT": OtherSubject}


def code_of(message: str) -> str:
    """The first word of an error reply: Redis's code (``MOVED``, ``NOSCRIPT``) or a script's."""
    return message.partition(" ")[0]


def parse_refusal(message: str) -> Refusal | None:
    """A script's error reply as a Refusal; ``None`` for any other error."""
    code, _, detail = message.partition(" ")
    if code not in REFUSAL_CODES:
        return None
    return REFUSAL_CLASSES.get(code, Refusal)(code, detail.split(" script:", 1)[0].strip())


def translate(exc: BaseException) -> BaseException:
    """What a caller of the store raises for ``exc`` (see the table above); ``exc`` itself when it is
    neither a connection problem nor a reply the table names."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, BusyLoadingError):  # redis-py strips the LOADING code from its message
        return _unavailable("The seat store (Redis) is loading its data.", exc)
    if isinstance(exc, REPLY_ERRORS):
        message = str(exc)
        if code_of(message) in UNAVAILABLE_CODES:
            return _unavailable(f"The seat store (Redis) cannot take this now: {message}", exc)
        return parse_refusal(message) or exc
    if isinstance(exc, CONNECTION_ERRORS):
        return _unavailable("The seat store (Redis) cannot be reached.", exc)
    return exc


def _unavailable(message: str, cause: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(message)
    error.__cause__ = cause
    return error


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Run a Redis call; raise what :func:`translate` says instead of what it raised."""
    try:
        yield
    except (*CONNECTION_ERRORS, *REPLY_ERRORS) as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc
