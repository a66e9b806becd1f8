"""The one composition root: what the API, the worker and the tests build from ``Settings``.

- :func:`open_domain` — the store (scripts loaded on every primary), flights, orders: all a test of
  the domain needs; :class:`Domain` closes it.
- :func:`open_api` — the domain plus the payment queue, the eviction policy check, the event broker
  and the stream cap: what ``create_app``'s lifespan holds (:class:`Services`).
- :func:`open_worker` — the domain plus the simulated gateway, the expiry sweeper and, with webhooks
  configured, the outbox relay and the webhook deliverer: what an arq worker's context holds
  (:class:`WorkerServices`).
Nothing here is global: each call builds its own objects and ``close()`` releases them.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from service import errors
from service.eviction import EvictionPolicy
from service.expiry import recover_payments, run_sweeper
from service.flights import FlightStore
from service.limits import StreamSlots
from service.live.broker import EventBroker
from service.operators import Operators
from service.orders import Enqueue, OrderScripts, OrderStore
from service.payments import SimulatedGateway, settle_payment
from service.settings import Settings
from service.store import Store, open_store
from service.subjects import TrustedProxies
from service.webhooks import WEBHOOK_JOB, Deliverer, run_relay, stop

log = logging.getLogger("seats.wiring")

PAYMENT_JOB = "process_payment"


async def _no_queue(flight_id: str, order_id: str, payment_id: str) -> None:
    raise errors.StoreUnavailable("This process has no payment queue.")


@dataclass
class Domain:
    """The store and the domain objects on top of it."""

    settings: Settings
    store: Store
    flights: FlightStore
    order_scripts: OrderScripts
    orders: OrderStore

    async def close(self) -> None:
        """Close the store's connections."""
        await self.store.aclose()


async def open_domain(settings: Settings, enqueue_payment: Enqueue = _no_queue) -> Domain:
    """The store with every script loaded, flights (catalogue ensured) and orders."""
    store = await open_store(settings)
    try:
        await store.scripts.load_all()
        flights = FlightStore(store, settings)
        order_scripts = OrderScripts(store, settings)
        order_scripts.on_flight_version = flights.note_version
        orders = OrderStore(order_scripts, flights, settings, enqueue_payment)
        await flights.ensure_catalogue()
    except BaseException:
        await store.aclose()
        raise
    return Domain(settings, store, flights, order_scripts, orders)


def payment_enqueuer(queue: ArqRedis) -> Enqueue:
    """Enqueue one payment job (job id = payment id: arq refuses a duplicate)."""

    async def enqueue(flight_id: str, order_id: str, payment_id: str) -> None:
        try:
            await queue.enqueue_job(PAYMENT_JOB, flight_id, order_id, payment_id, _job_id=payment_id)
        except (OSError, ConnectionError) as exc:
            raise errors.StoreUnavailable("The payment queue cannot be reached.") from exc

    return enqueue


@dataclass
class Services(Domain):
    """Everything an API process holds (``create_app``'s lifespan); handlers reach it via the app state."""

    queue: ArqRedis | None = None
    events: EventBroker | None = None  # live updates (SSE); started last, stopped first
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)  # parsed once
    stream_slots: StreamSlots | None = None  # the cap on open streams per subject
    eviction: EvictionPolicy | None = None  # the data Redis's maxmemory-policy, for readiness
    operators: Operators | None = None  # history and admin actions (spec §13)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        """Stop the background work, then close the queue and the store."""
        for task in self._tasks:
            task.cancel()
        if self.events is not None:
            await self.events.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.queue is not None:
            await self.queue.aclose()
        await super().close()


def queue_settings(url: str) -> RedisSettings:
    """arq's connection settings for the queue Redis at ``url``, read by redis-py's ``parse_url`` like
    every other URL here: credentials unquoted, ``rediss://`` with its ``ssl_*`` query options (arq's own
    ``from_dsn`` drops those)."""
    params: dict[str, Any] = dict(parse_url(url))
    unix = params.get("connection_class") is UnixDomainSocketConnection
    return RedisSettings(
        host=str(params.get("host", "localhost")), port=int(params.get("port", 6379)),
        unix_socket_path=str(params["path"]) if unix else None, database=int(params.get("db", 0) or 0),
        username=params.get("username"), password=params.get("password"),
        ssl=params.get("connection_class") is SSLConnection,
        ssl_ca_certs=params.get("ssl_ca_certs"), ssl_cert_reqs=str(params.get("ssl_cert_reqs") or "required"),
        ssl_certfile=params.get("ssl_certfile"), ssl_keyfile=params.get("ssl_keyfile"),
        ssl_check_hostname=bool(params.get("ssl_check_hostname", False)),
    )


async def checked_eviction_policy(store: Store, settings: Settings) -> EvictionPolicy:
    """Read the data Redis's maxmemory-policy at start-up and say in the log whether it is safe."""
    eviction = EvictionPolicy(store.reads, settings.eviction_check_seconds)
    problem = await eviction.problem()
    if problem:
        log.error("%s; /readyz answers 503 until it does", problem)
    else:
        log.info("the data Redis runs maxmemory-policy %s: it never evicts our keys", await eviction.current())
    return eviction


async def open_api(settings: Settings) -> Services:
    """An API process's services (the event broker started, the stream places renewed)."""
    queue = await create_pool(queue_settings(settings.queue_url))
    try:
        domain = await open_domain(settings, payment_enqueuer(queue))
    except BaseException:
        await queue.aclose()
        raise
    services = Services(**vars(domain), queue=queue, trusted_proxies=TrustedProxies(settings.trusted_proxies),
                        stream_slots=StreamSlots(domain.store.scripts, settings),
                        operators=Operators(domain.order_scripts, domain.orders, domain.flights, settings))
    try:
        services.eviction = await checked_eviction_policy(domain.store, settings)
        services.events = EventBroker(settings, domain.store, domain.flights, domain.orders)
        await services.events.start()
        assert services.stream_slots is not None
        services._tasks.append(asyncio.create_task(services.stream_slots.renew_forever(), name="stream places"))
    except BaseException:
        await services.close()
        raise
    return services


@dataclass
class WorkerServices(Domain):
    """Everything a worker process holds (the arq context's ``services``)."""

    gateway: SimulatedGateway | None = None
    settle: Callable[[str, str], Awaitable[str]] | None = None
    sweeper: asyncio.Task[None] | None = None
    relay: asyncio.Task[None] | None = None  # outbox -> delivery jobs (webhooks configured and a queue)
    deliverer: Deliverer | None = None  # webhooks configured

    async def close(self) -> None:
        """Stop the sweeper and the relay, then close the webhook client and the store."""
        await stop(self.sweeper)
        await stop(self.relay)
        if self.deliverer is not None:
            await self.deliverer.aclose()
        await super().close()


async def open_worker(settings: Settings, *, sweep: bool = True, queue: ArqRedis | None = None) -> WorkerServices:
    """A worker's services: the gateway, settlement and (``sweep``) the expiry sweeper running; with the
    payment ``queue``, the sweeper also gives PAYING orders whose job vanished their job again."""
    domain = await open_domain(settings)
    gateway = SimulatedGateway(domain.store.scripts, settings)
    settle = functools.partial(settle_payment, domain.order_scripts, gateway, settings)
    services = WorkerServices(**vars(domain), gateway=gateway, settle=settle)
    if sweep:
        recover = None
        if queue is not None:
            recover = functools.partial(recover_payments, domain.order_scripts, job_enqueuer(queue))
        services.sweeper = asyncio.create_task(
            run_sweeper(domain.order_scripts, settings.sweep_interval_seconds, settle, recover), name="expiry sweeper")
    if settings.webhooks:
        services.deliverer = Deliverer(settings)
        if queue is not None:
            services.relay = asyncio.create_task(
                run_relay(domain.store.outbox,
                          webhook_enqueuer(queue, settings.webhook_max_age_seconds), settings), name="webhook relay")
    return services


def webhook_enqueuer(queue: ArqRedis, max_age_seconds: float) -> Callable[[str, str, str, int], Awaitable[bool]]:
    """Queue one delivery job per event, job id = its ``webhook-id`` (a duplicate is refused by arq while
    the job or its result is kept): True when it was queued anew. The job is kept for the event's max age
    plus an hour: arq's default (a day, never extended by retries) would end a longer max age's retries."""
    expires = datetime.timedelta(seconds=max_age_seconds + 3600)

    async def enqueue(webhook_id: str, event_type: str, body: str, at_ms: int) -> bool:
        job = await queue.enqueue_job(WEBHOOK_JOB, webhook_id, event_type, body, at_ms, _job_id=webhook_id,
                                      _expires=expires)
        return job is not None

    return enqueue


def job_enqueuer(queue: ArqRedis) -> Callable[[str, str, str], Awaitable[bool]]:
    """Enqueue a payment job unless the queue still knows its id: True when it was enqueued anew."""

    async def enqueue(flight_id: str, order_id: str, payment_id: str) -> bool:
        job = await queue.enqueue_job(PAYMENT_JOB, flight_id, order_id, payment_id, _job_id=payment_id)
        return job is not None

    return enqueue
