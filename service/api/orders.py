"""Order endpoints: every one needs the order's bearer token."""

from __future__ import annotations

from litestar import Response, delete, get, post
from litestar.params import FromPath
from litestar.types import ControllerRouterHandler

from service import errors, metrics
from service.api.deps import AnyRequest, Services, ServicesDep, decode_body, require_token
from service.models import CreatedOrder, CreateOrderRequest, Order, PaymentRequest, SelectSeatsRequest


@post("/orders")
async def create_order(request: AnyRequest, services: ServicesDep) -> Response[CreatedOrder]:
    """Create an order (201) with its secret token; ``orderId`` is generated when absent."""
    body = await decode_body(request, CreateOrderRequest)
    flight_id = body.flight_id or body.legacy_flight_id
    if not flight_id:
        raise errors.ValidationFailed("flightId is required.", {"field": "flightId"})
    order = await services.orders.create(flight_id, body.order_id or body.legacy_order_id)
    return Response(order, status_code=201)


@get(["/orders/{order_id:str}", "/orders/{order_id:str}/status"])
async def get_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Order:
    """The order."""
    return await services.orders.get(order_id, require_token(request))


@post("/orders/{order_id:str}/seats", status_code=200)
async def select_seats(order_id: FromPath[str], request: AnyRequest) -> Order:
    """Swap the selection atomically; 409 ``seats_unavailable`` names the taken seats."""
    token = require_token(request)
    body = await decode_body(request, SelectSeatsRequest)
    services: Services = request.app.state.services  # the hot path skips Litestar's DI resolution
    try:
        order = await services.orders.select_seats(order_id, token, body.seats)
    except errors.SeatsUnavailable:
        metrics.hold_refused()
        raise
    metrics.hold_accepted(order.version)
    return order


@post("/orders/{order_id:str}/payment", status_code=202)
async def pay(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Order:
    """Submit the 5-digit code: 202 with the order PAYING; the worker runs the attempts."""
    token = require_token(request)
    body = await decode_body(request, PaymentRequest)
    return await services.orders.pay(order_id, token, body.code)


@delete("/orders/{order_id:str}", status_code=200)
async def cancel_order(order_id: FromPath[str], request: AnyRequest, services: ServicesDep) -> Order:
    """Cancel the order; its seats are released at once."""
    return await services.orders.cancel(order_id, require_token(request))


ROUTES: list[ControllerRouterHandler] = [create_order, get_order, select_seats, pay, cancel_order]
