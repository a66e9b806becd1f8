"""What every handler needs: the lifespan's services, bodies decoded strictly, tokens."""

from __future__ import annotations

import hmac
import json
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.dto import AbstractDTO, DTOFieldDefinition
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from service import errors
from service.models import CreateOrderRequest, PaymentRequest, PutFlightRequest, SelectSeatsRequest
from service.settings import Settings
from service.wiring import Services

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto._backend import DTOBackend

T = TypeVar("T")
AnyRequest = Request[object, object, State]
AnyConnection = ASGIConnection[Any, Any, Any, Any]


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


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of the duplicate-key pass: the first key seen twice is a 422."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            shown = errors.echo(key)
            raise errors.ValidationFailed(f"The JSON key {shown!r} appears twice.", {"field": shown})
        seen.add(key)
    return dict(pairs)


def check_duplicate_keys(body: bytes) -> None:
    """422 ``validation_failed`` when an object of ``body`` (at any depth) names a key twice.

    JSON parsers keep the last of duplicate keys (RFC 8259 leaves it undefined), so a body
    could say two things at once; msgspec has no hook for them, the stdlib parser does. A body
    with at most one ``:`` has at most one key and skips the second pass: the hot path
    (``{"seats": [...]}``, ``{"code": "..."}``) pays one ``bytes.count``.
    """
    if body.count(b":") <= 1:
        return
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except ValueError as exc:  # msgspec accepted it; the stdlib should too, but never a 500
        raise errors.InvalidRequest("The request body is not valid JSON.") from exc


def decode_strict(body: bytes, body_type: type[T]) -> T:
    """Decode a JSON body strictly (spec 4.2).

    Malformed JSON, wrong types and unknown fields are 400 ``invalid_request``; a key given
    twice is 422 ``validation_failed``. Messages quote at most ``errors.MESSAGE_ECHO_CHARS`` of
    what the decoder says about the input.
    """
    try:
        decoded = _decoder(body_type).decode(body)
    except msgspec.ValidationError as exc:
        shown = errors.echo(str(exc), errors.MESSAGE_ECHO_CHARS)
        raise errors.InvalidRequest(f"The request body does not match the expected shape: {shown}.") from None
    except msgspec.DecodeError as exc:
        shown = errors.echo(str(exc), errors.MESSAGE_ECHO_CHARS)
        raise errors.InvalidRequest(f"The request body is not valid JSON: {shown}.") from None
    check_duplicate_keys(body)
    return decoded


class StrictBody(AbstractDTO[T]):
    """The ``data`` of a handler, decoded by ``decode_strict``; the OpenAPI body is the Struct's schema.

    Use as ``@post(..., dto=StrictBody[SelectSeatsRequest], return_dto=None)`` with
    ``data: SelectSeatsRequest``. Litestar's own decoding converts leniently (``"1"`` for an
    int) and keeps duplicate keys; a DTO is its documented hook for raw bytes. An empty body is
    Litestar's "missing data" 400.
    """

    __slots__ = ()

    def decode_bytes(self, value: bytes) -> T:
        """The Struct, or the 400/422 of ``decode_strict``."""
        return decode_strict(value, self.model_type)

    @classmethod
    def create_for_field_definition(cls, field_definition: FieldDefinition, handler_id: str,
                                    backend_cls: type[DTOBackend] | None = None) -> None:
        """Nothing to build: no transfer model, the Struct is decoded as it is."""

    @classmethod
    def create_openapi_schema(cls, field_definition: FieldDefinition, handler_id: str,
                              schema_creator: SchemaCreator) -> Reference | Schema:
        """The Struct's own component schema, closed (``additionalProperties: false``) as its decoder is."""
        schema = schema_creator.for_field_definition(field_definition)
        if isinstance(schema, Reference):
            schema_creator.schema_registry.from_reference(schema).schema.additional_properties = False
        return schema

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[DTOFieldDefinition, None, None]:
        """Unused: this DTO has no transfer model."""
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        """Unused: this DTO has no transfer model."""
        return False


def bearer_token(request: AnyConnection, *, allow_query: bool = False) -> str | None:
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


def require_admin(request: AnyConnection, settings: Settings, *, allow_query: bool = False) -> None:
    """Admin endpoints take ``SEATS_ADMIN_TOKEN``: none presented is 401, a wrong one 403 (``allow_query``:
    also as ``?token=``, for the console's EventSource)."""
    token = bearer_token(request, allow_query=allow_query)
    if token is None:
        raise errors.Unauthorized("Admin endpoints need 'Authorization: Bearer <SEATS_ADMIN_TOKEN>'.")
    expected = settings.admin_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise errors.Forbidden("The admin token is wrong (or SEATS_ADMIN_TOKEN is not set).")


def admin_guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Litestar guard of admin routes: ``require_admin`` before the body is read or decoded."""
    services: Services = connection.app.state.services
    require_admin(connection, services.settings)
