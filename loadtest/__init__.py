"""``seats loadtest``: drive a running service like a crowd, measure it, then verify its end state.

Modules: ``pacing`` (open- and closed-loop arrival), ``stats`` (latency recording, percentiles),
``client`` (the HTTP and SSE client), ``system`` (spawning the system under test and the
baseline, CPU accounting), ``scenarios``, ``invariants``, ``report`` and ``cli``.
"""
