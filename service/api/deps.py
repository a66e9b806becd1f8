"""What every handler needs: the lifespan's services, bodies decoded strictly, tokens."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from service import errors
from service.events import EventBroker
from service.eviction import EvictionPolicy
from service.flights import FlightStore
from service.limits import StreamSlots
from service.models import CreateOrderRequest, PaymentRequest, PutFlightRequest, SelectSeatsRequest
from service.orders import OrderStore
from service.scripts import Scripts
from service.settings import Settings
from service.subjects import TrustedProxies

T = TypeVar("T")
AnyRequest = Request[object, object, State]


@dataclass(slots=True)
class Services:
    """Everything the lifespan opens, handed to handlers; nothing global."""

    settings: Settings
    redis: aioredis.Redis
    queue: ArqRedis | None
    scripts: Scripts
    flights: FlightStore
    orders: OrderStore
    events: EventBroker | None = None  # live updates (SSE); started last, stopped first
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)  # parsed once
    stream_slots: StreamSlots | None = None  # the cap on open streams per subject
    eviction: EvictionPolicy | None = None  # the data Redis's maxmemory-policy, for readiness


ServicesDep = NamedDependency[Services]


def services_from_state(state: State) -> Services:
    """Litestar dependency: the services of this app instance."""
    services: Services = state.services
    return services


# Built once: constructing a Decoder per request costs more than decoding a small body.
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    body: msgspec.json.Decoder(body)
    for body in (CreateOrderRequest, SelectSeatsRequest, PaymentRequest, PutFlightRequest)
}


def _decoder(body_type: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _DECODERS.get(body_type) or msgspec.json.Decoder(body_type)
    return cast("msgspec.json.Decoder[T]", decoder)


async def decode_body(request: AnyRequest, body_type: type[T]) -> T:
    """Decode a JSON body strictly: malformed JSON and wrong types are 400 ``invalid_request``."""
    body = await request.body()
    try:
        return _decoder(body_type).decode(body)
    except msgspec.ValidationError as exc:
        raise errors.InvalidRequest(f"The request body does not match the expected shape: {exc}.") from None
    except msgspec.DecodeError as exc:
        raise errors.InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


def bearer_token(request: AnyRequest, *, allow_query: bool = False) -> str | None:
    """The ``Authorization: Bearer`` token (or ``?token=`` where browsers cannot set headers)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if allow_query:
        return request.query_params.get("token") or None
    return None


def require_token(request: AnyRequest, *, allow_query: bool = False) -> str:
    """The order token, or 401 when none was presented."""
    token = bearer_token(request, allow_query=allow_query)
    if token is None:
        raise errors.Unauthorized("This request needs the order's token as 'Authorization: Bearer <token>'.")
    return token


def require_admin(request: AnyRequest, settings: Settings) -> None:
    """Admin endpoints take ``SEATS_ADMIN_TOKEN``: none presented is 401, a wrong one 403."""
    token = bearer_token(request)
    if token is None:
        raise errors.Unauthorized("Admin endpoints need 'Authorization: Bearer <SEATS_ADMIN_TOKEN>'.")
    expected = settings.admin_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise errors.Forbidden("The admin token is wrong (or SEATS_ADMIN_TOKEN is not set).")
