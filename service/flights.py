"""Flights: the catalogue, seat layouts and the seat map (read in one Redis round trip)."""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

from service import errors
from service.models import Flight, PutFlightRequest
from service.seatmap import Layout, LiveSource, LiveState, Snapshot, build_snapshot
from service.settings import Settings
from service.store import Store, keys
from service.store.errors import Refusal

DEFAULT_FLIGHT = ("FL-001", 5, "ABCDEF")
FLIGHT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")  # fullmatch: `$` would let "F1\n" through
MAX_ROWS = 10_000
MAX_CAPACITY = 100_000


def check_flight_id(flight_id: str) -> None:
    """Flight ids become part of Redis keys: letters, digits, ``_`` and ``-`` only."""
    if not FLIGHT_ID_PATTERN.fullmatch(flight_id):
        shown = errors.echo(flight_id)
        raise errors.FlightNotFound(f"Flight {shown!r} does not exist.", {"flightId": shown})


def check_layout(body: PutFlightRequest) -> None:
    """Reject layouts the seat-id scheme cannot express."""
    columns = body.columns
    if not 1 <= body.rows <= MAX_ROWS:
        raise errors.ValidationFailed(f"rows must be between 1 and {MAX_ROWS}.", {"field": "rows"})
    if not columns or len(set(columns)) != len(columns) or not all("A" <= c <= "Z" for c in columns):
        raise errors.ValidationFailed(
            "columns must be distinct upper-case letters, e.g. 'ABCDEF'.", {"field": "columns"}
        )
    if body.rows * len(columns) > MAX_CAPACITY:
        raise errors.ValidationFailed(f"A flight holds at most {MAX_CAPACITY} seats.", {"field": "rows"})


class FlightStore:
    """Flights and seat maps, with per-process caches of layouts and encoded snapshots."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._reads = store.reads
        self._scripts = store.scripts
        self._settings = settings
        self._layouts: dict[str, Layout] = {}
        self._configured: dict[str, PutFlightRequest] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self.clock = store.clock
        self.live: LiveSource | None = None  # set by the event broker when it starts
        self._seen_version: dict[str, int] = {}  # highest flight version this process saw or wrote
        self._created: dict[str, str] = {}  # each flight's createdAt as last read (changes on re-creation)

    def note_version(self, flight_id: str, version: int) -> None:
        """This process wrote or read ``version`` of the flight: later fast answers must not be older."""
        if version > self._seen_version.get(flight_id, -1):
            self._seen_version[flight_id] = version

    def live_state(self, flight_id: str) -> LiveState | None:
        """The fast path: the flight's version and hash from the live feed, or None (ask Redis)."""
        live = self.live
        if live is None:
            return None
        return live.live_state(flight_id, self._seen_version.get(flight_id, 0))

    async def ensure_catalogue(self) -> None:
        """Create the default flight and those of ``SEATS_FLIGHTS`` when they are absent."""
        wanted = [DEFAULT_FLIGHT]
        if self._settings.flights_file:
            for entry in json.loads(Path(self._settings.flights_file).read_text(encoding="utf-8")):
                wanted.append((entry["flightId"], int(entry["rows"]), str(entry["columns"])))
        for flight_id, rows, columns in wanted:
            body = PutFlightRequest(rows=rows, columns=columns)
            check_flight_id(flight_id)
            check_layout(body)
            self._configured[flight_id] = body
            await self._put(flight_id, body, mode="ensure")

    async def restore_if_configured(self, flight_id: str) -> bool:
        """Recreate a configured flight that Redis lost (a restart without persistence)."""
        body = self._configured.get(flight_id)
        if body is None:
            return False
        await self._put(flight_id, body, mode="ensure")
        return True

    async def put(self, flight_id: str, body: PutFlightRequest) -> tuple[Flight, bool]:
        """Create a flight or replace its layout; returns the flight and whether it was created."""
        check_flight_id(flight_id)
        check_layout(body)
        try:
            status = await self._put(flight_id, body, mode="put")
        except Refusal as refusal:
            raise errors.FlightInUse(
                f"Flight {flight_id} has held or sold seats; its layout cannot change.", {"flightId": flight_id}
            ) from refusal
        return (await self.layout(flight_id, refresh=True)).to_flight(), status == "CREATED"

    async def _put(self, flight_id: str, body: PutFlightRequest, mode: str) -> str:
        await self._reads.add_to_catalogue(flight_id)
        reply = await self._scripts.run(
            "put_flight",
            [keys.flight(flight_id), keys.changes(flight_id), keys.deadlines(flight_id)],
            [keys.events_channel(flight_id), self._settings.change_log_length, flight_id,
             body.rows, body.columns, body.rows * len(body.columns), mode],
        )
        self._layouts.pop(flight_id, None)
        status = str(reply[0])
        if status != "EXISTS":
            # A new flight (maybe after data loss) or a new layout: the feed must re-read it.
            self._seen_version.pop(flight_id, None)
            if self.live is not None:
                self.live.reset(flight_id)
        return status

    async def catalogue(self) -> list[Flight]:
        """Every flight, sorted by id."""
        flight_ids = sorted(await self._reads.catalogue() | self._configured.keys())
        return [(await self.layout(f)).to_flight() for f in flight_ids]

    async def layout(self, flight_id: str, *, refresh: bool = False) -> Layout:
        """The flight's layout (cached; refreshed when a script reports a newer revision)."""
        check_flight_id(flight_id)
        cached = self._layouts.get(flight_id)
        if cached is not None and not refresh:
            return cached
        meta = await self._reads.flight(flight_id)
        if not meta and await self.restore_if_configured(flight_id):
            meta = await self._reads.flight(flight_id)
        if not meta:
            raise errors.FlightNotFound(f"Flight {flight_id} does not exist.", {"flightId": flight_id})
        layout = Layout.build(flight_id, int(meta["rows"]), meta["columns"], meta["layoutRev"], int(meta["createdAt"]))
        self._layouts[flight_id] = layout
        return layout

    async def snapshot(self, flight_id: str, mine: tuple[str, str] | None = None) -> tuple[Snapshot, bool]:
        """The current seat snapshot and whether ``mine`` = (order id, token hash) is valid.

        One round trip when the cached snapshot is current (same version, no hold lapsed since),
        two when the seats must be read again; never one per seat.
        """
        layout = await self.layout(flight_id)
        sent = self.clock.local_ms()
        head = await self._reads.flight_head(flight_id, mine[0] if mine else None)
        version, rev, created_at, now = head.version, head.layout_rev, head.created_at, head.now_ms
        self.clock.observe(now, sent)
        mine_ok = mine is not None and head.token_hash is not None and _same(head.token_hash, mine[1])
        if version is None or created_at is None:
            if await self.restore_if_configured(flight_id):
                return await self.snapshot(flight_id, mine)
            raise errors.FlightNotFound(f"Flight {flight_id} does not exist.", {"flightId": flight_id})
        if self._created.get(flight_id, created_at) != created_at:
            # The flight was created again (Redis lost its data): versions start over.
            self._seen_version.pop(flight_id, None)
            if self.live is not None:
                self.live.reset(flight_id)
        self._created[flight_id] = created_at
        self.note_version(flight_id, version)
        if self.live is not None:
            self.live.touch(flight_id)
        cached = self._snapshots.get(flight_id)
        if cached and cached.layout.rev == rev and cached.version == version and now < cached.valid_until:
            return cached, mine_ok
        return await self._read_seats(flight_id, layout if layout.rev == rev else None), mine_ok

    async def _read_seats(self, flight_id: str, layout: Layout | None) -> Snapshot:
        for _ in range(3):
            layout = layout or await self.layout(flight_id, refresh=True)
            meta, values, now = await self._reads.seats(flight_id, layout.seat_keys)
            if meta.get("layoutRev") == layout.rev:
                snapshot = build_snapshot(layout, meta, values, now)
                self._snapshots[flight_id] = snapshot
                return snapshot
            layout = None
        raise errors.StoreUnavailable("The flight's layout kept changing while it was read.")


def _same(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())
