"""Shared fixtures: a private redis-server per session, settings, an in-process API client and
real processes (``seats api`` / ``seats worker``) started the way a user starts them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from service.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before any fork: the child only calls it


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL the child when the test process dies (even killed): no stray servers."""
    _LIBC.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@dataclass
class RedisServer:
    """A private redis-server on a free port that tests may stop and restart."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    persistent: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required for the tests (.ci/run installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log")],
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks taken in the child
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Kill -9 and start again on the same port (data survives only when ``persistent``)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session; never the one that may run on 6379."""
    with tempfile.TemporaryDirectory(prefix="seats-test-redis-") as data_dir:
        server = RedisServer(free_port(), Path(data_dir))
        server.start()
        yield server
        server.stop()


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A private redis-server with AOF, so a restart keeps the data as in production."""
    with tempfile.TemporaryDirectory(prefix="seats-aof-") as data_dir:
        server = RedisServer(free_port(), Path(data_dir), persistent=True)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, emptied before each test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


# Every test client is one subject (one address): the limits of spec §10 are on, but far from these
# tests' volumes; tests/test_controls.py sets them tight on purpose.
GENEROUS_CONTROLS: dict[str, Any] = {
    "rate_limit_writes": "1000000/1",
    "max_held_seats_per_subject": 0,
    "max_open_orders_per_subject": 0,
    "max_streams_per_subject": 0,
}


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """One private local Redis Cluster for the session (6 nodes: 3 primaries, 3 replicas; tests/cluster.py).
    Tests that hurt a cluster (kill a primary, fail over) start one of their own."""
    from tests.cluster import local_cluster

    with local_cluster() as cluster:
        yield cluster


PLANES = ("standalone", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_planes`` (a module's or class's ``pytestmark``) run once per data plane."""
    if "plane" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_planes"):
        metafunc.parametrize("plane", PLANES, indirect=True)


@pytest.fixture
def plane(request: pytest.FixtureRequest) -> str:
    """Which data plane the service's settings point at: a single Redis, or for tests marked ``both_planes``
    each of a single Redis and the session's local Redis Cluster in turn."""
    return str(getattr(request, "param", "standalone"))


def standalone_only(plane: str, why: str) -> None:
    """Skip, saying why, a test that hurts the single Redis itself (the cluster's faults: test_cluster_faults)."""
    if plane == "cluster":
        pytest.skip(f"single-Redis fault ({why}); the cluster's own faults are in tests/test_cluster_faults.py")


@pytest.fixture
def data_url(plane: str, redis_url: str, request: pytest.FixtureRequest) -> str:
    """SEATS_REDIS_URL of the data plane, emptied before the test (cluster: the seed list; the queue then
    stays on the private single Redis, as cluster mode requires)."""
    if plane != "cluster":
        return redis_url
    cluster = request.getfixturevalue("redis_cluster")
    cluster.wait_ok()
    cluster.flush()
    return str(cluster.url)


@pytest.fixture
def data_redis(plane: str, data_url: str) -> Iterator[Any]:
    """A redis-py client that looks inside the data plane (a ``RedisCluster`` on the cluster)."""
    import redis.cluster

    client: Any = (redis.cluster.RedisCluster.from_url(data_url.split(",", maxsplit=1)[0], decode_responses=True)
                   if plane == "cluster" else redis.Redis.from_url(data_url, decode_responses=True))
    yield client
    client.close()


@pytest.fixture
def make_settings(redis_url: str, plane: str, data_url: str) -> Callable[..., Settings]:
    """Factory: settings on the private data plane, deterministic payments unless overridden."""
    cluster = {"redis_cluster": True, "queue_redis_url": redis_url} if plane == "cluster" else {}

    def make(**overrides: Any) -> Settings:
        defaults: dict[str, Any] = {
            "redis_url": data_url,
            **cluster,
            "payment_failure_rate": 0.0,
            "payment_latency_seconds": 0.0,
            "payment_backoff_seconds": 0.05,
            "admin_token": "admin-secret",
            **GENEROUS_CONTROLS,
        }
        defaults.update(overrides)
        return load_settings({}, **defaults)

    return make


@dataclass
class Processes:
    """Real ``seats`` processes, each in its own process group."""

    base_env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_file = Path(tempfile.mkstemp(prefix="seats-proc-", suffix=".log")[1])
        handle = log_file.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env={**self.base_env, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=REPO, preexec_fn=_die_with_parent,  # noqa: PLW1509 - as above
        )
        self.started.append(process)
        self.logs.append(log_file)
        return process

    def api(self, env: dict[str, str] | None = None) -> str:
        """Start ``seats api`` on a free port; returns its base URL once /readyz answers 200."""
        port = free_port()
        process = self.spawn("api", env={"SEATS_PORT": str(port), **(env or {})})
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, self)
        return base

    def worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``seats worker`` (the supervisor and its arq child)."""
        return self.spawn("worker", env=env)

    def output(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_ready(base: str, process: subprocess.Popen[bytes], processes: Processes, timeout: float = 30) -> None:
    """Wait for ``/readyz`` = 200; fail with the process output if it dies or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{processes.output()}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} not ready in {timeout}s:\n{processes.output()}")


@pytest.fixture
def processes(redis_url: str) -> Iterator[Processes]:
    """Factory for real ``seats`` processes against the private Redis; all stopped afterwards."""
    env = {
        **os.environ,
        "SEATS_REDIS_URL": redis_url,
        "SEATS_PAYMENT_FAILURE_RATE": "0",
        "SEATS_PAYMENT_LATENCY_SECONDS": "0",
        "SEATS_PAYMENT_BACKOFF_SECONDS": "0.05",
        "SEATS_ADMIN_TOKEN": "admin-secret",
        "PYTHONUNBUFFERED": "1",
        **{f"SEATS_{name.upper()}": str(value) for name, value in GENEROUS_CONTROLS.items()},
    }
    procs = Processes(env)
    yield procs
    procs.stop_all()


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """Factory: an in-process API client (Litestar TestClient) on the private Redis."""
    from litestar.testing import TestClient

    from service.app import create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    """An API client with default test settings."""
    return make_client()


def run_worker_burst(settings: Settings) -> None:
    """Run the real arq worker until its queue is empty (jobs as in production, no polling loop)."""
    import asyncio

    from worker.main import build_worker

    async def run() -> None:
        worker = build_worker(settings, burst=True)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    asyncio.run(run())


@dataclass
class LiveServer:
    """The app on a real uvicorn server in a thread: what streaming (SSE) tests need."""

    base_url: str
    app: Any
    server: Any
    thread: Any

    @property
    def broker(self) -> Any:
        """The app's event broker (service.events.EventBroker)."""
        return self.app.state.services.events

    def stop(self) -> None:
        """Shut down as on SIGTERM (streams drained) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``create_app(settings)`` served by uvicorn (as ``seats api``) on a free port."""
    import threading

    from service.app import create_app
    from service.server import build_server

    servers: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        settings = make_settings(**{"port": free_port(), **overrides})
        app = create_app(settings)
        server = build_server(app, settings)
        thread = threading.Thread(target=server.run, name="live-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the live server did not start"
            time.sleep(0.01)
        live = LiveServer(f"http://127.0.0.1:{settings.port}", app, server, thread)
        servers.append(live)
        return live

    yield start
    for live in servers:
        live.stop()
