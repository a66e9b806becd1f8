"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.prometheus import PrometheusController
from litestar.types import ControllerRouterHandler
from prometheus_client import CONTENT_TYPE_LATEST

from service import keys
from service.api.deps import ServicesDep
from service.models import Readiness


@get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (no I/O)."""
    return {"status": "ok"}


@get("/readyz", responses={503: ResponseSpec(Readiness, description="A check fails (`failing` says why).")})
async def readyz(services: ServicesDep) -> Response[Readiness]:
    """Readiness: Redis answers, a script runs (the cache may have been flushed) and Redis will not
    evict our keys (``maxmemory-policy`` is ``noeviction``, a reading at most 5 s old; spec §12)."""
    ok: list[str] = []
    failing: dict[str, str] = {}
    try:
        await services.redis.ping()
        ok.append("redis")
        await services.scripts.run("due_orders", [keys.deadlines("readyz")], [1])
        ok.append("scripts")
        problem = await services.eviction.problem() if services.eviction is not None else None
        if problem:
            failing["maxmemory-policy"] = problem
        else:
            ok.append("maxmemory-policy")
    except Exception as exc:  # noqa: BLE001 - readiness reports every failure, whatever it is
        failing["redis" if "redis" not in ok else "scripts" if "scripts" not in ok else "maxmemory-policy"] = (
            str(exc) or type(exc).__name__)
    return Response(Readiness(ok, failing), status_code=200 if not failing else 503)


class MetricsController(PrometheusController):
    """Litestar's ``/metrics``, documented with the content type it sends (not JSON)."""

    @get(media_type=CONTENT_TYPE_LATEST)
    async def get(self) -> Response[bytes]:
        """Prometheus text exposition (the worker's counters too when a multiprocess directory is shared)."""
        response: Response[bytes] = await PrometheusController.get.fn(self)
        return response


ROUTES: list[ControllerRouterHandler] = [healthz, readyz, MetricsController]
