"""Order endpoints: every one needs the order's bearer token."""

from __future__ import annotations

from typing import Any

from litestar import Response, delete, get, post
from litestar.params import FromPath
from litestar.types import ControllerRouterHandler

from service import errors, metrics
from service.api.controls import caller, require_buyer, respond
from service.api.deps import AnyRequest, Services, ServicesDep, decode_body, require_token
from service.models import CreateOrderRequest, Order, PaymentRequest, SelectSeatsRequest

PAYMENT_FINGERPRINT_LEAVES_OUT = frozenset({"code"})  # a hash of five digits would reveal them


@post("/orders")
async def create_order(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    """Create an order (201) with its secret token; ``orderId`` is generated when absent."""
    body = await decode_body(request, CreateOrderRequest)
    flight_id = body.flight_id or body.legacy_flight_id
    if not flight_id:
        raise errors.ValidationFailed("flightId is required.", {"field": "flightId"})
    who = caller(request, services, body)
    require_buyer(who, services)
    return respond(await services.orders.create(flight_id, body.order_id or body.legacy_order_id, who))


@get(["/orders/{order_id:str}", "/orders/{order_id:str}/status"])
async def get_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Order:
    """The order."""
    return await services.orders.get(order_id, require_token(request))


@post("/orders/{order_id:str}/seats", status_code=200)
async def select_seats(order_id: FromPath[str], request: AnyRequest) -> Response[Any]:
    """Swap the selection atomically; 409 ``seats_unavailable`` names the taken seats."""
    token = require_token(request)
    body = await decode_body(request, SelectSeatsRequest)
    services: Services = request.app.state.services  # the hot path skips Litestar's DI resolution
    try:
        written = await services.orders.select_seats(order_id, token, body.seats, caller(request, services, body))
    except errors.SeatsUnavailable:
        metrics.hold_refused()
        raise
    if not written.replayed:
        metrics.hold_accepted(written.order.version)
    return respond(written)


@post("/orders/{order_id:str}/payment", status_code=202)
async def pay(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Response[Any]:
    """Submit the 5-digit code: 202 with the order PAYING; the worker runs the attempts."""
    token = require_token(request)
    body = await decode_body(request, PaymentRequest)
    who = caller(request, services, body, leave_out=PAYMENT_FINGERPRINT_LEAVES_OUT)
    return respond(await services.orders.pay(order_id, token, body.code, who))


@delete("/orders/{order_id:str}", status_code=200)
async def cancel_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Response[Any]:
    """Cancel the order; its seats are released at once."""
    token = require_token(request)
    return respond(await services.orders.cancel(order_id, token, caller(request, services)))


ROUTES: list[ControllerRouterHandler] = [create_order, get_order, select_seats, pay, cancel_order]
