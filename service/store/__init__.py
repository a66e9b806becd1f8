"""Every Redis touch of the service lives in this package: a change anywhere else needs no Redis knowledge.

- ``keys``: the key schema (every key of a flight carries its ``{F}`` hash tag);
- ``connection``: one pipelined connection (``MultiplexedRedis``), the hot path's transport;
- ``transport``: standalone Redis or Redis Cluster (one pipelined connection per primary, routed by slot);
- ``scripts``: the Lua scripts of ``lua/``, called by SHA (every change of state is one of them);
- ``reads``: the plain commands around them, named for what they mean;
- ``subscription``: the process's lean pub/sub connection;
- ``outbox``: the webhook outbox streams (read through a consumer group, acknowledged once queued);
- ``clock``: Redis's ``TIME``, the service's one clock;
- ``errors``: the one table that turns Redis's answers into the service's errors.

``open_store(settings)`` builds the ``Store`` the app, the worker and the tests use (``service.wiring``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from service.settings import Settings
from service.store.clock import RedisClock
from service.store.connection import MultiplexedRedis
from service.store.outbox import Outbox
from service.store.reads import Reads
from service.store.scripts import Scripts
from service.store.transport import ClusterTransport, StandaloneTransport, Transport, seed_urls

CONNECT_TIMEOUT_SECONDS = 2.0
REPLY_TIMEOUT_SECONDS = 5.0


@dataclass
class Store:
    """The process's way to Redis: transport, scripts, reads and the clock estimate."""

    settings: Settings
    transport: Transport
    scripts: Scripts = field(init=False)
    reads: Reads = field(init=False)
    outbox: Outbox = field(init=False)
    clock: RedisClock = field(default_factory=RedisClock)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.transport)
        self.reads = Reads(self.transport)
        self.outbox = Outbox(self.transport)

    @property
    def cluster(self) -> bool:
        """Whether the data plane is a Redis Cluster."""
        return isinstance(self.transport, ClusterTransport)

    async def aclose(self) -> None:
        """Close every connection."""
        await self.transport.aclose()


def _address(url: str) -> tuple[str, int]:
    params: dict[str, Any] = dict(parse_url(url))
    if params.get("connection_class") is UnixDomainSocketConnection:
        return str(params.get("path", "unix")), 0
    return str(params.get("host", "127.0.0.1")), int(params.get("port", 6379))


async def open_store(settings: Settings) -> Store:
    """The store for ``settings`` (``SEATS_REDIS_CLUSTER``: ``SEATS_REDIS_URL`` lists seed nodes).

    Standalone connects on first use; a cluster reads its slot map now (StoreUnavailable when no seed answers).
    """
    transport: Transport
    if settings.redis_cluster:
        cluster = ClusterTransport(seed_urls(settings.redis_url), connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                   reply_timeout=REPLY_TIMEOUT_SECONDS, max_in_flight=settings.redis_max_in_flight)
        await cluster.start()
        transport = cluster
    else:
        connection = MultiplexedRedis(settings.redis_url, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                      reply_timeout=REPLY_TIMEOUT_SECONDS, max_in_flight=settings.redis_max_in_flight)
        transport = StandaloneTransport(connection, _address(settings.redis_url), settings.redis_url)
    return Store(settings, transport)
