"""A private Redis Cluster on 127.0.0.1 for ``seats dev --cluster`` (and the test suite's cluster).

Six ``redis-server --cluster-enabled yes`` on free ports, each in a directory of its own, joined by
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` (3 primaries, 3 replicas), and
ready once every node says ``cluster_state:ok``, agrees on one slot map and every replica's link is
up (Redis Cluster tutorial, "Create a Redis Cluster"). The caller owns the processes: ``stop_all`` of
:mod:`service.devrunner` ends them (each is its own process group).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

NODES: Final = 6  # 3 primaries + 3 replicas (--cluster-replicas 1)
BUS_PORT_OFFSET: Final = 10_000  # a node's cluster bus listens on port + 10000 (Redis Cluster spec)
DEV_NODE_TIMEOUT_MS: Final = 5_000  # a silent primary is replaced after 5 s (Redis's default is 15 s)
JOIN_TIMEOUT_SECONDS: Final = 60.0
SETTLE_TIMEOUT_SECONDS: Final = 30.0


class ClusterStartError(RuntimeError):
    """The private cluster could not be started; the message says why."""


def free_cluster_port() -> int:
    """A free port on 127.0.0.1 whose cluster bus port (port + 10000) is free as well."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port
    raise ClusterStartError("no free port pair (port, port + 10000) for a cluster node")


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` from PATH (the join needs ``redis-cli --cluster``)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        raise ClusterStartError("a private cluster needs redis-server and redis-cli on PATH "
                                "(Debian/Ubuntu: apt install redis-server redis-tools)")
    return server, cli


def node_command(server: str, port: int, data_dir: Path, *, node_timeout_ms: int = DEV_NODE_TIMEOUT_MS,
                 persistent: bool = False) -> list[str]:
    """The command line of one cluster node on 127.0.0.1:``port`` keeping its files in ``data_dir``.

    ``persistent``: AOF (everysec), so a node restarted by a test keeps its data; otherwise nothing is
    saved. ``noeviction`` as the service requires (spec §12); a replica may always take over
    (``cluster-replica-validity-factor 0``: the default refuses one that lost its link for long).
    """
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
    return [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", str(data_dir / "nodes.conf"), "--cluster-node-timeout", str(node_timeout_ms),
            "--save", "", *persistence, "--dir", str(data_dir), "--logfile", str(data_dir / "redis.log"),
            "--daemonize", "no", "--maxmemory-policy", "noeviction", "--cluster-require-full-coverage", "yes",
            "--cluster-replica-validity-factor", "0"]


def wait_for_node(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """Block until the node on ``port`` answers PING."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process is not None and process.poll() is not None:
                raise ClusterStartError(f"redis-server on port {port} exited with {process.returncode}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise ClusterStartError(f"redis-server on port {port} did not answer within {timeout:g} s")
            time.sleep(0.02)
    finally:
        client.close()  # type: ignore[no-untyped-call]


def join(cli: str, ports: Sequence[int]) -> None:
    """``redis-cli --cluster create`` with one replica per primary (the first half become primaries)."""
    done = subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas",
                           "1", "--cluster-yes"], capture_output=True, text=True, timeout=JOIN_TIMEOUT_SECONDS,
                          check=False)
    if done.returncode != 0:
        raise ClusterStartError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-2000:]}")


def settled(ports: Sequence[int]) -> bool:
    """Whether every node says ``cluster_state:ok``, all agree on the slot map, replicas are in sync."""
    try:
        views: set[tuple[tuple[int, int, int], ...]] = set()
        states: set[str] = set()
        synced = True
        for port in ports:
            client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2, decode_responses=True)
            try:
                info: dict[str, Any] = client.cluster("info")  # type: ignore[assignment]  # sync client
                states.add(str(info["cluster_state"]))
                slots: list[Any] = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                views.add(tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)))
                replication: dict[str, Any] = client.info("replication")  # type: ignore[assignment]
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    synced = False
            finally:
                client.close()  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return False
    return states == {"ok"} and len(views) == 1 and synced


def wait_settled(ports: Sequence[int], timeout: float = SETTLE_TIMEOUT_SECONDS,
                 alive: Callable[[], None] | None = None) -> None:
    """Block until :func:`settled` (``alive`` raises when a node died meanwhile)."""
    deadline = time.monotonic() + timeout
    while not settled(ports):
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise ClusterStartError(f"the cluster did not settle within {timeout:g} s")
        time.sleep(0.1)


@dataclass
class DevCluster:
    """The nodes of a private cluster: ``seeds`` is the value of ``SEATS_REDIS_URL`` for it."""

    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def seeds(self) -> str:
        """Comma-separated seed URLs (every node: any of them can serve the slot map)."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in self.ports)

    def check_alive(self) -> None:
        """Raise ClusterStartError when a node has exited."""
        for port, process in zip(self.ports, self.processes, strict=True):
            if process.poll() is not None:
                raise ClusterStartError(f"redis-server on port {port} exited with {process.returncode}")


def start_cluster(root: Path, *, node_timeout_ms: int = DEV_NODE_TIMEOUT_MS,
                  started: list[subprocess.Popen[bytes]] | None = None) -> DevCluster:
    """Start, join and settle a 6-node cluster under ``root`` (a directory per node).

    Every process started is appended to ``started`` as soon as it exists, so a caller's cleanup ends
    it even when a later step fails. Raises ClusterStartError.
    """
    server, cli = cluster_binaries()
    cluster = DevCluster()
    for index in range(NODES):
        directory = root / f"node{index}"
        directory.mkdir()
        port = free_cluster_port()
        process = subprocess.Popen(node_command(server, port, directory, node_timeout_ms=node_timeout_ms),
                                   start_new_session=True, stdout=subprocess.DEVNULL)
        if started is not None:
            started.append(process)
        cluster.ports.append(port)
        cluster.processes.append(process)
        wait_for_node(port, process)  # bound before the next free port is picked
    join(cli, cluster.ports)
    wait_settled(cluster.ports, alive=cluster.check_alive)
    return cluster
