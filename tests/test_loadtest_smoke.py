"""A short, bounded load smoke: the harness drives real processes and the end state stays consistent.

Correctness only: no speed threshold is asserted here (figures live in docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from loadtest.scenarios import HOLD_BLOCK
from service.settings import Settings
from tests.conftest import REPO, Processes

pytestmark = pytest.mark.e2e
# Behind a trusted 127.0.0.1 each simulated user must be a subject of its own: with one order, one
# 4-seat block and one stream allowed per subject, a crowd sharing a subject would be refused at once.
ONE_USER_ONE_SUBJECT = {
    "SEATS_TRUSTED_PROXIES": "127.0.0.1/32", "SEATS_RATE_LIMIT_WRITES": "1000000/1",
    "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT": "1", "SEATS_MAX_HELD_SEATS_PER_SUBJECT": str(HOLD_BLOCK),
    "SEATS_MAX_STREAMS_PER_SUBJECT": "1",
}


def run_harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m loadtest`` with ``args``; its output is shown when an assertion fails."""
    return subprocess.run([sys.executable, "-m", "loadtest", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_smoke_run_keeps_invariants_and_serves_no_5xx(processes: Processes, redis_url: str, tmp_path: Path) -> None:
    """hold, contended, full and read for ~2 s each, every user its own subject: invariants hold, no request
    gets a 5xx, and none is refused by a limit (one order, 4 seats and one stream per subject)."""
    env = {"SEATS_HOLD_SECONDS": "2", "SEATS_PAYMENT_FAILURE_RATE": "0.3", **ONE_USER_ONE_SUBJECT}
    base = processes.api(env=env)
    processes.worker(env=env)
    report_path = tmp_path / "report.json"
    result = run_harness(
        "--url", base, "--redis-url", redis_url, "--admin-token", "admin-secret",
        "--scenario", "hold", "--scenario", "contended", "--scenario", "full", "--scenario", "read",
        "--duration", "2", "--warmup", "0.5", "--users", "8", "--watchers", "3", "--seed", "7",
        "--report", str(report_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr + processes.output()
    report = json.loads(report_path.read_text())
    assert report["invariants"]["ok"] is True, report["invariants"]
    assert report["invariants"]["checked"]["flights"] == len(report["config"]["flights"]) >= 4
    for name, phase in report["scenarios"].items():
        assert phase["requests"] > 0, name
        for endpoint in [phase, *phase["endpoints"].values()]:
            assert not any(status.startswith("5") for status in endpoint["statuses"]), (name, endpoint)
            assert endpoint["errors"] == 0, (name, endpoint)
            assert endpoint["refused"] == 0, (name, endpoint)
    sse = report["scenarios"]["full"]["extra"]["sse"]
    assert sse["connected"] == sse["watchers"] == 3, sse
    contended = report["scenarios"]["contended"]
    assert contended["extra"]["hold_attempts"] > 0
    assert report["scenarios"]["hold"]["server_metrics"]["business"]["holds{accepted}"] > 0
    assert "invariants: OK" in result.stdout


def test_pay_scenario_confirms_every_payment(processes: Processes, redis_url: str, tmp_path: Path) -> None:
    """With a gateway that always accepts, every submitted payment ends CONFIRMED (each payer its own subject);
    with --baseline the arq yardstick drains as many no-op jobs on a queue of its own and leaves no key behind."""
    base = processes.api(env=ONE_USER_ONE_SUBJECT)
    processes.worker(env=ONE_USER_ONE_SUBJECT)
    report_path = tmp_path / "report.json"
    result = run_harness(
        "--url", base, "--redis-url", redis_url, "--admin-token", "admin-secret", "--scenario", "pay",
        "--pay-orders", "200", "--duration", "3", "--warmup", "0.5", "--users", "8", "--baseline",
        "--report", str(report_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr + processes.output()
    report = json.loads(report_path.read_text())
    extra = report["scenarios"]["pay"]["extra"]
    assert extra["states"] == {"CONFIRMED": 200}
    assert extra["payments_per_s"] > 0
    assert report["invariants"]["ok"] is True
    assert report["invariants"]["checked"]["seats_sold"] == 200
    arq = report["baseline"]["arq_noop"]
    assert arq["jobs"] == 200 and arq["jobs_per_s"] > 0
    assert report["ratios"]["pay_vs_arq_noop"] == pytest.approx(extra["payments_per_s"] / arq["jobs_per_s"], rel=0.01)
    leftovers = redis.Redis.from_url(redis_url).keys("*arq-baseline*")
    assert leftovers == []


def test_refuses_remote_targets() -> None:
    """A URL off this machine is refused before anything is sent (exit 2)."""
    result = run_harness("--url", "http://192.0.2.1:8080", "--duration", "1", timeout=30)
    assert result.returncode == 2
    assert "127.0.0.1 only" in result.stderr


def _report(result: subprocess.CompletedProcess[str], path: Path) -> dict[str, Any]:
    assert path.exists(), result.stdout + result.stderr
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_scalper_is_held_to_its_cap_while_honest_subjects_are_never_refused(tmp_path: Path) -> None:
    """Against a spawned service with the production limits, one address flooding writes holds at most the
    seat cap (sampled from Redis), is rate limited and capped, while 50 honest subjects are never refused."""
    report_path = tmp_path / "report.json"
    result = run_harness("--spawn", "--scenario", "scalper", "--duration", "2", "--warmup", "0.5",
                         "--scalper-loops", "4", "--report", str(report_path))
    report = _report(result, report_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["invariants"]["ok"] is True, report["invariants"]
    assert "SEATS_RATE_LIMIT_WRITES" not in report["config"]["settings"]  # the service's own 60/60
    alone, crowded = report["scenarios"]["honest alone"], report["scenarios"]["honest with scalper"]
    for phase in (alone, crowded):
        assert phase["requests"] > 0 and phase["refused"] == 0, phase
        assert set(phase["statuses"]) == {"200"}, phase["statuses"]
    assert crowded["extra"]["honest_refused"] == {}
    scalper = crowded["extra"]["scalper"]
    assert scalper["seat_cap"] == Settings().max_held_seats_per_subject
    assert 0 < scalper["peak_held_seats"] <= scalper["seat_cap"], scalper
    assert scalper["samples"] > 10
    outcomes = scalper["outcomes"]
    assert outcomes["accepted"] > 0 and outcomes["rate_limited"] > 0 and outcomes["subject_limit_reached"] > 0
    assert crowded["endpoints"]["scalper.rate_limited"]["refused"] > 0
    assert report["ratios"]["scalper_honest_p99_with_over_alone"] == pytest.approx(
        crowded["p99_ms"] / alone["p99_ms"], rel=0.01)
    assert "held at most" in result.stdout


def test_scalper_scenario_fails_against_a_service_without_caps(processes: Processes, redis_url: str,
                                                               tmp_path: Path) -> None:
    """With the caps off nothing bounds the scalper: the run reports the violation and exits 1."""
    env = {"SEATS_TRUSTED_PROXIES": "127.0.0.1/32"}  # the fixture's limits: no caps, a limiter that never refuses
    base = processes.api(env=env)
    processes.worker(env=env)
    report_path = tmp_path / "report.json"
    result = run_harness("--url", base, "--redis-url", redis_url, "--admin-token", "admin-secret",
                         "--scenario", "scalper", "--duration", "1", "--warmup", "0.3", "--scalper-loops", "2",
                         "--report", str(report_path))
    report = _report(result, report_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert report["invariants"]["ok"] is False
    assert any("never refused by the seat cap" in v for v in report["invariants"]["violations"])


def test_compare_controls_runs_each_hold_phase_against_a_service_without_controls(tmp_path: Path) -> None:
    """--compare-controls: in each repeat the hold phase runs again on a second service without limiter and caps;
    both are consistent, the controlled one runs more Redis commands per hold, and the ratios compare them."""
    report_path = tmp_path / "report.json"
    result = run_harness("--spawn", "--baseline", "--compare-controls", "--scenario", "hold", "--users", "4",
                         "--duration", "1", "--warmup", "0.3", "--repeat", "2", "--report", str(report_path),
                         timeout=240)
    report = _report(result, report_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["invariants"]["ok"] is True
    assert report["invariants"]["checked"]["flights"] == 4  # two repeats, two services
    assert report["config"]["settings"]["SEATS_RATE_LIMIT_WRITES"] == "1000000/1"
    assert report["config"]["settings_controls_off"]["SEATS_RATE_LIMIT_WRITES"] == "off"
    on, off = report["scenarios"]["hold"], report["scenarios"]["hold controls off"]
    for phase in (on, off):
        assert phase["requests"] > 0 and set(phase["statuses"]) == {"200"}, phase
        assert len(phase["repeats"]) == 2
    # The bucket and the caps are read and written inside each controlled hold's script, not in the other.
    assert sum(on["redis_calls_per_req"].values()) - sum(off["redis_calls_per_req"].values()) >= 2
    for index, ratios in enumerate(report["ratios_per_repeat"]):
        assert ratios["controls_rps_on_over_off"] == pytest.approx(
            on["repeats"][index]["rps"] / off["repeats"][index]["rps"], rel=0.01)
        for name in ("hold_vs_baseline", "hold_controls_off_vs_baseline", "controls_cpu_on_over_off"):
            assert ratios[name], (name, ratios)


def test_cluster_runs_each_hold_phase_on_a_private_cluster_too(tmp_path: Path) -> None:
    """--cluster (with --standalone-replica): each hold phase runs again on the same service on a private 6-node
    cluster; both are consistent (the invariants read the cluster), the cluster's commands are counted on its
    primaries, the cluster/standalone ratios are reported, and the transports' CPU per EVALSHA is measured."""
    report_path = tmp_path / "report.json"
    result = run_harness("--spawn", "--baseline", "--cluster", "--standalone-replica", "--scenario", "hold",
                         "--users", "4", "--duration", "1", "--warmup", "0.3", "--report", str(report_path),
                         timeout=300)
    report = _report(result, report_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["invariants"]["ok"] is True and report["invariants"]["checked"]["flights"] == 2
    standalone, cluster = report["scenarios"]["hold"], report["scenarios"]["hold cluster"]
    for phase in (standalone, cluster):
        assert phase["requests"] > 0 and set(phase["statuses"]) == {"200"}, phase
        assert phase["redis_calls_per_req"].get("evalsha", 0) >= 0.9, phase["redis_calls_per_req"]
    assert "replica" in standalone["cpu_seconds"], standalone["cpu_seconds"]
    assert sum(1 for name in cluster["cpu_seconds"] if name.startswith("redis ")) == 6, cluster["cpu_seconds"]
    ratios = report["ratios_per_repeat"][0]
    assert ratios["cluster_hold_ratio_over_standalone"] == pytest.approx(cluster["rps"] / standalone["rps"], rel=0.01)
    transport = report["transport"]
    assert transport["us_per_call"]["standalone"] > 0 and transport["us_per_call"]["cluster"] > 0, transport
    assert "cluster/standalone" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "http://127.0.0.1:9", "--cluster"], "--cluster needs --spawn"),
    (["--spawn", "--cluster", "--scenario", "read"], "--cluster needs --spawn and --scenario hold"),
    (["--url", "http://127.0.0.1:9", "--standalone-replica"], "--standalone-replica needs --spawn"),
    (["--spawn", "--scenario", "hold", "--scenario", "scalper"], "cannot share one spawned service"),
    (["--url", "http://127.0.0.1:9", "--compare-controls"], "--compare-controls needs --spawn"),
    (["--spawn", "--compare-controls", "--scenario", "read"], "add --scenario hold"),
])
def test_refuses_options_that_cannot_run_together(args: list[str], message: str) -> None:
    """Scenarios needing different services, or --compare-controls without a spawned hold, exit 2 at once."""
    result = run_harness(*args, "--duration", "1", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
