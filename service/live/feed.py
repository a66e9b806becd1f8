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
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from service import errors, metrics
from service.flights import FlightStore
from service.live.messages import FlightMessage, LayoutMessage, SeatsMessage, decode_message
from service.live.mirror import Frame, Mirror, SeatsFrame, SnapshotFrame, UnknownSeat
from service.live.streams import DirectBody, Heartbeat, Outbox, http_chunk
from service.seatmap import LiveState
from service.store import Store
from service.store.subscription import ChannelState

log = logging.getLogger("seats.events")

SYNC_ERRORS = (errors.StoreUnavailable, errors.FlightNotFound)
MAX_PENDING: Final = 100_000  # announcements buffered while syncing; beyond it, re-read the map
LIVE_MARGIN_MS: Final = 100  # the fast seat-map path gives up this long before a counted hold lapses
LAG_SECONDS: Final = 2.0  # a version Redis had and the feed still lacks this much later was lost
_DIRECT: Final = metrics.SSE_DELIVERIES.labels("direct")
_QUEUED: Final = metrics.SSE_DELIVERIES.labels("queued")


# --- the feed ------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class FlightWatcher:
    """One open flight stream: its outbox, its ``mine`` order (or ``admin``: every order) and where it
    resumes from."""

    flight_id: str
    outbox: Outbox[Frame]
    mine: str | None
    resume: tuple[str, int] | None  # Last-Event-ID as (epoch, version)
    ready: bool = False
    timer: asyncio.TimerHandle | None = None
    admin: bool = False
    direct: DirectBody | None = None  # the connection, when the server offers writing to it directly
    parked: bool = False  # the stream has written all it was given and waits on its empty outbox
    sent: int = -1  # the last version written to the stream

    plain: bool = field(init=False)  # every frame's public bytes: no ``mine`` marks, not the admin's

    def __post_init__(self) -> None:
        self.plain = self.mine is None and not self.admin

    def render(self, frame: Frame) -> bytes:
        """The frame's bytes for this stream (shared bytes unless it has ``mine`` marks or is the admin's)."""
        return frame.render_admin() if self.admin else frame.render(self.mine)

    def queue(self, item: Frame | Heartbeat) -> bool:
        """Put ``item`` in the outbox (``Outbox.push``); the stream writes it, and whatever comes after
        it, itself: no direct write may overtake it."""
        self.parked = False
        return self.outbox.push(item)

    def write_now(self, chunk: bytes) -> bool:
        """Write ``chunk`` (HTTP-framed) to the connection at once, when nothing is queued ahead of it:
        the stream is parked (it wrote all it was given and nothing was queued since) on an open
        outbox, and the connection takes bytes without waiting."""
        direct = self.direct
        return self.parked and direct is not None and not self.outbox.closed and direct.write(chunk)


class FlightFeed:
    """One flight's mirror, recent frames and watchers in this process."""

    def __init__(
        self,
        flight_id: str,
        *,
        store: Store,
        flights: FlightStore,
        subscription: ChannelState,
        ring_length: int,
        on_drop: Callable[[FlightWatcher], None],
        fanout_slice: int = 500,
    ) -> None:
        self.flight_id = flight_id
        self._store = store
        self._flights = flights
        self._subscription = subscription
        self.channel = subscription  # the flight's shard channel: its readiness and liveness
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
        self._slice = max(fanout_slice, 1)
        self._backlog: deque[tuple[Frame, list[FlightWatcher]]] = deque()  # frames waiting for their fan-out
        self._fanout: asyncio.Task[None] | None = None
        self.last_read = 0.0  # monotonic time of the last seat-map read that used or wanted this feed
        self.verified_at = 0.0  # monotonic send time of the last check that Redis agrees (verify())
        self.redis_version = -1  # the newest version Redis reported to a check: the fast path is never older
        self._lag_mark: tuple[int, float] | None = None  # a Redis version the mirror lacked, and when

    @property
    def live(self) -> bool:
        """Whether the feed applies announcements as they come (not syncing)."""
        return self._live and self._mirror is not None

    def live_state(self, redis_now_upper: float, min_version: int) -> LiveState | None:
        """The mirror's current state for the seat-map polls, or None when it cannot vouch for it:
        syncing, older than what this process already saw or than what Redis last reported to
        :meth:`verify` (announcements lost on a silent subscription), or a hold it counts is near its
        deadline."""
        mirror = self._mirror
        if not self._live or mirror is None or mirror.version < max(min_version, self.redis_version):
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
        self.redis_version = max(self.redis_version, version)
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
            watcher.queue(mirror.snapshot_frame())
        else:
            for frame in missed:
                watcher.queue(frame)
        watcher.ready = True

    def _missed_since(self, resume: tuple[str, int] | None, mirror: Mirror, limit: int) -> list[SeatsFrame] | None:
        """The frames after ``resume`` = (epoch, version), or None when they are not all retained, or
        belong to another epoch (the versions may have been handed out again: never deltas across it)."""
        if resume is None or resume[0] != mirror.epoch or resume[1] > mirror.version:
            return None
        version = resume[1]
        if version == mirror.version:
            return []
        if not self._ring or self._ring[0].version > version + 1 or mirror.version - version > limit:
            return None
        return [frame for frame in self._ring if frame.version > version]

    def _publish(self, frame: Frame) -> None:
        """Hand a frame to every started stream, in slices of ``fanout_slice`` streams per loop turn.

        A feed with few streams delivers at once. With more, the frame waits its turn in the
        backlog (frames keep their order) with the streams started by now, and each slice is
        delivered after the loop ran what else was ready: a hold's reply never waits for more than
        one slice, where it waited for the whole fan-out of its own change (issue 13).
        """
        if isinstance(frame, SeatsFrame):
            self._ring.append(frame)
        if not self._backlog and len(self.watchers) <= self._slice:
            self._deliver(frame, self.watchers)
            return
        self._backlog.append((frame, [watcher for watcher in self.watchers if watcher.ready]))
        if self._fanout is None or self._fanout.done():
            self._fanout = asyncio.create_task(self._fan_out(), name=f"fan-out {self.flight_id}")

    async def _fan_out(self) -> None:
        try:
            while self._backlog:
                frame, watchers = self._backlog[0]
                for start in range(0, len(watchers), self._slice):
                    await asyncio.sleep(0)  # what else is ready (a request, a reply from Redis) runs first
                    self._deliver(frame, watchers[start:start + self._slice])
                self._backlog.popleft()
        except Exception:  # a bug here must not leave the backlog stuck: streams get a fresh snapshot
            log.exception("flight fan-out failed; re-reading the map", extra={"flight": self.flight_id})
            self._backlog.clear()
            self.resync(full=True)

    def _deliver(self, frame: Frame, watchers: Iterable[FlightWatcher]) -> None:
        """Hand ``frame`` to ``watchers``; a stream whose outbox overflows is dropped.

        A stream that is caught up gets the frame's bytes written to its connection here and now
        (framed once for all of them): no task wakes up, no ASGI message is built. The others (a
        stream still writing, a slow connection, a server without direct writes) get it queued.
        """
        public, version, fresh = frame.public, frame.version, isinstance(frame, SnapshotFrame)
        shared = http_chunk(public)
        dropped = []
        direct = queued = 0
        for watcher in watchers:
            if not watcher.ready:
                continue
            if watcher.parked and (fresh or version > watcher.sent):
                data = public if watcher.plain else watcher.render(frame)
                if watcher.write_now(shared if data is public else http_chunk(data)):
                    watcher.sent = version
                    direct += 1
                    continue
            queued += 1
            if not watcher.queue(frame):
                dropped.append(watcher)
        _DIRECT.inc(direct)
        _QUEUED.inc(queued)
        for watcher in dropped:
            if watcher in self.watchers:
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
        """Stop syncing and fanning out (the broker stops or evicts this feed)."""
        for task in (self._sync_task, self._fanout):
            if task is not None:
                task.cancel()

    async def _sync(self) -> None:
        attempt = 0
        while True:
            if attempt:
                await asyncio.sleep(min(0.025 * 2**attempt, 2.0))  # 50 ms, 100 ms, … 2 s: never a hot loop
            attempt += 1
            await self._subscription.ready.wait()
            generation = self._subscription.generation
            try:
                lineage = await self._store.reads.lineage(self.flight_id)
                mirror = self._mirror
                same_lineage = mirror is not None and mirror.lineage == lineage
                caught_up = not self._full_needed and same_lineage and await self._catch_up()
                if not caught_up:
                    await self._read_full(lineage)
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
        head, logged = await self._store.reads.changes_since(self.flight_id, mirror.version)
        version = head.version
        if version is None:
            raise errors.FlightNotFound(f"Flight {self.flight_id} does not exist.")
        if head.layout_rev != mirror.layout.rev or head.created_at != mirror.created_at or version < mirror.version:
            return False
        self._forget_stale(arrived, version)
        messages: list[SeatsMessage] = []
        for data in logged:
            message = decode_message(data)
            if not isinstance(message, SeatsMessage) or message.v != mirror.version + 1 + len(messages):
                return False
            messages.append(message)
        expected = mirror.version + 1 + len(messages)
        if expected <= version:
            return False
        try:
            for message in messages:
                self._publish(mirror.apply(message))
        except UnknownSeat:
            return False
        log.info("flight feed caught up", extra={"flight": self.flight_id, "changes": len(messages)})
        return True

    async def _read_full(self, lineage: str) -> None:
        """Read the whole map in one transaction; started streams get it as a ``snapshot``."""
        for _ in range(3):
            layout = await self._flights.layout(self.flight_id, refresh=True)
            arrived = self._arrivals
            sent = self._flights.clock.local_ms()
            meta, raw, now_ms = await self._store.reads.seats(self.flight_id, layout.seat_keys)
            self._flights.clock.observe(now_ms, sent)
            if not meta:
                raise errors.FlightNotFound(f"Flight {self.flight_id} does not exist.")
            if meta.get("layoutRev") != layout.rev:
                continue
            self._mirror = mirror = Mirror.read(layout, meta, raw, now_ms, lineage)
            self.redis_version = mirror.version  # what Redis reported of the data before this read is void
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

