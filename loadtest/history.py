"""A recorded history of client operations and a checker over it (the Jepsen / Elle idea).

The fault run (``loadtest.faults``) records every operation a client invoked and what came back:
``ok`` (2xx: it happened, and the body shows the order as the server had it), ``fail`` (4xx: it did
not happen; a refusal changes nothing) or ``info`` (5xx or no answer: it may or may not have
happened). A monitor samples the orders the server holds while faults run, and the final state is
read once every order has settled. :func:`check` then verifies, per key (seat, order):

- ``seat_sold_once``: no seat is sold to two orders, in the final state or in anything a client saw;
- ``confirmations_stand``: every confirmation a client was told about is still there, unchanged;
- ``deadlines_kept``: no order stays SEATS_SELECTED or PAYING past its hold deadline plus the stated
  bound, and no refund stays pending longer than the bound (monitor samples and the final state);
- ``money``: per order, charged - refunded = 1 if CONFIRMED else 0, a FAILED order was never charged,
  and the gateway's books equal its records and the number of CONFIRMED orders;
- ``order_histories``: what clients saw of one order is one history: a version always shows the
  same state and seats, states only move forward along the state machine, and the final state
  follows from (and is at least as new as) everything seen.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = frozenset({"CONFIRMED", "FAILED", "EXPIRED", "CANCELLED"})
OPEN_WITH_DEADLINE = frozenset({"SEATS_SELECTED", "PAYING"})
RANK = {"PENDING": 0, "SEATS_SELECTED": 1, "PAYING": 2, **dict.fromkeys(TERMINAL, 3)}
CHECKS = ("seat_sold_once", "confirmations_stand", "deadlines_kept", "money", "order_histories")


@dataclass(frozen=True, slots=True)
class Seen:
    """An order as a response body showed it."""

    state: str
    seats: tuple[str, ...]
    version: int
    payment_status: str | None
    confirmation_id: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Seen:
        """From a JSON order (the API's wire shape)."""
        return cls(body["state"], tuple(body.get("seats") or ()), int(body["version"]), body.get("paymentStatus"),
                   body.get("confirmationId"))


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation: invoked at ``invoked`` s, answered at ``completed`` s (run clock)."""

    index: int
    process: int
    f: str  # create | hold | pay | cancel | read
    flight: str
    order: str
    invoked: float
    completed: float
    type: str  # ok | fail | info
    status: int  # HTTP status; 0 when no answer came
    seen: Seen | None = None  # the order in a 2xx body
    error: str | None = None  # the error code of a 4xx/5xx body


@dataclass(frozen=True, slots=True)
class Sample:
    """A monitor's reading of one unsettled order, by Redis's clock (ms)."""

    at_ms: int
    flight: str
    order: str
    state: str
    deadline_ms: int | None
    payment_status: str
    updated_ms: int


@dataclass
class FinalState:
    """Everything the server holds once the run has settled."""

    orders: dict[tuple[str, str], dict[str, str]]  # (flight, order) -> the order hash
    seats: dict[tuple[str, str], str]  # (flight, seat) -> the seat key's value
    records: list[dict[str, str]]  # the gateway's records (outcome, ref, refunded, ...)
    books: tuple[int, int]  # (charged, refunded)


@dataclass
class History:
    """The operations of one run, in invocation order."""

    ops: list[Op] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def add(self, **fields: Any) -> Op:
        """Record one completed operation."""
        op = Op(index=len(self.ops), **fields)
        self.ops.append(op)
        return op

    def write(self, path: Path) -> None:
        """One JSON object per operation (``.jsonl``), for reading a run after the fact."""
        with path.open("w") as out:
            for op in self.ops:
                out.write(json.dumps(asdict(op)) + "\n")

    def summary(self) -> dict[str, Any]:
        """Operations by function and outcome."""
        by = Counter(f"{op.f}.{op.type}" for op in self.ops)
        return {"operations": len(self.ops), "by_outcome": dict(sorted(by.items())), "samples": len(self.samples)}


@dataclass
class Verdict:
    """What the checker found: violations per check (empty = the history is valid)."""

    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in CHECKS})
    checked: Counter[str] = field(default_factory=Counter)
    max_lateness_ms: int = 0

    @property
    def ok(self) -> bool:
        """No check found anything."""
        return not any(self.violations.values())

    def flag(self, check: str, message: str) -> None:
        """Record one violation of ``check``."""
        self.violations[check].append(message)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON."""
        return {"ok": self.ok, "violations": {k: v for k, v in self.violations.items() if v},
                "violation_count": sum(len(v) for v in self.violations.values()), "checked": dict(self.checked),
                "max_lateness_ms": self.max_lateness_ms}


def check(history: History, final: FinalState, bound_ms: int) -> Verdict:
    """Run every check over ``history`` and ``final``; ``bound_ms`` is how late past a deadline an
    order may still be open (the sweeper's delay under the run's faults)."""
    verdict = Verdict()
    observed = _observed(history)
    check_seats(observed, final, verdict)
    check_confirmations(observed, final, verdict)
    check_deadlines(history.samples, final, bound_ms, verdict)
    check_money(final, verdict)
    check_order_histories(observed, final, verdict)
    return verdict


def _observed(history: History) -> dict[tuple[str, str], list[Seen]]:
    """What clients saw of each order, in completion order."""
    seen: dict[tuple[str, str], list[Seen]] = defaultdict(list)
    for op in sorted(history.ops, key=lambda o: o.completed):
        if op.seen is not None:
            seen[(op.flight, op.order)].append(op.seen)
    return seen


def check_seats(observed: dict[tuple[str, str], list[Seen]], final: FinalState, verdict: Verdict) -> None:
    """No seat sold to two orders: in what clients saw, and in the final seat keys and orders."""
    seen_owner: dict[tuple[str, str], str] = {}
    for (flight, order), views in observed.items():
        for seat in {s for view in views if view.state == "CONFIRMED" for s in view.seats}:
            verdict.checked["seat_sold_once"] += 1
            other = seen_owner.setdefault((flight, seat), order)
            if other != order:
                verdict.flag("seat_sold_once", f"{flight}/{seat}: clients saw it confirmed to {other} and {order}")
    final_owner: dict[tuple[str, str], str] = {}
    for (flight, order), fields in final.orders.items():
        if fields.get("state") != "CONFIRMED":
            continue
        for seat in filter(None, fields.get("seats", "").split(",")):
            other = final_owner.setdefault((flight, seat), order)
            if other != order:
                verdict.flag("seat_sold_once", f"{flight}/{seat}: CONFIRMED orders {other} and {order} both list it")
            if final.seats.get((flight, seat)) != f"C|{order}":
                verdict.flag("seat_sold_once", f"{flight}/{seat}: order {order} is CONFIRMED but the seat is "
                                               f"{final.seats.get((flight, seat))!r}")
    for (flight, seat), value in final.seats.items():
        verdict.checked["seat_sold_once"] += 1
        if value.startswith("C|") and final_owner.get((flight, seat)) != value[2:]:
            verdict.flag("seat_sold_once", f"{flight}/{seat}: sold to {value[2:]}, which is not CONFIRMED with it")


def check_confirmations(observed: dict[tuple[str, str], list[Seen]], final: FinalState, verdict: Verdict) -> None:
    """Every confirmation a client was told about still stands, with the same seats and confirmation id."""
    for key, views in observed.items():
        told = [view for view in views if view.state == "CONFIRMED"]
        if not told:
            continue
        verdict.checked["confirmations_stand"] += 1
        now = final.orders.get(key, {})
        seats = tuple(filter(None, now.get("seats", "").split(",")))
        if now.get("state") != "CONFIRMED" or seats != told[0].seats \
                or now.get("confirmationId") != told[0].confirmation_id:
            verdict.flag("confirmations_stand", f"{key[0]}/{key[1]}: a client saw CONFIRMED {told[0].seats} "
                                                f"({told[0].confirmation_id}); now {now.get('state', 'MISSING')} "
                                                f"{seats} ({now.get('confirmationId')})")


def check_deadlines(samples: list[Sample], final: FinalState, bound_ms: int, verdict: Verdict) -> None:
    """No order open past its deadline + ``bound_ms``, no refund pending longer than ``bound_ms``."""
    worst: dict[tuple[str, str], int] = {}
    for sample in samples:
        verdict.checked["deadlines_kept"] += 1
        if sample.state in OPEN_WITH_DEADLINE and sample.deadline_ms is not None:
            late = sample.at_ms - sample.deadline_ms
        elif sample.payment_status == "refunding":
            late = sample.at_ms - sample.updated_ms
        else:
            continue
        verdict.max_lateness_ms = max(verdict.max_lateness_ms, late)
        if late > bound_ms:
            key = (sample.flight, sample.order)
            worst[key] = max(worst.get(key, 0), late)
    for (flight, order), late in sorted(worst.items()):
        verdict.flag("deadlines_kept", f"{flight}/{order}: unsettled {late / 1000:.1f} s past its deadline "
                                       f"(bound {bound_ms / 1000:g} s)")
    for (flight, order), fields in final.orders.items():
        if fields.get("state") in OPEN_WITH_DEADLINE or fields.get("paymentStatus") == "refunding":
            verdict.flag("deadlines_kept", f"{flight}/{order}: still {fields.get('state')} / "
                                           f"{fields.get('paymentStatus')} when the run settled")


def check_money(final: FinalState, verdict: Verdict) -> None:
    """charged - refunded = CONFIRMED, per order and in total; FAILED orders were never charged."""
    charged: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    for record in final.records:
        if record.get("outcome") == "success":
            charged[record.get("ref", "")] += 1
            refunded[record.get("ref", "")] += record.get("refunded") == "1"
    states = {order: fields.get("state") for (_, order), fields in final.orders.items()}
    for order in sorted(set(states) | set(charged)):
        verdict.checked["money"] += 1
        expected = 1 if states.get(order) == "CONFIRMED" else 0
        net = charged[order] - refunded[order]
        if net != expected:
            verdict.flag("money", f"order {order} ({states.get(order, 'MISSING')}): charged {charged[order]}, "
                                  f"refunded {refunded[order]}, expected net {expected}")
        if states.get(order) == "FAILED" and charged[order]:
            verdict.flag("money", f"order {order} is FAILED but was charged {charged[order]} time(s)")
    confirmed = sum(state == "CONFIRMED" for state in states.values())
    books_charged, books_refunded = final.books
    if (books_charged, books_refunded) != (sum(charged.values()), sum(refunded.values())):
        verdict.flag("money", f"the books say charged {books_charged}, refunded {books_refunded}; the records "
                              f"{sum(charged.values())}, {sum(refunded.values())}")
    if books_charged - books_refunded != confirmed:
        verdict.flag("money", f"charged {books_charged} - refunded {books_refunded} != {confirmed} CONFIRMED")


def check_order_histories(observed: dict[tuple[str, str], list[Seen]], final: FinalState, verdict: Verdict) -> None:
    """Per order: one state per version, states only move forward, the final state follows from all."""
    for key, views in observed.items():
        verdict.checked["order_histories"] += 1
        name = f"{key[0]}/{key[1]}"
        by_version: dict[int, Seen] = {}
        for view in views:
            first = by_version.setdefault(view.version, view)
            if (first.state, first.seats) != (view.state, view.seats):
                verdict.flag("order_histories", f"{name}: version {view.version} seen as {first.state} "
                                                f"{first.seats} and as {view.state} {view.seats}")
        ordered = [by_version[v] for v in sorted(by_version)]
        for before, after in itertools.pairwise(ordered):
            if not _may_follow(before.state, after.state):
                verdict.flag("order_histories", f"{name}: {before.state} (v{before.version}) then "
                                                f"{after.state} (v{after.version})")
        now = final.orders.get(key)
        last = ordered[-1]
        if now is None:
            verdict.flag("order_histories", f"{name}: clients saw it (v{last.version}), the server lost it")
        elif int(now.get("version", 0)) < last.version or not _may_follow(last.state, now.get("state", "")):
            verdict.flag("order_histories", f"{name}: clients saw {last.state} v{last.version}, the final state "
                                            f"is {now.get('state')} v{now.get('version')}")


def _may_follow(before: str, after: str) -> bool:
    """Whether an order seen in ``before`` may later be seen in ``after`` (the state machine moves forward)."""
    if before in TERMINAL:
        return after == before
    return RANK.get(after, -1) >= RANK.get(before, 99)
