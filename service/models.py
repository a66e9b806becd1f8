"""Wire types: every request and response body, camelCased in one place."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

OrderState = Literal["PENDING", "SEATS_SELECTED", "PAYING", "CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"]
TERMINAL_STATES: frozenset[str] = frozenset({"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"})
# refunding: the order ended unconfirmed after a charge may have gone through; refunded: it had, and
# the charge was refunded (service.payments.settle_payment).
PaymentStatus = Literal["trying", "retrying", "failed", "success", "refunding", "refunded"]
SeatStatus = Literal["available", "held", "confirmed", "blocked"]  # blocked: an operator took it off sale
HistoryCause = Literal["hold", "swap", "payment", "confirm", "expire", "cancel", "admin"]


class Wire(msgspec.Struct, rename="camel", omit_defaults=False):
    """Base of response bodies: camelCase field names."""


class Request(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Base of request bodies: camelCase and strict about unknown fields."""


@functools.lru_cache(maxsize=4096)
def _iso_second(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``: ``2026-11-24T10:15:00.123Z``.

    The per-second prefix is cached: formatting dates was 3 % of the hold path's CPU.
    """
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_iso_second(seconds)}{millis:03d}Z"


# --- requests ---------------------------------------------------------------------------

# The id and code rules as the OpenAPI document states them (JSON Schema ``pattern``s). They are
# enforced by hand (flights.check_flight_id, orders.check_order_id, orders.check_payment_code) to
# keep spec 4.2's split: a wrong type is 400, a wrong value 422. ``Meta(extra_json_schema=...)``
# only documents: msgspec does not validate it.
FLIGHT_ID_REGEX = "^[A-Za-z0-9_-]{1,32}$"
ORDER_ID_REGEX = "^[A-Za-z0-9_-]{1,64}$"
PAYMENT_CODE_REGEX = "^[0-9]{5}$"


def _documented(**schema: object) -> msgspec.Meta:
    """JSON Schema keywords for the OpenAPI document only (Litestar reads ``extra``)."""
    return msgspec.Meta(extra_json_schema={"extra": schema})


FlightIdField = Annotated[str | msgspec.UnsetType | None, _documented(pattern=FLIGHT_ID_REGEX)]
OrderIdField = Annotated[str | msgspec.UnsetType | None, _documented(pattern=ORDER_ID_REGEX)]


class CreateOrderRequest(Request, kw_only=True):
    """``POST /orders``; the first version's ``flightID``/``orderID`` spellings are accepted.

    ``UNSET`` tells an absent field from ``null`` (both mean "not given"), so that a body naming
    both spellings of one field is refused even when one of them is ``null``.
    """

    flight_id: FlightIdField = msgspec.UNSET
    order_id: OrderIdField = msgspec.UNSET
    legacy_flight_id: FlightIdField = msgspec.field(default=msgspec.UNSET, name="flightID")
    legacy_order_id: OrderIdField = msgspec.field(default=msgspec.UNSET, name="orderID")


class SelectSeatsRequest(Request):
    """``POST /orders/{id}/seats``: the complete desired selection (at most ``SEATS_MAX_SEATS_PER_ORDER``)."""

    seats: Annotated[list[str], _documented(minItems=1)]


class PaymentRequest(Request):
    """``POST /orders/{id}/payment``: the 5-digit code (checked by hand, see ``orders``)."""

    code: Annotated[str, _documented(pattern=PAYMENT_CODE_REGEX)]


class PutFlightRequest(Request):
    """``PUT /flights/{id}``: rows numbered from 1, one letter per column."""

    rows: Annotated[int, _documented(minimum=1)]
    columns: Annotated[str, _documented(pattern="^[A-Z]{1,26}$")]


# Operators' actions (spec §13). Bounds are checked by hand (service.operators) so that a wrong value
# is a 422, as for the other bodies; these only document them.
MAX_REASON_CHARS = 500  # an operator's reason is stored in every history entry the action makes
MAX_EXTEND_MINUTES = 24 * 60  # one extension at most; an operator may extend again
MAX_BLOCK_SEATS = 1000  # seats per block or unblock request (each is a key of one script call)
SEAT_ID_REGEX = "^[1-9][0-9]{0,4}[A-Z]$"
ReasonField = Annotated[str, _documented(minLength=1, maxLength=MAX_REASON_CHARS)]


class ReleaseOrderRequest(Request):
    """``POST /admin/orders/{id}/release``: why (kept in the history, never shown to the customer)."""

    reason: ReasonField


class ExtendHoldRequest(Request, kw_only=True):
    """``POST /admin/orders/{id}/extend``: minutes to add to the hold; ``beyondCap`` lifts the cap of
    ``SEATS_MAX_HOLD_SECONDS`` from the first hold."""

    reason: ReasonField
    minutes: Annotated[int, _documented(minimum=1, maximum=MAX_EXTEND_MINUTES)]
    beyond_cap: bool = False


class SeatsActionRequest(Request):
    """``POST /admin/flights/{id}/seats/block`` and ``.../unblock``: which seats, and why."""

    reason: ReasonField
    seats: Annotated[list[Annotated[str, _documented(pattern=SEAT_ID_REGEX)]],
                     _documented(minItems=1, maxItems=MAX_BLOCK_SEATS)]


# --- responses --------------------------------------------------------------------------


class Flight(Wire):
    """A flight of the catalogue."""

    flight_id: str
    rows: int
    columns: str
    capacity: int


class Order(Wire):
    """The order as clients see it."""

    order_id: str
    flight_id: str
    state: OrderState
    seats: list[str]
    hold_expires_at: str | None
    attempts_left: int
    payment_status: PaymentStatus | None
    last_error: str | None
    confirmation_id: str | None
    version: int
    created_at: str
    updated_at: str


class WebhookEvent(Wire):
    """A webhook's body (spec §13): ``{"type": "order.confirmed", "timestamp": <ISO 8601, when the order
    ended>, "data": <the order>}``, signed per Standard Webhooks (``service.webhooks``)."""

    type: str
    timestamp: str
    data: Order


class CreatedOrder(Order):
    """``POST /orders`` answer: the order plus its secret token (shown once)."""

    token: str


class SeatView(Wire, omit_defaults=True):
    """One seat on the map; ``expiresAt`` only while held, ``mine`` only for the owner."""

    status: SeatStatus
    expires_at: str | None = None
    mine: bool | None = None


class AdminSeatView(SeatView):
    """A seat as the admin console's stream shows it: with the order that holds or bought it."""

    order_id: str | None = None


class SeatMap(Wire):
    """``GET /flights/{id}/seats``."""

    flight_id: str
    version: int
    hash: str
    last_updated: str
    seats: dict[str, SeatView]


class SeatMapVersion(Wire):
    """``GET /flights/{id}/seats/version``: the cheap poll."""

    flight_id: str
    version: int
    hash: str
    last_updated: str


class SeatsEvent(Wire):
    """The ``seats`` SSE event: one flight version's changed seats and the map's hash after it."""

    version: int
    last_updated: str
    hash: str
    changes: dict[str, SeatView]


class AvailableSeats(Wire):
    """``GET /flights/{id}/available-seats``: the first version's summary."""

    flight_id: str
    available: list[str]
    held: list[str]
    confirmed: list[str]
    total: int
    blocked: list[str] = msgspec.field(default_factory=list)  # added with spec §13 (not for sale)


class ErrorBody(msgspec.Struct):
    """Every error: ``{"error", "message", "details"}``."""

    error: str
    message: str
    details: dict[str, object]


class Readiness(msgspec.Struct):
    """``/readyz``: which checks pass and which fail (with why)."""

    ok: list[str]
    failing: dict[str, str]


class HistoryEntry(Wire):
    """One seat change (spec §13): when (``at``), the flight version it made, the seat's status before
    (``from``) and after (``to``) in the map's words, its order, why (``cause``), the hold deadline after
    it (``expiresAt``, when held) and an operator's ``reason``. ``seat``, ``from`` and ``to`` are null
    for an operator's action on an order that held no seat."""

    at: str
    version: int
    seat: str | None
    from_: SeatStatus | None = msgspec.field(name="from")
    to: SeatStatus | None
    order_id: str | None
    cause: HistoryCause
    expires_at: str | None
    reason: str | None


class HistoryPage(Wire):
    """A page of history, newest first; ``next`` is the ``cursor`` of the following page (null: no more)."""

    entries: list[HistoryEntry]
    next: str | None


class SeatsActionResult(Wire):
    """An operator's block or unblock: the seats it changed, those already as asked, the flight's version
    after (unchanged when nothing changed)."""

    flight_id: str
    version: int
    changed: list[str]
    unchanged: list[str]


class PaymentsSummary(msgspec.Struct):
    """``GET /admin/payments/summary``: the simulated gateway's books (charges and refunds made)."""

    charged: int
    refunded: int
