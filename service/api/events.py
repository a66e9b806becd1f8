"""Server-sent event streams: a flight's seat changes and an order's progress.

Everything that can fail (unknown flight or order, wrong token, Redis away) fails before the
stream opens, as a JSON error; once open, a stream only ends by design (terminal order, lifetime
cap, slow client, server drain), and the client resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import functools
from typing import Annotated

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from service import errors
from service.api.controls import subject_of
from service.api.deps import ServicesDep, bearer_token, require_token
from service.api.openapi import route_doc
from service.limits import StreamSlots
from service.live.broker import EventBroker
from service.live.streams import direct_body_of
from service.wiring import Services

OrderIdQuery = Annotated[str | None, QueryParameter(name="orderId", required=False)]
SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering either


def broker_of_services(services: Services) -> EventBroker:
    """The process's event broker; StoreUnavailable (503) where live updates are not running."""
    broker = getattr(services, "events", None)
    if not isinstance(broker, EventBroker):
        raise errors.StoreUnavailable("Live updates are not available in this process.")
    return broker


@get("/flights/{flight_id:str}/events", media_type=SSE_MEDIA_TYPE, **route_doc("flight_events"))
async def flight_events(
    flight_id: FromPath[str],
    request: Request[object, object, State],
    services: ServicesDep,
    order_id: OrderIdQuery = None,
) -> Stream:
    """SSE: a ``snapshot`` of the seat map, then one ``seats`` event per change (``id`` = version).

    With ``Last-Event-ID`` the stream resumes with the changes missed since, or a fresh snapshot
    when they are no longer retained. With ``?orderId=`` and that order's token, its seats carry
    ``mine: true``; a wrong token is ignored, as on the seat map.
    """
    broker = broker_of_services(services)
    await services.flights.layout(flight_id)  # an unknown flight is a 404, not an empty stream
    token = bearer_token(request, allow_query=True)
    mine = order_id if order_id and token and await services.orders.token_matches(flight_id, order_id, token) else None
    slots, place = await _place(request, services)
    watcher = broker.open_flight(flight_id, mine, request.headers.get("last-event-id"),
                                 direct=direct_body_of(request.scope))
    stream = broker.flight_stream(watcher, functools.partial(slots.release_soon, place) if slots else None)
    return Stream(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)


@get("/orders/{order_id:str}/events", media_type=SSE_MEDIA_TYPE, **route_doc("order_events"))
async def order_events(
    order_id: FromPath[str], request: Request[object, object, State], services: ServicesDep
) -> Stream | Response[None]:
    """SSE: ``order`` events (``id`` = the order's version), the current order first; the stream
    closes after the terminal state. Token as ``Authorization: Bearer`` or ``?token=``; an
    unknown order or a wrong token is a 404 before any stream opens.

    A client reconnecting with the terminal version as ``Last-Event-ID`` gets 204, which tells
    EventSource to stop reconnecting.
    """
    broker = broker_of_services(services)
    token = require_token(request, allow_query=True)
    slots, place = await _place(request, services)
    on_close = functools.partial(slots.release_soon, place) if slots else None
    try:
        stream = await broker.open_order(order_id, token, request.headers.get("last-event-id"), on_close)
    except BaseException:
        if on_close is not None:
            on_close()
        raise
    if stream is None:
        if on_close is not None:
            on_close()
        return Response(None, status_code=204)
    return Stream(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)


async def _place(request: Request[object, object, State], services: Services) -> tuple[StreamSlots | None,
                                                                                      tuple[str, str] | None]:
    """A place among the subject's open streams (429 ``rate_limited`` at its cap), before the stream opens."""
    slots = services.stream_slots
    if slots is None:
        return None, None
    return slots, await slots.acquire(subject_of(request, services))


ROUTES = [flight_events, order_events]
