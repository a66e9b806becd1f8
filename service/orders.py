"""Orders: create, read, swap the seat selection, pay, cancel, expire.

An order lives in ``seats:{F}:order:{id}`` (fields below); every change goes through one Lua
script that also changes the seats, bumps the flight's version and publishes, atomically.

Order hash fields: orderId, flightId, tokenHash (sha256 of the bearer token), state, seats (csv),
holdExpiresAt and firstHoldAt (ms, '' before any hold), attemptsLeft, attempts (created with), paymentStatus, paymentId,
lastError, confirmationId, version, createdAt, updatedAt, pendingUntil (ms: a PENDING order expires
then), subject and subjectKey (who created it, and their ``keys.subject`` hash: its holds count there).

The four writes a customer makes (create, select seats, pay, cancel) carry the caller's subject and
optional Idempotency-Key (``service.idempotency``); the rate limiter and the caps run inside their
scripts (``lua/_lib.lua``), so they cost no extra round trip.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service import errors, idempotency, limits
from service.flights import FlightStore, check_flight_id
from service.idempotency import KeyedRequest, Record
from service.models import TERMINAL_STATES, CreatedOrder, Order, iso_ms
from service.settings import Settings
from service.store import Store, keys
from service.store.connection import Arg
from service.store.errors import OtherSubject, Refusal, StaleLayout, StaleView
from service.store.outbox import outbox_spec
from service.subjects import Subject

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


def lapses_at(fields: dict[str, str]) -> int | None:
    """When a non-terminal order's time runs out (ms): its hold deadline, or a PENDING order's pendingUntil."""
    if fields.get("state") == "PENDING":
        until = fields.get("pendingUntil")
    elif fields.get("state") in ("SEATS_SELECTED", "PAYING"):
        until = fields.get("holdExpiresAt")
    else:
        return None
    return int(until) if until else None


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
    """What an order script answered: its status word and the order afterwards; the rate limiter's
    state (``remaining|reset ms|count|window ms``) when it ran; the first response on ``REPLAY``."""

    status: str
    order: Order | None
    rate: str | None = None
    record: Record | None = None


class Caller:
    """Who sends a write: its subject, and its Idempotency-Key with the body's fingerprint (if any).

    ``subject`` may be given as a function: it is then resolved once, on first use. A hold, a payment
    or a cancel counts against its order's subject, which this process usually knows already, so the
    request's own address is then never worked out (it was 4 % of a hold's CPU).
    """

    __slots__ = ("_resolve", "_subject", "fingerprint", "idempotency_key")

    def __init__(self, subject: Subject | Callable[[], Subject], idempotency_key: str | None = None,
                 fingerprint: str = "") -> None:
        self._subject = subject if isinstance(subject, Subject) else None
        self._resolve = None if isinstance(subject, Subject) else subject
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint

    @property
    def subject(self) -> Subject:
        """The subject (resolved now if it was not yet)."""
        if self._subject is None:
            assert self._resolve is not None
            self._subject = self._resolve()
        return self._subject

    def subject_key(self, flight_id: str) -> Callable[[], str]:
        """The subject's hash on ``flight_id``, worked out only if asked for."""
        return lambda: keys.subject(flight_id, str(self.subject))


@dataclass(frozen=True, slots=True)
class Written:
    """A write's answer: the order, the HTTP status, the limiter's state, whether it was replayed."""

    order: Order
    status: int
    rate: str | None = None
    replayed: bool = False
    token: str | None = None  # POST /orders only

    def body(self) -> Order | CreatedOrder:
        """The response body (``POST /orders`` adds the token)."""
        if self.token is None:
            return self.order
        fields = {f: getattr(self.order, f) for f in self.order.__struct_fields__}
        return CreatedOrder(**fields, token=self.token)


class OrderScripts:
    """Runs the order scripts with the key/argument convention of ``lua/_lib.lua``."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.reads = store.reads
        self.scripts = store.scripts
        self.settings = settings
        self.seen_seats = BoundedCache(100_000)
        self.subject_of = BoundedCache(100_000)  # order id -> its subject's key (a hint the scripts check)
        self.on_flight_version: Callable[[str, int], None] | None = None  # FlightStore.note_version
        self._retention_ms = int(settings.order_retention_seconds * 1000)
        self._idempotency_ms = int(settings.idempotency_seconds * 1000)
        self._history_ms = int(settings.history_seconds * 1000)
        # lua/_lib.lua "webhooks": terminal orders go to the flight's outbox only when webhooks are on
        self._outbox = outbox_spec(settings)
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
        *,
        subject_key: Callable[[], str] | None = None,
        controls: str = "",
        keyed: KeyedRequest | None = None,
    ) -> ScriptResult:
        """Run ``name`` with the order's current seat keys, retrying when our view of its seats or of its
        subject (``subject_key``, the caller's guess, asked for only when this process does not know the
        order's own; the order's own wins) was stale.

        ``controls`` and ``keyed`` are the limiter/caps and Idempotency-Key arguments of lua/_lib.lua
        (empty for the worker's calls), after the outbox spec (``store.outbox``) and the history retention
        (SEATS_HISTORY_SECONDS, in ms).
        Raises Refusal for the script's refusals.
        """
        expected = self.seen_seats.get(order_id, "")
        subject = self.subject_of.get(order_id) or (subject_key() if subject_key else keys.subject(flight_id, ""))
        flight_keys, channel, seat_prefix = self._flight_keys(flight_id)
        record_key = keyed.record_key if keyed else keys.idempotency(flight_id, "")
        tail: list[Arg] = [self._outbox, self._history_ms, controls,
                           keyed.script_spec(self._idempotency_ms) if keyed else ""]
        for _ in range(MAX_STALE_RETRIES):
            current = expected.split(",") if expected else []
            seat_ids = current + [s for s in new_seats if s not in current] if current else list(new_seats)
            key_list = [*flight_keys, keys.order(flight_id, order_id), subject, record_key,
                        *[seat_prefix + s for s in seat_ids]]
            base: list[Arg] = [
                channel, self.settings.change_log_length, flight_id, order_id,
                token_hash, expected, self._retention_ms,
            ]
            try:
                reply = await self.scripts.run(name, key_list, [*base, *args, *tail])
            except StaleView as stale:
                expected = stale.detail
                continue
            except OtherSubject as other:
                subject = other.detail
                continue
            return self._result(flight_id, order_id, reply)
        raise errors.Conflict("The order changed concurrently; try again.", {"orderId": order_id})

    def _result(self, flight_id: str, order_id: str, reply: list[Any]) -> ScriptResult:
        status = str(reply[0])
        if status == "REPLAY":
            return ScriptResult(status, None, None, idempotency.decode(reply[1]))
        flat = reply[1]
        if self.on_flight_version is not None and len(reply) > 2 and reply[2] is not None:
            self.on_flight_version(flight_id, int(reply[2]))
        fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
        order = order_from_hash(fields) if fields else None
        if order is not None and fields is not None:
            self.seen_seats.put(order_id, ",".join(order.seats))
            if fields.get("subjectKey"):
                self.subject_of.put(order_id, fields["subjectKey"])
        rate = reply[3] if len(reply) > 3 and reply[3] else None
        return ScriptResult(status, order, rate)

    async def expire(self, flight_id: str, order_id: str) -> ScriptResult:
        """Expire one order if its deadline passed (the sweeper's and lazy readers' step)."""
        return await self.run("expire_order", flight_id, order_id, TRUSTED)


class OrderStore:
    """The order operations behind the HTTP API."""

    def __init__(
        self, order_scripts: OrderScripts, flights: FlightStore, settings: Settings, enqueue_payment: Enqueue
    ) -> None:
        self._scripts = order_scripts
        self._reads = order_scripts.reads
        self._flights = flights
        self._settings = settings
        self._enqueue_payment = enqueue_payment
        self._flight_of = BoundedCache(100_000)
        self._hold_ms = int(settings.hold_seconds * 1000)
        self._max_hold_ms = int(settings.max_hold_seconds * 1000)
        self._pending_ms = int(settings.pending_order_seconds * 1000)
        self._controls = limits.controls_spec(settings, self._ttl_ms())
        self._lease_ms = int(settings.idempotency_lease_seconds * 1000)
        self._idempotency_ms = int(settings.idempotency_seconds * 1000)
        self._claim_ms = int(settings.order_claim_seconds * 1000)

    async def create(self, flight_id: str, order_id: str | None, caller: Caller) -> Written:
        """Create a PENDING order; the token is returned once and stored only as a hash.

        Raises FlightNotFound, OrderExists, RateLimited, SubjectLimitReached (the subject's open orders),
        Idempotency* and StoreUnavailable.
        """
        check_flight_id(flight_id)
        order_id = uuid.uuid4().hex if order_id is None else order_id
        check_order_id(order_id)
        await self._flights.layout(flight_id)
        keyed = self._keyed(caller, flight_id, "POST", "/orders", 201)

        async def run() -> Written:
            try:
                return await self._create(flight_id, order_id, caller, keyed)
            except errors.FlightNotFound:
                # Redis lost the flight since its layout was cached here (a restart without persistence):
                # a configured flight is created again on first use, as the reads do.
                if not await self._flights.restore_if_configured(flight_id):
                    raise
                return await self._create(flight_id, order_id, caller, keyed)

        written = await self._once(keyed, run)
        if written.replayed:
            # The first request may have lost its answer before it made its id claim permanent.
            await self._reads.index_order(written.order.order_id, flight_id, self._ttl_ms())
        self._flight_of.put(written.order.order_id, flight_id)
        return written

    async def _create(self, flight_id: str, order_id: str, caller: Caller, keyed: KeyedRequest | None) -> Written:
        # The id is claimed on a short lease, made permanent once the order exists: a failure in
        # between (503, a dying process) frees the id within SEATS_ORDER_CLAIM_SECONDS.
        if not await self._reads.claim_order_id(order_id, flight_id, self._claim_ms):
            raise errors.OrderExists(f"Order {order_id} already exists.", {"orderId": order_id})
        token = idempotency.derive_token(keyed.salt, keyed.key) if keyed else secrets.token_urlsafe(16)
        try:
            result = await self._scripts.run(
                "create_order", flight_id, order_id, hash_token(token),
                [self._settings.payment_attempts, self._ttl_ms(), str(caller.subject), self._pending_ms],
                subject_key=caller.subject_key(flight_id), controls=self._controls, keyed=keyed,
            )
            await self._reads.index_order(order_id, flight_id, self._ttl_ms())
        except Refusal as refusal:
            await self._reads.release_order_id(order_id)
            raise refusal_error(refusal, order_id) from None
        except errors.StoreUnavailable:
            # The client gets a 503 and never sees the token: free the id now if Redis lets us.
            with contextlib.suppress(errors.StoreUnavailable):
                await self._reads.release_order_id(order_id)
            raise
        if result.record is not None:  # the same key's first request got there first (create() re-indexes)
            await self._reads.release_order_id(order_id)
            assert keyed is not None
            return self._replayed(result.record, keyed)
        assert result.order is not None
        return Written(result.order, 201, result.rate, token=token)

    async def get(self, order_id: str, token: str) -> Order:
        """Read an order; one whose time ran out before the sweeper came is expired on the spot."""
        return await self._read(order_id, hash_token(token))

    async def get_trusted(self, order_id: str) -> Order:
        """Read an order without its token (operators, behind the admin token); as :meth:`get`."""
        return await self._read(order_id, None)

    async def _read(self, order_id: str, token_hash: str | None) -> Order:
        flight_id = await self.flight_of(order_id)
        fields, now_ms = await self._reads.order(flight_id, order_id)
        if not fields or (token_hash is not None and not hmac.compare_digest(fields["tokenHash"], token_hash)):
            raise self._not_found(order_id)
        until = lapses_at(fields)
        if until is not None and until <= now_ms:
            result = await self._scripts.expire(flight_id, order_id)
            if result.order is not None:
                return result.order
        return order_from_hash(fields)

    async def select_seats(self, order_id: str, token: str, seats: list[str], caller: Caller) -> Written:
        """Swap the selection for ``seats`` atomically: all held with one new deadline, or nothing.

        Raises ValidationFailed (seat ids), OrderNotFound, OrderClosed, PaymentInProgress,
        SeatsUnavailable, SubjectLimitReached (the subject's held seats), RateLimited, Idempotency*.
        """
        flight_id = await self.flight_of(order_id)
        self._check_selection(seats)
        keyed = self._keyed(caller, flight_id, "POST", f"/orders/{order_id}/seats", 200)

        async def run() -> Written:
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
                    result = await self._scripts.run(
                        "hold_seats", flight_id, order_id, hash_token(token), args, seats,
                        subject_key=caller.subject_key(flight_id), controls=self._controls,
                        keyed=keyed,
                    )
                except StaleLayout:
                    await self._flights.layout(flight_id, refresh=True)
                    continue
                except Refusal as refusal:
                    raise refusal_error(refusal, order_id) from None
                return self._written(result, 200, keyed)
            raise errors.Conflict("The flight's layout kept changing; try again.", {"flightId": flight_id})

        return await self._once(keyed, run)

    async def pay(self, order_id: str, token: str, code: str, caller: Caller) -> Written:
        """Start a payment submission: holds extended, state PAYING, one arq job enqueued (202).

        The code is checked for format and then dropped: the simulated gateway decides at random,
        so it is never logged, stored or put in the job (nor in the Idempotency-Key's fingerprint).
        """
        check_payment_code(code)
        flight_id = await self.flight_of(order_id)
        keyed = self._keyed(caller, flight_id, "POST", f"/orders/{order_id}/payment", 202)

        async def run() -> Written:
            payment_id = uuid.uuid4().hex
            window_ms = int(self._settings.payment_window_seconds * 1000)
            try:
                result = await self._scripts.run(
                    "begin_payment", flight_id, order_id, hash_token(token), [payment_id, window_ms],
                    subject_key=caller.subject_key(flight_id), controls=self._controls,
                    keyed=keyed,
                )
            except Refusal as refusal:
                raise refusal_error(refusal, order_id) from None
            written = self._written(result, 202, keyed)
            if not written.replayed:
                await self._enqueue_payment(flight_id, order_id, payment_id)
            return written

        return await self._once(keyed, run)

    async def cancel(self, order_id: str, token: str, caller: Caller) -> Written:
        """Cancel the order and release its seats at once.

        Raises OrderClosed (409 ``order_closed``) when the order is terminal, or when its time had
        run out: the order is then EXPIRED, as a read shows it (spec §11).
        """
        flight_id = await self.flight_of(order_id)
        keyed = self._keyed(caller, flight_id, "DELETE", f"/orders/{order_id}", 200)

        async def run() -> Written:
            try:
                result = await self._scripts.run(
                    "cancel_order", flight_id, order_id, hash_token(token),
                    subject_key=caller.subject_key(flight_id), controls=self._controls,
                    keyed=keyed,
                )
            except Refusal as refusal:
                raise refusal_error(refusal, order_id) from None
            return self._written(result, 200, keyed)

        return await self._once(keyed, run)

    # -- Idempotency-Key ----------------------------------------------------------------------

    def _keyed(self, caller: Caller, flight_id: str, method: str, path: str, status: int) -> KeyedRequest | None:
        if caller.idempotency_key is None:
            return None
        return idempotency.keyed_request(flight_id, str(caller.subject), method, path, caller.idempotency_key,
                                         caller.fingerprint, status)

    def _once(self, keyed: KeyedRequest | None, run: Callable[[], Awaitable[Written]]) -> Awaitable[Written]:
        """Run a write at most once per Idempotency-Key (see ``service.idempotency``); without a key, just run it
        (no extra coroutine on the hot path)."""
        return run() if keyed is None else self._once_keyed(keyed, run)

    async def _once_keyed(self, keyed: KeyedRequest, run: Callable[[], Awaitable[Written]]) -> Written:
        existing = await self._reads.claim_idempotency_key(keyed.record_key, idempotency.pending(keyed),
                                                           self._lease_ms)
        if existing is not None:
            record = idempotency.decode(existing)
            idempotency.check_existing(keyed, record)
            return self._replayed(record, keyed)
        try:
            return await run()
        except errors.SeatsError as error:
            answer = idempotency.answered_error(keyed, error) if idempotency.settle_on(error) else ""
            with contextlib.suppress(errors.StoreUnavailable):  # a claim not settled lapses with its lease
                await self._scripts.scripts.run("idempotency_settle", [keyed.record_key],
                                                [keyed.fingerprint, answer, self._idempotency_ms])
            raise

    def _written(self, result: ScriptResult, status: int, keyed: KeyedRequest | None) -> Written:
        if result.record is not None and keyed is not None:
            return self._replayed(result.record, keyed)
        return Written(self._expect_open(result), status, result.rate)

    @staticmethod
    def _replayed(record: Record, keyed: KeyedRequest) -> Written:
        if record.e is not None:
            raise idempotency.replay_error(record)
        assert record.o is not None
        token = idempotency.derive_token(record.k, keyed.key) if record.k else None
        return Written(decode_order(record.o), record.s, None, replayed=True, token=token)

    # -- reads and checks ---------------------------------------------------------------------

    async def token_matches(self, flight_id: str, order_id: str, token: str) -> bool:
        """Whether ``token`` belongs to the order (false for unknown orders)."""
        (stored,) = await self._reads.order_fields(flight_id, order_id, "tokenHash")
        return stored is not None and hmac.compare_digest(stored, hash_token(token))

    async def flight_of(self, order_id: str) -> str:
        """The order's flight (cached per process: an order never changes flight)."""
        cached = self._flight_of.get(order_id)
        if cached is not None:
            return cached
        if not 1 <= len(order_id) <= 64 or not set(order_id) <= ORDER_ID_ALPHABET:
            raise self._not_found(order_id)
        flight_id = await self._reads.flight_of_order(order_id)
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
        "FLIGHT_NOT_FOUND": errors.FlightNotFound(f"Flight {detail} does not exist.", {"flightId": detail}),
        "ORDER_EXISTS": errors.OrderExists(f"Order {order_id} already exists.", {"orderId": order_id}),
        "IDEMPOTENCY_REUSED": errors.IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different request body.", dict(idempotency.FIELD)
        ),
    }
    if code == "RATE_LIMITED":
        return limits.rate_limited(refusal)
    if code == "SUBJECT_LIMIT":
        return limits.subject_limit(refusal)
    if code in simple:
        return simple[code]
    # A code the scripts may answer but no client request can cause (KEYS_MISMATCH, a new code
    # mapped nowhere): the service's bug, never the client's, so 500 rather than a 4xx.
    return errors.InternalError(f"Unexpected refusal {code} from a script.", {"code": code})


def is_terminal(order: Order) -> bool:
    """Whether the order can no longer change: a terminal state with its payment settled (an order
    whose charge is being refunded, paymentStatus ``refunding``, still changes once more)."""
    return order.state in TERMINAL_STATES and order.payment_status != "refunding"
