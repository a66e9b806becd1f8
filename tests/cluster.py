"""A real local Redis Cluster for tests: 6 ``redis-server --cluster-enabled yes`` (3 primaries, 3 replicas)
on free ports, joined by ``redis-cli --cluster create``, with the handles tests need to hurt it
(kill a primary, fail over, migrate a slot)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from service.devcluster import free_cluster_port, join, node_command
from tests.conftest import _die_with_parent

NODE_TIMEOUT_MS = 1500  # how long a silent primary is trusted before its replica takes over


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required for the cluster tests (.ci/run installs it)"
        # the node `seats dev --cluster` runs, with AOF (a restarted node keeps its data) and a quick failover
        self.process = subprocess.Popen(
            node_command(binary, self.port, self.data_dir, node_timeout_ms=NODE_TIMEOUT_MS, persistent=True),
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call
        )
        self.client().ping()

    def client(self) -> redis.Redis:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the node dies without a word (its replica takes over after NODE_TIMEOUT_MS)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    """3 primaries + 3 replicas on 127.0.0.1; ``url`` is the seed list for ``SEATS_REDIS_URL``."""

    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes[:3])

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process and n.process.poll() is None]

    def primary_of(self, key: str) -> ClusterNode:
        """The node that serves ``key``'s slot now."""
        return self.primary_of_slot(redis.crc.key_slot(key.encode()))

    def primary_of_slot(self, slot: int) -> ClusterNode:
        """The node that serves ``slot`` now."""
        for node in self.alive():
            for start, end, primary, *_ in node.client().execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return self.node_at(int(primary[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def node_at(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """A replica that follows ``primary`` now."""
        for node in self.alive():
            info = node.client().info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                return node
        raise AssertionError(f"no replica of {primary.port}")

    def primaries(self) -> list[ClusterNode]:
        """The live nodes that are primaries now."""
        return [n for n in self.alive() if n.client().info("replication").get("role") == "master"]

    def failover(self, replica: ClusterNode, timeout: float = 30.0) -> None:
        """``CLUSTER FAILOVER`` on ``replica`` (graceful: its primary stops taking writes until the replica
        has them all, then the two swap roles); returns once ``replica`` is a primary."""
        client = replica.client()
        client.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + timeout
        while client.info("replication").get("role") != "master":
            assert time.monotonic() < deadline, f"{replica.port} did not take over"
            time.sleep(0.05)

    def migrate_slot(self, slot: int, target: ClusterNode, batch: int = 10, pause: float = 0.0) -> int:
        """Move ``slot`` to primary ``target`` as ``redis-cli --cluster reshard`` does (Redis Cluster
        specification, "Live reconfiguration"): SETSLOT IMPORTING/MIGRATING, MIGRATE its keys ``batch`` at
        a time (``pause`` s between batches, so clients meet ASK/TRYAGAIN), then SETSLOT NODE on the
        target, the source and every other primary. Returns how many keys moved."""
        source = self.primary_of_slot(slot)
        assert source is not target, "the slot is on the target already"
        src, dst = source.client(), target.client()
        source_id, target_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)
        for node in [target, source, *[n for n in self.primaries() if n not in (target, source)]]:
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def flush(self) -> None:
        """Empty every primary (replicas follow)."""
        for node in self.alive():
            with contextlib.suppress(redis.ResponseError):  # replicas refuse writes
                if node.client().info("replication").get("role") == "master":
                    node.client().flushall()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and agrees that live primaries serve every slot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                live = {n.port for n in self.alive()}
                states = [n.client().cluster("info")["cluster_state"] for n in self.alive()]
                owners = {tuple(sorted((s[0], s[1], s[2][1]) for s in n.client().execute_command("CLUSTER SLOTS")))
                          for n in self.alive()}
                served_by = {port for view in owners for _, _, port in view}
                links = [n.client().info("replication") for n in self.alive()]
                synced = all(i.get("master_link_status") == "up" for i in links if i.get("role") == "slave")
                if set(states) == {"ok"} and len(owners) == 1 and served_by <= live and synced:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("the cluster did not settle")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def cluster_env(seeds: str, queue_url: str) -> dict[str, str]:
    """The ``SEATS_*`` variables of a ``seats`` process on a cluster (``seeds``: its seed list); the payment
    queue stays on the single Redis at ``queue_url`` (arq cannot use a cluster)."""
    return {"SEATS_REDIS_CLUSTER": "true", "SEATS_REDIS_URL": seeds, "SEATS_QUEUE_REDIS_URL": queue_url}


@contextlib.contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """Start, join and settle a 6-node cluster; stop it afterwards."""
    with tempfile.TemporaryDirectory(prefix="seats-cluster-") as root:
        cluster = LocalCluster()
        try:
            for index in range(6):
                directory = Path(root) / f"node{index}"
                directory.mkdir()
                node = ClusterNode(free_cluster_port(), directory)
                node.start()
                cluster.nodes.append(node)
            join("redis-cli", [n.port for n in cluster.nodes])
            cluster.wait_ok()
            yield cluster
        finally:
            cluster.stop()
