"""One flight's live feed in an API process: a mirror of its seats kept in step with the change
announcements, the frames it encodes once per version, and the streams that watch it.

The protocol, step by step:

1. Every seat change is announced by the Lua script that makes it: ``PUBLISH`` on the flight's
   channel and ``XADD`` to its capped change log, with the new flight version ``v``.
2. The process's one pattern subscription (``service.events``) hands each announcement to the
   flight's feed, *in version order*: a feed applies ``v`` only on top of ``v - 1``.
3. A feed starts, and restarts after anything it cannot trust (a gap in versions, a lost
   subscription, a layout change, lost data), in the *syncing* state: it buffers announcements,
   reads the missed ones from the change log (or, when they are no longer there, the whole map),
   drops what its read already covered, and goes *live*. No gap, no duplicate.
4. Streams attach to a live feed synchronously: they start from its current version (a snapshot,
   or the recent frames they missed when they resume with ``Last-Event-ID``) and then receive
   every frame after it.

The ``hash`` of each version is recomputed from the mirror with ``flights.hash_fragments``, the
function behind ``GET /flights/{id}/seats``'s hash, so the event and the seat map agree on it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service import errors, keys
from service.fanout import Outbox, sse_frame
from service.flights import (
    BLOCKED_VALUE,
    FlightStore,
    Layout,
    LiveState,
    Snapshot,
    build_snapshot,
    hash_fragments,
    redis_now_ms,
    seat_fragment,
)
from service.models import AdminSeatView, SeatMapVersion, SeatsEvent, SeatStatus, SeatView, iso_ms
from service.store import store_call

log = logging.getLogger("seats.events")

SYNC_ERRORS = (errors.StoreUnavailable, errors.FlightNotFound, RedisError, OSError)
MAX_PENDING: Final = 100_000  # announcements buffered while syncing; beyond it, re-read the map
LIVE_MARGIN_MS: Final = 100  # the fast seat-map path gives up this long before a counted hold lapses
LAG_SECONDS: Final = 2.0  # a version Redis had and the feed still lacks this much later was lost


# --- the announcements, as the Lua scripts publish them -----------------------------------------


class SeatChange(msgspec.Struct):
    """One seat in an announcement; ``o`` (the owning order) is internal and never sent as is."""

    status: SeatStatus
    expiresAt: int | None = None  # the Lua payload's own (camelCase) field name
    o: str | None = None


class SeatsMessage(msgspec.Struct, tag="seats", tag_field="t"):
    """Seats changed: flight ``f`` is now at version ``v`` (``u`` = lastUpdated, ms)."""

    f: str
    v: int
    u: int
    c: dict[str, SeatChange]


class LayoutMessage(msgspec.Struct, tag="layout", tag_field="t"):
    """The flight's layout was replaced: only a fresh read of the map can follow it."""

    f: str
    v: int
    u: int


class OrderMessage(msgspec.Struct, tag="order", tag_field="t"):
    """Order ``o`` changed to version ``v``; ``d`` is its public hash fields as a flat list."""

    f: str
    o: str
    v: int
    d: list[str] = msgspec.field(default_factory=list)


FlightMessage = SeatsMessage | LayoutMessage
Announcement = SeatsMessage | LayoutMessage | OrderMessage
_decoder: Final = msgspec.json.Decoder(Announcement)


def decode_message(data: bytes | str) -> Announcement:
    """Decode one announcement (from pub/sub or the change log)."""
    message: Announcement = _decoder.decode(data)
    return message
_encode: Final = msgspec.json.Encoder().encode


# --- frames: encoded once, shared by every stream ------------------------------------------------


_AVAILABLE = SeatView("available")
_CONFIRMED = SeatView("confirmed")
_BLOCKED = SeatView("blocked")


@dataclass(slots=True, eq=False)
class SeatsFrame:
    """One version's ``seats`` event; ``owners`` (seat -> order) serves ``mine`` marks and the admin stream."""

    version: int
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
            self._admin = sse_frame("seats", self.version, _encode(event))
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
            cached = sse_frame("seats", self.version, _encode(msgspec.structs.replace(self.event, changes=changes)))
            self._mine[mine] = cached
        return cached


@dataclass(slots=True, eq=False)
class SnapshotFrame:
    """The whole map at one version (first event of a stream, and after a resync)."""

    version: int
    snapshot: Snapshot
    public: bytes

    def render(self, mine: str | None) -> bytes:
        """Public bytes, or the map with ``mine`` marks (once per stream that asks for them)."""
        if mine is None or mine not in self.snapshot.owners.values():
            return self.public
        return sse_frame("snapshot", self.version, _encode(self.snapshot.view(mine)))

    def render_admin(self) -> bytes:
        """The map with each held or sold seat's order, for the admin console."""
        return sse_frame("snapshot", self.version, self.snapshot.encoded_admin())


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
    def read(cls, layout: Layout, meta: dict[str, str], raw: list[str | None], now_ms: int) -> Mirror:
        """Build from one atomic read of the flight hash and every seat key."""
        positions = {seat_id: i for i, seat_id in enumerate(layout.seat_ids)}
        mirror = cls(layout, meta.get("createdAt", ""), int(meta.get("version", 0)), int(meta["lastUpdated"]),
                     now_ms, positions)
        for position, (seat_id, value) in enumerate(zip(layout.seat_ids, raw, strict=True)):
            if value is None:
                continue
            kind, _, rest = value.partition("|")
            deadline = int(rest.rpartition("|")[2]) if kind == "H" else None
            if kind in ("C", "B") or (deadline is not None and deadline > now_ms):
                mirror.owned[position] = OwnedSeat(value, deadline, seat_fragment(seat_id, value))
                mirror.order.append(position)
        return mirror

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
        return SeatsFrame(message.v, event, owners, sse_frame("seats", message.v, _encode(event)))

    def snapshot_frame(self) -> SnapshotFrame:
        """The whole map at this version, built and encoded once per version."""
        if self._snapshot is None:
            meta = {"version": str(self.version), "lastUpdated": str(self.last_updated)}
            raw: list[str | None] = [None] * len(self.layout.seat_ids)
            for position, seat in self.owned.items():
                raw[position] = seat.value
            snapshot = build_snapshot(self.layout, meta, raw, self.as_of)
            frame = sse_frame("snapshot", self.version, snapshot.encoded_public())
            self._snapshot = SnapshotFrame(self.version, snapshot, frame)
        return self._snapshot


# --- the feed ------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class FlightWatcher:
    """One open flight stream: its outbox, its ``mine`` order (or ``admin``: every order) and where it
    resumes from."""

    flight_id: str
    outbox: Outbox[Frame]
    mine: str | None
    resume: int | None
    ready: bool = False
    timer: asyncio.TimerHandle | None = None
    admin: bool = False


class SubscriptionState:
    """Whether the process's pattern subscription is up, and how many times it (re)started."""

    def __init__(self) -> None:
        self.generation = 0
        self.ready = asyncio.Event()
        self.last_heard = 0.0  # monotonic time the subscription last received anything


class FlightFeed:
    """One flight's mirror, recent frames and watchers in this process."""

    def __init__(
        self,
        flight_id: str,
        *,
        redis: aioredis.Redis,
        flights: FlightStore,
        subscription: SubscriptionState,
        ring_length: int,
        on_drop: Callable[[FlightWatcher], None],
    ) -> None:
        self.flight_id = flight_id
        self._redis = redis
        self._flights = flights
        self._subscription = subscription
        self._on_drop = on_drop
        self.watchers: set[FlightWatcher] = set()
        self.idle_since: float | None = None
        self._mirror: Mirror | None = None
        self._live = False
        self._full_needed = True
        self._pending: list[tuple[int, FlightMessage]] = []  # (arrival number, announcement)
        self._arrivals = 0
        self._ring: deque[SeatsFrame] = deque(maxlen=max(ring_length, 1))
        self._sync_task: asyncio.Task[None] | None = None
        self.last_read = 0.0  # monotonic time of the last seat-map read that used or wanted this feed
        self.verified_at = 0.0  # monotonic send time of the last check that Redis agrees (verify())
        self._lag_mark: tuple[int, float] | None = None  # a Redis version the mirror lacked, and when

    @property
    def live(self) -> bool:
        """Whether the feed applies announcements as they come (not syncing)."""
        return self._live and self._mirror is not None

    def live_state(self, redis_now_upper: float, min_version: int) -> LiveState | None:
        """The mirror's current state for the seat-map polls, or None when it cannot vouch for it:
        syncing, older than what this process already saw, or a hold it counts is near its deadline."""
        mirror = self._mirror
        if not self._live or mirror is None or mirror.version < min_version:
            return None
        state = mirror.live_state()
        if redis_now_upper + LIVE_MARGIN_MS >= state.valid_until:
            return None
        return state

    def verify(self, version: int | None, rev: str | None, created_at: str | None, sent_at: float) -> None:
        """Compare the mirror with the flight hash read at ``sent_at``: resync when the data was reset
        or replaced (the flight is gone, or has another layout revision or creation time), or when
        the mirror has not reached, LAG_SECONDS later, a version Redis had (an announcement was lost).
        A version below the mirror's is no alarm: announcements may overtake the check's reply."""
        mirror = self._mirror
        if not self._live or mirror is None:
            return
        if version is None or rev != mirror.layout.rev or created_at != mirror.created_at:
            self._lag_mark = None
            self.resync(full=True)
            return
        if self._lag_mark is not None and mirror.version >= self._lag_mark[0]:
            self._lag_mark = None
        if self._lag_mark is not None and sent_at - self._lag_mark[1] > LAG_SECONDS:
            self._lag_mark = None
            self.resync()  # catches up from the change log
            return
        if self._lag_mark is None and version > mirror.version:
            self._lag_mark = (version, sent_at)
        self.verified_at = sent_at

    @property
    def version(self) -> int | None:
        """The mirror's version (None before the first read)."""
        return self._mirror.version if self._mirror else None

    # -- watchers ----------------------------------------------------------------------------

    def attach(self, watcher: FlightWatcher) -> None:
        """Add a stream; it starts at once when the feed is live, else when the sync ends."""
        self.watchers.add(watcher)
        self.idle_since = None
        if self._live:
            self._start(watcher)
        else:
            self.resync()

    def detach(self, watcher: FlightWatcher, now: float) -> None:
        """Remove a stream (idempotent)."""
        self.watchers.discard(watcher)
        if not self.watchers and self.idle_since is None:
            self.idle_since = now

    def _start(self, watcher: FlightWatcher) -> None:
        """First frames of a stream: what it missed since ``Last-Event-ID``, or a snapshot."""
        mirror = self._mirror
        assert mirror is not None
        missed = self._missed_since(watcher.resume, mirror, limit=watcher.outbox.limit // 2)
        if missed is None:
            watcher.outbox.push(mirror.snapshot_frame())
        else:
            for frame in missed:
                watcher.outbox.push(frame)
        watcher.ready = True

    def _missed_since(self, resume: int | None, mirror: Mirror, limit: int) -> list[SeatsFrame] | None:
        """The frames after version ``resume``, or None when they are not all retained."""
        if resume is None or resume > mirror.version:
            return None
        if resume == mirror.version:
            return []
        if not self._ring or self._ring[0].version > resume + 1 or mirror.version - resume > limit:
            return None
        return [frame for frame in self._ring if frame.version > resume]

    def _publish(self, frame: Frame) -> None:
        """Hand a frame to every started stream; a stream whose outbox overflows is dropped."""
        if isinstance(frame, SeatsFrame):
            self._ring.append(frame)
        dropped = [w for w in self.watchers if w.ready and not w.outbox.push(frame)]
        for watcher in dropped:
            self.watchers.discard(watcher)
            self._on_drop(watcher)

    # -- announcements -----------------------------------------------------------------------

    def on_message(self, message: FlightMessage) -> None:
        """Apply one live announcement, or buffer it while syncing."""
        self._flights.clock.observe_at_least(message.u)
        mirror = self._mirror
        if not self._live or mirror is None:
            self._buffer(message)
            return
        if isinstance(message, LayoutMessage):
            self._full_needed = True
        elif message.v <= mirror.version:
            if message.u <= mirror.last_updated:
                return  # covered by the read that started this live period
            self._full_needed = True  # a lower version that is newer: the data was reset
        elif message.v == mirror.version + 1:
            try:
                self._publish(mirror.apply(message))
            except UnknownSeat:
                self._full_needed = True
            else:
                return
        self._buffer(message)
        self.resync()

    def _buffer(self, message: FlightMessage) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()
            self._full_needed = True
        self._arrivals += 1
        self._pending.append((self._arrivals, message))

    def _forget_stale(self, arrived_before: int, version: int) -> None:
        """Drop buffered announcements that arrived before a read yet claim a newer version than
        it saw: they belong to data that was since reset (e.g. FLUSHALL), never to this one."""
        self._pending = [(n, m) for n, m in self._pending if n > arrived_before or m.v <= version]

    # -- syncing -----------------------------------------------------------------------------

    def resync(self, *, resubscribed: bool = False, full: bool = False) -> None:
        """Leave the live state and catch up (from the change log, else a full read)."""
        self._live = False
        self._full_needed = self._full_needed or full
        if resubscribed:
            # Announcements of the previous subscription are all older than the reads to come.
            self._pending.clear()
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._sync(), name=f"sync {self.flight_id}")

    def close(self) -> None:
        """Stop syncing (the broker stops or evicts this feed)."""
        if self._sync_task is not None:
            self._sync_task.cancel()

    async def _sync(self) -> None:
        attempt = 0
        while True:
            if attempt:
                await asyncio.sleep(min(0.025 * 2**attempt, 2.0))  # 50 ms, 100 ms, … 2 s: never a hot loop
            attempt += 1
            await self._subscription.ready.wait()
            generation = self._subscription.generation
            try:
                caught_up = not self._full_needed and self._mirror is not None and await self._catch_up()
                if not caught_up:
                    await self._read_full()
            except SYNC_ERRORS as exc:
                log.warning("flight feed sync failed, retrying", extra={"flight": self.flight_id, "error": str(exc)})
                continue
            except Exception:  # a feed that stops syncing would leave its streams mute
                log.exception("flight feed sync failed; re-reading the whole map", extra={"flight": self.flight_id})
                self._full_needed = True
                continue
            if generation != self._subscription.generation or not self._subscription.ready.is_set():
                attempt = 0  # resubscribed during the read: read again after the new subscription
                continue
            if self._go_live():
                return

    async def _catch_up(self) -> bool:
        """Apply the announcements missed since the mirror's version from the change log.

        False when they are not all there (trimmed, another layout, the data was reset).
        """
        mirror = self._mirror
        assert mirror is not None
        arrived = self._arrivals
        pipe = self._redis.pipeline(transaction=True)
        pipe.hmget(keys.flight(self.flight_id), ["version", "layoutRev", "createdAt"])
        pipe.xrange(keys.changes(self.flight_id), min=f"{mirror.version + 1}-0", max="+")
        replies: list[Any] = await store_call(pipe.execute())
        (version, rev, created_at), entries = replies
        if version is None:
            raise errors.FlightNotFound(f"Flight {self.flight_id} does not exist.")
        if rev != mirror.layout.rev or created_at != mirror.created_at or int(version) < mirror.version:
            return False
        self._forget_stale(arrived, int(version))
        messages: list[SeatsMessage] = []
        for _, fields in entries:
            message = decode_message(fields["d"])
            if not isinstance(message, SeatsMessage) or message.v != mirror.version + 1 + len(messages):
                return False
            messages.append(message)
        expected = mirror.version + 1 + len(messages)
        if expected <= int(version):
            return False
        try:
            for message in messages:
                self._publish(mirror.apply(message))
        except UnknownSeat:
            return False
        log.info("flight feed caught up", extra={"flight": self.flight_id, "changes": len(messages)})
        return True

    async def _read_full(self) -> None:
        """Read the whole map in one transaction; started streams get it as a ``snapshot``."""
        for _ in range(3):
            layout = await self._flights.layout(self.flight_id, refresh=True)
            arrived = self._arrivals
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(keys.flight(self.flight_id))
            pipe.mget(list(layout.seat_keys))
            pipe.time()
            sent = self._flights.clock.local_ms()
            replies: list[Any] = await store_call(pipe.execute())
            meta, raw, time_reply = replies
            self._flights.clock.observe(redis_now_ms(time_reply), sent)
            if not meta:
                raise errors.FlightNotFound(f"Flight {self.flight_id} does not exist.")
            if meta.get("layoutRev") != layout.rev:
                continue
            self._mirror = mirror = Mirror.read(layout, meta, raw, redis_now_ms(time_reply))
            self._forget_stale(arrived, mirror.version)
            self._full_needed = False
            self._ring.clear()  # versions before a reset may be reused: never resume across one
            self._publish(mirror.snapshot_frame())
            return
        raise errors.StoreUnavailable("The flight's layout kept changing while it was read.")

    def _go_live(self) -> bool:
        """Apply the buffered announcements and start waiting streams; False to sync again."""
        mirror = self._mirror
        assert mirror is not None
        self._pending.sort(key=lambda pending: pending[1].v)
        for index, (_, message) in enumerate(self._pending):
            if message.v <= mirror.version:
                continue
            if isinstance(message, LayoutMessage) or message.v != mirror.version + 1:
                self._full_needed = self._full_needed or isinstance(message, LayoutMessage)
                del self._pending[:index]
                return False
            try:
                self._publish(mirror.apply(message))
            except UnknownSeat:
                self._full_needed = True
                del self._pending[: index + 1]
                return False
        self._pending.clear()
        self._live = True
        for watcher in [w for w in self.watchers if not w.ready]:
            self._start(watcher)
        return True

