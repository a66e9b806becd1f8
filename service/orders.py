"""Orders: create, read, swap the seat selection, pay, cancel, expire.

An order lives in ``seats:{F}:order:{id}`` (fields below); every change goes through one Lua
script that also changes the seats, bumps the flight's version and publishes, atomically.

Order hash fields: orderId, flightId, tokenHash (sha256 of the bearer token), state, seats (csv),
holdExpiresAt and firstHoldAt (ms, '' before any hold), attemptsLeft, paymentStatus, paymentId,
lastError, confirmationId, version, createdAt, updatedAt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service import errors, keys
from service.flights import FlightStore, check_flight_id, redis_now_ms
from service.models import TERMINAL_STATES, CreatedOrder, Order, iso_ms
from service.scripts import Arg, Refusal, Scripts, StaleLayout, StaleView
from service.settings import Settings
from service.store import store_call

ORDER_ID_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
TRUSTED = "*"
MAX_STALE_RETRIES = 4
Enqueue = Callable[[str, str, str], Awaitable[None]]


def hash_token(token: str) -> str:
    """Tokens are stored only as their SHA-256: a leaked Redis dump cannot act on orders."""
    return hashlib.sha256(token.encode()).hexdigest()


def decode_order(flat: Sequence[Any]) -> Order:
    """Build the wire Order from a script's flat HGETALL reply."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return order_from_hash(fields)


def order_from_hash(fields: dict[str, str]) -> Order:
    """Build the wire Order from the order hash (``tokenHash`` and ``paymentId`` stay inside)."""
    deadline = fields.get("holdExpiresAt") or ""
    return Order(
        order_id=fields["orderId"],
        flight_id=fields["flightId"],
        state=fields["state"],  # type: ignore[arg-type]
        seats=[s for s in fields.get("seats", "").split(",") if s],
        hold_expires_at=iso_ms(int(deadline)) if deadline else None,
        attempts_left=int(fields["attemptsLeft"]),
        payment_status=fields.get("paymentStatus") or None,  # type: ignore[arg-type]
        last_error=fields.get("lastError") or None,
        confirmation_id=fields.get("confirmationId") or None,
        version=int(fields["version"]),
        created_at=iso_ms(int(fields["createdAt"])),
        updated_at=iso_ms(int(fields["updatedAt"])),
    )


def check_payment_code(code: str) -> None:
    """Exactly five ASCII digits: ``\\d`` would accept Arabic-Indic digits, ``$`` a newline."""
    if len(code) != 5 or not all(c in "0123456789" for c in code):
        raise errors.ValidationFailed("The payment code must be exactly 5 digits (0-9).", {"field": "code"})


def check_order_id(order_id: str) -> None:
    """Order ids become part of Redis keys: 1-64 letters, digits, ``_`` or ``-``."""
    if not 1 <= len(order_id) <= 64 or not set(order_id) <= ORDER_ID_ALPHABET:
        raise errors.ValidationFailed(
            "orderId must be 1-64 characters of letters, digits, '_' or '-'.", {"field": "orderId"}
        )


class BoundedCache(OrderedDict[str, str]):
    """A small FIFO map: per-process hints that a script always re-checks."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def put(self, key: str, value: str) -> None:
        """Remember ``key``; forget the oldest entry past the limit."""
        self[key] = value
        if len(self) > self._limit:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What an order script answered: its status word and the order afterwards."""

    status: str
    order: Order | None


class OrderScripts:
    """Runs the order scripts with the key/argument convention of ``lua/_lib.lua``."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.redis = client
        self.scripts = scripts
        self.settings = settings
        self.seen_seats = BoundedCache(100_000)
        self.on_flight_version: Callable[[str, int], None] | None = None  # FlightStore.note_version
        self._retention_ms = int(settings.order_retention_seconds * 1000)
        self._keys_of: dict[str, tuple[tuple[str, str, str], str, str]] = {}

    def _flight_keys(self, flight_id: str) -> tuple[tuple[str, str, str], str, str]:
        """(flight, change log, deadlines) keys, the channel and the seat-key prefix, built once."""
        cached = self._keys_of.get(flight_id)
        if cached is None:
            seat_prefix = keys.seat(flight_id, "")
            cached = ((keys.flight(flight_id), keys.changes(flight_id), keys.deadlines(flight_id)),
                      keys.events_channel(flight_id), seat_prefix)
            if len(self._keys_of) < 100_000:
                self._keys_of[flight_id] = cached
        return cached

    async def run(  # noqa: PLR0917 - mirrors the script convention: name, flight, order, token, args
        self,
        name: str,
        flight_id: str,
        order_id: str,
        token_hash: str,
        args: Sequence[Arg] = (),
        new_seats: Sequence[str] = (),
    ) -> ScriptResult:
        """Run ``name`` with the order's current seat keys (retrying when our view was stale)."""
        expected = self.seen_seats.get(order_id, "")
        flight_keys, channel, seat_prefix = self._flight_keys(flight_id)
        for _ in range(MAX_STALE_RETRIES):
            current = expected.split(",") if expected else []
            seat_ids = current + [s for s in new_seats if s not in current] if current else list(new_seats)
            key_list = [*flight_keys, keys.order(flight_id, order_id), *[seat_prefix + s for s in seat_ids]]
            base: list[Arg] = [
                channel, self.settings.change_log_length, flight_id, order_id,
                token_hash, expected, self._retention_ms,
            ]
            try:
                reply = await self.scripts.run(name, key_list, [*base, *args])
            except StaleView as stale:
                expected = stale.detail
                continue
            status, flat = reply[0], reply[1]
            if self.on_flight_version is not None and len(reply) > 2 and reply[2] is not None:
                self.on_flight_version(flight_id, int(reply[2]))
            order = decode_order(flat) if flat else None
            if order is not None:
                self.seen_seats.put(order_id, ",".join(order.seats))
            return ScriptResult(str(status), order)
        raise errors.Conflict("The order changed concurrently; try again.", {"orderId": order_id})

    async def expire(self, flight_id: str, order_id: str) -> ScriptResult:
        """Expire one order if its deadline passed (the sweeper's and lazy readers' step)."""
        return await self.run("expire_order", flight_id, order_id, TRUSTED)


class OrderStore:
    """The order operations behind the HTTP API."""

    def __init__(
        self, order_scripts: OrderScripts, flights: FlightStore, settings: Settings, enqueue_payment: Enqueue
    ) -> None:
        self._scripts = order_scripts
        self._redis = order_scripts.redis
        self._flights = flights
        self._settings = settings
        self._enqueue_payment = enqueue_payment
        self._flight_of = BoundedCache(100_000)
        self._hold_ms = int(settings.hold_seconds * 1000)
        self._max_hold_ms = int(settings.max_hold_seconds * 1000)

    async def create(self, flight_id: str, order_id: str | None) -> CreatedOrder:
        """Create a PENDING order; the token is returned once and stored only as a hash."""
        check_flight_id(flight_id)
        if order_id is None:
            order_id = uuid.uuid4().hex
        check_order_id(order_id)
        await self._flights.layout(flight_id)
        claimed = await store_call(
            self._redis.set(keys.order_flight(order_id), flight_id, nx=True, px=self._ttl_ms())
        )
        if not claimed:
            raise errors.OrderExists(f"Order {order_id} already exists.", {"orderId": order_id})
        token = secrets.token_urlsafe(16)
        try:
            result = await self._scripts.run(
                "create_order", flight_id, order_id, hash_token(token),
                [self._settings.payment_attempts, self._ttl_ms()],
            )
        except Refusal as refusal:
            await store_call(self._redis.delete(keys.order_flight(order_id)))
            raise refusal_error(refusal, order_id) from None
        assert result.order is not None
        self._flight_of.put(order_id, flight_id)
        return CreatedOrder(**{f: getattr(result.order, f) for f in result.order.__struct_fields__}, token=token)

    async def get(self, order_id: str, token: str) -> Order:
        """Read an order; a hold that lapsed before the sweeper ran is expired on the spot."""
        flight_id = await self.flight_of(order_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.order(flight_id, order_id))
        pipe.time()
        replies: list[Any] = await store_call(pipe.execute())
        fields, time_reply = replies
        if not fields or not hmac.compare_digest(fields["tokenHash"], hash_token(token)):
            raise self._not_found(order_id)
        deadline = fields.get("holdExpiresAt")
        if fields["state"] in ("SEATS_SELECTED", "PAYING") and deadline and int(deadline) <= redis_now_ms(time_reply):
            result = await self._scripts.expire(flight_id, order_id)
            if result.order is not None:
                return result.order
        return order_from_hash(fields)

    async def select_seats(self, order_id: str, token: str, seats: list[str]) -> Order:
        """Swap the selection for ``seats`` atomically: all held with one new deadline, or nothing."""
        flight_id = await self.flight_of(order_id)
        self._check_selection(seats)
        for _ in range(MAX_STALE_RETRIES):
            layout = await self._flights.layout(flight_id)
            unknown = [errors.echo(s) for s in seats if not layout.has_seat(s)]
            if unknown:
                raise errors.ValidationFailed(
                    f"Unknown seat ids for flight {flight_id}: {', '.join(unknown)}.",
                    {"field": "seats", "unknown": unknown},
                )
            args: list[Arg] = [self._hold_ms, self._max_hold_ms, layout.rev, self._ttl_ms(), ",".join(seats)]
            try:
                result = await self._scripts.run("hold_seats", flight_id, order_id, hash_token(token), args, seats)
            except StaleLayout:
                await self._flights.layout(flight_id, refresh=True)
                continue
            except Refusal as refusal:
                raise refusal_error(refusal, order_id) from None
            return self._expect_open(result)
        raise errors.Conflict("The flight's layout kept changing; try again.", {"flightId": flight_id})

    async def pay(self, order_id: str, token: str, code: str) -> Order:
        """Start a payment submission: holds extended, state PAYING, one arq job enqueued.

        The code is checked for format and then dropped: the simulated gateway decides at random,
        so it is never logged, stored or put in the job.
        """
        check_payment_code(code)
        flight_id = await self.flight_of(order_id)
        payment_id = uuid.uuid4().hex
        window_ms = int(self._settings.payment_window_seconds * 1000)
        try:
            result = await self._scripts.run(
                "begin_payment", flight_id, order_id, hash_token(token), [payment_id, window_ms]
            )
        except Refusal as refusal:
            raise refusal_error(refusal, order_id) from None
        order = self._expect_open(result)
        await self._enqueue_payment(flight_id, order_id, payment_id)
        return order

    async def cancel(self, order_id: str, token: str) -> Order:
        """Cancel the order and release its seats at once."""
        flight_id = await self.flight_of(order_id)
        try:
            result = await self._scripts.run("cancel_order", flight_id, order_id, hash_token(token))
        except Refusal as refusal:
            raise refusal_error(refusal, order_id) from None
        assert result.order is not None
        return result.order

    async def token_matches(self, flight_id: str, order_id: str, token: str) -> bool:
        """Whether ``token`` belongs to the order (false for unknown orders)."""
        stored = await store_call(self._redis.hget(keys.order(flight_id, order_id), "tokenHash"))
        return stored is not None and hmac.compare_digest(stored, hash_token(token))

    async def flight_of(self, order_id: str) -> str:
        """The order's flight (cached per process: an order never changes flight)."""
        cached = self._flight_of.get(order_id)
        if cached is not None:
            return cached
        if not 1 <= len(order_id) <= 64 or not set(order_id) <= ORDER_ID_ALPHABET:
            raise self._not_found(order_id)
        flight_id = await store_call(self._redis.get(keys.order_flight(order_id)))
        if flight_id is None:
            raise self._not_found(order_id)
        self._flight_of.put(order_id, flight_id)
        return str(flight_id)

    def _check_selection(self, seats: list[str]) -> None:
        limit = self._settings.max_seats_per_order
        if not 1 <= len(seats) <= limit:
            raise errors.ValidationFailed(f"Select between 1 and {limit} seats.", {"field": "seats"})
        if len(set(seats)) != len(seats):
            duplicates = sorted({errors.echo(s) for s in seats if seats.count(s) > 1})
            raise errors.ValidationFailed(
                f"Seat ids must be distinct: {', '.join(duplicates)}.", {"field": "seats", "duplicates": duplicates}
            )

    def _expect_open(self, result: ScriptResult) -> Order:
        assert result.order is not None
        if result.status == "EXPIRED":
            raise errors.OrderClosed(
                "The order's hold expired; its seats were released.",
                {"orderId": result.order.order_id, "state": "EXPIRED"},
            )
        return result.order

    def _ttl_ms(self) -> int:
        return int(self._settings.order_ttl_seconds * 1000)

    def _not_found(self, order_id: str) -> errors.OrderNotFound:
        shown = errors.echo(order_id)  # from the path: not yet known to be a valid id
        return errors.OrderNotFound(f"Order {shown} does not exist.", {"orderId": shown})


def refusal_error(refusal: Refusal, order_id: str) -> errors.SeatsError:
    """Map a script refusal to the domain error clients see."""
    code, detail = refusal.code, refusal.detail
    if code == "CONFLICT":
        conflicts = [{"seat": s, "status": st} for s, _, st in (c.partition(":") for c in detail.split(","))]
        taken = ", ".join(c["seat"] for c in conflicts)
        return errors.SeatsUnavailable(
            f"Seats already taken: {taken}. Nothing was changed.", {"conflicts": conflicts}
        )
    simple: dict[str, errors.SeatsError] = {
        "NOT_FOUND": errors.OrderNotFound(f"Order {order_id} does not exist.", {"orderId": order_id}),
        "CLOSED": errors.OrderClosed(
            f"Order {order_id} is {detail} and can no longer change.", {"orderId": order_id, "state": detail}
        ),
        "PAYING": errors.PaymentInProgress(
            f"Order {order_id} is paying; wait for the payment to finish.", {"orderId": order_id}
        ),
        "NO_SEATS": errors.NoSeatsHeld(f"Order {order_id} holds no seats to pay for.", {"orderId": order_id}),
        "HOLD_LIMIT": errors.HoldLimitReached(
            f"Order {order_id} has reached the maximum hold time and cannot be refreshed.", {"orderId": order_id}
        ),
        "FLIGHT_NOT_FOUND": errors.FlightNotFound(f"Flight {detail} does not exist.", {"flightId": detail}),
        "ORDER_EXISTS": errors.OrderExists(f"Order {order_id} already exists.", {"orderId": order_id}),
    }
    if code in simple:
        return simple[code]
    return errors.SeatsError(f"Unexpected refusal {code}.", {"code": code})


def is_terminal(order: Order) -> bool:
    """Whether the order can no longer change."""
    return order.state in TERMINAL_STATES
