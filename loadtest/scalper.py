"""The ``scalper`` scenario: one subject tries to take a flight while 50 honest subjects go on buying.

On one 300-seat flight, 50 honest subjects (an address each) swap between selections of a 4-seat block
of their own, one write every 1.0-1.5 s: under the production limit (``60/60``, one write a second on
average). They are measured alone, then again while ONE scalper subject (one address) runs
``--scalper-loops`` loops with no pacing at all: create orders, hold as many of the other 100 seats as
it can (asking for exactly what a cap refusal says is left), cancel and start over when refused.

The scalper runs in a process of its own (``python -m loadtest.scalper``), as it would on a machine of
its own: in the harness's event loop its flood would delay the honest clients' own callbacks, and that
delay would read as server latency. It sends its recorded requests back at the end.

Reported: the honest holds' p50/p99 alone and with the scalper (ratios in ``loadtest.cli.RATIOS``),
the scalper's requests by outcome, and the most seats it ever held at once, sampled from Redis every
``SAMPLE_SECONDS``: a seat key ``H|<order>|<deadline>`` counts when its order's ``subject`` (recorded
by the service at creation) is the scalper's. The scenario's invariants (a violation fails the run):
the scalper was refused by the seat cap at least once (or there is no cap to check), it never held
more seats than the cap its refusals state, and no honest request was refused by a control.

It needs the production limits and a trusted 127.0.0.1: the spawned service keeps the limits
(``loadtest.cli.SCENARIO_SPAWN``), a ``--url`` target must have them and trust 127.0.0.1
(``SEATS_TRUSTED_PROXIES``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from loadtest.client import Client, Reply, request_headers
from loadtest.invariants import seat_ids
from loadtest.pacing import closed_loop
from loadtest.scenarios import Context, Load, Owner, Phase, SetupFailed, bounded, create_orders, drive, new_flight
from loadtest.stats import Recorder, Series
from service.settings import Settings
from service.store import keys
from service.subjects import Subject

SCALPER_ROWS, SCALPER_COLUMNS = 30, "ABCDEFGHIJ"
HONEST_SUBJECTS, HONEST_BLOCK = 50, 4  # rows 1-20 are the honest blocks, rows 21-30 the scalper's hunt
HONEST_PAUSE_SECONDS = (1.0, 1.5)  # between one honest subject's writes: < 1/s, under the default 60/60
SCALPER_ADDRESS = "203.0.113.66"  # TEST-NET-3 (RFC 5737): apart from the honest crowd's 198.18.0.0/15
SCALPER_GRAB = Settings().max_seats_per_order  # what one order may hold at most (a bigger ask is a 422)
SAMPLE_SECONDS = 0.01
SCALPER_START_SECONDS = 30.0  # the scalper process's start-up (imports), then its run + this to report
OUTCOMES = ("accepted", "rate_limited", "subject_limit_reached", "other")


@dataclass
class Scalper:
    """What the scalper did (counted in its process) and what the samples of its holds saw."""

    orders_created: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)  # "other" outcomes by "<status> <error>"
    seat_caps: set[int] = field(default_factory=set)  # the limits its seat-cap refusals stated
    peak: int = 0
    samples: int = 0
    sampled_seconds: float = 0.0

    def label(self, reply: Reply) -> str:
        """Count the reply's outcome; its name in the recorder."""
        if 200 <= reply.status < 300:
            outcome = "accepted"
        else:
            outcome = reply.refusal or "other"
            if outcome == "other":
                self.other[f"{reply.status} {_error_code(reply)}".strip()] += 1
        self.outcomes[outcome] += 1
        return f"scalper.{outcome}"

    def tally(self) -> dict[str, Any]:
        """What the scalper's process sends back (JSON-ready)."""
        return {"orders_created": self.orders_created, "outcomes": dict(self.outcomes), "other": dict(self.other),
                "seat_caps": sorted(self.seat_caps)}

    @classmethod
    def from_tally(cls, tally: dict[str, Any]) -> Scalper:
        """The inverse of :meth:`tally`."""
        return cls(tally["orders_created"], Counter(tally["outcomes"]), Counter(tally["other"]),
                   set(tally["seat_caps"]))

    def report(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"address": SCALPER_ADDRESS, "orders_created": self.orders_created,
                "outcomes": {name: self.outcomes[name] for name in OUTCOMES}, "other": dict(self.other),
                "peak_held_seats": self.peak, "seat_cap": min(self.seat_caps, default=None), "samples": self.samples,
                "sample_interval_ms": round(self.sampled_seconds / self.samples * 1000, 1) if self.samples else None}

    def violations(self) -> list[str]:
        """The cap was seen and never passed."""
        if not self.seat_caps:
            return ["scalper: never refused by the seat cap (SEATS_MAX_HELD_SEATS_PER_SUBJECT off?): "
                    "nothing bounded it"]
        cap = min(self.seat_caps)
        if self.peak > cap:
            return [f"scalper: held {self.peak} seats at once, over its cap of {cap}"]
        return []


def _error_code(reply: Reply) -> str:
    try:
        body = reply.json()
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


async def run_scalper(ctx: Context) -> list[Phase]:
    """Honest subjects alone, then the same subjects while the scalper runs: two phases on one flight."""
    if ctx.redis_url is None:
        raise SetupFailed("the scalper scenario samples the scalper's seats from Redis: "
                          "give --redis-url or use --spawn")
    load = Load(ctx.load.duration, ctx.load.warmup, None, HONEST_SUBJECTS)
    client = Client(ctx.base_url, Recorder(), connections=HONEST_SUBJECTS)
    store = aioredis.Redis.from_url(ctx.redis_url, decode_responses=True)
    try:
        flight = await new_flight(ctx, client, "S", SCALPER_ROWS, SCALPER_COLUMNS)
        ids = seat_ids(SCALPER_ROWS, SCALPER_COLUMNS)
        honest = Honest(ctx, client, await create_orders(ctx, client, flight, HONEST_SUBJECTS),
                        [ids[i * HONEST_BLOCK:(i + 1) * HONEST_BLOCK] for i in range(HONEST_SUBJECTS)])
        await honest.first_holds()
        alone = client.recorder = Recorder()
        pacing, usage = await drive(ctx, alone, honest.step, None, load)
        phases = [Phase("honest alone", alone, ["honest"], pacing, usage,
                        {"flight": flight, "honest_subjects": HONEST_SUBJECTS})]
        crowded = client.recorder = Recorder()
        process = await _start_scalper(ctx, flight)
        try:
            # The window drive() is about to use (it starts 0.05 s from now): the scalper records the same one.
            measure_from = time.monotonic() + 0.05 + load.warmup
            until = measure_from + load.duration
            assert process.stdin is not None
            process.stdin.write(f"{measure_from} {until}\n".encode())
            await process.stdin.drain()
            finished = asyncio.create_task(_scalper_result(process, until))
            sampled = Scalper()
            watching = asyncio.create_task(_watch_peak(store, flight, ids, sampled, finished))
            pacing, usage = await drive(ctx, crowded, honest.step, None, load)
            scalper, series = await finished
            await watching
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await client.close()
        await store.aclose()
    scalper.peak, scalper.samples, scalper.sampled_seconds = sampled.peak, sampled.samples, sampled.sampled_seconds
    crowded.series.update(series)  # one recorder: the endpoints table, and API CPU per request over both
    extra = {"flight": flight, "honest_subjects": HONEST_SUBJECTS, "scalper_loops": ctx.scalper_loops,
             "scalper": scalper.report(), "honest_refused": dict(honest.refused)}
    violations = scalper.violations() + [f"honest subjects refused {n} times ({why})"
                                         for why, n in sorted(honest.refused.items())]
    phases.append(Phase("honest with scalper", crowded, ["honest"], pacing, usage, extra, violations))
    return phases


class Honest:
    """The 50 honest subjects: one order each, swapping inside a block of their own at a human pace."""

    def __init__(self, ctx: Context, client: Client, owners: list[Owner], blocks: list[list[str]]) -> None:
        self.ctx, self.client, self.owners, self.blocks = ctx, client, owners, blocks
        self.refused: Counter[str] = Counter()  # requests a control refused (there should be none)

    async def first_holds(self) -> None:
        """Each subject holds its whole block once (set-up, untimed)."""
        replies = await bounded([self.client.call(None, "POST", f"/orders/{o.order_id}/seats",
                                                  json={"seats": block}, headers=o.headers)
                                 for o, block in zip(self.owners, self.blocks, strict=True)])
        if any(r.status != 200 for r in replies):
            raise SetupFailed(f"the honest subjects' first holds answered {sorted({r.status for r in replies})}")

    async def step(self, index: int) -> None:
        """Think, then swap to another 2-3 seats of the block."""
        rng = self.ctx.rng
        await asyncio.sleep(rng.uniform(*HONEST_PAUSE_SECONDS))
        owner = self.owners[index]
        wanted = rng.sample(self.blocks[index], rng.randint(2, HONEST_BLOCK - 1))
        await self.client.call(self._label, "POST", f"/orders/{owner.order_id}/seats", json={"seats": wanted},
                               headers=owner.headers)

    def _label(self, reply: Reply) -> str:
        if reply.refusal:
            self.refused[reply.refusal] += 1
        return "honest"


# --------------------------------------------------------------------------- the scalper's process


async def _start_scalper(ctx: Context, flight: str) -> asyncio.subprocess.Process:
    """Start ``python -m loadtest.scalper`` and wait until it is ready to be told its window."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.scalper", ctx.base_url, flight, str(ctx.scalper_loops),
        str(ctx.rng.randrange(2**32)), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), SCALPER_START_SECONDS)
    except TimeoutError:
        ready = b""
    if ready.strip() != b"ready":
        process.kill()
        await process.wait()
        raise SetupFailed("the scalper's process did not start")
    return process


async def _scalper_result(process: asyncio.subprocess.Process, until: float) -> tuple[Scalper, dict[str, Series]]:
    """The scalper's tally and recorded requests, once its loops end (killed if it overstays)."""
    try:
        out, _ = await asyncio.wait_for(process.communicate(), until - time.monotonic() + SCALPER_START_SECONDS)
    except TimeoutError:
        raise SetupFailed("the scalper's process did not finish") from None
    if process.returncode != 0:
        raise SetupFailed(f"the scalper's process exited with {process.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return Scalper.from_tally(result["tally"]), {k: Series.from_dict(v) for k, v in result["series"].items()}


async def _watch_peak(store: aioredis.Redis, flight: str, ids: list[str], sampled: Scalper,
                      running: asyncio.Task[Any]) -> None:
    """Sample the flight's seats until the scalper is done (and once after): the most it held at once.

    A seat key is ``H|<order>|<deadline>`` while held (it lapses at the deadline by itself), so one MGET
    of the flight's seats is one instant; each holding order's ``subject`` is read once, when first seen.
    """
    seat_keys = [keys.seat(flight, s) for s in ids]
    scalper_subject = str(Subject("address", SCALPER_ADDRESS))
    is_scalpers: dict[str, bool] = {}  # order id -> created by the scalper
    started = time.monotonic()
    while True:
        done = running.done()
        holders = [value.split("|", 2)[1] for value in await store.mget(seat_keys) if value and value[0] == "H"]
        unknown = list({order for order in holders if order not in is_scalpers})
        if unknown:
            pipe = store.pipeline(transaction=False)
            for order in unknown:
                pipe.hget(keys.order(flight, order), "subject")
            for order, subject in zip(unknown, await pipe.execute(), strict=True):
                is_scalpers[order] = subject == scalper_subject
        sampled.peak = max(sampled.peak, sum(1 for order in holders if is_scalpers[order]))
        sampled.samples += 1
        if done:
            sampled.sampled_seconds = time.monotonic() - started
            return
        await asyncio.sleep(SAMPLE_SECONDS)


async def _scalp(base_url: str, flight: str, loops: int, rng: random.Random) -> dict[str, Any]:
    """The scalper's process: ``loops`` unpaced loops of one subject over the window read from stdin."""
    recorder = Recorder()
    scalper = Scalper()
    client = Client(base_url, recorder, connections=loops)
    create = request_headers(address=SCALPER_ADDRESS, json=True)
    hunt = seat_ids(SCALPER_ROWS, SCALPER_COLUMNS)[HONEST_SUBJECTS * HONEST_BLOCK:]

    async def loop(_index: int, until: float) -> None:
        owner: Owner | None = None
        held: list[str] = []
        want = SCALPER_GRAB
        while time.monotonic() < until:
            if owner is None:
                reply = await client.call(scalper.label, "POST", "/orders", json={"flightId": flight}, headers=create)
                if reply.status == 201:
                    body = reply.json()
                    owner = Owner(body["orderId"], body["token"],
                                  request_headers(address=SCALPER_ADDRESS, token=body["token"], json=True))
                    scalper.orders_created += 1
                    held, want = [], SCALPER_GRAB
                continue
            wanted = rng.sample(hunt, want)
            path = f"/orders/{owner.order_id}"
            reply = await client.call(scalper.label, "POST", f"{path}/seats", json={"seats": wanted},
                                      headers=owner.headers)
            if reply.status == 200:
                held, want = wanted, min(SCALPER_GRAB, want + 1)  # got it: try for more
                continue
            if reply.conflict:
                continue  # another of its own loops has one of them: other seats
            if reply.refusal == "subject_limit_reached":
                left = _seats_left(reply, scalper) + len(held)  # this order's seats are given back by a swap
                if left > 0:
                    want = min(SCALPER_GRAB, left)  # ask for exactly what the cap still allows
                    continue
            # Rate limited, capped with nothing left, or the order closed: drop it and start over.
            if (await client.call(scalper.label, "DELETE", path, headers=owner.headers)).status != 429:
                owner = None

    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    measure_from, until = (float(v) for v in line.split())
    recorder.window(measure_from, until)
    try:
        await closed_loop(loop, loops, until)
    finally:
        await client.close()
    return {"tally": scalper.tally(), "series": {k: v.to_dict() for k, v in recorder.series.items()}}


def _seats_left(reply: Reply, scalper: Scalper) -> int:
    """From a seat-cap refusal (``details: {limit, current, kind: "seats"}``): seats the subject may still add."""
    details = reply.json().get("details") or {}
    if details.get("kind") != "seats":
        return 0
    scalper.seat_caps.add(int(details["limit"]))
    return int(details["limit"]) - int(details["current"])


def main(argv: list[str] | None = None) -> None:
    """``python -m loadtest.scalper BASE_URL FLIGHT LOOPS SEED``: prints ``ready``, reads ``<measure from>
    <until>`` (monotonic seconds, the clock every process of this machine shares) from stdin, runs, then
    prints one JSON line: the tally and the recorded requests (``loadtest.stats.Series.to_dict``)."""
    import uvloop

    from service.process import freeze_startup_heap

    base_url, flight, loops, seed = sys.argv[1:] if argv is None else argv
    freeze_startup_heap()
    rng = random.Random(int(seed))  # noqa: S311 - reproducible load, not secrets
    print(json.dumps(uvloop.run(_scalp(base_url, flight, int(loops), rng))), flush=True)


if __name__ == "__main__":
    main()
