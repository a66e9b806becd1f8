"""The Python half of the scripts' announcements: what ``lua/_lib.lua`` publishes and logs for every change."""

from __future__ import annotations

from typing import Final

import msgspec

from service.models import SeatStatus


class SeatChange(msgspec.Struct):
    """One seat in an announcement; ``o`` (the owning order) is internal and never sent as is."""

    status: SeatStatus
    expiresAt: int | None = None  # the Lua payload's own (camelCase) field name
    o: str | None = None


class SeatsMessage(msgspec.Struct, tag="seats", tag_field="t"):
    """Seats changed: flight ``f`` is now at version ``v`` (``u`` = lastUpdated, ms)."""

    f: str
    v: int
    u: int
    c: dict[str, SeatChange]


class LayoutMessage(msgspec.Struct, tag="layout", tag_field="t"):
    """The flight's layout was replaced: only a fresh read of the map can follow it."""

    f: str
    v: int
    u: int


class OrderMessage(msgspec.Struct, tag="order", tag_field="t"):
    """Order ``o`` changed to version ``v``; ``d`` is its public hash fields as a flat list."""

    f: str
    o: str
    v: int
    d: list[str] = msgspec.field(default_factory=list)


FlightMessage = SeatsMessage | LayoutMessage
Announcement = SeatsMessage | LayoutMessage | OrderMessage
_decoder: Final = msgspec.json.Decoder(Announcement)


def decode_message(data: bytes | str) -> Announcement:
    """Decode one announcement (from pub/sub or the change log)."""
    message: Announcement = _decoder.decode(data)
    return message
_encode: Final = msgspec.json.Encoder().encode
