"""The process's sharded pub/sub: ``SSUBSCRIBE`` each flight's channel on the node serving its slot,
while someone in the process needs it (Redis Cluster's sharded pub/sub; the same on a single Redis ≥ 7).

One lean connection per node carries every channel of that node. Messages are parsed by hiredis and
handed over as they arrive (at most BURST per event-loop turn: the streams writing them out get their
turn too). The subscriber never trusts itself blindly:

- every channel is confirmed before it counts as ready, and each (re)confirmation is reported
  (``on_subscribed``): the announcements published before it may be lost, so the feed resynchronises;
- a connection silent for PING_SECONDS is pinged; silent for DEAD_SECONDS, or closed, it is dropped
  and its channels are subscribed again (on whatever node serves them now: a failover, a slot
  migration). Redis's own ``sunsubscribe`` push (the slot moved away) does the same for its channel.

Liveness and readiness are per channel (``ChannelState``): the seat-map fast path and the feeds use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import hiredis

from service.store.connection import Arg, RedisAddress, RedisReplyError, pack
from service.store.transport import Transport

log = logging.getLogger("seats.events")

BURST: Final = 64  # messages handed over per event-loop turn
PING_SECONDS: Final = 5.0  # a silent connection is pinged
DEAD_SECONDS: Final = 3 * PING_SECONDS  # ... and dropped when it stays silent this long
CHECK_SECONDS: Final = 0.5  # how often subscriptions are checked and repaired
CONNECT_TIMEOUT_SECONDS: Final = 2.0
OnMessage = Callable[[bytes, bytes], None]  # (channel, data)


@dataclass(eq=False)
class ChannelState:
    """One channel: whether its subscription is confirmed now, how many times it was (re)confirmed, and
    when its connection last heard anything (monotonic seconds)."""

    channel: str
    wanted: int = 0  # how many users want it
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0
    node: Node | None = None

    @property
    def last_heard(self) -> float:
        """When the connection carrying the channel last received anything (0 when none does)."""
        return self.node.last_heard if self.node is not None else 0.0


class _Protocol(asyncio.Protocol):
    """A subscribed connection: messages to ``on_message``, other replies to ``on_reply``."""

    def __init__(self, on_message: OnMessage, on_reply: Callable[[Any], None]) -> None:
        self._on_message = on_message
        self._on_reply = on_reply
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._scheduled = False
        self.last_heard = time.monotonic()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

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
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"smessage":
                    self._on_message(reply[1], reply[2])
                else:
                    self._on_reply(reply)
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
            asyncio.get_running_loop().call_soon(self._deliver)

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


class Node:
    """The subscribed connection to one node and the channels it carries."""

    def __init__(self, address: RedisAddress, subscriber: Subscriber) -> None:
        self.address = address
        self._subscriber = subscriber
        self.channels: dict[str, ChannelState] = {}  # confirmed or asked for on this connection
        self.protocol: _Protocol | None = None
        self._handshake: asyncio.Queue[Any] | None = None
        self._pinged = 0.0

    @property
    def last_heard(self) -> float:
        return self.protocol.last_heard if self.protocol is not None else 0.0

    @property
    def alive(self) -> bool:
        return self.protocol is not None and not self.protocol.lost.done()

    async def connect(self) -> None:
        """Open, authenticate (a name is a courtesy: an ACL user may not set one)."""
        self._handshake = asyncio.Queue()
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            _, protocol = await self.address.connect(
                lambda: _Protocol(self._subscriber.on_message, self._on_reply))
            self.protocol = protocol
            for command in self.address.handshake:
                protocol.send(*command)
                reply = await self._next_handshake_reply()
                if isinstance(reply, RedisReplyError) and command[:2] != ("CLIENT", "SETNAME"):
                    raise reply
        self._handshake = None

    async def _next_handshake_reply(self) -> Any:
        assert self._handshake is not None and self.protocol is not None
        getter = asyncio.ensure_future(self._handshake.get())
        try:
            done, _ = await asyncio.wait({getter, self.protocol.lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getter.cancel()
        if getter not in done:
            raise ConnectionError("the connection closed during the handshake")
        return getter.result()

    def _on_reply(self, reply: Any) -> None:
        if self._handshake is not None:
            self._handshake.put_nowait(reply)
            return
        if isinstance(reply, list) and len(reply) == 3 and reply[0] in (b"ssubscribe", b"sunsubscribe"):
            channel = reply[1].decode()
            if reply[0] == b"ssubscribe":
                self._subscriber.confirmed(self, channel)
            else:
                self._subscriber.unsubscribed(self, channel)
        elif isinstance(reply, RedisReplyError):  # e.g. MOVED: the map changed; the check repairs it
            log.info("a subscription was refused; re-reading the slot map", extra={"error": str(reply)})
            self._subscriber.topology_changed()
        # anything else is a pong: a sign of life (last_heard moved)

    def subscribe(self, state: ChannelState) -> None:
        self.channels[state.channel] = state
        state.node = self
        if self.protocol is not None:
            self.protocol.send("SSUBSCRIBE", state.channel)

    def unsubscribe(self, channel: str) -> None:
        state = self.channels.pop(channel, None)
        if state is not None and state.node is self:
            state.node = None
        if self.protocol is not None:
            self.protocol.send("SUNSUBSCRIBE", channel)

    def keep_alive(self, now: float) -> bool:
        """Ping a silent connection; False when it is dead (closed, or silent past DEAD_SECONDS)."""
        if not self.alive:
            return False
        silent = now - self.last_heard
        if silent > DEAD_SECONDS:
            return False
        if silent > PING_SECONDS and now - self._pinged > PING_SECONDS and self.protocol is not None:
            self.protocol.send("PING")
            self._pinged = now
        return True

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()


class Subscriber:
    """Every sharded subscription of the process (see the module docstring)."""

    def __init__(self, transport: Transport, on_message: OnMessage,
                 on_subscribed: Callable[[str], None]) -> None:
        self._transport = transport
        self.on_message = on_message
        self._on_subscribed = on_subscribed
        self.channels: dict[str, ChannelState] = {}
        self._nodes: dict[tuple[str, int, str | None], Node] = {}
        self._wakeup = asyncio.Event()
        self._refresh = False
        self.subscriptions = 0  # confirmations so far (logs, tests)

    # -- what the users ask for ------------------------------------------------------------------

    def state(self, channel: str) -> ChannelState:
        """The channel's state (created on first use; not subscribed until wanted)."""
        state = self.channels.get(channel)
        if state is None:
            state = self.channels[channel] = ChannelState(channel)
        return state

    def want(self, channel: str) -> ChannelState:
        """One more user of ``channel``: it is subscribed (if it was not) as soon as possible."""
        state = self.state(channel)
        state.wanted += 1
        if state.wanted == 1:
            self._wakeup.set()
        return state

    def release(self, channel: str) -> None:
        """One user fewer; the last one gone, the channel is unsubscribed."""
        state = self.channels.get(channel)
        if state is None or state.wanted == 0:
            return
        state.wanted -= 1
        if state.wanted == 0:
            del self.channels[channel]
            state.ready.clear()
            if state.node is not None:
                state.node.unsubscribe(channel)

    @property
    def healthy(self) -> bool:
        """Every wanted channel is confirmed on a live connection."""
        return all(s.ready.is_set() and s.node is not None and s.node.alive for s in self.channels.values())

    # -- what the connections report -------------------------------------------------------------

    def confirmed(self, node: Node, channel: str) -> None:
        state = self.channels.get(channel)
        if state is None or state.node is not node:
            if state is None:  # released while the SSUBSCRIBE was in flight
                node.unsubscribe(channel)
            return
        state.generation += 1
        state.ready.set()
        self.subscriptions += 1
        self._on_subscribed(channel)

    def unsubscribed(self, node: Node, channel: str) -> None:
        """Redis ended a subscription (the slot moved away): subscribe again where it lives now."""
        state = self.channels.get(channel)
        if state is not None and state.node is node:
            node.channels.pop(channel, None)
            state.node = None
            state.ready.clear()
            self.topology_changed()

    def topology_changed(self) -> None:
        self._refresh = True
        self._wakeup.set()

    # -- the repair loop -------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Keep every wanted channel subscribed on a live connection to the node serving it."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), CHECK_SECONDS)
            self._wakeup.clear()
            try:
                await self._repair()
            except Exception:  # whatever happened, live updates must subscribe again
                log.exception("event subscriptions could not be repaired; retrying")
                await asyncio.sleep(CHECK_SECONDS)

    async def _repair(self) -> None:
        now = time.monotonic()
        for node_key, node in list(self._nodes.items()):
            if not node.keep_alive(now):
                self._drop(node_key, node)
        if self._refresh:
            self._refresh = False
            with contextlib.suppress(Exception):
                await self._transport.refresh()
        for state in list(self.channels.values()):
            if state.wanted == 0:
                continue
            address = self._transport.address_for(state.channel)
            key = (address.host, address.port, address.unix_path)
            if state.node is not None and state.node.alive and (state.node.address.host, state.node.address.port,
                                                                 state.node.address.unix_path) == key:
                continue
            if state.node is not None:
                state.node.unsubscribe(state.channel)
                state.ready.clear()
            target = await self._node(key, address)
            if target is not None:
                target.subscribe(state)

    async def _node(self, key: tuple[str, int, str | None], address: RedisAddress) -> Node | None:
        node = self._nodes.get(key)
        if node is not None and node.alive:
            return node
        node = Node(address, self)
        try:
            await node.connect()
        except (OSError, TimeoutError, RedisReplyError, ConnectionError) as exc:
            log.warning("event subscription cannot connect; retrying", extra={"error": str(exc)})
            node.close()
            self.topology_changed()
            return None
        self._nodes[key] = node
        return node

    def _drop(self, key: tuple[str, int, str | None], node: Node) -> None:
        """A dead connection: its channels are unconfirmed until subscribed again (and then resync)."""
        log.warning("event subscription lost; subscribing again", extra={"channels": len(node.channels)})
        node.close()
        del self._nodes[key]
        for state in node.channels.values():
            if state.node is node:
                state.node = None
                state.ready.clear()
        node.channels.clear()
        self.topology_changed()

    def close(self) -> None:
        """Drop every connection."""
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()

    def nodes_alive(self) -> int:
        """How many node connections are up (tests, metrics)."""
        return sum(1 for node in self._nodes.values() if node.alive)
