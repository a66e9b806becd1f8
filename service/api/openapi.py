"""What the OpenAPI document says beyond what Litestar infers from the handlers, from one table.

Litestar describes paths, path parameters and success bodies by itself; request bodies come
from ``StrictBody`` (``service.api.deps``). This module adds, per operation: every error status
with the ``error`` codes that operation can answer (spec 4.2 and 10), the request headers of
spec 10 (``Idempotency-Key``, ``Seats-Buyer``) and the conditional ones, the response headers
(``Retry-After``, ``RateLimit``, ``RateLimit-Policy``, ``Idempotent-Replayed``, ``ETag``), the
bearer schemes and the shape of ids in paths. Declarations only: nothing here runs per request.

To teach a route a new error code: add the code to ``ERROR_CODES`` (once) and to the route's
tuple in ``ROUTES``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from litestar.enums import ParamType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)

from service.models import FLIGHT_ID_REGEX, ORDER_ID_REGEX, SEAT_ID_REGEX, ErrorBody, Flight, Readiness


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """An ``error`` code: its HTTP status and when it is answered."""

    status: int
    when: str


ERROR_CODES: dict[str, ErrorCode] = {
    "invalid_request": ErrorCode(400, "malformed JSON, wrong JSON types, unknown fields, no body"),
    "unauthorized": ErrorCode(401, "no bearer token where one is required"),
    "invalid_buyer_pass": ErrorCode(401, "a malformed, forged or expired `Seats-Buyer` pass (or none where required)"),
    "forbidden": ErrorCode(403, "a wrong admin token"),
    "flight_not_found": ErrorCode(404, "unknown flight"),
    "seat_not_found": ErrorCode(404, "the flight has no such seat"),
    "order_not_found": ErrorCode(404, "unknown order, or a wrong order token"),
    "seats_unavailable": ErrorCode(409, "a requested seat is held or sold by another order (`details.conflicts`)"),
    "order_closed": ErrorCode(409, "the order is terminal"),
    "payment_in_progress": ErrorCode(409, "paying again, changing seats or cancelling while PAYING"),
    "no_seats_held": ErrorCode(409, "paying an order that holds no seats"),
    "order_exists": ErrorCode(409, "`orderId` already taken"),
    "flight_in_use": ErrorCode(409, "replacing the layout of a flight with held or sold seats"),
    "conflict": ErrorCode(409, "the order (or the flight's layout) changed under four retries in a row; try again"),
    "subject_limit_reached": ErrorCode(409, "a per-subject cap (`details: {limit, current}`)"),
    "hold_cap_reached": ErrorCode(409, "an extension the hold cap (`SEATS_MAX_HOLD_SECONDS` from the first hold) "
                                       "leaves no room for (`details.cap`); `beyondCap` lifts it"),
    "idempotency_in_progress": ErrorCode(409, "the first request with this `Idempotency-Key` still runs"),
    "payload_too_large": ErrorCode(413, "body over `SEATS_MAX_BODY_BYTES`"),
    "validation_failed": ErrorCode(422, "well-formed but invalid (`details.field`): ids, seats, code, a JSON key "
                                        "given twice, an `Idempotency-Key` that is not 1-255 visible ASCII characters"),
    "idempotency_key_reused": ErrorCode(422, "the same `Idempotency-Key` with a different body"),
    "rate_limited": ErrorCode(429, "over the subject's write or stream limit (`Retry-After`)"),
    "store_unavailable": ErrorCode(503, "Redis cannot be reached: never a guessed answer"),
}

_STRING = OpenAPIType.STRING
ORDER_TOKEN, ADMIN_TOKEN = "orderToken", "adminToken"
SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    ORDER_TOKEN: SecurityScheme(type="http", scheme="bearer", description=(
        "The order's secret `token` from `POST /orders`: `Authorization: Bearer <token>` (SSE and the "
        "seat map also take `?token=`). None: 401; a wrong one: 404, as for an unknown order.")),
    ADMIN_TOKEN: SecurityScheme(type="http", scheme="bearer", description=(
        "`SEATS_ADMIN_TOKEN`: `Authorization: Bearer <token>`. None: 401; a wrong one: 403.")),
}


def _header(name: str, description: str, schema: Schema) -> Parameter:
    return Parameter(name=name, param_in="header", required=False, description=description, schema=schema)


IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    "IETF httpapi Idempotency-Key: 1-255 visible ASCII characters, scoped to the subject, method and path. "
    "The same key with the same body replays the first response (`Idempotent-Replayed: true`).",
    Schema(type=_STRING, min_length=1, max_length=255, pattern="^[\\x21-\\x7e]{1,255}$"),
)
SEATS_BUYER = _header(
    "Seats-Buyer",
    "Buyer pass `<buyerId>.<expiresAtUnixSeconds>.<signature>` (signature: base64url, no padding, of "
    "HMAC-SHA256(SEATS_BUYER_SECRET, `<buyerId>.<expiresAtUnixSeconds>`)); limits then apply per buyer.",
    Schema(type=_STRING, pattern="^[A-Za-z0-9_-]{1,64}\\.[0-9]{1,12}\\.[A-Za-z0-9_-]{43}$"),
)
IF_NONE_MATCH = _header("If-None-Match", 'The map\'s ETag (`"<hash>"`, `W/"<hash>"`) or `*`: 304 when it matches.',
                        Schema(type=_STRING))
LAST_EVENT_ID = _header("Last-Event-ID", "Resume after this event id: the missed events, or a fresh snapshot.",
                        Schema(type=_STRING))
REQUEST_ID = _header("X-Request-Id", "The caller's request id, kept when 1-128 characters of `A-Z a-z 0-9 . _ : -` "
                     "(else a new one is made); every response returns it, every log line of the request has it.",
                     Schema(type=_STRING, pattern="^[A-Za-z0-9._:-]{1,128}$"))
TOKEN_QUERY = Parameter(name="token", param_in="query", required=False, schema=Schema(type=_STRING),
                        description="The order token, for clients that cannot set headers (EventSource).")
ADMIN_TOKEN_QUERY = Parameter(name="token", param_in="query", required=False, schema=Schema(type=_STRING),
                              description="The admin token, for clients that cannot set headers (EventSource).")

_HEADERS: dict[str, OpenAPIHeader] = {
    "Retry-After": OpenAPIHeader(description="Seconds to wait before retrying (whole, rounded up, at least 1).",
                                 schema=Schema(type=OpenAPIType.INTEGER, minimum=1)),
    "RateLimit-Policy": OpenAPIHeader(description="IETF RateLimit-Policy of the subject's write limit.",
                                      schema=Schema(type=_STRING)),
    "RateLimit": OpenAPIHeader(description="IETF RateLimit: what is left of the subject's write limit.",
                               schema=Schema(type=_STRING)),
    "Idempotent-Replayed": OpenAPIHeader(description="`true` on a replay of an earlier response to this key.",
                                         schema=Schema(type=_STRING, enum=["true"])),
    "ETag": OpenAPIHeader(description='`"<hash>"` of the seat map.', schema=Schema(type=_STRING)),
    "X-Request-Id": OpenAPIHeader(description="The request's id (the caller's when well formed): find its log lines.",
                                  schema=Schema(type=_STRING), required=True),
}
# Ids in paths (flights.FLIGHT_ID_PATTERN, orders.check_order_id); anything else is a 404.
_PATH_PATTERNS = {"flight_id": FLIGHT_ID_REGEX, "order_id": ORDER_ID_REGEX, "seat_id": SEAT_ID_REGEX}

_READ = ("store_unavailable",)
_WRITE = ("invalid_request", "payload_too_large", "rate_limited", "invalid_buyer_pass", "store_unavailable")
_IDEMPOTENT = ("idempotency_in_progress", "idempotency_key_reused")
_ORDER = ("unauthorized", "order_not_found")
_ADMIN = ("unauthorized", "forbidden", "store_unavailable")
_ADMIN_WRITE = (*_ADMIN, "invalid_request", "payload_too_large", "validation_failed")
_PAGE = ("invalid_request", "validation_failed")  # ?limit= not an integer (400), out of range or a bad cursor (422)


@dataclass(frozen=True, slots=True)
class Also:
    """Another answer of an operation that is not an error: status, body type (``None``: no body), when."""

    status: int
    body: type[Any] | None
    when: str


@dataclass(frozen=True, slots=True)
class RouteDoc:
    """What one operation answers besides its success, and the headers it reads and sends."""

    errors: tuple[str, ...]
    headers: tuple[Parameter, ...] = ()
    security: tuple[str, ...] = ()  # bearer schemes; empty = none
    optional_security: bool = False  # the token only adds to the answer (seat map, flight stream)
    also: tuple[Also, ...] = ()
    success_headers: tuple[str, ...] = ()


ROUTES: dict[str, RouteDoc] = {
    "healthz": RouteDoc(()),
    "readyz": RouteDoc((), also=(Also(503, Readiness, "A check fails (`failing` says why)."),)),
    "metrics": RouteDoc(()),
    "list_flights": RouteDoc(_READ),
    "get_flight": RouteDoc((*_READ, "flight_not_found")),
    "put_flight": RouteDoc(("invalid_request", "payload_too_large", "store_unavailable", "unauthorized",
                            "forbidden", "flight_not_found", "validation_failed", "flight_in_use"),
                           security=(ADMIN_TOKEN,), also=(Also(201, Flight, "Created: the flight is new."),)),
    "seat_map": RouteDoc((*_READ, "flight_not_found"), (IF_NONE_MATCH, TOKEN_QUERY), (ORDER_TOKEN,),
                         optional_security=True, success_headers=("ETag",),
                         also=(Also(304, None, "Not Modified: the map still has this ETag."),)),
    "seat_map_version": RouteDoc((*_READ, "flight_not_found")),
    "available_seats": RouteDoc((*_READ, "flight_not_found")),
    "create_order": RouteDoc((*_WRITE, *_IDEMPOTENT, "validation_failed", "flight_not_found", "order_exists",
                              "subject_limit_reached"), (IDEMPOTENCY_KEY, SEATS_BUYER)),
    "get_order": RouteDoc((*_READ, *_ORDER), security=(ORDER_TOKEN,)),
    "select_seats": RouteDoc((*_WRITE, *_IDEMPOTENT, *_ORDER, "validation_failed", "seats_unavailable",
                              "order_closed", "payment_in_progress", "conflict",
                              "subject_limit_reached"), (IDEMPOTENCY_KEY, SEATS_BUYER), (ORDER_TOKEN,)),
    "pay": RouteDoc((*_WRITE, *_IDEMPOTENT, *_ORDER, "validation_failed", "order_closed", "payment_in_progress",
                     "no_seats_held", "seats_unavailable", "conflict"), (IDEMPOTENCY_KEY, SEATS_BUYER),
                    (ORDER_TOKEN,)),
    "cancel_order": RouteDoc(("rate_limited", "invalid_buyer_pass", "store_unavailable", *_IDEMPOTENT, *_ORDER,
                              "validation_failed", "order_closed", "payment_in_progress", "conflict"),
                             (IDEMPOTENCY_KEY, SEATS_BUYER), (ORDER_TOKEN,)),
    "payments_summary": RouteDoc(_ADMIN, security=(ADMIN_TOKEN,)),
    "seat_history": RouteDoc((*_ADMIN, *_PAGE, "flight_not_found", "seat_not_found"), security=(ADMIN_TOKEN,)),
    "order_history": RouteDoc(("unauthorized", "store_unavailable", *_PAGE, "order_not_found"),
                              security=(ADMIN_TOKEN, ORDER_TOKEN)),
    "admin_get_order": RouteDoc((*_ADMIN, "order_not_found"), security=(ADMIN_TOKEN,)),
    "admin_release": RouteDoc((*_ADMIN_WRITE, "order_not_found", "order_closed", "conflict"), security=(ADMIN_TOKEN,)),
    "admin_extend": RouteDoc((*_ADMIN_WRITE, "order_not_found", "order_closed", "no_seats_held", "hold_cap_reached",
                              "seats_unavailable", "conflict"), security=(ADMIN_TOKEN,)),
    "block_seats": RouteDoc((*_ADMIN_WRITE, "flight_not_found", "seats_unavailable", "conflict"),
                            security=(ADMIN_TOKEN,)),
    "unblock_seats": RouteDoc((*_ADMIN_WRITE, "flight_not_found", "conflict"), security=(ADMIN_TOKEN,)),
    "admin_flight_events": RouteDoc((*_ADMIN, "flight_not_found"), (LAST_EVENT_ID, ADMIN_TOKEN_QUERY),
                                    (ADMIN_TOKEN,)),
    "flight_events": RouteDoc((*_READ, "flight_not_found", "rate_limited", "invalid_buyer_pass"),
                              (LAST_EVENT_ID, SEATS_BUYER, TOKEN_QUERY), (ORDER_TOKEN,), optional_security=True),
    "order_events": RouteDoc((*_READ, *_ORDER, "rate_limited", "invalid_buyer_pass"),
                             (LAST_EVENT_ID, SEATS_BUYER, TOKEN_QUERY), (ORDER_TOKEN,), also=(Also(
                                 204, None, "No Content: the Last-Event-ID is already the terminal version."),)),
}

_WRITE_SUCCESS_HEADERS = ("RateLimit-Policy", "RateLimit", "Idempotent-Replayed")


def route_doc(name: str) -> dict[str, Any]:
    """Keyword arguments of a Litestar route decorator documenting operation ``name`` of ``ROUTES``."""
    doc = ROUTES[name]
    unknown = [code for code in doc.errors if code not in ERROR_CODES]
    if unknown:
        raise ValueError(f"{name}: undocumented error codes {unknown}")
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in doc.errors:
        by_status[ERROR_CODES[code].status].append(code)
    responses: dict[int, ResponseSpec] = {
        status: ResponseSpec(
            data_container=ErrorBody, generate_examples=False,
            description="; ".join(f"`{code}`: {ERROR_CODES[code].when}" for code in codes),
            examples=[Example(summary=code, value={"error": code, "message": ERROR_CODES[code].when, "details": {}})
                      for code in codes],
        )
        for status, codes in sorted(by_status.items())
    }
    for also in doc.also:
        responses[also.status] = ResponseSpec(data_container=also.body, generate_examples=False, description=also.when)
    security: list[dict[str, list[str]]] = [{scheme: []} for scheme in doc.security]
    if doc.optional_security:
        security.insert(0, {})
    return {"responses": responses, "operation_class": _operation_class(doc, dict(by_status)),
            "security": security or None}


def _operation_class(doc: RouteDoc, codes_by_status: dict[int, list[str]]) -> type[Operation]:
    """An ``Operation`` that adds ``doc``'s headers and narrows each error body to its codes."""

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*_with_path_patterns(self.parameters or []), *doc.headers, REQUEST_ID]
            if self.responses and 400 not in codes_by_status:
                # Litestar's own ValidationException schema: its path and query parameters are plain
                # strings, so it cannot fail; and our 400s are ErrorBody anyway
                self.responses.pop("400", None)
            for status, response in (self.responses or {}).items():
                if isinstance(response, OpenAPIResponse):
                    _decorate_response(response, int(status), doc, codes_by_status)

    return DocumentedOperation


def _with_path_patterns(parameters: list[Parameter | Reference]) -> list[Parameter | Reference]:
    for parameter in parameters:
        if isinstance(parameter, Parameter) and parameter.param_in == "path" and isinstance(parameter.schema, Schema):
            parameter.schema.pattern = _PATH_PATTERNS.get(parameter.name, parameter.schema.pattern)
    return parameters


def _decorate_response(response: OpenAPIResponse, status: int, doc: RouteDoc,
                       codes_by_status: dict[int, list[str]]) -> None:
    names = ["X-Request-Id"]  # service.api.request_id sets it on every response, errors included
    if status < 400:
        names += list(doc.success_headers) if status in (200, 304) else []
        names += list(_WRITE_SUCCESS_HEADERS) if IDEMPOTENCY_KEY in doc.headers and status != 304 else []
    elif status == 429:
        names += ["Retry-After", "RateLimit-Policy", "RateLimit"]
    elif status == 409 and "idempotency_in_progress" in doc.errors:
        names.append("Retry-After")
    response.headers = {**(response.headers or {}), **{name: _HEADERS[name] for name in names}}
    codes = codes_by_status.get(status)
    media = (response.content or {}).get("application/json")
    if codes and media is not None and media.schema is not None:
        # ErrorBody, with `error` one of this operation's codes for this status
        media.schema = Schema(all_of=[media.schema, Schema(
            type=OpenAPIType.OBJECT, properties={"error": Schema(type=_STRING, enum=list(codes))})])
    elif status < 300 and media is not None and isinstance(media.schema, Schema) and media.schema.one_of:
        # handlers that send pre-encoded JSON bytes are annotated `Struct | bytes`: the body is the Struct
        media.schema = next((s for s in media.schema.one_of if isinstance(s, Reference)), media.schema)


def components() -> Components:
    """The components Litestar does not infer: the bearer schemes."""
    return Components(security_schemes=SECURITY_SCHEMES)


WEBHOOK_EVENTS: dict[str, str] = {
    "order.confirmed": "the payment succeeded and the seats are sold",
    "order.failed": "every payment attempt was declined",
    "order.expired": "the hold (or a PENDING order's time) ran out, a late payment included (refunded)",
    "order.cancelled": "the customer cancelled the order, or an operator released it",
}
_WEBHOOK_HEADERS = {
    "webhook-id": "The event's id, the same on every retry: de-duplicate on it.",
    "webhook-timestamp": "Unix seconds of this attempt.",
    "webhook-signature": "`v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>`, the key being the base64-decoded "
                         "part of `SEATS_WEBHOOK_SECRET` (`whsec_…`).",
}


def webhooks() -> dict[str, PathItem | Reference]:
    """The POSTs a ``SEATS_WEBHOOK_URL`` receives (spec §13, Standard Webhooks), for OpenAPI 3.1's ``webhooks``."""
    return {event: PathItem(post=Operation(
        operation_id=event.replace(".", "_"),
        summary=f"{event}: {when}",
        description="At least once, retried with exponential backoff and jitter for up to 24 h until a 2xx.",
        parameters=[Parameter(name=name, param_in=ParamType.HEADER, required=True, description=text,
                              schema=Schema(type=_STRING)) for name, text in _WEBHOOK_HEADERS.items()],
        request_body=RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema=Schema(
            type=OpenAPIType.OBJECT, required=["type", "timestamp", "data"], properties={
                "type": Schema(type=_STRING, const=event),
                "timestamp": Schema(type=_STRING, format=OpenAPIFormat.DATE_TIME,
                                    description="when the order ended"),
                "data": Reference(ref="#/components/schemas/Order"),
            }))}),
        responses={"2XX": OpenAPIResponse(description="Received: no more attempts.")},
    )) for event, when in WEBHOOK_EVENTS.items()}
