"""Redis must not evict the service's keys: the data Redis's ``maxmemory-policy`` must be ``noeviction``.

Seat keys carry TTLs, so under any ``volatile-*`` policy they are the first victims, and under
``allkeys-*`` orders, the flight hash or the gateway's books can vanish: a held seat would turn
available, a sale could be lost (spec §12). Readiness fails (``/readyz`` 503, ``failing`` names
``maxmemory-policy``) until the policy is ``noeviction``; the reading is taken at start-up and is
at most ``SEATS_EVICTION_CHECK_SECONDS`` (5 s) old on each ``/readyz``.
"""

from __future__ import annotations

import time

from service.store.reads import Reads

REQUIRED_POLICY = "noeviction"


class EvictionPolicy:
    """The data Redis's eviction policy (every primary's, in a cluster: the least safe one counts), read
    with ``INFO memory`` (``CONFIG GET`` is often disabled on managed Redis) and cached for ``max_age`` seconds."""

    def __init__(self, reads: Reads, max_age: float) -> None:
        self._reads = reads
        self._max_age = max_age
        self._policy: str | None = None
        self._read_at = float("-inf")

    async def current(self) -> str:
        """The policy, read again when the last reading is older than ``max_age``.

        Raises StoreUnavailable when Redis cannot be reached.
        """
        now = time.monotonic()
        if self._policy is None or now - self._read_at > self._max_age:
            policies = await self._reads.eviction_policies()
            unsafe = [policy for policy in policies if policy != REQUIRED_POLICY]
            self._policy = unsafe[0] if unsafe else REQUIRED_POLICY
            self._read_at = now
        return self._policy

    async def problem(self) -> str | None:
        """Why the policy is unsafe, or None when it is ``noeviction``."""
        policy = await self.current()
        if policy == REQUIRED_POLICY:
            return None
        return (f"the data Redis runs maxmemory-policy {policy}: it may evict seat holds and orders; "
                f"set maxmemory-policy {REQUIRED_POLICY}")
