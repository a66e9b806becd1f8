"""Payment jobs on a real redis-server: attempts, timeouts, at-least-once safety, unknown outcomes
resolved under the attempt's key (issue 10), refunds and settlement by the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import redis.asyncio

from service import errors
from service.expiry import sweep_once
from service.models import Order, PaymentsSummary
from service.orders import TRUSTED, OrderScripts, OrderStore
from service.payments import GatewayRecord, SimulatedGateway, attempt_key, process_payment, read_books, settle_payment
from service.settings import Settings
from service.store import keys
from service.store.errors import Refusal
from tests.helpers import CALLER, DomainRig, open_rig


@dataclass
class Rig:
    """An order store plus what the worker uses, on one settings object."""

    settings: Settings
    store: OrderStore
    order_scripts: OrderScripts
    gateway: SimulatedGateway
    enqueued: list[str]
    redis: Any  # a redis-py client to look inside Redis

    async def paying_order(self, order_id: str, seats: list[str]) -> tuple[Order, str]:
        created = await self.store.create("FL-001", order_id, CALLER)
        await self.store.select_seats(order_id, created.token, seats, CALLER)
        order = (await self.store.pay(order_id, created.token, "12345", CALLER)).order
        return order, self.enqueued[-1]

    async def run_job(self, order_id: str, payment_id: str) -> str:
        return await process_payment(self.order_scripts, self.gateway, self.settings, "FL-001", order_id, payment_id)

    async def fields(self, order_id: str) -> dict[str, str]:
        return dict(await self.redis.hgetall(keys.order("FL-001", order_id)))

    async def charges(self) -> int:
        return (await read_books(self.order_scripts.reads)).charged

    async def books(self) -> PaymentsSummary:
        return await read_books(self.order_scripts.reads)

    async def records(self, payment_id: str) -> dict[int, GatewayRecord]:
        """The gateway's records of a submission, by attempt number (the test reads Redis directly)."""
        found = {}
        for attempt_no in range(1, self.settings.payment_attempts + 1):
            flat = await self.redis.hgetall(keys.gateway_charge(attempt_key(payment_id, attempt_no)))
            if flat:
                found[attempt_no] = GatewayRecord.from_flat([x for kv in flat.items() for x in kv])
        return found

    async def sweep(self) -> int:
        """One sweeper pass, settling payments as the worker's sweeper does."""
        settle = functools.partial(settle_payment, self.order_scripts, self.gateway, self.settings)
        return await sweep_once(self.order_scripts, settle)


@pytest.fixture
async def make_rig(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., object]]:
    """Factory for rigs; closes their clients."""
    rigs: list[DomainRig] = []

    async def make(**overrides: object) -> Rig:
        settings = make_settings(**overrides)
        enqueued: list[str] = []

        async def enqueue(flight_id: str, order_id: str, payment_id: str) -> None:
            enqueued.append(payment_id)

        rig = await open_rig(settings, enqueue)  # the domain as the worker and the API build it
        rigs.append(rig)
        return Rig(settings, rig.orders, rig.order_scripts, SimulatedGateway(rig.scripts, settings), enqueued,
                   rig.redis)

    yield make
    for rig in rigs:
        await rig.close()


async def test_job_run_twice_confirms_once(make_rig: Callable[..., object]) -> None:
    """Two concurrent runs of the same payment job confirm once, charge once and spend no attempt."""
    rig: Rig = await make_rig(payment_latency_seconds=0.05)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("twice", ["1A", "1B"])
    results = await asyncio.gather(rig.run_job("twice", payment_id), rig.run_job("twice", payment_id))
    assert sorted(results) == ["CONFIRMED", "NOOP"]
    fields = await rig.fields("twice")
    assert fields["state"] == "CONFIRMED" and fields["attemptsLeft"] == "3"
    assert await rig.charges() == 1
    assert await rig.run_job("twice", payment_id) == "NOOP"  # a late re-run changes nothing
    assert await rig.charges() == 1


async def test_job_killed_mid_attempt_rerun_costs_nothing(make_rig: Callable[..., object]) -> None:
    """A job cancelled mid-attempt (a killed worker) and run again confirms once without spending an attempt."""
    rig: Rig = await make_rig(payment_latency_seconds=0.3)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("killed", ["2A"])
    task = asyncio.create_task(rig.run_job("killed", payment_id))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert (await rig.fields("killed"))["paymentStatus"] == "trying"
    assert await rig.run_job("killed", payment_id) == "CONFIRMED"
    fields = await rig.fields("killed")
    assert fields["attemptsLeft"] == "3" and await rig.charges() == 1


async def test_declines_count_down_and_fail(make_rig: Callable[..., object]) -> None:
    """An always-declining gateway spends exactly 3 attempts, then FAILED with a message; a re-run spends none."""
    rig: Rig = await make_rig(payment_failure_rate=1.0)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("declines", ["2B"])
    assert await rig.run_job("declines", payment_id) == "FAILED"
    fields = await rig.fields("declines")
    assert fields["attemptsLeft"] == "0" and fields["state"] == "FAILED"
    assert fields["lastError"] == "Payment failed after 3 attempts: The payment was declined."
    assert await rig.run_job("declines", payment_id) == "NOOP"
    assert await rig.charges() == 0


async def test_gateway_timeout_is_a_failed_attempt(make_rig: Callable[..., object]) -> None:
    """An attempt slower than SEATS_PAYMENT_TIMEOUT_SECONDS counts as a failure and says so, only once the
    gateway said "no charge" under its key: the FAILED order was never charged, and never will be."""
    rig: Rig = await make_rig(payment_latency_seconds=0.3, payment_timeout_seconds=0.05, payment_attempts=2)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("slow", ["2C"])
    assert await rig.run_job("slow", payment_id) == "FAILED"
    fields = await rig.fields("slow")
    assert "did not answer within 0.05 s" in fields["lastError"] and fields["attemptsLeft"] == "0"
    assert {n: r.outcome for n, r in (await rig.records(payment_id)).items()} == {1: "void", 2: "void"}
    await asyncio.sleep(0.4)  # the cancelled charge calls would have landed by now: they are refused
    assert await rig.books() == PaymentsSummary(0, 0)


def one_seat(index: int) -> list[str]:
    """The ``index``-th seat of FL-001 (30 seats: 1A..5F)."""
    return [f"{index // 6 + 1}{'ABCDEF'[index % 6]}"]


async def assert_agrees_with_gateway(rig: Rig, order_id: str, payment_id: str) -> str:
    """The order and the gateway's records tell one story: CONFIRMED after exactly one charge, FAILED
    after none, never a charge beyond the first; returns the order's state."""
    state = (await rig.fields(order_id))["state"]
    charged = sorted(n for n, record in (await rig.records(payment_id)).items() if record.charged)
    assert (state, len(charged)) in (("CONFIRMED", 1), ("FAILED", 0)), (order_id, state, charged)
    return state


async def test_answers_around_the_timeout_never_disagree_with_the_gateway(make_rig: Callable[..., object]) -> None:
    """Issue 10's first input (latency 0.2985 s, timeout 0.3 s, no declines): 30 orders paid one after
    another each agree with the gateway's records, and the books count exactly the confirmations."""
    rig: Rig = await make_rig(payment_failure_rate=0.0, payment_timeout_seconds=0.3,  # type: ignore[misc]
                              payment_latency_seconds=0.2985, payment_backoff_seconds=0.05)
    confirmed = 0
    for index in range(30):
        order_id = f"edge{index}"
        _, payment_id = await rig.paying_order(order_id, one_seat(index))
        await rig.run_job(order_id, payment_id)
        confirmed += await assert_agrees_with_gateway(rig, order_id, payment_id) == "CONFIRMED"
    await asyncio.sleep(0.35)  # any charge call still in flight lands (and is refused) before the count
    assert await rig.books() == PaymentsSummary(confirmed, 0)


async def test_write_pause_mid_attempt_lands_late_and_is_found(make_rig: Callable[..., object], redis_url: str) -> None:
    """Issue 10's second input (latency 0.25 s, timeout 0.3 s, CLIENT PAUSE 400 WRITE 0.12-0.24 s into the
    attempt): the paused charge runs after the timeout, the look-up under its key finds it, and the
    order is CONFIRMED after one charge, counted once."""
    rig: Rig = await make_rig(payment_failure_rate=0.0, payment_timeout_seconds=0.3,  # type: ignore[misc]
                              payment_latency_seconds=0.25, payment_backoff_seconds=0.05)
    admin = redis.asyncio.Redis.from_url(redis_url)
    rng = random.Random(10)  # reproducible pause moments

    async def pause_writes() -> None:
        await asyncio.sleep(rng.uniform(0.12, 0.24))
        await admin.execute_command("CLIENT", "PAUSE", 400, "WRITE")

    try:
        for index in range(8):
            order_id = f"paused{index}"
            _, payment_id = await rig.paying_order(order_id, one_seat(index))
            status, _ = await asyncio.gather(rig.run_job(order_id, payment_id), pause_writes())
            assert status == "CONFIRMED"
            assert await assert_agrees_with_gateway(rig, order_id, payment_id) == "CONFIRMED"
            assert (await rig.fields(order_id))["attemptsLeft"] == "3"  # the found charge was attempt 1
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    assert await rig.books() == PaymentsSummary(8, 0)


async def test_a_cancelled_charge_took_effect_completely_or_not_at_all(make_rig: Callable[..., object]) -> None:
    """Charge calls cancelled at 60 random moments: each key then has a counted charge or none, so the
    books equal the charges on record (the record and the count are one step)."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    rng = random.Random(3)  # reproducible cancellation moments
    for index in range(60):
        call = asyncio.create_task(rig.gateway.charge(f"cut:{index}", "order"))
        await asyncio.sleep(rng.uniform(0, 0.003))
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
    looked_up = [await rig.gateway.lookup(f"cut:{index}", "order") for index in range(60)]
    charged = sum(record.charged for record in looked_up)
    assert await rig.books() == PaymentsSummary(charged, 0)
    assert {record.outcome for record in looked_up} <= {"success", "void"}


async def test_lookup_closes_an_unused_key_so_a_late_charge_takes_nothing(make_rig: Callable[..., object]) -> None:
    """A look-up that finds no charge records "void" under the key: a charge arriving later is refused."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    assert (await rig.gateway.lookup("late:1", "order")).outcome == "void"
    late = await rig.gateway.charge("late:1", "order")
    assert late.outcome == "void" and not late.charged
    assert await rig.books() == PaymentsSummary(0, 0)


async def test_refund_counts_once_and_only_for_a_charge(make_rig: Callable[..., object]) -> None:
    """A refund marks the charge and counts it once, however often it is asked; a key without a charge
    cannot be refunded."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    assert (await rig.gateway.charge("money:1", "order")).charged
    first, again = await asyncio.gather(rig.gateway.refund("money:1"), rig.gateway.refund("money:1"))
    assert first.refunded and again.refunded
    assert await rig.books() == PaymentsSummary(1, 1)
    await rig.gateway.lookup("money:2", "order")
    with pytest.raises(Refusal) as refused:
        await rig.gateway.refund("money:2")
    assert refused.value.code == "NOT_CHARGED"
    assert await rig.books() == PaymentsSummary(1, 1)


class UnreachableAfterTimeout(SimulatedGateway):
    """A gateway that never answers a charge in time and cannot be reached for the look-up."""

    async def charge(self, idempotency_key: str, reference: str) -> GatewayRecord:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    async def lookup(self, idempotency_key: str, reference: str) -> GatewayRecord:
        raise errors.StoreUnavailable("the gateway cannot be reached")


async def test_unknown_outcome_is_never_recorded(make_rig: Callable[..., object]) -> None:
    """A timed-out attempt whose look-up fails stays unrecorded (no attempt spent, not FAILED); the
    retried job resumes at the same attempt and key and confirms after one charge."""
    rig: Rig = await make_rig(payment_timeout_seconds=0.05)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("unknown", ["3B"])
    blind = UnreachableAfterTimeout(rig.order_scripts.scripts, rig.settings)
    with pytest.raises(errors.StoreUnavailable):
        await process_payment(rig.order_scripts, blind, rig.settings, "FL-001", "unknown", payment_id)
    fields = await rig.fields("unknown")
    assert (fields["state"], fields["attemptsLeft"], fields["paymentStatus"]) == ("PAYING", "3", "trying")
    assert await rig.run_job("unknown", payment_id) == "CONFIRMED"
    assert list(await rig.records(payment_id)) == [1] and await rig.books() == PaymentsSummary(1, 0)


async def test_rerun_resumes_from_the_gateways_records(make_rig: Callable[..., object]) -> None:
    """A worker that died after the gateway declined attempt 1 (nothing recorded on the order): the re-run
    takes attempt 1's recorded decline without a new decision, then pays with attempt 2."""
    rig: Rig = await make_rig()  # type: ignore[misc]  # this gateway accepts everything
    _, payment_id = await rig.paying_order("resume", ["3C"])
    always_declines = msgspec.structs.replace(rig.settings, payment_failure_rate=1.0)
    declining = SimulatedGateway(rig.order_scripts.scripts, always_declines)  # the dead worker's gateway call
    assert (await declining.charge(attempt_key(payment_id, 1), "resume")).outcome == "declined"
    assert await rig.run_job("resume", payment_id) == "CONFIRMED"
    fields = await rig.fields("resume")
    assert fields["attemptsLeft"] == "2"
    assert {n: r.outcome for n, r in (await rig.records(payment_id)).items()} == {1: "declined", 2: "success"}
    assert await rig.books() == PaymentsSummary(1, 0)


async def take_seat(rig: Rig, seat_id: str) -> None:
    """Another order now holds ``seat_id`` (as after a lapse and a new hold): the paying order lost it."""
    await rig.redis.set(keys.seat("FL-001", seat_id), "H|intruder|9999999999999")


async def test_success_that_cannot_confirm_is_refunded_once(make_rig: Callable[..., object]) -> None:
    """A charge whose seats are gone (LATE) confirms nothing, is refunded exactly once, and the order says
    so: EXPIRED, paymentStatus refunded, a lastError that explains it."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    _, payment_id = await rig.paying_order("gone", ["4A", "4B"])
    await take_seat(rig, "4B")
    assert await rig.run_job("gone", payment_id) == "LATE"
    fields = await rig.fields("gone")
    assert (fields["state"], fields["paymentStatus"]) == ("EXPIRED", "refunded")
    assert "refunded" in fields["lastError"] and "nothing was confirmed" in fields["lastError"]
    assert await rig.books() == PaymentsSummary(1, 1)
    assert await rig.redis.zscore(keys.deadlines("FL-001"), "gone") is None
    assert await rig.run_job("gone", payment_id) == "NOOP" and await rig.sweep() == 0
    assert await rig.books() == PaymentsSummary(1, 1)


class DiesBeforeRefund(SimulatedGateway):
    """The worker dies between learning that a charge cannot confirm and refunding it."""

    async def refund(self, idempotency_key: str) -> GatewayRecord:
        raise asyncio.CancelledError


async def test_refund_survives_a_worker_dying_before_it(make_rig: Callable[..., object]) -> None:
    """A worker killed between LATE and the refund leaves the order EXPIRED and refunding; the sweeper
    refunds it once, and sweeping again changes nothing."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    _, payment_id = await rig.paying_order("dies", ["4C"])
    await take_seat(rig, "4C")
    dying = DiesBeforeRefund(rig.order_scripts.scripts, rig.settings)
    with pytest.raises(asyncio.CancelledError):
        await process_payment(rig.order_scripts, dying, rig.settings, "FL-001", "dies", payment_id)
    fields = await rig.fields("dies")
    assert (fields["state"], fields["paymentStatus"]) == ("EXPIRED", "refunding")
    assert await rig.books() == PaymentsSummary(1, 0)
    assert await rig.sweep() == 1
    assert (await rig.fields("dies"))["paymentStatus"] == "refunded"
    assert await rig.sweep() == 0 and await rig.books() == PaymentsSummary(1, 1)


async def lapse(rig: Rig, order_id: str) -> None:
    """Move the order's hold deadline into the past (as if the payment window ran out)."""
    await rig.redis.hset(keys.order("FL-001", order_id), "holdExpiresAt", 1)
    await rig.redis.zadd(keys.deadlines("FL-001"), {order_id: 1})


async def test_paying_order_expired_by_the_sweeper_is_settled(make_rig: Callable[..., object]) -> None:
    """A PAYING order whose hold lapsed (its job dead) is expired by the sweeper, which refunds the charge
    its dead job made and closes every other attempt key; an order never charged ends 'failed'."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    _, charged_id = await rig.paying_order("charged", ["5A"])
    await rig.gateway.charge(attempt_key(charged_id, 1), "charged")  # the job charged, then died
    _, idle_id = await rig.paying_order("idle", ["5B"])
    await lapse(rig, "charged")
    await lapse(rig, "idle")
    await rig.sweep()
    charged, idle = await rig.fields("charged"), await rig.fields("idle")
    assert (charged["state"], charged["paymentStatus"]) == ("EXPIRED", "refunded")
    assert (idle["state"], idle["paymentStatus"]) == ("EXPIRED", "failed")
    assert "expired" in idle["lastError"]
    assert {r.outcome for r in (await rig.records(idle_id)).values()} == {"void"}
    assert await rig.run_job("idle", idle_id) == "NOOP"  # a late re-run of the dead job charges nothing
    assert await rig.books() == PaymentsSummary(1, 1)


async def test_every_action_on_a_lapsed_paying_order_sees_it_expired(make_rig: Callable[..., object]) -> None:
    """The job's next attempt on a lapsed PAYING order expires it (no attempt starts) and settles it."""
    rig: Rig = await make_rig()  # type: ignore[misc]
    _, payment_id = await rig.paying_order("lapsed", ["5C"])
    await lapse(rig, "lapsed")
    assert await rig.run_job("lapsed", payment_id) == "EXPIRED"
    fields = await rig.fields("lapsed")
    assert (fields["state"], fields["paymentStatus"]) == ("EXPIRED", "failed")
    assert await rig.books() == PaymentsSummary(0, 0)
    assert await rig.redis.get(keys.seat("FL-001", "5C")) is None


async def test_status_shows_retrying_between_attempts(make_rig: Callable[..., object]) -> None:
    """Between attempts the order shows paymentStatus 'retrying' with attemptsLeft already decremented."""
    rig: Rig = await make_rig(payment_failure_rate=1.0, payment_backoff_seconds=0.3)  # type: ignore[misc]
    _, payment_id = await rig.paying_order("retrying", ["2D"])
    task = asyncio.create_task(rig.run_job("retrying", payment_id))
    seen: set[tuple[str, str]] = set()
    while not task.done():
        fields = await rig.fields("retrying")
        seen.add((fields["paymentStatus"], fields["attemptsLeft"]))
        await asyncio.sleep(0.02)
    assert ("retrying", "2") in seen and ("retrying", "1") in seen
    final = await rig.fields("retrying")
    assert final["paymentStatus"] == "failed" and final["attemptsLeft"] == "0"


async def test_payment_extends_hold(make_rig: Callable[..., object]) -> None:
    """Starting a payment extends a short hold to the payment window so it cannot lapse mid-payment."""
    rig: Rig = await make_rig(hold_seconds=1.0)  # type: ignore[misc]
    order, _ = await rig.paying_order("extend", ["3A"])
    created_ms = int((await rig.fields("extend"))["createdAt"])
    deadline_ms = int((await rig.fields("extend"))["holdExpiresAt"])
    assert deadline_ms - created_ms >= rig.settings.payment_window_seconds * 1000 - 1000
    assert order.hold_expires_at is not None
    ttl = await rig.redis.pttl(keys.seat("FL-001", "3A"))
    assert ttl > 10_000


async def test_a_wait_that_fell_short_is_not_repeated_at_once(make_settings: Callable[..., Settings]) -> None:
    """SEATS_REDIS_WAIT_REPLICAS=1 on a Redis without replicas: the first confirmation's WAIT runs to its
    timeout (counted ``timeout``); the next one, moments later, sends no WAIT at all (counted ``skipped``,
    and Redis's own command count shows a single WAIT), so a primary without its replica does not stall
    the shared connection once per confirmation. Both orders are CONFIRMED either way."""
    from service import metrics

    settings = make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=200, payment_failure_rate=0.0,
                             payment_latency_seconds=0.0)
    rig = await open_rig(settings)
    outcomes = {name: metrics.REPLICATION_WAITS.labels(name) for name in ("timeout", "skipped", "acknowledged")}
    before = {name: counter._value.get() for name, counter in outcomes.items()}
    try:
        await rig.redis.config_resetstat()
        gateway = SimulatedGateway(rig.scripts, settings)
        for order_id, seat in (("o-short-1", "2A"), ("o-short-2", "2B")):
            created = await rig.orders.create("FL-001", order_id, CALLER)
            await rig.orders.select_seats(order_id, created.token or "", [seat], CALLER)
            await rig.order_scripts.run("begin_payment", "FL-001", order_id, TRUSTED, [f"p-{order_id}", 60_000])
            assert await process_payment(rig.order_scripts, gateway, settings, "FL-001", order_id,
                                         f"p-{order_id}") == "CONFIRMED"
        counted = {name: counter._value.get() - before[name] for name, counter in outcomes.items()}
        assert counted == {"timeout": 1, "skipped": 1, "acknowledged": 0}
        assert (await rig.redis.info("commandstats"))["cmdstat_wait"]["calls"] == 1
    finally:
        await rig.close()


async def test_attempts_count_from_the_order_not_the_workers_setting(make_rig: Callable[..., object]) -> None:
    """An order created with 3 attempts is paid by a worker deployed with 1 (a changed SEATS_PAYMENT_ATTEMPTS):
    its attempts use gateway keys 1..3, it fails after its own 3, and a charge that must be refunded under
    attempt 3 is found by the settlement of a worker that would look only at attempt 1."""
    rig: Rig = await make_rig(payment_failure_rate=1.0)  # type: ignore[misc]
    worker_settings = msgspec.structs.replace(rig.settings, payment_attempts=1)
    _, payment_id = await rig.paying_order("redeployed", ["3A"])
    assert await process_payment(rig.order_scripts, rig.gateway, worker_settings, "FL-001", "redeployed",
                                 payment_id) == "FAILED"
    fields = await rig.fields("redeployed")
    assert fields["attemptsLeft"] == "0"
    assert fields["lastError"] == "Payment failed after 3 attempts: The payment was declined."
    assert sorted(await rig.records(payment_id)) == [1, 2, 3]

    charging: Rig = await make_rig(payment_failure_rate=0.0)  # type: ignore[misc]
    _, late_id = await charging.paying_order("late", ["3B"])
    assert (await charging.gateway.charge(attempt_key(late_id, 3), "late")).outcome == "success"
    await charging.redis.hset(keys.order("FL-001", "late"), "paymentStatus", "refunding")  # ended unconfirmed
    assert await settle_payment(charging.order_scripts, charging.gateway, worker_settings, "FL-001",
                                "late") == "SETTLED"
    assert (await charging.fields("late"))["paymentStatus"] == "refunded"
    assert (await charging.books()).refunded == 1
