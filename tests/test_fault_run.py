"""The fault run (issue 10): buyers and payments under injected faults, every operation recorded, and
a checker over the history; plus the checker's own tests, each feeding it one kind of violation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtest.faults import FAULT_KINDS, FaultConfig, run_faults, table
from loadtest.history import CHECKS, FinalState, History, Sample, Seen, check
from tests.conftest import _die_with_parent

BOUND_MS = 15_000


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_fault_run_history_has_no_violations() -> None:
    """15 s of 8 buyers racing for overlapping seats and paying (gateway latency at its timeout) while the
    worker is killed and paused, Redis is killed and restarted (AOF everysec), its script cache flushed,
    its clients paused and killed: the recorded history has no violation of any check."""
    config = FaultConfig(duration=15, buyers=8, seed=7, settle_timeout=45)
    result = asyncio.run(run_faults(config, preexec=_die_with_parent))
    summary = table(result)
    assert result["violations"] == 0, summary
    assert set(FAULT_KINDS) <= set(result["faults"]), summary
    assert result["history"]["operations"] > 200, summary
    money = result["money"]
    assert money["confirmed"] > 0 and money["charged"] - money["refunded"] == money["confirmed"], summary
    assert set(result["checker"]["checked"]) == set(CHECKS), summary


# --- the checker can fail ----------------------------------------------------------------------------


def seen(state: str, seats: tuple[str, ...], version: int, confirmation: str | None = None,
         payment: str | None = None) -> Seen:
    """An order as a response showed it."""
    return Seen(state, seats, version, payment, confirmation)


def clean_run() -> tuple[History, FinalState]:
    """Two buyers: o1 holds 1A and is confirmed (charged once), o2 is refused 1A, holds 1B and lets it lapse."""
    history = History()
    for op in (
        dict(process=1, f="hold", flight="F", order="o1", invoked=0.0, completed=0.1, type="ok", status=200,
             seen=seen("SEATS_SELECTED", ("1A",), 2)),
        dict(process=2, f="hold", flight="F", order="o2", invoked=0.0, completed=0.1, type="fail", status=409,
             error="seats_unavailable"),
        dict(process=2, f="hold", flight="F", order="o2", invoked=0.2, completed=0.3, type="ok", status=200,
             seen=seen("SEATS_SELECTED", ("1B",), 2)),
        dict(process=1, f="pay", flight="F", order="o1", invoked=0.4, completed=0.5, type="ok", status=202,
             seen=seen("PAYING", ("1A",), 3, payment="trying")),
        dict(process=1, f="read", flight="F", order="o1", invoked=1.0, completed=1.1, type="ok", status=200,
             seen=seen("CONFIRMED", ("1A",), 5, "CNF-1", "success")),
    ):
        history.add(**op)
    history.samples.append(Sample(10_000, "F", "o2", "SEATS_SELECTED", 12_000, "", 9_000))
    final = FinalState(
        orders={("F", "o1"): {"state": "CONFIRMED", "seats": "1A", "confirmationId": "CNF-1", "version": "5"},
                ("F", "o2"): {"state": "EXPIRED", "seats": "1B", "version": "3"}},
        seats={("F", "1A"): "C|o1"},
        records=[{"outcome": "success", "ref": "o1", "refunded": "0"},
                 {"outcome": "declined", "ref": "o1", "refunded": "0"}],
        books=(1, 0),
    )
    return history, final


def violations(history: History, final: FinalState) -> dict[str, list[str]]:
    found: dict[str, list[str]] = check(history, final, BOUND_MS).violations
    return {name: messages for name, messages in found.items() if messages}


def test_checker_accepts_a_valid_history() -> None:
    """A history in which nothing went wrong passes every check."""
    assert violations(*clean_run()) == {}


def test_checker_finds_a_seat_sold_twice() -> None:
    """A client seeing a seat confirmed to a second order is a violation (even if the final state hides it)."""
    history, final = clean_run()
    history.add(process=2, f="read", flight="F", order="o2", invoked=2.0, completed=2.1, type="ok", status=200,
                seen=seen("CONFIRMED", ("1A",), 4, "CNF-2"))
    assert "seat_sold_once" in violations(history, final)


def test_checker_finds_a_lost_confirmation() -> None:
    """A confirmation a client was told about that the final state no longer shows is a violation."""
    history, final = clean_run()
    final.orders[("F", "o1")] = {"state": "EXPIRED", "seats": "1A", "version": "6"}
    final.seats.pop(("F", "1A"))
    final.books = (1, 1)
    final.records[0]["refunded"] = "1"
    found = violations(history, final)
    assert "confirmations_stand" in found and "order_histories" in found


def test_checker_finds_an_order_open_past_its_deadline() -> None:
    """An order sampled open longer than the bound after its deadline is a violation; so is a refund
    still pending when the run settled."""
    history, final = clean_run()
    history.samples.append(Sample(30_000, "F", "o2", "SEATS_SELECTED", 12_000, "", 9_000))
    assert "deadlines_kept" in violations(history, final)
    history, final = clean_run()
    final.orders[("F", "o2")]["paymentStatus"] = "refunding"
    assert "deadlines_kept" in violations(history, final)


@pytest.mark.parametrize("damage", ["charged twice", "unrefunded", "failed but charged", "books"])
def test_checker_finds_money_that_does_not_add_up(damage: str) -> None:
    """charged - refunded must equal 1 for a CONFIRMED order and 0 otherwise, a FAILED order is never
    charged, and the books must match the records."""
    history, final = clean_run()
    if damage == "charged twice":
        final.records.append({"outcome": "success", "ref": "o1", "refunded": "0"})
        final.books = (2, 0)
    elif damage == "unrefunded":
        final.records.append({"outcome": "success", "ref": "o2", "refunded": "0"})
        final.books = (2, 0)
    elif damage == "failed but charged":
        final.orders[("F", "o2")]["state"] = "FAILED"
        final.records.append({"outcome": "success", "ref": "o2", "refunded": "1"})
        final.books = (2, 1)
    else:
        final.books = (2, 0)
    assert "money" in violations(history, final)


def test_checker_finds_a_history_that_goes_backwards() -> None:
    """One version seen with two states, or a state seen going backwards, is a violation."""
    history, final = clean_run()
    history.add(process=3, f="read", flight="F", order="o1", invoked=0.6, completed=0.7, type="ok", status=200,
                seen=seen("SEATS_SELECTED", ("1A",), 3))
    assert "order_histories" in violations(history, final)
    history, final = clean_run()
    history.add(process=3, f="read", flight="F", order="o1", invoked=0.6, completed=0.7, type="ok", status=200,
                seen=seen("SEATS_SELECTED", ("1A",), 4))
    assert "order_histories" in violations(history, final)


def test_history_records_every_outcome(tmp_path: Any) -> None:
    """The history file has one JSON line per operation, ok, fail and info alike."""
    history, _ = clean_run()
    history.add(process=1, f="pay", flight="F", order="o3", invoked=3.0, completed=8.0, type="info", status=0)
    path = tmp_path / "history.jsonl"
    history.write(path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(history.ops) == 6
    assert history.summary()["by_outcome"] == {"hold.fail": 1, "hold.ok": 2, "pay.info": 1, "pay.ok": 1,
                                               "read.ok": 1}
