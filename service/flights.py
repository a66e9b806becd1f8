"""Flights: the catalogue, seat layouts and the seat map (read in one Redis round trip)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import redis.asyncio as aioredis

from service import errors, keys
from service.models import (
    AdminSeatView,
    AvailableSeats,
    Flight,
    PutFlightRequest,
    SeatMap,
    SeatMapVersion,
    SeatView,
    iso_ms,
)
from service.scripts import Refusal, Scripts
from service.settings import Settings
from service.store import store_call

DEFAULT_FLIGHT = ("FL-001", 5, "ABCDEF")
FLIGHT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")  # fullmatch: `$` would let "F1\n" through
MAX_ROWS = 10_000
MAX_ROW_DIGITS = 5
MAX_CAPACITY = 100_000
BLOCKED_VALUE = "B|-"  # a blocked seat's Redis value (lua/_lib.lua BLOCKED): no order, no TTL


@dataclass(frozen=True, slots=True)
class Layout:
    """A flight's seat layout as validated at revision ``rev``."""

    flight_id: str
    rows: int
    columns: str
    rev: str
    created_at: int
    seat_ids: tuple[str, ...] = field(repr=False)
    seat_keys: tuple[str, ...] = field(repr=False)

    @classmethod
    def build(cls, flight_id: str, rows: int, columns: str, rev: str, created_at: int) -> Layout:
        """Derive seat ids (row-major: 1A, 1B, …) and their keys once per revision."""
        ids = tuple(f"{row}{col}" for row in range(1, rows + 1) for col in columns)
        return cls(flight_id, rows, columns, rev, created_at, ids, tuple(keys.seat(flight_id, s) for s in ids))

    def has_seat(self, seat_id: str) -> bool:
        """Whether ``seat_id`` names a seat of this layout: ASCII row digits without a leading zero
        (1..rows), then one of its column letters, nothing else; "1A\n" or "01A" would be other
        Redis keys for the same seat. String tests, not a regex: this runs for every seat of every hold."""
        row, column = seat_id[:-1], seat_id[-1:]
        return (
            0 < len(row) <= MAX_ROW_DIGITS and column != "" and column in self.columns
            and row.isascii() and row.isdigit() and row[0] != "0" and int(row) <= self.rows
        )

    def to_flight(self) -> Flight:
        """The catalogue entry."""
        return Flight(self.flight_id, self.rows, self.columns, self.rows * len(self.columns))


def check_flight_id(flight_id: str) -> None:
    """Flight ids become part of Redis keys: letters, digits, ``_`` and ``-`` only."""
    if not FLIGHT_ID_PATTERN.fullmatch(flight_id):
        shown = errors.echo(flight_id)
        raise errors.FlightNotFound(f"Flight {shown!r} does not exist.", {"flightId": shown})


def check_layout(body: PutFlightRequest) -> None:
    """Reject layouts the seat-id scheme cannot express."""
    columns = body.columns
    if not 1 <= body.rows <= MAX_ROWS:
        raise errors.ValidationFailed(f"rows must be between 1 and {MAX_ROWS}.", {"field": "rows"})
    if not columns or len(set(columns)) != len(columns) or not all("A" <= c <= "Z" for c in columns):
        raise errors.ValidationFailed(
            "columns must be distinct upper-case letters, e.g. 'ABCDEF'.", {"field": "columns"}
        )
    if body.rows * len(columns) > MAX_CAPACITY:
        raise errors.ValidationFailed(f"A flight holds at most {MAX_CAPACITY} seats.", {"field": "rows"})


@dataclass(slots=True)
class Snapshot:
    """One read of a flight's seats, cached until its version changes or a hold in it lapses."""

    layout: Layout
    version: int
    last_updated: int
    seats: dict[str, SeatView]
    owners: dict[str, str]
    hash: str
    valid_until: int
    _encoded: bytes | None = None
    _encoded_admin: bytes | None = None

    def encoded_public(self) -> bytes:
        """The map without ``mine`` marks, encoded once per snapshot (a 50k-seat map is large)."""
        if self._encoded is None:
            self._encoded = msgspec.json.encode(self.view(None))
        return self._encoded

    def encoded_admin(self) -> bytes:
        """The map with each held or sold seat's order (the admin console's stream), encoded once."""
        if self._encoded_admin is None:
            seats: dict[str, SeatView] = dict(self.seats)
            for seat_id, owner in self.owners.items():
                view = seats[seat_id]
                seats[seat_id] = AdminSeatView(view.status, view.expires_at, order_id=owner)
            self._encoded_admin = msgspec.json.encode(SeatMap(self.layout.flight_id, self.version, self.hash,
                                                              iso_ms(self.last_updated), seats))
        return self._encoded_admin

    def view(self, mine_order: str | None) -> SeatMap:
        """The seat map, with ``mine`` marks for ``mine_order``'s seats."""
        seats = self.seats
        if mine_order:
            seats = dict(seats)
            for seat_id, owner in self.owners.items():
                if owner == mine_order:
                    seats[seat_id] = msgspec.structs.replace(seats[seat_id], mine=True)
        return SeatMap(self.layout.flight_id, self.version, self.hash, iso_ms(self.last_updated), seats)

    def version_view(self) -> SeatMapVersion:
        """The cheap poll's answer."""
        return SeatMapVersion(self.layout.flight_id, self.version, self.hash, iso_ms(self.last_updated))

    def summary(self) -> AvailableSeats:
        """The first version's ``available-seats`` summary."""
        grouped: dict[str, list[str]] = {"available": [], "held": [], "confirmed": [], "blocked": []}
        for seat_id, view in self.seats.items():
            grouped[view.status].append(seat_id)
        return AvailableSeats(
            self.layout.flight_id, grouped["available"], grouped["held"], grouped["confirmed"], len(self.seats),
            grouped["blocked"],
        )


_AVAILABLE = SeatView("available")
_CONFIRMED = SeatView("confirmed")
_BLOCKED = SeatView("blocked")


def seat_fragment(seat_id: str, value: str) -> bytes:
    """One held or sold seat's part of the map's hash (its raw Redis value)."""
    return f"{seat_id}={value};".encode()


def hash_fragments(layout: Layout, fragments: Iterable[bytes]) -> str:
    """The map's hash: the fragments of its held, sold and blocked seats in layout order, then the layout
    revision. ``service.feeds`` recomputes it from change announcements with cached fragments,
    so this and :func:`seat_fragment` are its one definition."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"".join(fragments))
    digest.update(f"{layout.flight_id}|{layout.rev}".encode())
    return digest.hexdigest()


def content_hash(layout: Layout, owned: Iterable[tuple[str, str]]) -> str:
    """The map's hash from (seat id, raw value) pairs in layout order."""
    return hash_fragments(layout, (seat_fragment(seat_id, value) for seat_id, value in owned))


def build_snapshot(layout: Layout, meta: dict[str, str], values: list[str | None], now_ms: int) -> Snapshot:
    """Decode MGET results into a snapshot; a hold whose deadline passed reads as available.

    Values (lua/_lib.lua): ``H|<order>|<deadline ms>`` held, ``C|<order>`` sold, BLOCKED_VALUE blocked.
    """
    seats: dict[str, SeatView] = {}
    owners: dict[str, str] = {}
    owned: list[tuple[str, str]] = []
    valid_until = 2**62
    for seat_id, value in zip(layout.seat_ids, values, strict=True):
        view = _AVAILABLE
        if value is not None:
            kind, owner, *rest = value.split("|")
            if kind == "C":
                view, owners[seat_id] = _CONFIRMED, owner
            elif kind == "H" and int(rest[0]) > now_ms:
                deadline = int(rest[0])
                view, owners[seat_id] = SeatView("held", iso_ms(deadline)), owner
                valid_until = min(valid_until, deadline)
            elif kind == "B":
                view = _BLOCKED
            if view is not _AVAILABLE:
                owned.append((seat_id, value))
        seats[seat_id] = view
    version = int(meta.get("version", 0))
    return Snapshot(layout, version, int(meta["lastUpdated"]), seats, owners, content_hash(layout, owned), valid_until)


def redis_now_ms(time_reply: tuple[int, int]) -> int:
    """Milliseconds from a Redis ``TIME`` reply: the service's one clock."""
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


class RedisClock:
    """An upper bound on Redis's clock (``TIME``, the service's one clock) from the local one.

    Each ``TIME`` reply read by a request sent at local monotonic ``t`` was taken at or after ``t``,
    so ``reply - t`` bounds the offset from above; an announcement's ``u`` (Redis time when the
    change was made, before it reached us) bounds it from below and only ever raises the estimate.
    Over-estimating Redis's time is the safe side: the fast read path then gives up sooner.
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None  # Redis ms minus local monotonic ms

    @staticmethod
    def local_ms() -> float:
        """The local monotonic clock in ms."""
        return time.monotonic() * 1000.0

    def observe(self, redis_ms: int, sent_local_ms: float) -> None:
        """A ``TIME`` reply to a request sent at local ``sent_local_ms``."""
        self.offset = redis_ms - sent_local_ms

    def observe_at_least(self, redis_ms: int) -> None:
        """A Redis timestamp taken before now (e.g. an announcement's ``u``)."""
        if self.offset is not None:
            self.offset = max(self.offset, redis_ms - self.local_ms())

    def now_upper(self) -> float | None:
        """Redis's time now, rounded up to the safe side (None before any observation)."""
        return None if self.offset is None else self.local_ms() + self.offset


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the seat-map polls need at one version, from the in-process feed (no Redis)."""

    version: int
    hash: str
    last_updated: int
    valid_until: int  # the earliest deadline of a hold the hash still counts
    etag: str
    version_view: SeatMapVersion
    version_json: bytes  # version_view encoded once


class LiveSource(Protocol):
    """The process's event broker as the seat-map fast path sees it (``service.events``)."""

    def live_state(self, flight_id: str, min_version: int) -> LiveState | None:
        """The flight's current state when the feed can vouch for it, else None."""

    def touch(self, flight_id: str) -> None:
        """The flight is being read: keep (or start) a feed for it."""

    def reset(self, flight_id: str) -> None:
        """The flight's data was replaced without announcements the feed can rely on."""


class FlightStore:
    """Flights and seat maps, with per-process caches of layouts and encoded snapshots."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, settings: Settings) -> None:
        self._redis = client
        self._scripts = scripts
        self._settings = settings
        self._layouts: dict[str, Layout] = {}
        self._configured: dict[str, PutFlightRequest] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self.clock = RedisClock()
        self.live: LiveSource | None = None  # set by the event broker when it starts
        self._seen_version: dict[str, int] = {}  # highest flight version this process saw or wrote
        self._created: dict[str, str] = {}  # each flight's createdAt as last read (changes on re-creation)

    def note_version(self, flight_id: str, version: int) -> None:
        """This process wrote or read ``version`` of the flight: later fast answers must not be older."""
        if version > self._seen_version.get(flight_id, -1):
            self._seen_version[flight_id] = version

    def live_state(self, flight_id: str) -> LiveState | None:
        """The fast path: the flight's version and hash from the live feed, or None (ask Redis)."""
        live = self.live
        if live is None:
            return None
        return live.live_state(flight_id, self._seen_version.get(flight_id, 0))

    async def ensure_catalogue(self) -> None:
        """Create the default flight and those of ``SEATS_FLIGHTS`` when they are absent."""
        wanted = [DEFAULT_FLIGHT]
        if self._settings.flights_file:
            for entry in json.loads(Path(self._settings.flights_file).read_text(encoding="utf-8")):
                wanted.append((entry["flightId"], int(entry["rows"]), str(entry["columns"])))
        for flight_id, rows, columns in wanted:
            body = PutFlightRequest(rows=rows, columns=columns)
            check_flight_id(flight_id)
            check_layout(body)
            self._configured[flight_id] = body
            await self._put(flight_id, body, mode="ensure")

    async def _restore_if_configured(self, flight_id: str) -> bool:
        """Recreate a configured flight that Redis lost (a restart without persistence)."""
        body = self._configured.get(flight_id)
        if body is None:
            return False
        await self._put(flight_id, body, mode="ensure")
        return True

    async def put(self, flight_id: str, body: PutFlightRequest) -> tuple[Flight, bool]:
        """Create a flight or replace its layout; returns the flight and whether it was created."""
        check_flight_id(flight_id)
        check_layout(body)
        try:
            status = await self._put(flight_id, body, mode="put")
        except Refusal as refusal:
            raise errors.FlightInUse(
                f"Flight {flight_id} has held or sold seats; its layout cannot change.", {"flightId": flight_id}
            ) from refusal
        return (await self.layout(flight_id, refresh=True)).to_flight(), status == "CREATED"

    async def _put(self, flight_id: str, body: PutFlightRequest, mode: str) -> str:
        await store_call(self._redis.sadd(keys.CATALOG, flight_id))
        reply = await self._scripts.run(
            "put_flight",
            [keys.flight(flight_id), keys.changes(flight_id), keys.deadlines(flight_id)],
            [keys.events_channel(flight_id), self._settings.change_log_length, flight_id,
             body.rows, body.columns, body.rows * len(body.columns), mode],
        )
        self._layouts.pop(flight_id, None)
        status = str(reply[0])
        if status != "EXISTS":
            # A new flight (maybe after data loss) or a new layout: the feed must re-read it.
            self._seen_version.pop(flight_id, None)
            if self.live is not None:
                self.live.reset(flight_id)
        return status

    async def catalogue(self) -> list[Flight]:
        """Every flight, sorted by id."""
        flight_ids = sorted(await store_call(self._redis.smembers(keys.CATALOG)) | self._configured.keys())
        return [(await self.layout(f)).to_flight() for f in flight_ids]

    async def layout(self, flight_id: str, *, refresh: bool = False) -> Layout:
        """The flight's layout (cached; refreshed when a script reports a newer revision)."""
        check_flight_id(flight_id)
        cached = self._layouts.get(flight_id)
        if cached is not None and not refresh:
            return cached
        meta = await store_call(self._redis.hgetall(keys.flight(flight_id)))
        if not meta and await self._restore_if_configured(flight_id):
            meta = await store_call(self._redis.hgetall(keys.flight(flight_id)))
        if not meta:
            raise errors.FlightNotFound(f"Flight {flight_id} does not exist.", {"flightId": flight_id})
        layout = Layout.build(flight_id, int(meta["rows"]), meta["columns"], meta["layoutRev"], int(meta["createdAt"]))
        self._layouts[flight_id] = layout
        return layout

    async def snapshot(self, flight_id: str, mine: tuple[str, str] | None = None) -> tuple[Snapshot, bool]:
        """The current seat snapshot and whether ``mine`` = (order id, token hash) is valid.

        One round trip when the cached snapshot is current (same version, no hold lapsed since),
        two when the seats must be read again; never one per seat.
        """
        layout = await self.layout(flight_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hmget(keys.flight(flight_id), ["version", "layoutRev", "createdAt"])
        pipe.time()
        if mine:
            pipe.hget(keys.order(flight_id, mine[0]), "tokenHash")
        sent = self.clock.local_ms()
        replies: list[Any] = await store_call(pipe.execute())
        (version, rev, created_at), now = replies[0], redis_now_ms(replies[1])
        self.clock.observe(now, sent)
        mine_ok = bool(mine) and replies[2] is not None and _same(replies[2], mine[1] if mine else "")
        if version is None:
            if await self._restore_if_configured(flight_id):
                return await self.snapshot(flight_id, mine)
            raise errors.FlightNotFound(f"Flight {flight_id} does not exist.", {"flightId": flight_id})
        if self._created.get(flight_id, created_at) != created_at:
            # The flight was created again (Redis lost its data): versions start over.
            self._seen_version.pop(flight_id, None)
            if self.live is not None:
                self.live.reset(flight_id)
        self._created[flight_id] = created_at
        self.note_version(flight_id, int(version))
        if self.live is not None:
            self.live.touch(flight_id)
        cached = self._snapshots.get(flight_id)
        if cached and cached.layout.rev == rev and cached.version == int(version) and now < cached.valid_until:
            return cached, mine_ok
        return await self._read_seats(flight_id, layout if layout.rev == rev else None), mine_ok

    async def _read_seats(self, flight_id: str, layout: Layout | None) -> Snapshot:
        for _ in range(3):
            layout = layout or await self.layout(flight_id, refresh=True)
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(keys.flight(flight_id))
            pipe.mget(list(layout.seat_keys))
            pipe.time()
            replies: list[Any] = await store_call(pipe.execute())
            meta, values, time_reply = replies
            if meta.get("layoutRev") == layout.rev:
                snapshot = build_snapshot(layout, meta, values, redis_now_ms(time_reply))
                self._snapshots[flight_id] = snapshot
                return snapshot
            layout = None
        raise errors.StoreUnavailable("The flight's layout kept changing while it was read.")


def _same(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())
