"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from litestar import Response, get
from litestar.plugins.prometheus import PrometheusController
from litestar.types import ControllerRouterHandler
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ServicesDep
from service.api.openapi import route_doc
from service.models import Readiness
from service.wiring import Services


@get("/healthz", **route_doc("healthz"))
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (no I/O)."""
    return {"status": "ok"}


async def _redis(services: Services) -> str | None:
    await services.store.reads.ping_primaries()
    return None


async def _queue(services: Services) -> str | None:
    if services.queue is None:
        return "no payment queue"
    await services.queue.ping()
    return None


async def _scripts(services: Services) -> str | None:
    await services.store.scripts.ensure_loaded()
    return None


async def _subscription(services: Services) -> str | None:
    events = services.events
    if events is None:
        return "no event broker"
    return None if events.subscribed else "the event subscription is down (live updates resynchronise when it is back)"


async def _eviction(services: Services) -> str | None:
    return await services.eviction.problem() if services.eviction is not None else None


# What readiness checks, in order (hynek/svcs's pings): each answers None when healthy, else why not.
PINGS: tuple[tuple[str, Callable[[Services], Awaitable[str | None]]], ...] = (
    ("redis", _redis),  # every primary of the data Redis answers PING
    ("queue", _queue),  # arq's Redis answers PING
    ("scripts", _scripts),  # every script is in every primary's cache (loaded again if not)
    ("subscription", _subscription),
    ("maxmemory-policy", _eviction),  # spec §12: Redis must not evict our keys
)
PING_TIMEOUT_SECONDS = 2.0


@get("/readyz", **route_doc("readyz"))
async def readyz(services: ServicesDep) -> Response[Readiness]:
    """Readiness as a list of pings: ``{"ok": [...], "failing": {name: why}}``, 503 when any fails
    (data Redis on every primary, the queue, the scripts, the event subscription, ``maxmemory-policy``
    read at most 5 s ago)."""
    ok: list[str] = []
    failing: dict[str, str] = {}
    for name, ping in PINGS:
        try:
            async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                problem = await ping(services)
        except Exception as exc:  # noqa: BLE001 - readiness reports every failure, whatever it is
            problem = str(exc) or type(exc).__name__
        if problem:
            failing[name] = problem
        else:
            ok.append(name)
    return Response(Readiness(ok, failing), status_code=200 if not failing else 503)


class MetricsController(PrometheusController):
    """Litestar's ``/metrics``, documented with the content type it sends (not JSON)."""

    @get(media_type=CONTENT_TYPE_LATEST, **route_doc("metrics"))
    async def get(self) -> Response[bytes]:
        """Prometheus text exposition (the worker's counters too when a multiprocess directory is shared)."""
        response: Response[bytes] = await PrometheusController.get.fn(self)
        return response


ROUTES: list[ControllerRouterHandler] = [healthz, readyz, MetricsController]
