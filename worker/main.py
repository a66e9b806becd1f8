"""One arq worker process: payment jobs plus the expiry sweeper, tuned for latency.

arq's defaults poll every 0.5 s (measured ~200 jobs/s, ~260 ms enqueue-to-start); we poll every
``SEATS_WORKER_POLL_DELAY_SECONDS`` (10 ms) with up to ``SEATS_WORKER_MAX_JOBS`` jobs at once.
This process exits when Redis goes away (arq's behaviour); ``worker.supervisor`` restarts it.
"""

from __future__ import annotations

import logging
from typing import Any

import uvloop
from arq.worker import Worker, func
from prometheus_client import start_http_server

from service.logs import configure_logging, redacted_url
from service.process import freeze_startup_heap
from service.settings import Settings, load_settings
from service.webhooks import WEBHOOK_JOB, max_tries
from service.wiring import open_worker, queue_settings
from worker.jobs import deliver_webhook, process_payment


def build_worker(settings: Settings, *, burst: bool = False) -> Worker:
    """An arq Worker for ``settings``: jobs, sweeper task and the resources they share (``service.wiring``)."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["services"] = await open_worker(settings, queue=ctx["redis"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        services = ctx.get("services")
        if services is not None:
            await services.close()

    functions = [func(process_payment, name="process_payment", timeout=settings.payment_job_timeout_seconds)]
    if settings.webhooks:
        # retried until the event's max age, not a count: max_tries only keeps arq from ending it sooner
        functions.append(func(deliver_webhook, name=WEBHOOK_JOB, timeout=settings.webhook_timeout_seconds + 5,
                              max_tries=max_tries(settings)))
    return Worker(
        functions=functions,
        redis_settings=queue_settings(settings.queue_url),
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=not burst,
        burst=burst,
        **tuning(settings),
    )


def tuning(settings: Settings) -> dict[str, Any]:
    """arq's knobs as this service sets them (the load harness's no-op yardstick uses the same)."""
    return {
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_seconds,
        "job_timeout": settings.payment_job_timeout_seconds,
        "keep_result": 3600,
        "max_tries": 5,
    }


def main() -> None:
    """Run one worker until SIGTERM/SIGINT or until Redis goes away (then exit 1)."""
    configure_logging()
    settings = load_settings()
    logging.getLogger("seats.worker").info("worker starting", extra={"queue": redacted_url(settings.queue_url)})
    if settings.worker_metrics_port is not None:
        # Payments and expirations for Prometheus where the API cannot read this process's values
        # (containers do not share PROMETHEUS_MULTIPROC_DIR). A thread of prometheus_client's.
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    uvloop.install()  # arq uses the default loop; the pure-Python one was 45 % of the worker's CPU
    worker = build_worker(settings)
    freeze_startup_heap()
    worker.run()


if __name__ == "__main__":
    main()
