"""A flight's seats mirrored in the process, and the frames each version is encoded into once.

The ``hash`` of each version is recomputed from the mirror with ``seatmap.hash_fragments``, the
function behind ``GET /flights/{id}/seats``'s hash, so the event and the seat map agree on it.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Final

import msgspec

from service.live.messages import SeatsMessage
from service.live.streams import event_id, sse_frame
from service.models import AdminSeatView, SeatMapVersion, SeatsEvent, SeatView, iso_ms
from service.seatmap import BLOCKED_VALUE, Layout, LiveState, Snapshot, build_snapshot, hash_fragments, seat_fragment

_encode: Final = msgspec.json.Encoder().encode


@functools.lru_cache(maxsize=1024)
def epoch_of(created_at: str, lineage: str) -> str:
    """A short name of (flight creation time, primary's replication id): 10 hex characters."""
    return hashlib.blake2b(f"{created_at}|{lineage}".encode(), digest_size=5).hexdigest()


# --- frames: encoded once, shared by every stream ------------------------------------------------


_AVAILABLE = SeatView("available")
_CONFIRMED = SeatView("confirmed")
_BLOCKED = SeatView("blocked")


@dataclass(slots=True, eq=False)
class SeatsFrame:
    """One version's ``seats`` event; ``owners`` (seat -> order) serves ``mine`` marks and the admin stream."""

    version: int
    id: str  # the SSE event id: <epoch>-<version>
    event: SeatsEvent
    owners: dict[str, str]
    public: bytes
    _mine: dict[str, bytes] = field(default_factory=dict)
    _admin: bytes | None = None

    def render_admin(self) -> bytes:
        """The bytes for the admin console: each held or sold seat with its order (encoded once)."""
        if self._admin is None:
            changes: dict[str, SeatView] = {
                seat: AdminSeatView(view.status, view.expires_at, order_id=self.owners[seat])
                if seat in self.owners else view
                for seat, view in self.event.changes.items()
            }
            event = msgspec.structs.replace(self.event, changes=changes)
            self._admin = sse_frame("seats", self.id, _encode(event))
        return self._admin

    def render(self, mine: str | None) -> bytes:
        """The bytes for a stream watching as order ``mine`` (encoded once per such order)."""
        if mine is None or mine not in self.owners.values():
            return self.public
        cached = self._mine.get(mine)
        if cached is None:
            changes = {
                seat: msgspec.structs.replace(view, mine=True) if self.owners.get(seat) == mine else view
                for seat, view in self.event.changes.items()
            }
            cached = sse_frame("seats", self.id, _encode(msgspec.structs.replace(self.event, changes=changes)))
            self._mine[mine] = cached
        return cached


@dataclass(slots=True, eq=False)
class SnapshotFrame:
    """The whole map at one version (first event of a stream, and after a resync)."""

    version: int
    id: str
    snapshot: Snapshot
    public: bytes

    def render(self, mine: str | None) -> bytes:
        """Public bytes, or the map with ``mine`` marks (once per stream that asks for them)."""
        if mine is None or mine not in self.snapshot.owners.values():
            return self.public
        return sse_frame("snapshot", self.id, _encode(self.snapshot.view(mine)))

    def render_admin(self) -> bytes:
        """The map with each held or sold seat's order, for the admin console."""
        return sse_frame("snapshot", self.id, self.snapshot.encoded_admin())


Frame = SeatsFrame | SnapshotFrame


# --- the mirror ----------------------------------------------------------------------------------


class UnknownSeat(Exception):
    """An announcement names a seat the mirror's layout lacks: the mirror must be re-read."""


@dataclass(slots=True, eq=False)
class OwnedSeat:
    """A held, sold or blocked seat: its raw Redis value, hold deadline (None unless held), hash fragment."""

    value: str
    deadline: int | None
    fragment: bytes


@dataclass(slots=True, eq=False)
class Mirror:
    """A flight's held, sold and blocked seats as of ``version``, kept ready for hashing.

    The map's hash covers every held, sold or blocked seat in layout order, so the mirror keeps their
    layout positions sorted and each seat's hash fragment cached: a version costs a join of
    fragments, not a sort and a format of every seat (a 100,000-seat map stays cheap).
    """

    layout: Layout
    created_at: str
    lineage: str  # the replication id of the primary the mirror was read from (store.reads.lineage)
    version: int
    last_updated: int
    as_of: int  # the Redis time the state holds for: holds whose deadline passed read as available
    positions: dict[str, int]
    owned: dict[int, OwnedSeat] = field(default_factory=dict)  # by layout position
    order: list[int] = field(default_factory=list)  # the keys of ``owned``, sorted
    _snapshot: SnapshotFrame | None = None
    _live: LiveState | None = None
    _hash: str | None = None

    @classmethod
    def read(cls, layout: Layout, meta: dict[str, str], raw: list[str | None], now_ms: int, lineage: str) -> Mirror:
        """Build from one atomic read of the flight hash and every seat key (from a primary of ``lineage``)."""
        positions = {seat_id: i for i, seat_id in enumerate(layout.seat_ids)}
        mirror = cls(layout, meta.get("createdAt", ""), lineage, int(meta.get("version", 0)),
                     int(meta["lastUpdated"]), now_ms, positions)
        for position, (seat_id, value) in enumerate(zip(layout.seat_ids, raw, strict=True)):
            if value is None:
                continue
            kind, _, rest = value.partition("|")
            deadline = int(rest.rpartition("|")[2]) if kind == "H" else None
            if kind in ("C", "B") or (deadline is not None and deadline > now_ms):
                mirror.owned[position] = OwnedSeat(value, deadline, seat_fragment(seat_id, value))
                mirror.order.append(position)
        return mirror

    @property
    def epoch(self) -> str:
        """The data's lifetime: the flight's creation and the primary's replication id (``event_id``)."""
        return epoch_of(self.created_at, self.lineage)

    def hash(self) -> str:
        """The seat map's hash at this version (what ``GET .../seats`` reports for it)."""
        if self._hash is None:
            now, owned = self.as_of, self.owned
            fragments = [seat.fragment for seat in map(owned.__getitem__, self.order)
                         if seat.deadline is None or seat.deadline > now]
            self._hash = hash_fragments(self.layout, fragments)
        return self._hash

    def live_state(self) -> LiveState:
        """Version, hash and lastUpdated for the seat-map polls, valid until the earliest deadline
        of a hold the hash counts (after it Redis would read that seat as available)."""
        if self._live is None:
            now = self.as_of
            deadlines = [seat.deadline for seat in self.owned.values()
                         if seat.deadline is not None and seat.deadline > now]
            digest = self.hash()
            view = SeatMapVersion(self.layout.flight_id, self.version, digest, iso_ms(self.last_updated))
            self._live = LiveState(self.version, digest, self.last_updated, min(deadlines, default=2**62),
                                   f'"{digest}"', view, _encode(view))
        return self._live

    def _set(self, seat_id: str, value: str | None, deadline: int | None) -> None:
        position = self.positions[seat_id]
        if value is None:
            if self.owned.pop(position, None) is not None:
                del self.order[bisect.bisect_left(self.order, position)]
            return
        if position not in self.owned:
            bisect.insort(self.order, position)
        self.owned[position] = OwnedSeat(value, deadline, seat_fragment(seat_id, value))

    def apply(self, message: SeatsMessage) -> SeatsFrame:
        """Apply the next version's changes; returns its frame (hash and bytes computed once)."""
        if any(seat not in self.positions for seat in message.c):
            raise UnknownSeat(f"flight {self.layout.flight_id} v{message.v}")
        changes: dict[str, SeatView] = {}
        owners: dict[str, str] = {}
        for seat, change in message.c.items():
            if change.status == "held" and change.o and change.expiresAt is not None:
                self._set(seat, f"H|{change.o}|{change.expiresAt}", change.expiresAt)
                changes[seat], owners[seat] = SeatView("held", iso_ms(change.expiresAt)), change.o
            elif change.status == "confirmed" and change.o:
                self._set(seat, f"C|{change.o}", None)
                changes[seat], owners[seat] = _CONFIRMED, change.o
            elif change.status == "blocked":
                self._set(seat, BLOCKED_VALUE, None)
                changes[seat] = _BLOCKED
            else:
                self._set(seat, None, None)
                changes[seat] = _AVAILABLE
        self.version, self.last_updated, self.as_of = message.v, message.u, max(self.as_of, message.u)
        self._snapshot = self._live = self._hash = None
        event = SeatsEvent(message.v, iso_ms(message.u), self.hash(), changes)
        frame_id = event_id(self.epoch, message.v)
        return SeatsFrame(message.v, frame_id, event, owners, sse_frame("seats", frame_id, _encode(event)))

    def snapshot_frame(self) -> SnapshotFrame:
        """The whole map at this version, built and encoded once per version."""
        if self._snapshot is None:
            meta = {"version": str(self.version), "lastUpdated": str(self.last_updated)}
            raw: list[str | None] = [None] * len(self.layout.seat_ids)
            for position, seat in self.owned.items():
                raw[position] = seat.value
            snapshot = build_snapshot(self.layout, meta, raw, self.as_of)
            frame_id = event_id(self.epoch, self.version)
            frame = sse_frame("snapshot", frame_id, snapshot.encoded_public())
            self._snapshot = SnapshotFrame(self.version, frame_id, snapshot, frame)
        return self._snapshot
