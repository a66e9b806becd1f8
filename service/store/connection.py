"""One pipelined Redis connection shared by every caller of a process: the scripts' hot path.

redis-py lends each command a pooled connection, checks it, wraps the read in a timeout and waits
for the reply before the connection is reused; on the hold path that was ~30 % of the API's CPU.
Here every command is written to one socket as soon as it is issued (commands of one event-loop
turn leave in one write) and replies are matched to callers in order, because Redis answers a
connection's commands in the order it read them. Parsing is hiredis's, as in redis-py.

Failure handling (the contract callers rely on):
- a lost connection fails every command in flight with ``StoreUnavailable`` (503); the next
  command reconnects. A script whose reply was lost may or may not have run: callers treat 503 as
  "unknown outcome", exactly as with redis-py.
- a reply that does not come within ``reply_timeout`` means the connection is unusable (replies
  are matched by position), so it is closed, failing everything in flight.
- a caller that is cancelled (its HTTP client went away) drops its place; the reply is discarded.
- past ``max_in_flight`` commands waiting for replies, a new command fails at once with
  ``StoreUnavailable`` instead of queueing without bound (redis-py's pool cap played this part).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from service import errors

Arg = str | int | float | bytes
P = TypeVar("P", bound=asyncio.BaseProtocol)
WATCHDOG_SECONDS: Final = 0.5
CLIENT_NAME: Final = "seats-pipelined"


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``, a script's ``redis.error_reply``); the message is Redis's."""


class NotSent(errors.StoreUnavailable):
    """No connection could be made: the command never left this process (safe to send elsewhere)."""


class _Protocol(asyncio.Protocol):
    """The socket: writes coalesced per loop turn, replies parsed by hiredis and handed out in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # "replace": one undecodable value must not take the shared connection down for everyone.
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace", replyError=RedisReplyError)
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self._transport is None or self.closed:
            raise errors.StoreUnavailable("The seat store (Redis) connection is closed.")
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        reply: asyncio.Future[Any] = self._loop.create_future()
        self.waiting.append((reply, time.monotonic()))
        return reply

    def _flush(self) -> None:
        if self._transport is not None and self._outgoing and not self._transport.is_closing():
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self._reader.gets()) is not False:
                future = waiting.popleft()[0]
                if not future.done():  # a cancelled caller's reply is dropped
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.close(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket and fail what is in flight."""
        if self._transport is not None:
            self._transport.abort()
        self._fail_all(exc)

    def _fail_all(self, exc: BaseException | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                unavailable = errors.StoreUnavailable("The seat store (Redis) connection was lost.")
                unavailable.__cause__ = exc
                future.set_exception(unavailable)

    def oldest_wait(self, now: float) -> float:
        """Seconds the oldest command in flight has waited (0 when none)."""
        return now - self.waiting[0][1] if self.waiting else 0.0


class MultiplexedRedis:
    """Send commands over one shared, pipelined connection (see the module docstring).

    Replies are decoded as UTF-8 like redis-py's ``decode_responses=True``; an error reply is
    raised as ``RedisReplyError``. Connection trouble is ``StoreUnavailable``.
    """

    def __init__(
        self, url: str, *, connect_timeout: float = 2.0, reply_timeout: float = 5.0, max_in_flight: int = 10_000
    ) -> None:
        self._address = RedisAddress.from_url(url, CLIENT_NAME)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._max_in_flight = max_in_flight
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def at(cls, address: RedisAddress, *, connect_timeout: float = 2.0, reply_timeout: float = 5.0,
           max_in_flight: int = 10_000) -> MultiplexedRedis:
        """A connection to ``address`` (a cluster node found in the slot map)."""
        connection = cls("redis://127.0.0.1", connect_timeout=connect_timeout, reply_timeout=reply_timeout,
                         max_in_flight=max_in_flight)
        connection._address = address
        return connection

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply."""
        protocol = await self._ready()
        reply = await protocol.send(pack(args))
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send ``commands`` adjacent on the wire (nobody else's command between them: a MULTI/EXEC
        block stays whole) and return their replies in order, error replies as ``RedisReplyError``
        values rather than raised."""
        protocol = await self._ready()
        replies = [protocol.send(pack(tuple(command))) for command in commands]
        results = await asyncio.gather(*replies, return_exceptions=True)
        for result in results:  # a lost connection fails them all (error replies are values, not raised)
            if isinstance(result, BaseException) and not isinstance(result, RedisReplyError):
                raise result
        return list(results)

    async def execute_asking(self, *args: Arg) -> Any:
        """``ASKING`` then the command, adjacent on the wire (a slot being migrated: Redis Cluster's ASK)."""
        protocol = await self._ready()
        asking = protocol.send(pack(("ASKING",)))
        reply = await protocol.send(pack(args))
        with contextlib.suppress(RedisReplyError):
            await asking
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        if len(protocol.waiting) >= self._max_in_flight:  # fail fast (503) rather than queue without bound
            raise errors.StoreUnavailable("The seat store (Redis) is not keeping up; try again.")
        return protocol

    async def aclose(self) -> None:
        """Close the connection; commands in flight fail with StoreUnavailable."""
        self._closed = True
        for task in (self._connecting, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._protocol is not None:
            self._protocol.close()

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise NotSent("The seat store client is closed.")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._open())
            self._connecting.add_done_callback(_retrieve_exception)  # even if every caller went away
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except errors.StoreUnavailable:
            raise
        except (OSError, TimeoutError, RedisReplyError) as exc:
            raise NotSent("The seat store (Redis) cannot be reached.") from exc
        except asyncio.CancelledError:
            if connecting.cancelled():  # closed while connecting; the caller itself was not cancelled
                raise NotSent("The seat store client is closed.") from None
            raise

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await self._address.connect(lambda: _Protocol(loop))
                for command in self._address.handshake:
                    reply = await protocol.send(pack(command))
                    if isinstance(reply, RedisReplyError) and command[:2] != ("CLIENT", "SETNAME"):
                        raise reply  # a name is a courtesy: an ACL user may not be allowed to set one
        except BaseException:
            if protocol is not None:
                protocol.close()
            raise
        self._protocol = protocol
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="redis reply watchdog")
        return protocol

    async def _watch(self) -> None:
        """Close a connection whose oldest command waited past ``reply_timeout`` for its reply."""
        while not self._closed:
            await asyncio.sleep(WATCHDOG_SECONDS)
            protocol = self._protocol
            if protocol is not None and protocol.oldest_wait(time.monotonic()) > self._reply_timeout:
                protocol.close(TimeoutError(f"no reply from Redis within {self._reply_timeout:g} s"))


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Mark a finished connect task's error as seen (its callers get StoreUnavailable)."""
    if not task.cancelled():
        task.exception()


def pack(command: tuple[Arg, ...]) -> bytes:
    """RESP for one command (hiredis's stub types the tuple as one element; it takes any length)."""
    packed: bytes = hiredis.pack_command(cast("Any", command))
    return packed


TLS_OPTIONS: Final = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_context(params: dict[str, Any]) -> ssl.SSLContext | None:
    """The TLS context of a ``rediss://`` URL parsed by redis-py's ``parse_url`` (None: plain TCP).

    The query options are redis-py's, with its defaults: ``ssl_ca_certs`` (a CA file; default: the
    system's), ``ssl_cert_reqs`` (none | optional | required; default required), ``ssl_check_hostname``
    (default false), ``ssl_certfile``/``ssl_keyfile`` (a client certificate, for ``tls-auth-clients``).
    Raises ValueError for an unknown ``ssl_cert_reqs``.
    """
    if params.get("connection_class") is not SSLConnection:
        return None
    reqs = str(params.get("ssl_cert_reqs") or "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(_CERT_REQS)}, not {reqs!r}")
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    context.check_hostname = bool(params.get("ssl_check_hostname", False)) and reqs != "none"
    context.verify_mode = _CERT_REQS[reqs]
    if params.get("ssl_certfile"):
        context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
    return context


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a lean connection goes and what it sends first: AUTH, a name for CLIENT LIST, SELECT."""

    host: str
    port: int
    unix_path: str | None
    tls: ssl.SSLContext | None
    handshake: tuple[tuple[Arg, ...], ...]

    @classmethod
    def from_url(cls, url: str, client_name: str) -> RedisAddress:
        """Read ``redis://[user:password@]host:port/db``, ``rediss://`` or ``unix:///path?db=N`` as
        redis-py does (the same URL reaches the same server by both clients)."""
        params: dict[str, Any] = dict(parse_url(url))
        commands: list[tuple[Arg, ...]] = []
        password, username = params.get("password"), params.get("username")
        if password:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        commands.append(("CLIENT", "SETNAME", client_name))
        if int(params.get("db", 0) or 0):
            commands.append(("SELECT", int(params["db"])))
        unix = params.get("connection_class") is UnixDomainSocketConnection
        return cls(str(params.get("host", "127.0.0.1")), int(params.get("port", 6379)),
                   str(params["path"]) if unix else None, tls_context(params), tuple(commands))

    def moved_to(self, host: str, port: int) -> RedisAddress:
        """The same credentials, TLS and handshake at another node (no SELECT: a cluster has one database)."""
        handshake = tuple(c for c in self.handshake if c[0] != "SELECT")
        return RedisAddress(host, port, None, self.tls, handshake)

    async def connect(self, factory: Callable[[], P]) -> tuple[asyncio.BaseTransport, P]:
        """Open a socket served by ``factory``'s protocol (the handshake is the caller's)."""
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            return await loop.create_unix_connection(factory, self.unix_path)
        return await loop.create_connection(factory, self.host, self.port, ssl=self.tls,
                                            server_hostname=self.host if self.tls else None)
