"""The payments yardstick: how many no-op jobs one arq worker, tuned as ``seats worker``, drains.

arq's own per-job round trips (claim, fetch, finish) are the floor under every payment job, and
what a worker manages depends on the machine. So the pay scenario reports payments per second as a
fraction of this figure, measured on the same machine and Redis in the same run.

Run as ``python -m loadtest.arq_baseline REDIS_URL JOBS``: it enqueues JOBS no-op jobs with the
payment job's arguments on a queue of its own, drains them with a burst worker and prints one JSON
line ``{"jobs": N, "jobs_per_s": ..., "cpu_us_per_job": ...}``. It leaves no keys behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from typing import Any

import uvloop
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.worker import Worker, func

from service.settings import load_settings
from worker.main import tuning

ENQUEUE_BATCH = 500


async def noop(ctx: dict[str, Any], flight_id: str, order_id: str, payment_id: str) -> str:
    """What a payment job costs arq, minus the payment."""
    return "NOOP"


async def _enqueue(settings: RedisSettings, queue: str, job_ids: list[str]) -> None:
    pool = await create_pool(settings)
    try:
        for start in range(0, len(job_ids), ENQUEUE_BATCH):
            batch = job_ids[start:start + ENQUEUE_BATCH]
            await asyncio.gather(*(pool.enqueue_job("noop", "F", "O", j, _job_id=j, _queue_name=queue) for j in batch))
    finally:
        await pool.aclose()


async def _clean(settings: RedisSettings, job_ids: list[str]) -> None:
    pool = await create_pool(settings)
    try:
        for start in range(0, len(job_ids), ENQUEUE_BATCH):
            await pool.delete(*(result_key_prefix + j for j in job_ids[start:start + ENQUEUE_BATCH]))
    finally:
        await pool.aclose()


def measure(redis_url: str, jobs: int) -> dict[str, float]:
    """Enqueue ``jobs`` no-op jobs, drain them with a burst worker; jobs/s and CPU per job."""
    settings = RedisSettings.from_dsn(redis_url)
    queue = f"loadtest:arq-baseline:{uuid.uuid4().hex[:8]}"
    job_ids = [f"{queue}:{i}" for i in range(jobs)]
    asyncio.run(_enqueue(settings, queue, job_ids))
    uvloop.install()  # as worker.main does
    worker = Worker(functions=[func(noop, name="noop")], redis_settings=settings, queue_name=queue,
                    burst=True, handle_signals=False, **tuning(load_settings()))
    started, cpu = time.perf_counter(), time.process_time()
    worker.run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    asyncio.run(_clean(settings, job_ids))
    return {"jobs": jobs, "jobs_per_s": round(jobs / elapsed, 1), "cpu_us_per_job": round(cpu / jobs * 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    """``python -m loadtest.arq_baseline REDIS_URL JOBS``."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure(args[0], int(args[1]))), flush=True)


if __name__ == "__main__":
    main()
