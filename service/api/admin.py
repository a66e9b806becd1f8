"""Admin endpoints for operators (``SEATS_ADMIN_TOKEN``): payment reconciliation, seat and order history,
the actions of spec §13 (release, extend, block, unblock) and the admin console's live stream."""

from __future__ import annotations

import hmac
from typing import Annotated

from litestar import get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.types import ControllerRouterHandler

from service import errors
from service.api.deps import (
    AnyConnection,
    AnyRequest,
    ServicesDep,
    StrictBody,
    admin_guard,
    bearer_token,
    require_admin,
)
from service.api.events import SSE_HEADERS, SSE_MEDIA_TYPE, broker_of_services
from service.api.openapi import route_doc
from service.live.streams import direct_body_of
from service.models import (
    ExtendHoldRequest,
    HistoryPage,
    Order,
    PaymentsSummary,
    ReleaseOrderRequest,
    SeatsActionRequest,
    SeatsActionResult,
)
from service.operators import CURSOR_PATTERN, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, Operators
from service.payments import read_books

LimitQuery = Annotated[int | None, QueryParameter(
    name="limit", required=False, description=f"Entries per page (default {HISTORY_PAGE_DEFAULT}).",
    schema_extra={"minimum": 1, "maximum": HISTORY_PAGE_MAX})]
CursorQuery = Annotated[str | None, QueryParameter(
    name="cursor", required=False, description="The `next` of the previous page.",
    schema_extra={"pattern": f"^{CURSOR_PATTERN.pattern}$"})]


def _operators(services: ServicesDep) -> Operators:
    operators = services.operators
    if operators is None:
        raise errors.StoreUnavailable("Operator actions are not available in this process.")
    return operators


def admin_stream_guard(connection: AnyConnection, _: object) -> None:
    """The admin guard for the console's stream: EventSource cannot set headers, so ``?token=`` too."""
    require_admin(connection, connection.app.state.services.settings, allow_query=True)


@get("/admin/payments/summary", guards=[admin_guard], **route_doc("payments_summary"))
async def payments_summary(services: ServicesDep) -> PaymentsSummary:
    """The simulated gateway's books: ``{"charged": n, "refunded": m}``, counts of charges and refunds.

    Once every order is terminal and settled, charged - refunded = the number of CONFIRMED orders
    (spec §11). Admin token: none → 401, wrong → 403.
    """
    return await read_books(services.store.reads)


@get("/admin/flights/{flight_id:str}/seats/{seat_id:str}/history", guards=[admin_guard],
     **route_doc("seat_history"))
async def seat_history(flight_id: FromPath[str], seat_id: FromPath[str], services: ServicesDep,
                       limit: LimitQuery = None, cursor: CursorQuery = None) -> HistoryPage:
    """A seat's history, newest first: ``{"entries": [...], "next": <cursor or null>}`` (spec §13)."""
    return await _operators(services).seat_history(flight_id, seat_id, limit, cursor)


@get("/admin/orders/{order_id:str}/history", **route_doc("order_history"))
async def order_history(order_id: FromPath[str], request: AnyRequest, services: ServicesDep,
                        limit: LimitQuery = None, cursor: CursorQuery = None) -> HistoryPage:
    """An order's history, newest first. The admin token, or the order's own token; any other bearer gets the
    404 of an unknown order (no probing); no bearer 401."""
    token = bearer_token(request)
    if token is None:
        raise errors.Unauthorized("This request needs 'Authorization: Bearer <admin token or order token>'.")
    admin = services.settings.admin_token
    is_admin = bool(admin) and hmac.compare_digest(token.encode(), (admin or "").encode())
    return await _operators(services).order_history(order_id, None if is_admin else token, limit, cursor)


@get("/admin/orders/{order_id:str}", guards=[admin_guard], **route_doc("admin_get_order"))
async def admin_get_order(order_id: FromPath[str], services: ServicesDep) -> Order:
    """Any order by its id (an operator's search); a lapsed one is expired on the spot, as on ``GET /orders``."""
    return await _operators(services).order(order_id)


@post("/admin/orders/{order_id:str}/release", status_code=200, guards=[admin_guard],
      dto=StrictBody[ReleaseOrderRequest], return_dto=None, **route_doc("admin_release"))
async def admin_release(order_id: FromPath[str], services: ServicesDep,
                        data: JSONBody[ReleaseOrderRequest]) -> Order:
    """Force-release the order's holds: it becomes CANCELLED and its seats are back on sale at once (a FAILED
    order that kept its seats releases them and stays FAILED). Recorded with cause ``admin`` and the reason."""
    return await _operators(services).release(order_id, data.reason)


@post("/admin/orders/{order_id:str}/extend", status_code=200, guards=[admin_guard],
      dto=StrictBody[ExtendHoldRequest], return_dto=None, **route_doc("admin_extend"))
async def admin_extend(order_id: FromPath[str], services: ServicesDep, data: JSONBody[ExtendHoldRequest]) -> Order:
    """Extend the order's hold by ``minutes``, capped at ``SEATS_MAX_HOLD_SECONDS`` from its first hold
    unless ``beyondCap``; 409 ``hold_cap_reached`` when the cap leaves no later deadline."""
    return await _operators(services).extend(order_id, data.reason, data.minutes, beyond_cap=data.beyond_cap)


@post("/admin/flights/{flight_id:str}/seats/block", status_code=200, guards=[admin_guard],
      dto=StrictBody[SeatsActionRequest], return_dto=None, **route_doc("block_seats"))
async def block_seats(flight_id: FromPath[str], services: ServicesDep,
                      data: JSONBody[SeatsActionRequest]) -> SeatsActionResult:
    """Take seats off sale (status ``blocked`` on the map and the streams); a held or sold seat refuses the
    whole request with 409 ``seats_unavailable`` naming its order."""
    return await _operators(services).block(flight_id, data.seats, data.reason)


@post("/admin/flights/{flight_id:str}/seats/unblock", status_code=200, guards=[admin_guard],
      dto=StrictBody[SeatsActionRequest], return_dto=None, **route_doc("unblock_seats"))
async def unblock_seats(flight_id: FromPath[str], services: ServicesDep,
                        data: JSONBody[SeatsActionRequest]) -> SeatsActionResult:
    """Put blocked seats back on sale; seats that are not blocked are left as they are (``unchanged``)."""
    return await _operators(services).block(flight_id, data.seats, data.reason, block=False)


@get("/admin/flights/{flight_id:str}/events", media_type=SSE_MEDIA_TYPE, guards=[admin_stream_guard],
     **route_doc("admin_flight_events"))
async def admin_flight_events(flight_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Stream:
    """SSE for the admin console: the flight stream (``snapshot``, then ``seats``), with every held or sold
    seat's ``orderId``. Admin token as bearer or ``?token=``; not counted against a subject's streams."""
    broker = broker_of_services(services)
    await services.flights.layout(flight_id)
    watcher = broker.open_flight(flight_id, None, request.headers.get("last-event-id"), admin=True,
                                 direct=direct_body_of(request.scope))
    return Stream(broker.flight_stream(watcher), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)


ROUTES: list[ControllerRouterHandler] = [
    payments_summary, seat_history, order_history, admin_get_order, admin_release, admin_extend, block_seats,
    unblock_seats, admin_flight_events,
]
