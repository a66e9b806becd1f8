"""`seats dev --cluster` as a user runs it: one command, a private 6-node Redis Cluster, Ctrl-C leaves nothing.

Spawned as a subprocess with a private TMPDIR; the test reads the ports it prints, talks to the cluster
nodes it started, makes an order through the API, pays it, and checks after SIGINT that every process
is gone, every port free and the temporary directories removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from service.store import keys
from tests.conftest import REPO, free_port
from tests.devrun import SeatsDev, listening

pytestmark = pytest.mark.e2e


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                                     if token else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _pids_naming(words: list[str], tmp: Path) -> list[int]:
    """Processes whose environment or command line names one of ``words``, or that work in ``tmp`` (a
    redis-server rewrites its title and environment, but keeps its ``--dir`` as working directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(word.encode() in blob for word in words) or cwd.startswith(str(tmp)):
            found.append(int(entry.name))
    return found


class DevCluster(SeatsDev):
    """One `seats dev --cluster` process with its own port and TMPDIR, and no SEATS_* of ours."""

    def __init__(self, tmp: Path) -> None:
        self.marker = uuid.uuid4().hex
        self.tmp = tmp
        super().__init__(free_port(), ["--cluster"], {"SEATS_DEV_TEST_MARKER": self.marker, "TMPDIR": str(tmp)},
                         keep_env=lambda name: not name.startswith("SEATS_"))


def test_dev_cluster_runs_the_service_on_a_private_cluster_and_leaves_nothing(tmp_path: Path) -> None:
    """One command: 6 nodes (3 primaries, 3 replicas) + a queue Redis + API + worker; an order is held and
    paid with its keys on the cluster; Ctrl-C stops every process, frees every port, removes every temp dir."""
    run = DevCluster(tmp_path)
    try:
        base = run.wait_for_url(90).rstrip("/")
        nodes, queue = run.ports("private Redis Cluster at"), run.ports("private queue Redis at")
        assert len(nodes) == 6 and len(queue) == 1, run.lines
        infos = [redis.Redis(port=p, decode_responses=True).cluster("info") for p in nodes]
        assert {i["cluster_state"] for i in infos} == {"ok"}
        assert {int(i["cluster_known_nodes"]) for i in infos} == {6} and {int(i["cluster_size"]) for i in infos} == {3}
        roles = [redis.Redis(port=p, decode_responses=True).info("replication")["role"] for p in nodes]
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3, roles

        status, ready = _call(base, "GET", "/readyz")
        assert status == 200 and not ready["failing"], ready
        status, order = _call(base, "POST", "/orders", {"flightId": "FL-001"})
        assert status == 201, order
        order_id, token = order["orderId"], order["token"]
        status, held = _call(base, "POST", f"/orders/{order_id}/seats", {"seats": ["1A", "1B"]}, token)
        assert status == 200, held
        status, _ = _call(base, "POST", f"/orders/{order_id}/payment", {"code": "12345"}, token)
        assert status in (200, 202), status
        deadline, state = time.monotonic() + 30, ""
        while time.monotonic() < deadline and state not in ("CONFIRMED", "FAILED"):
            state = _call(base, "GET", f"/orders/{order_id}", token=token)[1]["state"]
            time.sleep(0.2)
        assert state == "CONFIRMED", state

        # the data lives on the cluster (the primary owning {FL-001}'s slot and its replica), not on the queue Redis
        cluster = redis.RedisCluster(host="127.0.0.1", port=nodes[0], decode_responses=True)
        try:
            assert cluster.exists(keys.order("FL-001", order_id)) == 1
            owner = cluster.get_node_from_key(keys.order("FL-001", order_id))
            assert owner.port in nodes
        finally:
            cluster.close()
        assert redis.Redis(port=queue[0]).exists(keys.order("FL-001", order_id)) == 0
        assert any(tmp_path.glob("seats-dev-*/cluster/node0/nodes.conf")), "the nodes should keep their files in TMPDIR"
    finally:
        code = run.interrupt()
    assert code == 0, "".join(run.lines)
    assert "seats dev stopped" in "".join(run.lines)
    time.sleep(0.3)
    ports = [*nodes, *queue, run.port]
    assert [p for p in ports if listening(p)] == [], "a port is still served after Ctrl-C"
    assert _pids_naming([run.marker, *[f":{p}" for p in ports]], tmp_path) == []
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"


def test_ctrl_c_while_the_cluster_starts_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C before `seats dev --cluster` is ready (its nodes started, not yet joined or settled) stops at once:
    it says so, exits 1, and no process or directory is left."""
    run = DevCluster(tmp_path)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("seats-dev-*/cluster/node2")):  # some nodes are up, the cluster is not
        assert time.monotonic() < deadline and run.process.poll() is None, "the nodes never started"
        time.sleep(0.01)
    code = run.interrupt()
    assert code == 1, "".join(run.lines)
    assert "stopped before it was ready" in "".join(run.lines)
    assert not any("seats is running" in line for line in run.lines)
    time.sleep(0.3)
    assert _pids_naming([run.marker], tmp_path) == []
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"


def test_dev_cluster_refuses_a_redis_url(tmp_path: Path) -> None:
    """With SEATS_REDIS_URL set, `seats dev --cluster` refuses and says why (spec §12), starting nothing."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEATS_")}, "TMPDIR": str(tmp_path),
           "SEATS_REDIS_URL": "redis://127.0.0.1:1/0", "SEATS_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "service.cli", "dev", "--cluster"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "SEATS_REDIS_URL" in done.stderr, done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []
