"""Arrival processes: open loop (a fixed rate) and closed loop (N users), both bounded in time.

Open loop: arrival ``i`` is scheduled at ``start + i / rate`` whatever the server does, and its
latency runs from that scheduled instant, so queueing in the server (or in the client, when it
cannot keep up) is measured rather than silently absorbed. Closed loop: each of N users starts its
next step as soon as the previous one ends; that finds the saturation throughput.

Every loop ends at ``stop`` (monotonic seconds) and every run is cancelled ``grace`` seconds later
whatever is still in flight: a hung server cannot hang the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

Step = Callable[[float], Coroutine[Any, Any, None]]
"""One unit of work; receives the monotonic time it was scheduled at."""

UserLoop = Callable[[int, float], Coroutine[Any, Any, None]]
"""A closed-loop user: (user index, stop time); must return by the stop time."""

MAX_IN_FLIGHT = 20_000


def arrival_times(rate: float, start: float, stop: float) -> Iterator[float]:
    """The scheduled send times of a fixed-rate arrival process in [start, stop)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    count = max(0, math.ceil((stop - start) * rate))
    for i in range(count):
        when = start + i / rate
        if when >= stop:
            return
        yield when


@dataclass(slots=True)
class PacingStats:
    """How faithfully the pacer kept its schedule."""

    scheduled: int = 0
    shed: int = 0
    max_lag_ms: float = 0.0
    cancelled: int = 0


async def open_loop(step: Step, rate: float, start: float, stop: float, grace: float = 5.0) -> PacingStats:
    """Launch ``step`` at each arrival time in [start, stop); wait for stragglers up to ``grace``."""
    stats = PacingStats()
    tasks: set[asyncio.Task[None]] = set()
    for when in arrival_times(rate, start, stop):
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            stats.max_lag_ms = max(stats.max_lag_ms, -delay * 1000)
        stats.scheduled += 1
        if len(tasks) >= MAX_IN_FLIGHT:  # the server is hopelessly behind: count it, do not pile up
            stats.shed += 1
            continue
        task = asyncio.create_task(step(when))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    stats.cancelled = await _drain(tasks, stop + grace)
    return stats


async def closed_loop(user: UserLoop, users: int, stop: float, grace: float = 5.0) -> PacingStats:
    """Run ``users`` concurrent user loops until ``stop``; cancel any still running ``grace`` later."""
    tasks = {asyncio.create_task(user(index, stop)) for index in range(users)}
    stats = PacingStats(scheduled=users)
    stats.cancelled = await _drain(tasks, stop + grace)
    return stats


async def _drain(tasks: set[asyncio.Task[None]], deadline: float) -> int:
    """Wait for ``tasks`` until ``deadline``; cancel the rest. Returns how many were cancelled."""
    pending = set(tasks)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in tasks - pending:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return len(pending)
