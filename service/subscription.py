"""The process's pattern subscription on a lean connection: each message is handed over as it is parsed.

redis-py's ``PubSub.get_message`` costs a health check, a retry wrapper and an ``asyncio.timeout``
per message; every hold publishes two, so on the hold path that was ~8 % of the API's CPU even
for flights nobody in the process watched. Here the socket's protocol parses with hiredis and
calls ``on_message(channel, data)`` directly, at most ``BURST`` messages per event-loop turn (the
rest wait in the parser, the socket is paused), so the streams that write the messages out get
their turn as they did before.

Liveness is the caller's (``service.events``): ``last_heard`` moves on every byte received,
``ping()`` asks for a sign of life, ``lost`` completes when the connection ends for any reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

import hiredis

from service.multiplexed import Arg, RedisAddress, RedisReplyError, pack

log = logging.getLogger("seats.events")

BURST: Final = 64  # messages handed over per event-loop turn
CLIENT_NAME: Final = "seats-events"
OnMessage = Callable[[bytes, bytes], None]


class _SubscriberProtocol(asyncio.Protocol):
    def __init__(self, on_message: OnMessage, loop: asyncio.AbstractEventLoop) -> None:
        self._on_message = on_message
        self._loop = loop
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._scheduled = False
        # Replies other than messages, while the handshake reads them; later ones (pongs) only count as
        # signs of life, and an error reply ends the connection.
        self.replies: asyncio.Queue[Any] | None = asyncio.Queue()
        self.last_heard = time.monotonic()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        self._reader.feed(data)
        self._deliver()

    def _deliver(self) -> None:
        self._scheduled = False
        try:
            for _ in range(BURST):
                reply = self._reader.gets()
                if reply is False:
                    if self._paused and self._transport is not None:
                        self._paused = False
                        self._transport.resume_reading()
                    return
                if isinstance(reply, list) and reply and reply[0] == b"pmessage":
                    self._on_message(reply[2], reply[3])
                elif self.replies is not None:
                    self.replies.put_nowait(reply)
                elif isinstance(reply, RedisReplyError):
                    raise reply
        except Exception as exc:  # a parse error or a failing handler ends this connection (then resync)
            log.exception("event subscription failed on a message; reconnecting")
            self.close(exc)
            return
        # More may be parsed already: let the streams write first, then continue.
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def send(self, *command: Arg) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(pack(command))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def close(self, exc: BaseException | None = None) -> None:
        if self._transport is not None:
            self._transport.abort()
        if not self.lost.done():
            self.lost.set_result(exc)


class PatternSubscription:
    """One ``PSUBSCRIBE`` on a connection of its own; use ``open_pattern_subscription``."""

    def __init__(self, protocol: _SubscriberProtocol) -> None:
        self._protocol = protocol

    @property
    def last_heard(self) -> float:
        """Monotonic time anything (a message, a pong) last arrived."""
        return self._protocol.last_heard

    @property
    def lost(self) -> asyncio.Future[BaseException | None]:
        """Completes when the connection ends (with the error, if one ended it)."""
        return self._protocol.lost

    def ping(self) -> None:
        """Ask Redis for a sign of life (its pong moves ``last_heard``)."""
        self._protocol.send("PING")

    def close(self) -> None:
        """Drop the connection."""
        self._protocol.close()


async def open_pattern_subscription(
    url: str, pattern: str, on_message: OnMessage, *, timeout: float = 5.0
) -> PatternSubscription:
    """Connect, authenticate and ``PSUBSCRIBE``; returns once Redis confirmed the subscription, so
    from then on nothing published on a matching channel is missed while the connection lives."""
    loop = asyncio.get_running_loop()
    address = RedisAddress.from_url(url, CLIENT_NAME)
    protocol: _SubscriberProtocol | None = None
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await address.connect(lambda: _SubscriberProtocol(on_message, loop))
            for command in address.handshake:
                protocol.send(*command)
                await _expect(protocol, lambda reply: not isinstance(reply, list))
            protocol.send("PSUBSCRIBE", pattern)
            await _expect(protocol, lambda reply: isinstance(reply, list) and reply[0] == b"psubscribe")
            protocol.replies = None
    except BaseException:
        if protocol is not None:
            protocol.close()
        raise
    return PatternSubscription(protocol)


async def _expect(protocol: _SubscriberProtocol, wanted: Callable[[Any], bool]) -> None:
    """Wait for the next non-message reply; an error reply or a lost connection raises."""
    assert protocol.replies is not None
    getter = asyncio.ensure_future(protocol.replies.get())
    try:
        done, _ = await asyncio.wait({getter, protocol.lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        getter.cancel()  # no-op when done; a timed-out handshake must not leave it pending
    if getter not in done:
        raise ConnectionError(f"the connection closed during the handshake: {protocol.lost.result()}")
    reply = getter.result()
    if isinstance(reply, RedisReplyError):
        raise reply
    if not wanted(reply):
        raise ConnectionError(f"unexpected reply during the handshake: {reply!r}")
