"""The request side of spec §10: who a request is (its subject), its Idempotency-Key, and how a write answers.

The limits themselves run in Redis (``lua/_lib.lua``, ``service.limits``); this module only reads
the request (peer, ``X-Forwarded-For``, ``Seats-Buyer``, ``Idempotency-Key``) and writes the headers
of the answer (``RateLimit-Policy``/``RateLimit``, ``Idempotent-Replayed``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Response

from service import errors, idempotency, limits, subjects
from service.api.deps import AnyRequest
from service.orders import Caller, Written
from service.subjects import Subject
from service.wiring import Services


def subject_of(request: AnyRequest, services: Services) -> Subject:
    """The request's subject: a valid buyer pass's buyer, else the client address (``service.subjects``).

    Raises InvalidBuyerPass (401) for a malformed, forged or expired pass.
    """
    forwarded = request.headers.getall("x-forwarded-for", ()) if services.trusted_proxies else ()
    return subjects.resolve(
        request.client.host if request.client else None, ", ".join(forwarded) or None,
        request.headers.get("seats-buyer"), services.trusted_proxies, services.settings.buyer_secret, time.time(),
    )


def caller(
    request: AnyRequest, services: Services, body: msgspec.Struct | None = None,
    *, leave_out: frozenset[str] = frozenset(),
) -> Caller:
    """The caller of a write: subject, and Idempotency-Key with the body's fingerprint (minus ``leave_out``).

    A buyer pass is checked at once (a forged one is 401 whatever the request); the client address is
    only worked out if the write needs it (``Caller``).
    Raises ValidationFailed (422) for a key that is not 1-255 visible ASCII characters.
    """
    headers = request.headers
    subject: Subject | Callable[[], Subject] = (
        subject_of(request, services) if "seats-buyer" in headers else functools.partial(subject_of, request, services)
    )
    key = headers.get(idempotency.HEADER)
    if key is None:
        return Caller(subject)
    return Caller(subject, idempotency.check_key(key), idempotency.fingerprint(body, leave_out=leave_out))


def require_buyer(caller: Caller, services: Services) -> None:
    """``SEATS_REQUIRE_BUYER_PASS``: creating an order needs a buyer pass (401 ``invalid_buyer_pass``)."""
    if services.settings.require_buyer_pass and caller.subject.kind != "buyer":
        raise errors.InvalidBuyerPass("Creating an order needs a buyer pass (the Seats-Buyer header).",
                                      {"field": "Seats-Buyer"})


def respond(written: Written) -> Response[Any]:
    """A write's answer with its RateLimit and Idempotent-Replayed headers."""
    headers = {**limits.rate_headers(written.rate), **idempotency.headers_of(written.replayed)}
    return Response(written.body(), status_code=written.status, headers=headers)
