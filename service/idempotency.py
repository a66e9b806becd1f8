"""Idempotency-Key on the four write endpoints (IETF httpapi draft "The Idempotency-Key HTTP Header
Field"; spec §10).

A key is 1-255 visible ASCII characters, scoped to the subject, the method and the path. Its record
(``keys.idempotency``: the sha256 of those four, so the key itself is never stored) goes through:

1. **claimed**: before anything runs, ``SET record {"f": fingerprint, "p": 1} NX GET PX lease``
   (one command): absent → this request runs; pending → 409 ``idempotency_in_progress`` (or 422 for
   another body); a first response → replayed with ``Idempotent-Replayed: true`` (or 422).
2. **answered**: the write's own Lua script replaces the claim with the first response, in the same
   atomic step as the change (``remember`` in ``lua/_lib.lua``), so a request whose reply was lost
   (503, a killed process) replays its effect when retried instead of running again. The script also
   checks for a first response itself, so a claim whose lease lapsed mid-request cannot run twice.
   Refusals (a 4xx the script decided) are kept by ``idempotency_settle.lua``; failures that changed
   nothing (429, 503) drop the claim so a retry runs.

The body's fingerprint is the sha256 of its canonical JSON; for payments it leaves the code out (a
hash of five digits would reveal it), so the same key with another code replays.

A replayed ``POST /orders`` answers the same token without any token stored in clear: a keyed order's
token is HMAC-SHA256(salt, key) (RFC 2104) with a random 128-bit salt kept in the record; the key
itself is only stored hashed into the record's name, so the record alone cannot give the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from service import errors
from service.models import ErrorBody
from service.store import keys

HEADER: Final = "idempotency-key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_KEY_LENGTH: Final = 255
FIELD: Final = {"field": "Idempotency-Key"}


class Record(msgspec.Struct, omit_defaults=True):
    """A key's record as stored: pending (``p``), or the first response (``s`` and ``o`` or ``e``)."""

    f: str  # the body's fingerprint
    p: int = 0  # 1 while the first request runs
    s: int = 0  # the first response's HTTP status
    o: list[str] | None = None  # the order as the first response showed it (flat hash fields)
    e: ErrorBody | None = None  # or the error it answered
    k: str | None = None  # POST /orders: the salt of its token


_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(Record).decode


def check_key(value: str) -> str:
    """The header's value when it is 1-255 visible ASCII characters (%x21-7E).

    Raises ValidationFailed (422, ``details.field`` = ``Idempotency-Key``) otherwise; the value is not echoed.
    """
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all("!" <= ch <= "~" for ch in value):
        raise errors.ValidationFailed("Idempotency-Key must be 1-255 visible ASCII characters.", dict(FIELD))
    return value


def fingerprint(body: msgspec.Struct | None, *, leave_out: frozenset[str] = frozenset()) -> str:
    """sha256 (hex) of the body's canonical JSON (field order fixed by the Struct), minus ``leave_out``."""
    if body is None:
        return hashlib.sha256(b"").hexdigest()
    fields = {name: value for name in body.__struct_fields__
              if name not in leave_out and (value := getattr(body, name)) is not msgspec.UNSET}
    return hashlib.sha256(_encode(fields)).hexdigest()


def derive_token(salt: str, key: str) -> str:
    """The order token of a keyed ``POST /orders``: base64url HMAC-SHA256(salt, key), 43 characters."""
    digest = hmac.new(salt.encode(), key.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """One request's Idempotency-Key, where its record lives, and what its script is told."""

    key: str
    record_key: str
    fingerprint: str
    status: int  # the HTTP status of this endpoint's success
    salt: str  # POST /orders: the token's salt ('' elsewhere)

    def script_spec(self, ttl_ms: int) -> str:
        """The scripts' idempotency argument: ``fingerprint|ttl ms|status|salt`` (lua/_lib.lua)."""
        return f"{self.fingerprint}|{ttl_ms}|{self.status}|{self.salt}"


def keyed_request(  # noqa: PLR0917 - the draft's scope (subject, method, path) plus the key and the body
    flight_id: str, subject: str, method: str, path: str, key: str, body_fingerprint: str, status: int,
) -> KeyedRequest:
    """Scope ``key`` to the subject, method and path; a fresh salt for an order's token."""
    scope = hashlib.sha256("\0".join((subject, method, path, key)).encode()).hexdigest()
    salt = secrets.token_urlsafe(16) if method == "POST" and path == "/orders" else ""
    return KeyedRequest(key, keys.idempotency(flight_id, scope), body_fingerprint, status, salt)


def pending(request: KeyedRequest) -> str:
    """The claim's value."""
    return _encode(Record(request.fingerprint, p=1)).decode()


def decode(raw: str | bytes) -> Record:
    """A stored record."""
    return _decode(raw)


def answered_error(request: KeyedRequest, error: errors.SeatsError) -> str:
    """The record of a refusal, to replay it."""
    body = ErrorBody(error.code, error.message, error.details)
    return _encode(Record(request.fingerprint, s=error.status_code, e=body)).decode()


def settle_on(error: errors.SeatsError) -> bool:
    """Whether a refusal is the key's answer (True), or a failure to forget so a retry runs (429, 5xx)."""
    return error.status_code < 500 and not isinstance(error, errors.RateLimited | errors.IdempotencyInProgress)


def check_existing(request: KeyedRequest, record: Record) -> None:
    """A record found at claim time: raise 409 while it is pending, 422 when it was for another body."""
    if record.f != request.fingerprint:
        raise errors.IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different request body.", dict(FIELD)
        )
    if record.p:
        raise errors.IdempotencyInProgress(
            "The first request with this Idempotency-Key is still running; retry shortly.",
            dict(FIELD), {"Retry-After": "1"},
        )


def replay_error(record: Record) -> errors.SeatsError:
    """The first response, when it was an error, as the error to raise again."""
    assert record.e is not None
    error = errors.SeatsError(record.e.message, dict(record.e.details), {REPLAYED_HEADER: "true"})
    error.status_code, error.code = record.s, record.e.error
    return error


def headers_of(replayed: bool) -> Mapping[str, Any]:
    """``Idempotent-Replayed: true`` on a replay."""
    return {REPLAYED_HEADER: "true"} if replayed else {}
