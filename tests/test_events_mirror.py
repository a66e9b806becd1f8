"""The feed's mirror agrees with the seat map's own decoding, version after version (no Redis)."""

from __future__ import annotations

import random

import msgspec

from service.live.messages import SeatChange, SeatsMessage
from service.live.mirror import Mirror
from service.seatmap import BLOCKED_VALUE, Layout, build_snapshot

NOW = 1_800_000_000_000


def test_mirror_hash_and_snapshot_match_build_snapshot_after_random_changes() -> None:
    """After each of 500 random changes (holds, lapsed holds, sales, blocks, releases) the mirror's hash and
    snapshot equal what GET /seats computes from the same raw seat values."""
    rng = random.Random(7)
    layout = Layout.build("FX", 12, "ABCDEFG", "3", NOW)
    truth: dict[str, str] = {}  # seat -> raw Redis value, as the Lua scripts write them
    mirror = Mirror.read(layout, {"version": "5", "lastUpdated": str(NOW), "createdAt": "1"},
                         [None] * len(layout.seat_ids), NOW, "lineage-1")
    now = NOW
    for version in range(6, 506):
        now += rng.randint(1, 400)
        changes: dict[str, SeatChange] = {}
        for seat in rng.sample(layout.seat_ids, rng.randint(1, 6)):
            roll = rng.random()
            order = f"o{rng.randint(1, 9)}"
            if roll < 0.45:
                deadline = now + rng.randint(-50, 1500)  # some holds lapse before the next version
                truth[seat] = f"H|{order}|{deadline}"
                changes[seat] = SeatChange("held", deadline, order)
            elif roll < 0.6:
                truth[seat] = f"C|{order}"
                changes[seat] = SeatChange("confirmed", None, order)
            elif roll < 0.7:
                truth[seat] = BLOCKED_VALUE
                changes[seat] = SeatChange("blocked")
            else:
                truth.pop(seat, None)
                changes[seat] = SeatChange("available")
        frame = mirror.apply(SeatsMessage(f="FX", v=version, u=now, c=changes))
        expected = build_snapshot(layout, {"version": str(version), "lastUpdated": str(now)},
                                  [truth.get(s) for s in layout.seat_ids], now)
        assert frame.event.hash == expected.hash, version
        assert frame.version == mirror.version == version
        if version % 50 == 0:
            assert mirror.snapshot_frame().public.endswith(expected.encoded_public() + b"\n\n")
    assert len(set(mirror.order)) == len(mirror.order) == len(mirror.owned)
    assert mirror.order == sorted(mirror.order)


def test_mine_marks_are_per_order_and_owner_ids_never_leave() -> None:
    """A frame's public bytes carry no order ids; a watcher's own seats get mine, others' do not."""
    layout = Layout.build("FX", 2, "AB", "1", NOW)
    mirror = Mirror.read(layout, {"version": "0", "lastUpdated": str(NOW), "createdAt": "1"}, [None] * 4, NOW,
                         "lineage-1")
    frame = mirror.apply(SeatsMessage(f="FX", v=1, u=NOW, c={
        "1A": SeatChange("held", NOW + 1000, "alice"), "1B": SeatChange("confirmed", None, "bob"),
    }))
    assert b"alice" not in frame.public and b"bob" not in frame.public
    for_alice = msgspec.json.decode(frame.render("alice").split(b"data: ")[1])
    assert for_alice["changes"]["1A"]["mine"] is True and "mine" not in for_alice["changes"]["1B"]
    assert frame.render("carol") is frame.public and frame.render(None) is frame.public
