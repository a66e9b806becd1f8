"""A flight's seat map: its layout, one read of its seats (``Snapshot``) and the map's content hash.

Reads (``service.flights``) and the live feeds (``service.live``) both build the map from here, so
``GET /flights/{id}/seats`` and the SSE streams agree on every seat and every hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from service.models import AdminSeatView, AvailableSeats, Flight, SeatMap, SeatMapVersion, SeatView, iso_ms
from service.store import keys

MAX_ROW_DIGITS = 5
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
