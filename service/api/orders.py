"""Order endpoints: every one but ``POST /orders`` needs the order's bearer token."""

from __future__ import annotations

import msgspec
from litestar import Response, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.types import ControllerRouterHandler

from service import errors, metrics
from service.api.controls import caller, require_buyer, respond
from service.api.deps import AnyRequest, ServicesDep, StrictBody, require_token
from service.api.openapi import route_doc
from service.models import CreatedOrder, CreateOrderRequest, Order, PaymentRequest, SelectSeatsRequest
from service.wiring import Services

PAYMENT_FINGERPRINT_LEAVES_OUT = frozenset({"code"})  # a hash of five digits would reveal them


def _one_spelling(current: str | msgspec.UnsetType | None, legacy: str | msgspec.UnsetType | None,
                  name: str, legacy_name: str) -> str | None:
    """The value of a field the first version spelled differently; both spellings at once is a 422."""
    if current is not msgspec.UNSET and legacy is not msgspec.UNSET:
        raise errors.ValidationFailed(f"Give {name} or {legacy_name}, not both.", {"field": legacy_name})
    value = legacy if current is msgspec.UNSET else current
    return None if value is msgspec.UNSET else value


@post("/orders", dto=StrictBody[CreateOrderRequest], return_dto=None, **route_doc("create_order"))
async def create_order(
    data: JSONBody[CreateOrderRequest], request: AnyRequest, services: ServicesDep
) -> Response[CreatedOrder]:
    """Create an order (201) with its secret token; ``orderId`` is generated when absent or null.

    ``flightId``/``flightID`` (and ``orderId``/``orderID``) both present: 422, even when equal.
    An empty ``orderId`` is a 422, never a generated id.
    """
    flight_id = _one_spelling(data.flight_id, data.legacy_flight_id, "flightId", "flightID")
    order_id = _one_spelling(data.order_id, data.legacy_order_id, "orderId", "orderID")
    if not flight_id:
        raise errors.ValidationFailed("flightId is required.", {"field": "flightId"})
    who = caller(request, services, data)
    require_buyer(who, services)
    return respond(await services.orders.create(flight_id, order_id, who))


@get(["/orders/{order_id:str}", "/orders/{order_id:str}/status"], **route_doc("get_order"))
async def get_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Order:
    """The order."""
    return await services.orders.get(order_id, require_token(request))


@post("/orders/{order_id:str}/seats", status_code=200, dto=StrictBody[SelectSeatsRequest], return_dto=None,
      **route_doc("select_seats"))
async def select_seats(
    order_id: FromPath[str], request: AnyRequest, data: JSONBody[SelectSeatsRequest]
) -> Response[Order]:
    """Swap the selection atomically; 409 ``seats_unavailable`` names the taken seats."""
    token = require_token(request)
    services: Services = request.app.state.services  # the hot path skips Litestar's DI resolution
    try:
        written = await services.orders.select_seats(order_id, token, data.seats, caller(request, services, data))
    except errors.SeatsUnavailable:
        metrics.hold_refused()
        raise
    if not written.replayed:
        metrics.hold_accepted(written.order.version)
    return respond(written)


@post("/orders/{order_id:str}/payment", status_code=202, dto=StrictBody[PaymentRequest], return_dto=None,
      **route_doc("pay"))
async def pay(
    order_id: FromPath[str], request: AnyRequest, services: ServicesDep, data: JSONBody[PaymentRequest]
) -> Response[Order]:
    """Submit the 5-digit code: 202 with the order PAYING; the worker runs the attempts."""
    token = require_token(request)
    who = caller(request, services, data, leave_out=PAYMENT_FINGERPRINT_LEAVES_OUT)
    return respond(await services.orders.pay(order_id, token, data.code, who))


@delete("/orders/{order_id:str}", status_code=200, **route_doc("cancel_order"))
async def cancel_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Response[Order]:
    """Cancel the order; its seats are released at once."""
    token = require_token(request)
    return respond(await services.orders.cancel(order_id, token, caller(request, services)))


ROUTES: list[ControllerRouterHandler] = [create_order, get_order, select_seats, pay, cancel_order]
