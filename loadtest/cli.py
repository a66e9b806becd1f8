"""``seats loadtest``: options, the run (baseline, scenarios, repeats), the invariant check, the report.

Only argparse is imported at module level: ``seats api`` builds its parser with these options
and must not pay for aiohttp.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtest.scenarios import Context, Phase

SCENARIO_NAMES = ("hold", "contended", "full", "read", "pay", "scalper", "faults")
SPAWN_DEFAULTS = {
    "SEATS_HOLD_SECONDS": "10",  # short holds: expiry happens inside a run
    "SEATS_PAYMENT_LATENCY_SECONDS": "0.05",
    "SEATS_PAYMENT_BACKOFF_SECONDS": "0.05",
    "SEATS_TRUSTED_PROXIES": "127.0.0.1/32",  # the harness is the proxy: its X-Forwarded-For names each user
}
# What each scenario needs of a spawned service on top of SPAWN_DEFAULTS (--env still wins). None: the
# service's own default. Scenarios whose needs differ cannot share one service (a usage error).
# Limiter and caps stay on (every write still runs them) but refuse nothing a throughput run does.
UNREFUSED: dict[str, str | None] = {"SEATS_RATE_LIMIT_WRITES": "1000000/1"}
PRODUCTION_LIMITS: dict[str, str | None] = dict.fromkeys(
    ("SEATS_RATE_LIMIT_WRITES", "SEATS_MAX_HELD_SEATS_PER_SUBJECT", "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT"))
SCENARIO_SPAWN: dict[str, dict[str, str | None]] = {
    "hold": UNREFUSED,  # ~40 swaps/s per order, far above 60/60
    "contended": UNREFUSED,
    "full": UNREFUSED,
    "read": {},  # reads are not limited
    "pay": UNREFUSED,
    "scalper": PRODUCTION_LIMITS,  # the point is to meet them
    "faults": {},  # runs a system of its own (loadtest.faults.SERVICE_ENV)
}
# --compare-controls: the second service, for "hold controls off".
CONTROLS_OFF = {"SEATS_RATE_LIMIT_WRITES": "off", "SEATS_MAX_HELD_SEATS_PER_SUBJECT": "0",
                "SEATS_MAX_OPEN_ORDERS_PER_SUBJECT": "0"}
BASELINE_BODY = {"seats": ["1A", "1B", "1C", "1D"]}
EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2
ARQ_BASELINE_TIMEOUT_SECONDS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``seats loadtest`` options."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--spawn", action="store_true",
                        help="start a private redis-server, seats api and seats worker (see --env)")
    target.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8080 (127.0.0.1 only); it must "
                                      "trust 127.0.0.1 (SEATS_TRUSTED_PROXIES=127.0.0.1/32) or every simulated "
                                      "user is one subject, and have limits that suit the scenario (throughput "
                                      "scenarios: e.g. SEATS_RATE_LIMIT_WRITES=1000000/1; scalper: the defaults)")
    parser.add_argument("--scenario", action="append", choices=SCENARIO_NAMES,
                        help="hold | contended | full | read | pay | scalper | faults; repeatable (default: hold); "
                             "scalper cannot share a spawned service with hold, contended, full or pay; faults "
                             "runs alone, with --spawn: buyers and payments under injected faults, a recorded "
                             "history, a checker")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase (default 2)")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=float, help="open loop: arrivals per second (latency from scheduled time)")
    pacing.add_argument("--users", type=int, help="closed loop: concurrent users (default 32)")
    parser.add_argument("--baseline", action="store_true",
                        help="also load a bare Litestar app with the same client and report ratios "
                             "(with 'pay': also time no-op jobs through an arq worker tuned the same)")
    parser.add_argument("--compare-controls", action="store_true",
                        help="with --spawn and 'hold': also run each hold phase against a second service with "
                             "the limiter and caps off (" + ", ".join(f"{k}={v}" for k, v in CONTROLS_OFF.items())
                             + "), right after the controlled one, and report what the controls cost")
    parser.add_argument("--cluster", action="store_true",
                        help="with --spawn and 'hold': also spawn the same service on a private 6-node Redis Cluster "
                             "(3 primaries, 3 replicas; the queue on a private Redis), run each hold phase there right "
                             "after the standalone one, report cluster / standalone, and then time the two "
                             "transports' CPU per EVALSHA side by side (loadtest.bench_transport)")
    parser.add_argument("--standalone-replica", action="store_true",
                        help="with --spawn: give the spawned standalone Redis a replica (REPLICAOF), so --cluster "
                             "compares like with like (each of the cluster's primaries feeds a replica too)")
    parser.add_argument("--repeat", type=int, default=1, help="run everything N times, report medians (default 1)")
    parser.add_argument("--report", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--env", action="append", default=[], metavar="SEATS_X=VALUE",
                        help="a setting for the spawned service (repeatable; wins over the scenario's own); "
                             "defaults: " + ", ".join(f"{k}={v}" for k, v in SPAWN_DEFAULTS.items())
                             + f"; hold, contended, full, pay: {', '.join(f'{k}={v}' for k, v in UNREFUSED.items())} "
                             "(limiter and caps on, refusing nothing); scalper: the service's own limits")
    parser.add_argument("--redis-url", default=os.environ.get("SEATS_REDIS_URL"),
                        help="with --url: the service's Redis, for the invariant check (default $SEATS_REDIS_URL)")
    parser.add_argument("--admin-token", default=os.environ.get("SEATS_ADMIN_TOKEN"),
                        help="with --url: SEATS_ADMIN_TOKEN, to create the test flights")
    parser.add_argument("--api-pid", type=int,
                        help="with --url: the API's process id, to report its CPU per request")
    parser.add_argument("--watchers", type=int, default=20, help="passive SSE watchers in 'full' (default 20)")
    parser.add_argument("--pay-orders", type=int, default=3000, help="orders paying in 'pay' (default 3000)")
    parser.add_argument("--pay-drain", action="store_true",
                        help="with --spawn: in 'pay', queue every payment with the worker stopped, then time its drain")
    parser.add_argument("--scalper-loops", type=int, default=16,
                        help="in 'scalper': the scalper's concurrent, unpaced loops (default 16)")


class UsageError(ValueError):
    """Options that cannot run together (exit 2)."""


def spawn_env(args: argparse.Namespace) -> dict[str, str]:
    """The spawned service's settings: SPAWN_DEFAULTS, then each scenario's SCENARIO_SPAWN, then ``--env``.

    Raises UsageError for a malformed ``--env``, for scenarios that need different settings of one
    service, and for ``--compare-controls`` without ``--spawn`` or the hold scenario.
    """
    names = args.scenario or ["hold"]
    if args.compare_controls and not args.spawn:
        raise UsageError("--compare-controls needs --spawn (it starts a second service without controls)")
    if args.compare_controls and "hold" not in names:
        raise UsageError("--compare-controls compares the hold phase: add --scenario hold")
    if args.standalone_replica and not args.spawn:
        raise UsageError("--standalone-replica needs --spawn")
    if args.cluster and (not args.spawn or "hold" not in names):
        raise UsageError("--cluster needs --spawn and --scenario hold (it starts the same service on a cluster)")
    env = dict(SPAWN_DEFAULTS)
    needed: dict[str, tuple[str, str | None]] = {}  # setting: (scenario, value)
    for name in dict.fromkeys(names):
        for setting, value in SCENARIO_SPAWN[name].items():
            first, wanted = needed.setdefault(setting, (name, value))
            if wanted != value and args.spawn:
                raise UsageError(f"--scenario {first} and --scenario {name} cannot share one spawned service "
                                 f"({setting}: {wanted or 'the default'} vs {value or 'the default'}); "
                                 "run them separately")
    for setting, (_, value) in needed.items():
        if value is not None:
            env[setting] = value
    for item in args.env:
        setting, sep, value = item.partition("=")
        if not sep or not setting.startswith("SEATS_"):
            raise UsageError(f"--env expects SEATS_NAME=VALUE, got {item!r}")
        env[setting] = value
    return env


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest``."""
    parser = argparse.ArgumentParser(prog="seats loadtest", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run what ``args`` asks for; print the table; returns the exit code."""
    from loadtest.client import NotLocal, check_local
    from loadtest.report import table, write_json
    from loadtest.scenarios import SetupFailed

    try:
        env = spawn_env(args)
    except UsageError as exc:
        print(f"seats loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the context managers: every spawned process is stopped

    signal.signal(signal.SIGTERM, stop)
    if "faults" in (args.scenario or []):
        return _run_fault_run(args)
    try:
        if args.url:
            check_local(args.url)
        report = _run_sync(args, env)
    except (NotLocal, SetupFailed, RuntimeError) as exc:
        print(f"seats loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(table(report), flush=True)
    if args.report:
        write_json(report, args.report)
        print(f"report written to {args.report}")
    return EXIT_OK if report["invariants"].get("ok") is not False else EXIT_VIOLATION


def _run_fault_run(args: argparse.Namespace) -> int:
    """``--scenario faults``: its own system (it kills it), history and checker (``loadtest.faults``)."""
    import asyncio
    from pathlib import Path

    from loadtest.faults import FaultConfig, run_faults, table
    from loadtest.report import write_json

    if not args.spawn or args.scenario != ["faults"]:
        print("seats loadtest: the faults scenario runs alone and needs --spawn (it kills what it starts)",
              file=sys.stderr)
        return EXIT_USAGE
    overrides = dict(item.partition("=")[::2] for item in args.env)
    config = FaultConfig(duration=args.duration, buyers=args.users or 16, seed=args.seed, env=overrides)
    history = Path(args.report).with_suffix(".history.jsonl") if args.report else None
    result = asyncio.run(run_faults(config, history_path=history))
    print(table(result), flush=True)
    if args.report:
        write_json(result, args.report)
        print(f"report written to {args.report}" + (f", history to {history}" if history else ""))
    return EXIT_OK if result["violations"] == 0 else EXIT_VIOLATION


def _run_sync(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    import contextlib

    from loadtest.system import pause_tree, spawn_baseline, spawn_system

    with contextlib.ExitStack() as stack:
        if args.spawn:
            env.setdefault("SEATS_ADMIN_TOKEN", secrets.token_urlsafe(16))
            system = stack.enter_context(spawn_system(env, replica=args.standalone_replica))
            target = Target(system.base_url, system.redis_url, env["SEATS_ADMIN_TOKEN"], dict(system.roots))
            if args.pay_drain:
                target.pause_worker = functools.partial(pause_tree, system.roots["worker"])
            if args.compare_controls:
                bare = stack.enter_context(spawn_system({**env, **CONTROLS_OFF}))
                target.controls_off = Target(bare.base_url, bare.redis_url, env["SEATS_ADMIN_TOKEN"], dict(bare.roots))
            if args.cluster:
                on_cluster = stack.enter_context(spawn_system(env, cluster=True))
                target.cluster = Target(on_cluster.base_url, on_cluster.redis_url, env["SEATS_ADMIN_TOKEN"],
                                        dict(on_cluster.roots))
        else:
            target = Target(args.url.rstrip("/"), args.redis_url, args.admin_token or "",
                            {"api": args.api_pid} if args.api_pid else {})
        if args.baseline:
            target.baseline_url, target.roots_baseline = stack.enter_context(spawn_baseline())
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings it
            import asyncio
            return asyncio.run(_run(args, env, target))
        return uvloop.run(_run(args, env, target))
    raise AssertionError("unreachable")


@dataclass
class Target:
    """What is loaded: the service (and its Redis) and, with ``--baseline``, the bare app."""

    base_url: str
    redis_url: str | None
    admin_token: str
    roots: dict[str, int]
    baseline_url: str | None = None
    roots_baseline: int = 0
    pause_worker: Callable[[bool], None] | None = None
    controls_off: Target | None = None  # --compare-controls: the same service without limiter and caps
    cluster: Target | None = None  # --cluster: the same service on a private Redis Cluster


async def _run(args: argparse.Namespace, env: dict[str, str], target: Target) -> dict[str, Any]:
    import random

    from loadtest.scenarios import Context, Load
    from service.process import freeze_startup_heap

    freeze_startup_heap()  # the client's own full collections (40-60 ms measured) would read as server latency
    load = Load(args.duration, args.warmup, args.rate, args.users or 32)
    names = args.scenario or ["hold"]
    rng = random.Random(args.seed)  # noqa: S311 - reproducible load, not secrets
    ctx = Context(target.base_url, target.admin_token, load, rng, run_id=f"{args.seed}{secrets.token_hex(2)}",
                  redis_url=target.redis_url, watchers=args.watchers, pay_orders=args.pay_orders,
                  pause_worker=target.pause_worker, scalper_loops=args.scalper_loops)
    main = _Service(target, ctx)
    services = [main]
    if target.controls_off is not None:  # the same context (seed, addresses), its own flights
        off = target.controls_off
        services.append(_Service(off, dataclasses.replace(ctx, base_url=off.base_url, redis_url=off.redis_url,
                                                          pause_worker=None, flights=[]), " controls off"))
    if target.cluster is not None:
        on_cluster = target.cluster
        services.append(_Service(on_cluster, dataclasses.replace(ctx, base_url=on_cluster.base_url, flights=[],
                                                                 redis_url=on_cluster.redis_url, pause_worker=None),
                                 " cluster"))
    runs: dict[str, list[dict[str, Any]]] = {}
    violations: list[str] = []  # the scenarios' own invariants
    try:
        for _ in range(max(1, args.repeat)):
            # Each baseline phase runs right before the phase it is compared with: side by side.
            pending = {"baseline POST": ("POST", "/echo/x"), "baseline GET": ("GET", "/version/x")}
            if "read" not in names:
                del pending["baseline GET"]
            for name in names:
                wanted = "baseline GET" if name == "read" else "baseline POST"
                if target.baseline_url is not None and wanted in pending:
                    method, path = pending.pop(wanted)
                    ctx.probe = _probe({"baseline": target.roots_baseline}, None)
                    runs.setdefault(wanted, []).append(await _baseline_phase(ctx, target.baseline_url, method, path))
                if name == "pay" and target.baseline_url is not None and target.redis_url:
                    runs.setdefault("baseline arq", []).append(await _arq_baseline(target.redis_url, args.pay_orders))
                for service in services if name == "hold" else [main]:
                    violations += await service.measure(name, runs)
        invariants = await _invariants(services, violations)
    finally:
        for service in services:
            await service.scrape.close()
    report = _assemble(args, env, ctx, runs, invariants=invariants, redis_url=target.redis_url)
    if target.cluster is not None and target.redis_url and target.cluster.redis_url:
        report["transport"] = await _transport_bench(target.redis_url, target.cluster.redis_url)
    return report


async def _transport_bench(standalone_url: str, cluster_seeds: str) -> dict[str, Any]:
    """``loadtest.bench_transport`` on the spawned Redis and cluster, in a process of its own (its CPU is
    the figure; the services are idle by then)."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.bench_transport", "--standalone-url", standalone_url,
        "--cluster-seeds", cluster_seeds, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), ARQ_BASELINE_TIMEOUT_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"the transport benchmark failed: {err.decode(errors='replace')[-500:]}")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


class _Service:
    """One service under load: its context (its flights), its /metrics scraper, the suffix of its phases."""

    def __init__(self, target: Target, ctx: Context, suffix: str = "") -> None:
        from loadtest.client import Client
        from loadtest.stats import Recorder

        self.target, self.ctx, self.suffix = target, ctx, suffix
        self.scrape = Client(target.base_url, Recorder(), connections=4)

    async def metrics(self) -> Any:
        """The service's /metrics, parsed."""
        from loadtest.report import parse_metrics

        return parse_metrics((await self.scrape.call(None, "GET", "/metrics")).body.decode())

    async def measure(self, name: str, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Run scenario ``name``; append its phases to ``runs``; the scenario's own violations."""
        from loadtest.report import server_view
        from loadtest.scenarios import SCENARIOS

        self.ctx.probe = _probe(self.target.roots, self.target.redis_url)
        before = await self.metrics()
        phases = await SCENARIOS[name](self.ctx)
        view = server_view(before, await self.metrics())
        for phase in phases:
            entry = _phase_entry(phase)
            entry["server_metrics"] = view
            runs.setdefault(phase.name + self.suffix, []).append(entry)
        return [violation for phase in phases for violation in phase.violations]

    async def check(self) -> Any:
        """The end-of-run invariant check of every flight this service's phases touched."""
        from loadtest.invariants import check_all

        assert self.target.redis_url is not None
        return await check_all(self.target.redis_url, self.scrape, self.ctx.flights)


async def _invariants(services: list[_Service], violations: list[str]) -> dict[str, Any]:
    """Every service's flights checked, plus the scenarios' own invariants."""
    from loadtest.invariants import InvariantReport

    if any(service.target.redis_url is None for service in services):
        return {"ok": False if violations else None, "skipped": "no Redis URL (give --redis-url)",
                "violations": violations}
    report = InvariantReport(violations=list(violations))
    for service in services:
        report.add(await service.check())
    return report.as_dict()


def _probe(roots: dict[str, int], redis_url: str | None) -> Any:
    """CPU seconds of the given process trees and this one, plus Redis's command counts."""
    from loadtest.system import CpuMeter

    meter = CpuMeter(roots)

    async def probe() -> dict[str, float]:
        usage = {f"cpu.{k}": v for k, v in meter.read().items()}
        if redis_url:
            from loadtest.system import command_calls

            calls = await command_calls(redis_url)
            usage.update({f"redis.{k.removeprefix('cmdstat_')}": v for k, v in calls.items()})
        return usage

    return probe


async def _baseline_phase(ctx: Context, url: str, method: str, path: str) -> dict[str, Any]:
    """The bare app loaded like the service: the same users, each with its own X-Forwarded-For."""
    import itertools

    from loadtest.client import Client
    from loadtest.scenarios import Phase, _pool_size, drive
    from loadtest.stats import Recorder

    recorder = Recorder()
    pool = _pool_size(ctx.load)
    client = Client(url, recorder, connections=pool)
    body = BASELINE_BODY if method == "POST" else None
    users = ctx.crowd_headers(pool, json=body is not None)
    turns = itertools.cycle(users)
    name = f"baseline {method}"
    try:
        async def user_step(index: int) -> None:
            await client.call(name, method, path, json=body, headers=users[index])

        async def open_step(scheduled: float) -> None:
            await client.call(name, method, path, json=body, headers=next(turns), scheduled=scheduled)

        pacing, usage = await drive(ctx, recorder, user_step, open_step)
    finally:
        await client.close()
    return _phase_entry(Phase(name, recorder, [name], pacing, usage), server="baseline")


async def _arq_baseline(redis_url: str, jobs: int) -> dict[str, Any]:
    """No-op jobs drained by an arq worker tuned as ``seats worker`` (``loadtest.arq_baseline``)."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.arq_baseline", redis_url, str(jobs),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), ARQ_BASELINE_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("the arq baseline did not finish") from None
    if process.returncode != 0:
        raise RuntimeError(f"the arq baseline failed: {err.decode(errors='replace')[-500:]}")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


def _phase_entry(phase: Phase, server: str = "api") -> dict[str, Any]:
    summary = phase.recorder.summary(phase.headline)
    requests_in_window = phase.recorder.summary().requests
    entry: dict[str, Any] = summary.as_dict()
    cpu = {k.removeprefix("cpu."): v for k, v in phase.usage.items() if k.startswith("cpu.")}
    entry["server_cpu_us_per_req"] = (round(cpu[server] / requests_in_window * 1e6, 1)
                                      if cpu.get(server) and requests_in_window else None)
    entry["cpu_seconds"] = cpu
    calls = {k.removeprefix("redis."): v for k, v in phase.usage.items() if k.startswith("redis.") and v}
    entry["redis_calls_per_req"] = ({k: round(v / requests_in_window, 2) for k, v in sorted(calls.items())
                                     if v / requests_in_window >= 0.01} if requests_in_window else {})
    entry["pacing"] = {"scheduled": phase.pacing.scheduled, "shed": phase.pacing.shed,
                       "max_lag_ms": round(phase.pacing.max_lag_ms, 1), "cancelled": phase.pacing.cancelled}
    endpoints = phase.recorder.per_endpoint()
    entry["endpoints"] = {k: v.as_dict() for k, v in endpoints.items()} if len(endpoints) > 1 else {}
    entry["extra"] = phase.extra
    return entry


def _median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run's details with the median of each headline figure across repeats."""
    from loadtest.report import median_of

    merged = dict(entries[-1])
    for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_us_per_req"):
        merged[key] = median_of([e.get(key) for e in entries])
    for key in ("errors", "conflicts", "refused", "requests"):
        merged[key] = sum(e[key] for e in entries)
    if len(entries) > 1:
        merged["repeats"] = [{k: e.get(k) for k in ("rps", "p99_ms", "server_cpu_us_per_req")} for e in entries]
    payments = [e["extra"].get("payments_per_s") for e in entries if e.get("extra")]
    if any(p is not None for p in payments):
        merged["extra"] = {**merged["extra"], "payments_per_s": median_of(payments)}
    scalpers = [e["extra"]["scalper"] for e in entries if e.get("extra", {}).get("scalper")]
    if len(scalpers) > 1:  # the worst repeat's peak, every repeat's requests
        outcomes = {k: sum(s["outcomes"][k] for s in scalpers) for k in scalpers[-1]["outcomes"]}
        merged["extra"] = {**merged["extra"], "scalper": {
            **scalpers[-1], "outcomes": outcomes, "peak_held_seats": max(s["peak_held_seats"] for s in scalpers)}}
    return merged


def _median_figures(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure across repeats, and the repeats themselves."""
    from loadtest.report import median_of

    merged: dict[str, Any] = {key: round(median_of([e[key] for e in entries]) or 0, 1) for key in entries[0]}
    if len(entries) > 1:
        merged["repeats"] = entries
    return merged


def _assemble(args: argparse.Namespace, env: dict[str, str], ctx: Context, runs: dict[str, list[dict[str, Any]]], *,
              invariants: dict[str, Any], redis_url: str | None) -> dict[str, Any]:
    from loadtest.system import machine

    merged = {name: _median_entry(entries) for name, entries in runs.items() if name != "baseline arq"}
    baseline = merged.pop("baseline POST", None) or {}
    bare_get = merged.pop("baseline GET", None)
    if bare_get is not None:
        baseline["get"] = bare_get
    if "baseline arq" in runs:
        baseline["arq_noop"] = _median_figures(runs["baseline arq"])

    ratios, per_repeat = _ratios(runs)
    return {
        "config": {
            "scenarios": args.scenario or ["hold"], "duration_s": args.duration, "warmup_s": args.warmup,
            "mode": "open" if args.rate else "closed", "rate": args.rate, "users": ctx.load.users,
            "baseline": args.baseline, "repeat": args.repeat, "seed": args.seed,
            "target": "spawn" if args.spawn else args.url,
            "settings": {k: v for k, v in env.items() if k != "SEATS_ADMIN_TOKEN"} if args.spawn else None,
            "settings_controls_off": CONTROLS_OFF if args.compare_controls else None,
            "cluster": args.cluster, "standalone_replica": args.standalone_replica,
            "flights": ctx.flights, "command": " ".join(["seats", "loadtest", *sys.argv[2:]]),
        },
        "machine": machine(redis_url),
        "baseline": baseline or None,
        "scenarios": merged,
        "ratios": ratios,
        "ratios_per_repeat": per_repeat,
        "invariants": invariants,
    }


RATIOS = {  # name: (numerator phase, denominator phase, figure); "cpu" ratios are baseline µs / service µs
    "hold_vs_baseline": ("hold", "baseline POST", "rps"),
    "hold_cpu_vs_baseline": ("baseline POST", "hold", "server_cpu_us_per_req"),
    # --compare-controls: the same hold without limiter and caps, and what they cost (on / off: the req/s
    # kept, below 1 a loss; the API CPU per hold, above 1 a cost)
    "hold_controls_off_vs_baseline": ("hold controls off", "baseline POST", "rps"),
    "hold_cpu_controls_off_vs_baseline": ("baseline POST", "hold controls off", "server_cpu_us_per_req"),
    "controls_rps_on_over_off": ("hold", "hold controls off", "rps"),
    "controls_cpu_on_over_off": ("hold", "hold controls off", "server_cpu_us_per_req"),
    # --cluster: the hold on a private Redis Cluster; cluster / standalone is the hold ratio kept on a cluster
    # (both against the same bare POST of the repeat: target >= 0.9), and its API CPU per hold (above 1 a cost)
    "hold_cluster_vs_baseline": ("hold cluster", "baseline POST", "rps"),
    "hold_cpu_cluster_vs_baseline": ("baseline POST", "hold cluster", "server_cpu_us_per_req"),
    "cluster_hold_ratio_over_standalone": ("hold cluster", "hold", "rps"),
    "cluster_cpu_per_hold_over_standalone": ("hold cluster", "hold", "server_cpu_us_per_req"),
    # scalper: the honest subjects' latency with the scalper running / alone
    "scalper_honest_p50_with_over_alone": ("honest with scalper", "honest alone", "p50_ms"),
    "scalper_honest_p99_with_over_alone": ("honest with scalper", "honest alone", "p99_ms"),
    "read_304_vs_bare_get": ("seats 304", "baseline GET", "rps"),
    "read_304_cpu_vs_bare_get": ("baseline GET", "seats 304", "server_cpu_us_per_req"),
    "version_vs_bare_get": ("seats/version", "baseline GET", "rps"),
    "version_cpu_vs_bare_get": ("baseline GET", "seats/version", "server_cpu_us_per_req"),
}


def _ratios(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, float | None], list[dict[str, float | None]]]:
    """Each ratio computed within each repeat (side by side), then the median across repeats."""
    from loadtest.report import median_of, ratio

    repeats = max((len(v) for v in runs.values()), default=0)
    per_repeat: list[dict[str, float | None]] = []
    for index in range(repeats):
        def figure(phase: str, key: str, index: int = index) -> float | None:
            entries = runs.get(phase, [])
            return entries[index].get(key) if index < len(entries) else None

        one = {name: ratio(figure(a, key), figure(b, key)) for name, (a, b, key) in RATIOS.items()}
        contended = runs["contended"][index]["endpoints"] if index < len(runs.get("contended", [])) else {}
        pay = runs["pay"][index]["extra"] if index < len(runs.get("pay", [])) else {}
        arq = runs["baseline arq"][index] if index < len(runs.get("baseline arq", [])) else {}
        one["pay_vs_arq_noop"] = ratio(pay.get("payments_per_s"), arq.get("jobs_per_s"))
        one["contended_refused_p99_over_accepted"] = ratio(
            contended.get("hold.refused", {}).get("p99_ms"), contended.get("hold.accepted", {}).get("p99_ms"))
        per_repeat.append(one)
    names = [*RATIOS, "pay_vs_arq_noop", "contended_refused_p99_over_accepted"]
    return {name: median_of([r[name] for r in per_repeat]) for name in names}, per_repeat
