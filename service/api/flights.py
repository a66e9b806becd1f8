"""Flight and seat-map endpoints."""

from __future__ import annotations

from typing import Annotated

from litestar import MediaType, Response, get, put
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from service.api.deps import AnyRequest, ServicesDep, StrictBody, admin_guard, bearer_token
from service.api.openapi import route_doc
from service.models import AvailableSeats, Flight, PutFlightRequest, SeatMap, SeatMapVersion
from service.orders import hash_token
from service.wiring import Services

OrderIdQuery = Annotated[str | None, QueryParameter(name="orderId", required=False)]


@get("/flights", **route_doc("list_flights"))
async def list_flights(services: ServicesDep) -> list[Flight]:
    """The catalogue."""
    return await services.flights.catalogue()


@get("/flights/{flight_id:str}", **route_doc("get_flight"))
async def get_flight(flight_id: FromPath[str], services: ServicesDep) -> Flight:
    """One flight with its layout."""
    return (await services.flights.layout(flight_id)).to_flight()


@put("/flights/{flight_id:str}", guards=[admin_guard], dto=StrictBody[PutFlightRequest], return_dto=None,
     **route_doc("put_flight"))
async def put_flight(
    flight_id: FromPath[str], services: ServicesDep, data: JSONBody[PutFlightRequest]
) -> Response[Flight]:
    """Admin: create a flight (201) or replace its layout (200); 409 once seats are held or sold."""
    flight, created = await services.flights.put(flight_id, data)
    return Response(flight, status_code=201 if created else 200)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for raw in if_none_match.split(","):
        candidate = raw.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


@get("/flights/{flight_id:str}/seats", media_type=MediaType.JSON, **route_doc("seat_map"))
async def seat_map(
    flight_id: FromPath[str], request: AnyRequest, order_id: OrderIdQuery = None
) -> Response[SeatMap | bytes]:
    """The seat map with ``ETag``; ``If-None-Match`` gives 304; ``mine`` for the order's token holder."""
    services: Services = request.app.state.services  # a hot path: skip Litestar's DI resolution
    token = bearer_token(request, allow_query=True)
    mine = (order_id, hash_token(token)) if order_id and token else None
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and mine is None:
        live = services.flights.live_state(flight_id)  # no Redis round trip while the feed vouches
        if live is not None and _matches(if_none_match, live.etag):
            return Response(b"", status_code=304, headers={"ETag": live.etag, "Cache-Control": "no-cache"})
    snapshot, mine_ok = await services.flights.snapshot(flight_id, mine)
    etag = f'"{snapshot.hash}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, etag):
        return Response(b"", status_code=304, headers=headers)
    if mine_ok and order_id:
        return Response(snapshot.view(order_id), headers=headers)
    return Response(snapshot.encoded_public(), headers=headers, media_type=MediaType.JSON)


@get("/flights/{flight_id:str}/seats/version", **route_doc("seat_map_version"))
async def seat_map_version(flight_id: FromPath[str], request: AnyRequest) -> Response[SeatMapVersion | bytes]:
    """The cheap poll: version, hash and lastUpdated."""
    services: Services = request.app.state.services  # a hot path: skip Litestar's DI resolution
    live = services.flights.live_state(flight_id)  # no Redis round trip while the feed vouches
    if live is not None:
        return Response(live.version_json, media_type=MediaType.JSON)  # encoded once per version
    snapshot, _ = await services.flights.snapshot(flight_id)
    return Response(snapshot.version_view())


@get("/flights/{flight_id:str}/available-seats", **route_doc("available_seats"))
async def available_seats(flight_id: FromPath[str], services: ServicesDep) -> AvailableSeats:
    """The first version's summary, kept for old clients."""
    snapshot, _ = await services.flights.snapshot(flight_id)
    return snapshot.summary()


ROUTES: list[ControllerRouterHandler] = [
    list_flights, get_flight, put_flight, seat_map, seat_map_version, available_seats,
]
