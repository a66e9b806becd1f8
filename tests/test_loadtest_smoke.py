"""A short, bounded load smoke: the harness drives real processes and the end state stays consistent.

Correctness only: no speed threshold is asserted here (figures live in docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, Processes

pytestmark = pytest.mark.e2e


def run_harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m loadtest`` with ``args``; its output is shown when an assertion fails."""
    return subprocess.run([sys.executable, "-m", "loadtest", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_smoke_run_keeps_invariants_and_serves_no_5xx(processes: Processes, redis_url: str, tmp_path: Path) -> None:
    """hold, contended, full and read for ~2 s each: invariants hold and no request gets a 5xx."""
    env = {"SEATS_HOLD_SECONDS": "2", "SEATS_PAYMENT_FAILURE_RATE": "0.3"}
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
    contended = report["scenarios"]["contended"]
    assert contended["extra"]["hold_attempts"] > 0
    assert report["scenarios"]["hold"]["server_metrics"]["business"]["holds{accepted}"] > 0
    assert "invariants: OK" in result.stdout


def test_pay_scenario_confirms_every_payment(processes: Processes, redis_url: str, tmp_path: Path) -> None:
    """With a gateway that always accepts, every submitted payment ends CONFIRMED; with --baseline the
    arq yardstick drains as many no-op jobs on a queue of its own and leaves no key behind."""
    base = processes.api()
    processes.worker()
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
