"""The service's one clock: Redis's ``TIME`` (every deadline is set by a script reading it).

In a Redis Cluster each primary reads its own clock; the scripts of one flight all run on the node
serving its slot, so a flight's deadlines share one clock, and the process's estimate of "Redis now"
(``RedisClock``) only ever errs on the side of giving up a fast answer sooner.
"""

from __future__ import annotations

import time


def redis_now_ms(time_reply: tuple[int, int]) -> int:
    """Milliseconds from a Redis ``TIME`` reply: the service's one clock."""
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


class RedisClock:
    """An upper bound on Redis's clock (``TIME``, the service's one clock) from the local one.

    Each ``TIME`` reply read by a request sent at local monotonic ``t`` was taken at or after ``t``,
    so ``reply - t`` bounds the offset from above; an announcement's ``u`` (Redis time when the
    change was made, before it reached us) bounds it from below and only ever raises the estimate.
    Over-estimating Redis's time is the safe side: the fast read path then gives up sooner.
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None  # Redis ms minus local monotonic ms

    @staticmethod
    def local_ms() -> float:
        """The local monotonic clock in ms."""
        return time.monotonic() * 1000.0

    def observe(self, redis_ms: int, sent_local_ms: float) -> None:
        """A ``TIME`` reply to a request sent at local ``sent_local_ms``."""
        self.offset = redis_ms - sent_local_ms

    def observe_at_least(self, redis_ms: int) -> None:
        """A Redis timestamp taken before now (e.g. an announcement's ``u``)."""
        if self.offset is not None:
            self.offset = max(self.offset, redis_ms - self.local_ms())

    def now_upper(self) -> float | None:
        """Redis's time now, rounded up to the safe side (None before any observation)."""
        return None if self.offset is None else self.local_ms() + self.offset
