"""Processes the harness starts: the system under test (``--spawn``) and the baseline app.

Both are served by their own processes, never inside the harness, so the client's CPU and the
server's are apart and can be accounted separately from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from service.devrunner import free_port, start_redis, stop_all, wait_for_ready

READY_TIMEOUT_SECONDS = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the worker supervisor runs arq in a child)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue.extend(int(c) for c in task.read_text().split())
    return found


def pause_tree(pid: int, paused: bool) -> None:
    """SIGSTOP (or SIGCONT) a process and everything below it."""
    for member in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGSTOP if paused else signal.SIGCONT)


@dataclass
class CpuMeter:
    """CPU seconds used by named process trees between two readings."""

    roots: dict[str, int] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        """Current CPU seconds per name (whole process trees), plus ``client`` (this process)."""
        usage = {name: sum(cpu_seconds(p) for p in descendants(pid)) for name, pid in self.roots.items()}
        usage["client"] = time.process_time()
        return usage

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds used per name between two readings."""
        return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


@dataclass
class Spawned:
    """What ``--spawn`` started: URLs, the processes and their roots for CPU accounting."""

    base_url: str
    redis_url: str
    processes: list[subprocess.Popen[bytes]]
    roots: dict[str, int]
    env: dict[str, str]
    log_dir: Path


def _python(*args: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen([sys.executable, *args], env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def redis_client(url: str) -> Any:
    """An asyncio client for ``url``: ``RedisCluster`` for a comma-separated seed list (a cluster system's
    ``redis_url``), else ``Redis``; both with ``decode_responses``."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    if "," not in url:
        return aioredis.Redis.from_url(url, decode_responses=True)
    nodes = [ClusterNode(u.hostname or "127.0.0.1", u.port or 6379) for u in map(urlparse, url.split(","))]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)  # type: ignore[abstract]  # redis-py 5.2 stub


async def command_calls(url: str) -> dict[str, float]:
    """Calls per command (``INFO commandstats``) of the Redis at ``url``, summed over a cluster's primaries."""
    import redis.asyncio as aioredis

    totals: dict[str, float] = {}
    for one in url.split(","):
        client = aioredis.Redis.from_url(one)
        try:
            if "," in url and (await client.info("replication")).get("role") != "master":
                continue
            for name, stats in (await client.info("commandstats")).items():
                totals[name] = totals.get(name, 0.0) + float(stats["calls"])
        finally:
            await client.aclose()
    return totals


def _start_cluster_data(data_dir: Path, processes: list[subprocess.Popen[bytes]]) -> tuple[dict[str, str],
                                                                                               dict[str, int]]:
    """A private 6-node cluster and a queue Redis (``seats dev --cluster``'s): the service's settings for
    them and their roots for CPU accounting."""
    from service.devcluster import start_cluster

    (data_dir / "cluster").mkdir()
    (data_dir / "queue").mkdir()
    cluster = start_cluster(data_dir / "cluster", started=processes)
    queue_process, queue_url = start_redis(data_dir / "queue")
    processes.append(queue_process)
    roots = {f"redis {port}": process.pid for port, process in zip(cluster.ports, cluster.processes, strict=True)}
    env = {"SEATS_REDIS_CLUSTER": "true", "SEATS_REDIS_URL": cluster.seeds, "SEATS_QUEUE_REDIS_URL": queue_url}
    return env, {**roots, "queue": queue_process.pid}


def _start_replica(data_dir: Path, primary_url: str, processes: list[subprocess.Popen[bytes]]) -> int:
    """A replica of the Redis at ``primary_url``, in sync when this returns; its pid."""
    import redis

    (data_dir / "replica").mkdir()
    process, url = start_redis(data_dir / "replica")
    processes.append(process)
    primary = urlparse(primary_url)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.replicaof(primary.hostname or "127.0.0.1", primary.port or 6379)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while client.info("replication").get("master_link_status") != "up":  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("the standalone Redis's replica did not sync")
            time.sleep(0.05)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return process.pid


@contextlib.contextmanager
def spawn_system(
    settings_env: Mapping[str, str], *, worker: bool = True, shared_metrics: bool = True, cluster: bool = False,
    replica: bool = False,
) -> Iterator[Spawned]:
    """A private redis-server, ``seats api`` and ``seats worker`` with ``settings_env``; all stopped after.

    With ``shared_metrics``, ``PROMETHEUS_MULTIPROC_DIR`` points API and worker at one fresh
    directory, so the API's ``/metrics`` also shows the worker's counters (payments, expirations).
    With ``cluster``, the data is on a private 6-node Redis Cluster (3 primaries, 3 replicas) and the
    payment queue on a private Redis, as ``seats dev --cluster`` runs them; ``redis_url`` is the seed list.
    With ``replica``, the standalone Redis gets a replica (``REPLICAOF``), as each of a cluster's primaries has.
    """
    with tempfile.TemporaryDirectory(prefix="seats-loadtest-") as tmp:
        data_dir = Path(tmp)
        metrics_dir = data_dir / "metrics"
        metrics_dir.mkdir()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            if cluster:
                data_env, redis_roots = _start_cluster_data(data_dir, processes)
            else:
                redis_process, url = start_redis(data_dir)
                processes.append(redis_process)
                data_env, redis_roots = {"SEATS_REDIS_URL": url}, {"redis": redis_process.pid}
                if replica:
                    redis_roots["replica"] = _start_replica(data_dir, url, processes)
            redis_url = data_env["SEATS_REDIS_URL"]
            port = free_port()
            env = {**os.environ, **settings_env, **data_env, "SEATS_HOST": "127.0.0.1",
                   "SEATS_PORT": str(port), "PYTHONUNBUFFERED": "1"}
            if shared_metrics:
                env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            api = _python("-m", "service.cli", "api", env=env, log=data_dir / "api.log")
            processes.append(api)
            roots = {"api": api.pid, **redis_roots}
            if worker:
                worker_process = _python("-m", "service.cli", "worker", env=env, log=data_dir / "worker.log")
                processes.append(worker_process)
                roots["worker"] = worker_process.pid
            base_url = f"http://127.0.0.1:{port}"
            wait_for_ready(base_url, processes, READY_TIMEOUT_SECONDS)
            yield Spawned(base_url, redis_url, processes, roots, env, data_dir)
        finally:
            stop_all(processes)


@contextlib.contextmanager
def spawn_baseline() -> Iterator[tuple[str, int]]:
    """The bare Litestar app (``loadtest.baseline``) on a free port: (base URL, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="seats-baseline-") as tmp:
        process = _python("-m", "loadtest.baseline", str(port), env=os.environ, log=Path(tmp) / "baseline.log")
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the baseline app exited with {process.returncode}")
                with contextlib.suppress(OSError), urllib.request.urlopen(  # noqa: S310 - 127.0.0.1 only
                    f"{base_url}/version/x", timeout=1
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the baseline app did not start")
                time.sleep(0.05)
            yield base_url, process.pid
        finally:
            stop_all([process])


def machine(redis_url: str | None) -> dict[str, object]:
    """Where the figures come from: CPU, cores, Python and the versions that matter."""
    import platform
    from importlib import metadata

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("litestar", "uvicorn", "uvloop", "httptools", "msgspec", "redis", "hiredis", "arq", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    redis_version = None
    if redis_url:
        import redis

        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(redis_url.split(",")[0], socket_connect_timeout=1, decode_responses=True)
            info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
            redis_version = info.get("redis_version")
            client.close()  # type: ignore[no-untyped-call]
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "redis": redis_version, "packages": versions}


T = TypeVar("T")


def alternate_rounds(rounds: int, prefix: str, run_round: Callable[[str, bool], Awaitable[T]],
                     report: Callable[[bool, T], None]) -> dict[bool, list[T]]:
    """A/B in alternating rounds: ``run_round(redis_url, on)`` without (``on`` False), then with, ``rounds``
    times, each round on a fresh private redis-server (a ``prefix``ed temporary directory) so that neither
    side inherits the other's memory or statistics; ``report`` prints each result as it comes."""
    from service.devrunner import start_redis, stop_all

    results: dict[bool, list[T]] = {False: [], True: []}
    for _ in range(rounds):
        for on in (False, True):
            with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
                process, url = start_redis(Path(tmp))
                try:
                    results[on].append(asyncio.run(_awaited(run_round(url, on))))
                finally:
                    stop_all([process])
            report(on, results[on][-1])
    return results


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
