"""``create_app(settings)``: routes, plugins and one lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from service import errors
from service.api import admin as admin_routes
from service.api import events as event_routes
from service.api import flights as flight_routes
from service.api import health as health_routes
from service.api import orders as order_routes
from service.api import ui as ui_routes
from service.api.deps import Services, services_from_state
from service.api.docs import LocalDocsPlugin
from service.api.errors import EXCEPTION_HANDLERS
from service.api.openapi import components as openapi_components
from service.events import EventBroker
from service.eviction import EvictionPolicy
from service.flights import FlightStore
from service.limits import StreamSlots
from service.metrics import RequestMetrics
from service.operators import Operators
from service.orders import OrderScripts, OrderStore
from service.scripts import Scripts
from service.settings import Settings, load_settings
from service.store import connect, connect_pipelined
from service.subjects import TrustedProxies

log = logging.getLogger("seats.app")

PAYMENT_JOB = "process_payment"


def _payment_enqueuer(queue_holder: list[ArqRedis]):  # type: ignore[no-untyped-def]
    async def enqueue(flight_id: str, order_id: str, payment_id: str) -> None:
        try:
            await queue_holder[0].enqueue_job(PAYMENT_JOB, flight_id, order_id, payment_id, _job_id=payment_id)
        except (OSError, ConnectionError) as exc:
            raise errors.StoreUnavailable("The payment queue cannot be reached.") from exc

    return enqueue


async def _checked_eviction_policy(client: aioredis.Redis, settings: Settings) -> EvictionPolicy:
    """Read the data Redis's maxmemory-policy at start-up and say in the log whether it is safe."""
    eviction = EvictionPolicy(client, settings.eviction_check_seconds)
    problem = await eviction.problem()
    if problem:
        log.error("%s; /readyz answers 503 until it does", problem)
    else:
        log.info("the data Redis runs maxmemory-policy %s: it never evicts our keys", await eviction.current())
    return eviction


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the API for ``settings`` (read from ``SEATS_*`` when omitted)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = connect(settings.redis_url, settings)
        pipelined = connect_pipelined(settings)
        queue = await create_pool(RedisSettings.from_dsn(settings.queue_url))
        scripts = Scripts(pipelined)
        flights = FlightStore(client, scripts, settings)
        enqueue = _payment_enqueuer([queue])
        order_scripts = OrderScripts(client, scripts, settings)
        order_scripts.on_flight_version = flights.note_version
        orders = OrderStore(order_scripts, flights, settings, enqueue)
        app.state.services = Services(settings, client, queue, scripts, flights, orders,
                                      trusted_proxies=TrustedProxies(settings.trusted_proxies),
                                      stream_slots=StreamSlots(scripts, settings),
                                      operators=Operators(order_scripts, orders, flights, settings))
        await scripts.load_all()
        await flights.ensure_catalogue()
        app.state.services.eviction = await _checked_eviction_policy(client, settings)
        events = EventBroker(settings, client, flights, orders)
        app.state.services.events = events
        await events.start()
        renewer = asyncio.create_task(app.state.services.stream_slots.renew_forever(), name="stream places")
        try:
            yield
        finally:
            renewer.cancel()
            await events.stop()
            await queue.aclose()
            await pipelined.aclose()
            await client.aclose()

    return Litestar(
        route_handlers=[
            *flight_routes.ROUTES, *order_routes.ROUTES, *health_routes.ROUTES,
            *admin_routes.ROUTES,
            *event_routes.ROUTES,
            *ui_routes.ROUTES,
        ],
        dependencies={"services": Provide(services_from_state, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        # not Litestar's Prometheus middleware: +23 µs a request against +4 µs (docs/performance.md)
        middleware=[RequestMetrics],
        request_max_body_size=settings.max_body_bytes,
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        openapi_config=OpenAPIConfig(
            title="seats", version="0.1.0", path="/schema", components=openapi_components(),
            render_plugins=[JsonRenderPlugin(), LocalDocsPlugin()],
        ),
        debug=False,
    )
