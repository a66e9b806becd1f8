"""Operators (spec §13): seat and order history, and the admin actions (release, extend, block, unblock).

The history is written by the Lua scripts that change seats (``lua/_lib.lua``, "history"): one stream
entry per seat change in the seat's stream and its order's, kept ``SEATS_HISTORY_SECONDS``. This module
reads it a page at a time (``lua/history_page.lua``: newest first, the cursor being the id of the last
entry shown, so concurrent writes never repeat or skip an entry across pages) and runs the actions, each
one script (``lua/admin_*.lua``, ``lua/block_seats.lua``) that checks everything before its first write
and records its changes with cause ``admin`` and the operator's reason.

The scripts and the one plain command this needs (an order id's index kept alive after an extension
past the hold cap) are the store's (``service.store``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from service import errors
from service.flights import FlightStore
from service.models import (
    MAX_BLOCK_SEATS,
    MAX_EXTEND_MINUTES,
    MAX_REASON_CHARS,
    HistoryEntry,
    HistoryPage,
    Order,
    SeatsActionResult,
    iso_ms,
)
from service.orders import TRUSTED, OrderScripts, OrderStore, ScriptResult, refusal_error
from service.seatmap import Layout
from service.settings import Settings
from service.store import keys
from service.store.errors import Refusal, StaleLayout

HISTORY_PAGE_DEFAULT: Final = 50  # entries per page without ?limit= (spec §13)
HISTORY_PAGE_MAX: Final = 500
# A cursor: the stream entry a page ends in and how many of its seats the page showed ('<id>:<shown>').
CURSOR_PATTERN: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20}):([0-9]{1,4})")  # fullmatch
MAX_ID_PART: Final = 2**64 - 1  # each half of a stream id is an unsigned 64-bit number
MAX_LAYOUT_RETRIES: Final = 4


def check_page(limit: int | None, cursor: str | None) -> tuple[int, str, int]:
    """``?limit=`` (1..HISTORY_PAGE_MAX, default HISTORY_PAGE_DEFAULT) and ``?cursor=`` (a ``next`` this API
    gave out, or nothing) as (limit, stream id to start at or '', entries of it already shown).
    Raises ValidationFailed (422) naming the field."""
    limit = HISTORY_PAGE_DEFAULT if limit is None else limit
    if not 1 <= limit <= HISTORY_PAGE_MAX:
        raise errors.ValidationFailed(f"limit must be between 1 and {HISTORY_PAGE_MAX}.", {"field": "limit"})
    if not cursor:
        return limit, "", 0
    match = CURSOR_PATTERN.fullmatch(cursor)
    if match is None or max(int(match[1]), int(match[2])) > MAX_ID_PART:
        raise errors.ValidationFailed("cursor must be the 'next' of a previous page.", {"field": "cursor"})
    return limit, f"{match[1]}-{match[2]}", int(match[3])


def check_reason(reason: str) -> str:
    """An operator's reason: 1..MAX_REASON_CHARS characters, not only spaces. Raises ValidationFailed."""
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise errors.ValidationFailed(f"reason must be 1 to {MAX_REASON_CHARS} characters of text.",
                                      {"field": "reason"})
    return reason


def decode_entries(fields: dict[str, str]) -> list[HistoryEntry]:
    """The history entries of one stream entry (lua/_lib.lua record_history), newest first: a seat's
    stream entry holds one, an order's one per seat its script changed (none: an order entry)."""
    at, version, cause, order_id = fields["h"].split("|", 3)
    seats = fields.get("s", "")
    entries = []
    for seat_change in reversed(seats.split(",")) if seats else [""]:
        seat, before, after, expires_at = seat_change.split(":") if seat_change else ("", "", "", "")
        entries.append(HistoryEntry(
            at=iso_ms(int(at)), version=int(version), seat=seat or None,
            from_=before or None,  # type: ignore[arg-type]
            to=after or None,  # type: ignore[arg-type]
            order_id=order_id or None, cause=cause,  # type: ignore[arg-type]
            expires_at=iso_ms(int(expires_at)) if expires_at else None, reason=fields.get("r") or None,
        ))
    return entries


def _page(reply: Sequence[Any], limit: int, start: str, shown: int) -> HistoryPage:
    """A page of ``limit`` entries from XREVRANGE's reply (skipping the ``shown`` entries of the stream entry
    ``start`` that the previous page showed), and the cursor of the next page if there is more."""
    rows: list[tuple[str, int, HistoryEntry]] = []  # (stream id, position in it, entry)
    for stream_id, flat in reply:
        entries = decode_entries(dict(zip(flat[::2], flat[1::2], strict=True)))
        skip = shown if stream_id == start else 0
        rows += [(stream_id, i, entry) for i, entry in enumerate(entries) if i >= skip]
    page = rows[:limit]
    more = len(rows) > limit
    return HistoryPage([entry for _, _, entry in page], f"{page[-1][0]}:{page[-1][1] + 1}" if more else None)


class Operators:
    """History pages and the admin actions, over the process's scripts and order store."""

    def __init__(self, order_scripts: OrderScripts, orders: OrderStore, flights: FlightStore,
                 settings: Settings) -> None:
        self._order_scripts = order_scripts
        self._scripts = order_scripts.scripts
        self._reads = order_scripts.reads
        self._orders = orders
        self._flights = flights
        self._settings = settings
        self._history_ms = int(settings.history_seconds * 1000)
        self._max_hold_ms = int(settings.max_hold_seconds * 1000)
        self._order_ttl_ms = int(settings.order_ttl_seconds * 1000)

    # -- history ------------------------------------------------------------------------------

    async def seat_history(self, flight_id: str, seat_id: str, limit: int | None, cursor: str | None) -> HistoryPage:
        """One page of a seat's history, newest first. Raises FlightNotFound, SeatNotFound (404) and
        ValidationFailed (limit, cursor)."""
        layout = await self._flights.layout(flight_id)
        if not layout.has_seat(seat_id):
            shown = errors.echo(seat_id)
            raise errors.SeatNotFound(f"Flight {flight_id} has no seat {shown}.", {"seat": shown})
        return await self._history(keys.history_seat(flight_id, seat_id), *check_page(limit, cursor))

    async def order_history(self, order_id: str, token: str | None, limit: int | None,
                            cursor: str | None) -> HistoryPage:
        """One page of an order's history, newest first. ``token``: the caller's bearer unless it is the
        admin token (None). Raises OrderNotFound (404) for an unknown order and for any bearer that is
        neither the admin token nor the order's own token, the same answer either way, so order ids
        cannot be probed (issue 12, as every other order endpoint; spec §13 said 403, the issue won).
        Raises ValidationFailed (limit, cursor)."""
        page = check_page(limit, cursor)
        flight_id = await self._orders.flight_of(order_id)
        if token is not None and not await self._orders.token_matches(flight_id, order_id, token):
            raise _not_found(order_id)
        return await self._history(keys.history_order(flight_id, order_id), *page)

    async def _history(self, stream: str, limit: int, start: str, shown: int) -> HistoryPage:
        # limit + 2 stream entries hold limit + 1 history entries at least, even when the first one (the
        # previous page's last) has nothing left to show: enough to know whether there is a next page.
        reply = await self._scripts.run("history_page", [stream], [self._history_ms, start, limit + 2])
        return _page(reply, limit, start, shown)

    # -- orders -------------------------------------------------------------------------------

    async def order(self, order_id: str) -> Order:
        """The order, found by id alone (an operator's search). Raises OrderNotFound."""
        return await self._orders.get_trusted(order_id)

    async def release(self, order_id: str, reason: str) -> Order:
        """Release the order's holds at once: it becomes CANCELLED (a PAYING order's charge, if any, is
        refunded); a FAILED order that still keeps seats releases them and stays FAILED.

        Raises OrderNotFound, OrderClosed (CONFIRMED, EXPIRED, CANCELLED, a FAILED order with no seat
        left, or an order whose hold had lapsed: it is EXPIRED now), ValidationFailed (reason).
        """
        return await self._run_order("admin_release", order_id, [check_reason(reason)])

    async def extend(self, order_id: str, reason: str, minutes: int, *, beyond_cap: bool = False) -> Order:
        """Move the order's hold deadline ``minutes`` later, on every seat; without ``beyond_cap`` no
        later than ``SEATS_MAX_HOLD_SECONDS`` after its first hold.

        Raises OrderNotFound, OrderClosed, NoSeatsHeld (PENDING), HoldCapReached (the cap leaves no
        later deadline), SeatsUnavailable (a seat was lost, after data loss), ValidationFailed.
        """
        check_reason(reason)
        if not 1 <= minutes <= MAX_EXTEND_MINUTES:
            raise errors.ValidationFailed(f"minutes must be between 1 and {MAX_EXTEND_MINUTES}.",
                                          {"field": "minutes"})
        order = await self._run_order("admin_extend", order_id, [
            reason, minutes * 60_000, self._max_hold_ms, "1" if beyond_cap else "0", self._order_ttl_ms])
        if beyond_cap and order.hold_expires_at:
            # The id index (outside the flight's slot, its own single-key command) must outlive the
            # order, which now lives past the TTL the index got at creation.
            deadline = int(datetime.fromisoformat(order.hold_expires_at).timestamp() * 1000)
            await self._reads.keep_order_index_until(order_id, deadline + self._order_ttl_ms)
        return order

    async def _run_order(self, script: str, order_id: str, args: list[str | int]) -> Order:
        flight_id = await self._orders.flight_of(order_id)
        try:
            result = await self._order_scripts.run(script, flight_id, order_id, TRUSTED, args)
        except Refusal as refusal:
            if refusal.code == "HOLD_CAP":
                cap = iso_ms(int(refusal.detail))
                raise errors.HoldCapReached(
                    f"Order {order_id}'s hold is at its cap ({cap}); extend it with beyondCap to go past it.",
                    {"orderId": order_id, "cap": cap}) from None
            raise refusal_error(refusal, order_id) from None
        return _open_order(result)

    # -- seats --------------------------------------------------------------------------------

    async def block(self, flight_id: str, seats: list[str], reason: str, *, block: bool = True) -> SeatsActionResult:
        """Take ``seats`` off sale (``block``), or put blocked ones back; atomically, one flight version.

        Blocking a held or sold seat refuses the whole request: SeatsUnavailable (409) naming each such
        seat's order. Seats already as asked are listed ``unchanged``. Raises FlightNotFound,
        ValidationFailed (seats, reason).
        """
        check_reason(reason)
        _check_seat_list(seats)
        for _ in range(MAX_LAYOUT_RETRIES):
            layout = await self._flights.layout(flight_id)
            _check_seats_exist(layout, seats)
            try:
                version, changed = await self._scripts.run(
                    "block_seats", [keys.flight(flight_id), keys.changes(flight_id),
                                    *(keys.seat(flight_id, s) for s in seats)],
                    [keys.events_channel(flight_id), self._settings.change_log_length, flight_id,
                     "block" if block else "unblock", layout.rev, reason, self._history_ms])
            except StaleLayout:
                await self._flights.layout(flight_id, refresh=True)
                continue
            except Refusal as refusal:
                raise _taken(refusal) from None
            self._flights.note_version(flight_id, int(version))
            done = set(changed)
            return SeatsActionResult(flight_id, int(version), list(changed), [s for s in seats if s not in done])
        raise errors.Conflict("The flight's layout kept changing; try again.", {"flightId": flight_id})


def _open_order(result: ScriptResult) -> Order:
    assert result.order is not None
    if result.status == "EXPIRED":
        raise errors.OrderClosed("The order's hold had expired; its seats were released.",
                                 {"orderId": result.order.order_id, "state": "EXPIRED"})
    return result.order


def _not_found(order_id: str) -> errors.OrderNotFound:
    shown = errors.echo(order_id)
    return errors.OrderNotFound(f"Order {shown} does not exist.", {"orderId": shown})


def _check_seat_list(seats: list[str]) -> None:
    if not 1 <= len(seats) <= MAX_BLOCK_SEATS:
        raise errors.ValidationFailed(f"Give between 1 and {MAX_BLOCK_SEATS} seats.", {"field": "seats"})
    if len(set(seats)) != len(seats):
        raise errors.ValidationFailed("Seat ids must be distinct.", {"field": "seats"})


def _check_seats_exist(layout: Layout, seats: list[str]) -> None:
    unknown = [errors.echo(s) for s in seats if not layout.has_seat(s)]
    if unknown:
        raise errors.ValidationFailed(f"Unknown seat ids for flight {layout.flight_id}: {', '.join(unknown[:10])}.",
                                      {"field": "seats", "unknown": unknown[:10]})


def _taken(refusal: Refusal) -> errors.SeatsError:
    """SEAT_TAKEN '<seat>:<held|confirmed>:<order>,...' as a 409 naming each seat's order."""
    if refusal.code != "SEAT_TAKEN":
        return errors.InternalError(f"Unexpected refusal {refusal.code} from a script.", {"code": refusal.code})
    conflicts = [dict(zip(("seat", "status", "orderId"), item.split(":", 2), strict=True))
                 for item in refusal.detail.split(",")]
    named = "; ".join(f"{c['seat']} is {c['status']} by order {c['orderId']}" for c in conflicts)
    return errors.SeatsUnavailable(f"Only available seats can be blocked: {named}. Nothing was changed.",
                                   {"conflicts": conflicts})
