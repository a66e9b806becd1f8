"""Live updates: each API process subscribes to the shard channel of every flight someone in it
watches (``store.subscription``) and fans the announcements out to its SSE streams.

Redis pub/sub is at-most-once, so a subscription is never trusted blindly: flight feeds
(``live.feed``) check every announcement's version and catch up from the change log after a gap,
and whenever a channel is (re)confirmed (a Redis restart, a failover, a slot moved, ``CLIENT KILL
TYPE pubsub``, a silent socket) its feed and its order streams resynchronise. Each message is
decoded and encoded once per process; streams only pick bytes from a bounded outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from litestar import Litestar

from service import errors, metrics
from service.flights import FlightStore
from service.live.feed import FlightFeed, FlightWatcher
from service.live.messages import OrderMessage, decode_message
from service.live.mirror import Frame, SnapshotFrame
from service.live.streams import (
    HEARTBEAT,
    HEARTBEAT_BYTES,
    HEARTBEAT_CHUNK,
    DirectBody,
    Heartbeat,
    Outbox,
    parse_event_id,
    retry_frame,
    sse_frame,
)
from service.models import Order
from service.orders import OrderStore, decode_order, is_terminal
from service.seatmap import LiveState
from service.settings import Settings
from service.store import Store, keys
from service.store.subscription import PING_SECONDS, Subscriber

log = logging.getLogger("seats.events")

RESYNC: Final = -1  # an order outbox item: re-read the order whatever its version
OrderUpdate = int | Order  # a version to read, or the order as announced
OnClose = Callable[[], None]  # called once when a stream ends (e.g. to give back its place in a cap)
SUBSCRIBE_WAIT_SECONDS: Final = 2.0  # an order stream waits this long for its flight's channel before reading
FEED_IDLE_SECONDS: Final = 300.0  # a feed outlives its last stream this long (reconnects resume)
BURST_FRAMES: Final = 64  # frames a stream joins into one write when it fell behind
# The seat-map fast path (answers from a live feed, no Redis round trip):
VERIFY_SECONDS: Final = 0.5  # each live feed's version is checked against Redis this often
VERIFIED_WITHIN: Final = 2.0  # a feed not confirmed by Redis this recently is not trusted
HEARD_WITHIN: Final = PING_SECONDS + 3.0  # nor one whose connection is silent this long (pinged at 5 s)
READ_FEED_IDLE_SECONDS: Final = 60.0  # a feed kept for reads (no stream) ends after this long unread
MAX_FEEDS_FOR_READS: Final = 64  # reads start no feed while this many exist (a mirror of a 100k-seat
# flight holds ~10 MB: the bound keeps the memory of read-only feeds small)
_encode: Final = msgspec.json.Encoder().encode
_FLIGHT_STREAMS: Final = metrics.SSE_SUBSCRIBERS.labels("flight")  # open streams, moved by the generators
_ORDER_STREAMS: Final = metrics.SSE_SUBSCRIBERS.labels("order")


@dataclass(slots=True)
class BrokerStats:
    """Counters for logs, tests and the benchmark."""

    subscriptions: int = 0  # successful (re)subscriptions
    dropped: int = 0  # slow streams dropped
    messages: int = 0  # announcements received


class EventBroker:
    """Owns the subscription, the flight feeds and the order watchers of one API process."""

    def __init__(self, settings: Settings, store: Store, flights: FlightStore, orders: OrderStore) -> None:
        self._settings = settings
        self._store = store
        self._flights = flights
        self._orders = orders
        self._subscriber = Subscriber(store.transport, self._dispatch, self._subscribed)
        self._feeds: dict[str, FlightFeed] = {}
        self._order_watchers: dict[str, set[Outbox[OrderUpdate]]] = {}
        self._order_flights: dict[str, str] = {}  # order id -> its flight, while watched
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.stats = BrokerStats()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start subscribing (in the background: the API serves even while Redis is away)."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._subscriber.run_forever(), name="events subscriber"),
            asyncio.create_task(self._tick(), name="events heartbeat"),
            asyncio.create_task(self._verify_forever(), name="events verifier"),
        ]
        self._flights.live = self

    async def stop(self) -> None:
        """End every stream and stop the background work."""
        self._flights.live = None
        self.drain()
        for feed in self._feeds.values():
            feed.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subscriber.close()

    def drain(self) -> None:
        """End every open stream now (after what is queued) and refuse new ones: SIGTERM's step,
        so uvicorn's graceful shutdown is not held up by clients that would stream forever."""
        self._draining = True
        for feed in self._feeds.values():
            for watcher in feed.watchers:
                watcher.outbox.close()
        for outboxes in self._order_watchers.values():
            for outbox in outboxes:
                outbox.close()

    @property
    def subscribed(self) -> bool:
        """Whether every channel someone here needs is subscribed on a live connection."""
        return self._subscriber.healthy

    @property
    def subscriber(self) -> Subscriber:
        """The process's sharded subscriptions (tests, readiness)."""
        return self._subscriber

    @property
    def open_streams(self) -> int:
        """Flight and order streams currently attached."""
        flights = sum(len(feed.watchers) for feed in self._feeds.values())
        return flights + sum(len(outboxes) for outboxes in self._order_watchers.values())

    # -- the seat-map fast path -------------------------------------------------------------

    def live_state(self, flight_id: str, min_version: int) -> LiveState | None:
        """The flight's version and hash from its feed, when it can vouch for them: the subscription
        is up and was heard lately, the feed is live and was confirmed by Redis lately, it is not
        older than what this process wrote or read, and no hold its hash counts is near its deadline."""
        feed = self._feeds.get(flight_id)
        if feed is None:
            return None
        channel = feed.channel
        now = time.monotonic()
        feed.last_read = now
        redis_now = self._flights.clock.now_upper()
        if (
            redis_now is None
            or not channel.ready.is_set()
            or now - channel.last_heard > HEARD_WITHIN
            or now - feed.verified_at > VERIFIED_WITHIN
        ):
            return None
        return feed.live_state(redis_now, min_version)

    def touch(self, flight_id: str) -> None:
        """A seat-map read went to Redis: keep a feed for the flight so the next ones need not.

        Feeds cost one decode and hash per change of the flight; a polled flight is read far more
        often than it changes, so this pays off; it is bounded (MAX_FEEDS_FOR_READS) and ends when
        nobody read it for READ_FEED_IDLE_SECONDS (and no stream watches it).
        """
        feed = self._feeds.get(flight_id)
        if feed is None:
            if self._draining or len(self._feeds) >= MAX_FEEDS_FOR_READS:
                return
            feed = self._new_feed(flight_id)
            feed.resync()
        feed.last_read = time.monotonic()

    def reset(self, flight_id: str) -> None:
        """The flight was (re)created or its layout replaced: its feed re-reads the whole map."""
        feed = self._feeds.get(flight_id)
        if feed is not None:
            feed.verified_at = 0.0
            feed.resync(full=True)

    async def _verify_forever(self) -> None:
        """Check every live feed against Redis (and Redis's clock) every VERIFY_SECONDS."""
        while True:
            await asyncio.sleep(VERIFY_SECONDS)
            feeds = [feed for feed in self._feeds.values() if feed.live and feed.channel.ready.is_set()]
            if not feeds:
                continue
            sent_ms = self._flights.clock.local_ms()
            sent = time.monotonic()
            try:
                heads = await self._store.reads.flight_heads([feed.flight_id for feed in feeds])
            except errors.StoreUnavailable as exc:
                log.debug("feed verification failed", extra={"error": str(exc)})
                continue
            self._flights.clock.observe(min(head.now_ms for head in heads), sent_ms)
            for feed, head in zip(feeds, heads, strict=True):
                feed.verify(head.version, head.layout_rev, head.created_at, sent)

    # -- flight streams -----------------------------------------------------------------------

    def open_flight(self, flight_id: str, mine: str | None, last_event_id: str | None, *,
                    admin: bool = False, direct: DirectBody | None = None) -> FlightWatcher:
        """Attach a stream to the flight's feed (created on first use); ``admin``: frames name every
        held or sold seat's order (the admin console's stream); ``direct``: the connection, when the
        server lets the fan-out write to it (``streams.DIRECT_BODY``)."""
        watcher = FlightWatcher(flight_id, Outbox(self._settings.sse_client_queue), mine, parse_event_id(last_event_id),
                                admin=admin, direct=direct)
        if self._draining:
            watcher.outbox.close()
            return watcher
        feed = self._feeds.get(flight_id) or self._new_feed(flight_id)
        watcher.timer = self._lifetime_timer(watcher.outbox)
        feed.attach(watcher)
        return watcher

    def _new_feed(self, flight_id: str) -> FlightFeed:
        feed = FlightFeed(
            flight_id, store=self._store, flights=self._flights,
            subscription=self._subscriber.want(keys.events_channel(flight_id)),
            ring_length=self._settings.change_log_length, on_drop=self._dropped,
            fanout_slice=self._settings.sse_fanout_slice,
        )
        self._feeds[flight_id] = feed
        return feed

    async def flight_stream(self, watcher: FlightWatcher, on_close: OnClose | None = None) -> AsyncIterator[bytes]:
        """The stream's bytes: a ``retry`` hint, its first frames, then every change; ``on_close`` at the end."""
        _FLIGHT_STREAMS.inc()
        try:
            yield retry_frame(self._settings.sse_retry_ms)
            outbox = watcher.outbox
            while True:
                # Resumed, this generator's last chunk has been written: while it waits on an empty
                # outbox, the fan-out may write to the connection itself (FlightFeed._publish).
                watcher.parked = not outbox
                item = await outbox.get()
                watcher.parked = False
                if item is None:
                    break
                chunks: list[bytes] = []
                for each in [item, *outbox.take(BURST_FRAMES - 1)]:
                    if isinstance(each, Heartbeat):
                        chunks.append(HEARTBEAT_BYTES)
                    elif isinstance(each, SnapshotFrame) or each.version > watcher.sent:
                        chunks.append(watcher.render(each))
                        watcher.sent = each.version
                if chunks:
                    yield b"".join(chunks)
        finally:
            _FLIGHT_STREAMS.dec()
            self._detach(watcher)
            if on_close is not None:
                on_close()

    def _detach(self, watcher: FlightWatcher) -> None:
        if watcher.timer is not None:
            watcher.timer.cancel()
        feed = self._feeds.get(watcher.flight_id)
        if feed is not None:
            feed.detach(watcher, asyncio.get_running_loop().time())

    def _dropped(self, watcher: FlightWatcher) -> None:
        self.stats.dropped += 1
        log.info("dropped a slow stream", extra={"flight": watcher.flight_id, "queued": watcher.outbox.limit})

    # -- order streams ------------------------------------------------------------------------

    async def open_order(
        self, order_id: str, token: str, last_event_id: str | None, on_close: OnClose | None = None
    ) -> AsyncIterator[bytes] | None:
        """Watch an order, then read it (no change can fall between); None when the client
        already saw its terminal state (answer 204 so EventSource stops reconnecting).

        Raises OrderNotFound (404) for an unknown order or a wrong token, before any stream opens.
        """
        flight_id = await self._orders.flight_of(order_id)
        outbox: Outbox[OrderUpdate] = Outbox(self._settings.sse_client_queue)
        watchers = self._order_watchers.setdefault(order_id, set())
        watchers.add(outbox)
        self._order_flights[order_id] = flight_id
        channel = self._subscriber.want(keys.events_channel(flight_id))
        try:
            # Read the order once its changes are heard: then no version falls between the read and
            # the stream. A subscription slower than this still re-reads the order when confirmed (RESYNC).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.ready.wait(), SUBSCRIBE_WAIT_SECONDS)
            order = await self._orders.get(order_id, token)
        except BaseException:
            self._unwatch(order_id, outbox, None)
            raise
        if is_terminal(order) and last_event_id == str(order.version):
            self._unwatch(order_id, outbox, None)
            return None
        if self._draining:
            outbox.close()
        return self._order_stream(order_id, token, outbox, order, self._lifetime_timer(outbox), on_close)

    async def _order_stream(  # noqa: PLR0917 - the stream's state, handed over from open_order
        self, order_id: str, token: str, outbox: Outbox[OrderUpdate], order: Order,
        timer: asyncio.TimerHandle | None, on_close: OnClose | None,
    ) -> AsyncIterator[bytes]:
        _ORDER_STREAMS.inc()
        try:
            yield retry_frame(self._settings.sse_retry_ms) + _order_frame(order)
            sent = order.version
            while not is_terminal(order) and (item := await outbox.get()) is not None:
                if isinstance(item, Heartbeat):
                    yield HEARTBEAT_BYTES
                    continue
                if isinstance(item, Order):
                    if item.version > sent:
                        order, sent = item, item.version
                        yield _order_frame(order)
                    continue
                if item != RESYNC and item <= sent:
                    continue
                try:
                    order = await self._orders.get(order_id, token)
                except errors.StoreUnavailable:
                    await asyncio.sleep(0.5)
                    outbox.push(RESYNC)
                    continue
                except errors.OrderNotFound:
                    return
                if order.version > sent:
                    sent = order.version
                    yield _order_frame(order)
        finally:
            _ORDER_STREAMS.dec()
            self._unwatch(order_id, outbox, timer)
            if on_close is not None:
                on_close()

    def _unwatch(self, order_id: str, outbox: Outbox[OrderUpdate], timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
        watchers = self._order_watchers.get(order_id)
        if watchers is not None and outbox in watchers:
            watchers.discard(outbox)
            self._subscriber.release(keys.events_channel(self._order_flights[order_id]))
            if not watchers:
                del self._order_watchers[order_id]
                del self._order_flights[order_id]

    # -- the subscription ---------------------------------------------------------------------

    def _subscribed(self, channel: str) -> None:
        """A flight's channel is (again) confirmed: what was published before may be lost, so its feed and
        the streams of its orders resynchronise."""
        self.stats.subscriptions += 1
        flight_id = keys.flight_of_channel(channel)
        if self.stats.subscriptions > 1:
            log.info("event subscription confirmed; resynchronising", extra={"flight": flight_id})
        feed = self._feeds.get(flight_id)
        if feed is not None:
            feed.resync(resubscribed=True)
        for order_id, watched_flight in self._order_flights.items():
            if watched_flight == flight_id:
                for outbox in self._order_watchers.get(order_id, ()):
                    outbox.push(RESYNC)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        """Route one announcement: seat changes to the flight's feed, order changes to its watchers."""
        self.stats.messages += 1
        feed = self._feeds.get(keys.flight_of_channel(channel.decode()))
        if feed is None and not self._order_watchers:
            return
        try:
            message = decode_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignored a malformed announcement", extra={"error": str(exc)})
            return
        if isinstance(message, OrderMessage):
            watchers = self._order_watchers.get(message.o, ())
            update: OrderUpdate = decode_order(message.d) if watchers and message.d else message.v
            for outbox in watchers:
                outbox.push(update)
        elif feed is not None:
            try:
                feed.on_message(message)
            except Exception:  # a bug in one feed must not end the process's only subscription
                log.exception("flight feed failed on an announcement; re-reading it", extra={"flight": feed.flight_id})
                feed.resync(full=True)

    # -- timers ---------------------------------------------------------------------------------

    def _lifetime_timer(self, outbox: Outbox[Frame] | Outbox[OrderUpdate]) -> asyncio.TimerHandle | None:
        """End the stream after its capped lifetime (jittered so reconnects spread out)."""
        if self._loop is None:
            return None
        lifetime = self._settings.sse_max_stream_seconds * random.uniform(0.8, 1.0)  # noqa: S311 - jitter
        return self._loop.call_later(lifetime, outbox.close)

    async def _tick(self) -> None:
        """Heartbeat comments for every stream; evict feeds nobody watched for a while."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._settings.sse_heartbeat_seconds)
            # In slices, as events are (FlightFeed._publish): thousands of writes must not hold up a hold.
            watchers = [watcher for feed in self._feeds.values() for watcher in feed.watchers]
            for index, watcher in enumerate(watchers, 1):
                if not watcher.write_now(HEARTBEAT_CHUNK):
                    watcher.queue(HEARTBEAT)
                if index % self._settings.sse_fanout_slice == 0:
                    await asyncio.sleep(0)
            for outboxes in self._order_watchers.values():
                for outbox in outboxes:
                    outbox.push(HEARTBEAT)
            now, mono = loop.time(), time.monotonic()
            for flight_id, feed in list(self._feeds.items()):
                if feed.watchers or mono - feed.last_read <= READ_FEED_IDLE_SECONDS:
                    continue
                if feed.idle_since is None or now - feed.idle_since > FEED_IDLE_SECONDS:
                    feed.close()
                    del self._feeds[flight_id]
                    self._subscriber.release(keys.events_channel(flight_id))


def _order_frame(order: Order) -> bytes:
    return sse_frame("order", order.version, _encode(order))


def broker_of(app: Litestar) -> EventBroker | None:
    """The app's broker, once its lifespan started."""
    services = getattr(app.state, "services", None)
    broker = getattr(services, "events", None)
    return broker if isinstance(broker, EventBroker) else None
