"""The container image, built and run from the Dockerfile's own steps without a Docker engine.

The builder stage's ``COPY`` sources are copied from a build context that honours ``.dockerignore``,
its ``RUN`` steps run as written (absolute paths the image populates, ``/src`` and ``/opt/venv``,
live under a temporary root), and the final stage keeps only what it copies ``--from`` the builder.
Then the final stage's ``CMD`` runs with the image's ``ENV``, and every service of compose.yaml with
the environment compose gives it, each set in a private network namespace (its own 127.0.0.1, so the
image's ports are used as they are; compose hostnames map to 127.0.0.1), and the image's and
compose's health checks must pass. What only an engine can check is listed in README ("Containers").

Not run here: the final stage's ``RUN`` (it creates the image's user, which here would change this
machine), ``USER`` and the base image itself (this machine's Python stands in for ``python:3.11-slim``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import _ENV_NAMES
from tests.conftest import REPO
from tests.dockerfile import Rootfs, Stage, build_context, copy_into, env_pairs, expand, parse

pytestmark = pytest.mark.e2e

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:3.11-slim's PATH
# The Python wheels come from this machine's package index configuration, as the builder's network would.
PASSED_THROUGH = ("PIP_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
FLOW = """
import json, sys, time, urllib.request
base = sys.argv[1]
seat = sys.argv[2] if len(sys.argv) > 2 else "1A"
def call(method, path, body=None, token=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)
order = call("POST", "/orders", {"flightId": "FL-001"})
oid, token = order["orderId"], order["token"]
call("POST", f"/orders/{oid}/seats", {"seats": [seat]}, token)
call("POST", f"/orders/{oid}/payment", {"code": "12345"}, token)
for _ in range(300):
    state = call("GET", f"/orders/{oid}", token=token)["state"]
    if state in ("CONFIRMED", "FAILED"):
        print(state)
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"the payment was never processed: {state}")
"""


@dataclass
class Image:
    """The built image: its root, the final stage, and the environment its ``ENV`` gives a container."""

    rootfs: Rootfs
    final: Stage
    env: dict[str, str]

    def command(self, words: list[str]) -> list[str]:
        """An exec-form command as it runs in the container (owned paths moved under the root)."""
        return [self.rootfs.rewrite(word) for word in words]


def _base_env(shim: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_THROUGH)}
    return {**env, "PATH": f"{shim}:{BASE_PATH}", "HOME": str(home), "LANG": "C.UTF-8"}


def _python_shim(base_image: str, directory: Path) -> Path:
    """``python``/``python3`` of the base image, played by this machine's interpreter of the same version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert base_image.startswith(f"python:{version}"), f"{base_image} needs Python {version} here to stand in for it"
    directory.mkdir()
    for name in ("python", "python3", f"python{version}"):
        (directory / name).symlink_to(getattr(sys, "_base_executable", sys.executable))
    return directory


def _apply_env(stage: Stage, env: dict[str, str], rootfs: Rootfs) -> None:
    for instruction in stage.all("ENV"):
        for name, value in env_pairs(instruction.args):
            env[name] = rootfs.rewrite(expand(value, env))


def _run_builder(stage: Stage, rootfs: Rootfs, context: Path, env: dict[str, str]) -> None:
    """Every instruction of a builder stage, in order; a failing ``RUN`` fails the test with its output."""
    workdir = "/"
    for instruction in stage.instructions:
        if instruction.keyword == "ENV":
            for name, value in env_pairs(instruction.args):
                env[name] = rootfs.rewrite(expand(value, env))
        elif instruction.keyword == "WORKDIR":
            workdir = instruction.args
            rootfs.path(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            assert "from" not in instruction.flags, "a builder stage copying from another stage is not emulated"
            *sources, destination = instruction.args.split()
            target = destination if destination.startswith("/") else f"{workdir.rstrip('/')}/{destination}"
            copy_into(context, sources, rootfs.path(target))
        elif instruction.keyword == "RUN":
            done = subprocess.run(["/bin/sh", "-c", rootfs.rewrite(instruction.args)], cwd=rootfs.path(workdir),
                                  env=env, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, f"RUN {instruction.args} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def _start_final(stage: Stage, rootfs: Rootfs) -> None:
    """The final stage starts from a fresh base image: of the builder's files, only ``COPY --from`` keeps any."""
    kept = {source for i in stage.all("COPY") if "from" in i.flags for source in i.args.split()[:-1]}
    for owned in rootfs.owned - kept:
        if not any(owned.startswith(k + "/") or owned == k for k in kept):
            shutil.rmtree(rootfs.path(owned), ignore_errors=True)
    for instruction in stage.all("COPY"):
        *sources, destination = instruction.args.split()
        assert "from" in instruction.flags and sources == [destination], \
            f"only `COPY --from=<stage> <path> <same path>` is emulated in the final stage: {instruction.args}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Build the image from the Dockerfile's own steps (about a minute: pip downloads every wheel)."""
    tmp = tmp_path_factory.mktemp("image")
    stages = parse(DOCKERFILE.read_text())
    rootfs = Rootfs.for_image(tmp / "rootfs", stages)
    context = build_context(REPO, tmp / "context")
    shim = _python_shim(stages[0].base, tmp / "base-image-bin")
    for stage in stages[:-1]:
        _run_builder(stage, rootfs, context, _base_env(shim, tmp / "home"))
    final = stages[-1]
    _start_final(final, rootfs)
    env = _base_env(shim, tmp / "home")
    _apply_env(final, env, rootfs)
    return Image(rootfs, final, env)


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode == 0


def _run_in_netns(spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    if not _netns_available():
        pytest.skip("needs `unshare --net` (root, util-linux, iproute2) to give the container its own 127.0.0.1")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run(
        ["unshare", "--net", "--fork", "--kill-child", sys.executable, str(REPO / "tests" / "container_run.py"),
         str(spec_file)], capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _healthcheck(image: Image) -> dict[str, Any]:
    """The image's HEALTHCHECK as a probe: retried through its start period and retries, as Docker would."""
    instruction = image.final.all("HEALTHCHECK")[-1]
    words = instruction.exec_form()
    assert words, f"HEALTHCHECK should use the exec form: {instruction.args}"
    seconds = sum(float(instruction.flags.get(f, d).rstrip("s")) * n for f, d, n in
                  (("start-period", "0s", 1), ("interval", "30s", int(instruction.flags.get("retries", "3")))))
    return {"name": "image HEALTHCHECK", "argv": image.command(words), "env": image.env, "seconds": seconds}


def _cmd(image: Image) -> list[str]:
    words = image.final.all("CMD")[-1].exec_form()
    assert words, "CMD should use the exec form"
    return image.command(words)


def _report_failures(report: dict[str, Any]) -> str:
    """The failing checks in full, then the rest of the report (logs last, cut to fit)."""
    failing = {name: check for name, check in report["checks"].items() if not check["ok"]}
    return (json.dumps({"failing": failing, "exited": report["exited"]}, indent=1)
            + json.dumps(report["logs"], indent=1)[-6000:])


def test_image_cmd_serves_and_passes_its_healthcheck(image: Image, tmp_path: Path) -> None:
    """The final stage's CMD, with only the image's ENV and a Redis at its default address, passes HEALTHCHECK."""
    redis = {"name": "redis", "argv": ["redis-server", "--save", "", "--appendonly", "no"], "env": {},
             "cwd": str(tmp_path), "ready": {"name": "redis answers", "argv": ["redis-cli", "ping"], "env": {},
                                             "seconds": 10}}
    ready = {"name": "ready", "argv": [image.command(["python"])[0], "-c",
             "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"],
             "env": image.env, "seconds": 20}
    report = _run_in_netns({"start": [redis, {"name": "api", "argv": _cmd(image), "env": image.env,
                                              "cwd": str(tmp_path), "ready": None}],
                            "checks": [_healthcheck(image), ready]}, tmp_path)
    assert all(c["ok"] for c in report["checks"].values()), _report_failures(report)
    assert report["exited"]["api"] is None, _report_failures(report)


def _compose_env(service: dict[str, Any], hostnames: set[str]) -> dict[str, str]:
    """A service's environment as compose interpolates it (from an empty shell), its hostnames on 127.0.0.1."""
    raw = service.get("environment") or {}
    pairs = dict(item.split("=", 1) for item in raw) if isinstance(raw, list) else raw
    env = {}
    for name, value in pairs.items():
        text = expand(str(value), {})
        for host in hostnames:
            text = text.replace(f"//{host}:", "//127.0.0.1:")
        env[str(name)] = text
    return env


def _words(command: str | list[str], hostnames: set[str]) -> list[str]:
    """A command as compose runs it (``$$`` is a literal ``$``), its hostnames mapped to 127.0.0.1 where they name
    a host: ``host:port``, ``-h host`` (as a word after ``-h`` or inside a shell script)."""
    words = command.split() if isinstance(command, str) else [str(w) for w in command]
    names = "|".join(map(re.escape, sorted(hostnames, key=len, reverse=True)))
    pattern = re.compile(rf"(?<![\w.-])(?:{names})(?=:\d)|(?<=-h )(?:{names})(?=\s|$)")
    mapped = [pattern.sub("127.0.0.1", word.replace("$$", "$")) for word in words]
    return [("127.0.0.1" if word in hostnames and index and mapped[index - 1] == "-h" else word)
            for index, word in enumerate(mapped)]


def _profile(compose: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """The services ``docker compose [--profile P] up`` starts: those without profiles, or those of P only."""
    services: dict[str, Any] = compose["services"]

    def wanted(service: dict[str, Any]) -> bool:
        profiles = service.get("profiles") or []
        return profile in profiles if profile else not profiles

    chosen = {name: service for name, service in services.items() if wanted(service)}
    for name, service in chosen.items():
        missing = set(service.get("depends_on") or {}) - set(chosen)
        assert not missing, f"{name} depends on {missing}, outside its profile"
    return chosen


def _one_shot(services: dict[str, Any]) -> set[str]:
    """Services others wait for to finish (``condition: service_completed_successfully``)."""
    return {dependency for service in services.values() for dependency, how in (service.get("depends_on") or {}).items()
            if isinstance(how, dict) and how.get("condition") == "service_completed_successfully"}


def _compose_services(image: Image, tmp_path: Path, profile: str | None = None) -> list[dict[str, Any]]:
    """Every compose service of ``profile`` as a process: ours run the image's venv, redis images this machine's
    redis-server and redis-cli (compose hostnames on 127.0.0.1)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = _profile(compose, profile)
    hostnames = set(compose["services"])
    one_shot = _one_shot(services)
    started = []
    for name in _start_order(services):
        service = services[name]
        env = _compose_env(service, hostnames)
        if "build" in service or service.get("image") == "seats:local":
            argv = image.command(_words(service.get("command") or _cmd(image), hostnames))
            started.append({"name": name, "argv": argv, "env": {**image.env, **env}, "cwd": str(tmp_path),
                            "ready": None})
            continue
        assert str(service.get("image", "")).startswith("redis:"), f"{name}: no stand-in for {service.get('image')}"
        data = tmp_path / f"{name}-data"
        data.mkdir()
        ready = None
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD-SHELL", test
            ready = {"name": f"{name} healthcheck", "argv": ["/bin/sh", "-c", test[1].replace("$$", "$")],
                     "env": {"PATH": BASE_PATH}, "seconds": 15}
        started.append({"name": name, "argv": _words(service["command"], hostnames), "env": {"PATH": BASE_PATH, **env},
                        "cwd": str(data), "ready": ready, "completes": 90 if name in one_shot else None})
    return started


def _start_order(services: dict[str, Any]) -> list[str]:
    """Services after those they depend on (compose's ``depends_on``)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency)
        ordered.append(name)

    for name in services:
        visit(name)
    return ordered


def test_compose_services_run_with_compose_environment(image: Image, tmp_path: Path) -> None:
    """Every default compose service's command runs with compose's environment: API healthy, worker pays, metrics
    served (the `cluster` profile's services are not started by a plain `docker compose up`)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    worker_env = _compose_env(compose["services"]["worker"], set(compose["services"]))
    python = image.command(["python"])[0]
    checks = [
        _healthcheck(image),
        {"name": "a payment is processed by the worker", "argv": [python, "-c", FLOW, "http://127.0.0.1:8080"],
         "env": image.env, "seconds": 30, "every": 1},
        {"name": "worker metrics", "argv": [python, "-c", "import urllib.request; urllib.request.urlopen("
                                            f"'http://127.0.0.1:{worker_env['SEATS_WORKER_METRICS_PORT']}/metrics')"],
         "env": image.env, "seconds": 20},
    ]
    report = _run_in_netns({"start": _compose_services(image, tmp_path), "checks": checks}, tmp_path)
    assert all(c["ok"] for c in report["checks"].values()), _report_failures(report)
    assert all(code is None for code in report["exited"].values()), _report_failures(report)
    assert not any(name.startswith("cluster") for name in report["exited"]), "the cluster profile is not default"


CLUSTER_KEYS = """
import sys, redis
ports = [int(p) for p in sys.argv[1:]]
infos = [redis.Redis(port=p, decode_responses=True).cluster("info") for p in ports]
assert {i["cluster_state"] for i in infos} == {"ok"} and {int(i["cluster_size"]) for i in infos} == {3}, infos
primaries = [p for p in ports if redis.Redis(port=p).info("replication")["role"] == "master"]
assert len(primaries) == 3, primaries
assert sum(redis.Redis(port=p).dbsize() for p in primaries) > 0, "no key on the cluster"
print("ok", primaries)
"""


def test_compose_cluster_profile_runs_with_compose_environment(image: Image, tmp_path: Path) -> None:
    """Profile `cluster`: six nodes, the one-shot join, a queue Redis, two APIs and two workers, each with compose's
    command and environment: the join completes, both APIs pass the image's HEALTHCHECK and /readyz (every primary,
    the queue), a payment made through each API is processed, the keys are on the cluster, both workers serve
    metrics, and nothing but the join has exited."""
    compose = yaml.safe_load(COMPOSE.read_text())
    cluster = _profile(compose, "cluster")
    hostnames = set(compose["services"])
    python = image.command(["python"])[0]
    venv_python = image.command(["/opt/venv/bin/python"])[0]
    checks: list[dict[str, Any]] = []
    nodes = []
    for service in cluster.values():
        words = _words(service["command"], hostnames)
        if "--cluster-enabled" in words:
            nodes.append(words[words.index("--port") + 1])
    apis = [name for name, s in cluster.items() if s.get("command") == ["seats", "api"]]
    workers = [name for name, s in cluster.items() if s.get("command") == ["seats", "worker"]]
    assert len(nodes) == 6 and len(apis) == 2 and len(workers) == 2, (nodes, apis, workers)
    for seat, name in zip(("1A", "1B"), apis, strict=True):
        port = _compose_env(cluster[name], hostnames)["SEATS_PORT"]
        env = {**image.env, "SEATS_PORT": port}
        checks += [
            {**_healthcheck(image), "name": f"{name} HEALTHCHECK", "env": env},
            {"name": f"{name} ready", "argv": [python, "-c", "import urllib.request; urllib.request.urlopen("
                                                f"'http://127.0.0.1:{port}/readyz', timeout=2)"],
             "env": image.env, "seconds": 20},
            {"name": f"a payment through {name} is processed",
             "argv": [python, "-c", FLOW, f"http://127.0.0.1:{port}", seat], "env": image.env, "seconds": 30,
             "every": 1},
        ]
    for name in workers:
        port = _compose_env(cluster[name], hostnames)["SEATS_WORKER_METRICS_PORT"]
        checks.append({"name": f"{name} metrics", "argv": [python, "-c", "import urllib.request; urllib.request."
                                                            f"urlopen('http://127.0.0.1:{port}/metrics')"],
                       "env": image.env, "seconds": 20})
    checks.append({"name": "the data is on the cluster", "argv": [venv_python, "-c", CLUSTER_KEYS, *nodes],
                   "env": image.env, "seconds": 10})
    report = _run_in_netns({"start": _compose_services(image, tmp_path, "cluster"), "checks": checks}, tmp_path)
    assert report["checks"].get("cluster-join completed", {}).get("ok"), _report_failures(report)
    assert all(c["ok"] for c in report["checks"].values()), _report_failures(report)
    running = {name: code for name, code in report["exited"].items() if name not in _one_shot(cluster)}
    assert all(code is None for code in running.values()), _report_failures(report)


def test_load_harness_is_left_out_and_says_so(image: Image) -> None:
    """The image has no load harness: `seats loadtest` says how to get it instead of failing with a traceback."""
    done = subprocess.run(image.command(["seats", "loadtest", "--spawn"]), env=image.env, capture_output=True,
                          text=True, timeout=60, check=False)
    seats = image.rootfs.path("/opt/venv/bin/seats")
    assert seats.exists(), "the image's venv has no `seats` command"
    assert done.returncode == 2 and "not part of this installation" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def _seats_variables(text: str) -> set[str]:
    return set(re.findall(r"\bSEATS_[A-Z0-9_]+\b", text))


def test_every_seats_variable_of_the_deployment_is_a_setting() -> None:
    """Each SEATS_* variable named in compose.yaml or the Dockerfile is read by service/settings.py."""
    named = _seats_variables(COMPOSE.read_text()) | _seats_variables(DOCKERFILE.read_text())
    assert named, "expected the deployment files to set SEATS_* variables"
    unknown = named - set(_ENV_NAMES.values())
    assert not unknown, f"not settings (renamed or misspelt?): {sorted(unknown)}"
