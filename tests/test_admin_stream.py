"""Blocked seats and the admin console's stream (spec §13): the feed's mirror, the public streams and the
admin variant that names each seat's order."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import msgspec

from service.live.messages import SeatChange, SeatsMessage
from service.live.mirror import Mirror
from service.seatmap import Layout
from tests.conftest import REPO, LiveServer
from tests.sse import Watch, apply

NOW = 1_800_000_000_000
ADMIN = {"Authorization": "Bearer admin-secret"}


def test_admin_frames_name_orders_and_public_frames_do_not() -> None:
    """A frame's admin bytes carry each held or sold seat's orderId (blocked and available seats none); its
    public bytes and the public snapshot carry no order id at all."""
    layout = Layout.build("FX", 2, "AB", "1", NOW)
    mirror = Mirror.read(layout, {"version": "0", "lastUpdated": str(NOW), "createdAt": "1"}, [None] * 4, NOW, "r1")
    frame = mirror.apply(SeatsMessage(f="FX", v=1, u=NOW, c={
        "1A": SeatChange("held", NOW + 1000, "alice"), "1B": SeatChange("confirmed", None, "bob"),
        "2A": SeatChange("blocked"),
    }))
    admin = msgspec.json.decode(frame.render_admin().split(b"data: ")[1])["changes"]
    assert admin == {"1A": {"status": "held", "expiresAt": "2027-01-15T08:00:01.000Z", "orderId": "alice"},
                     "1B": {"status": "confirmed", "orderId": "bob"}, "2A": {"status": "blocked"}}
    assert b"alice" not in frame.public and b"bob" not in frame.public
    snapshot = mirror.snapshot_frame()
    assert b"alice" not in snapshot.public
    assert msgspec.json.decode(snapshot.render_admin().split(b"data: ")[1])["seats"]["1B"]["orderId"] == "bob"


async def test_admin_stream_names_orders_live_and_refuses_other_tokens(
    live_server: Callable[..., LiveServer],
) -> None:
    """The console's stream (admin token as ?token=) starts with a snapshot naming the holder of a held seat,
    then sends each change with its order; a public stream sees the same change, a block as status blocked,
    and never an order id. No token 401, a wrong one 403."""
    server = live_server()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        created = (await http.post("/orders", json={"flightId": "FL-001"})).json()
        order_id, headers = created["orderId"], {"Authorization": f"Bearer {created['token']}"}
        held = await http.post(f"/orders/{order_id}/seats", json={"seats": ["1A"]}, headers=headers)
        assert held.status_code == 200
        assert (await http.get("/admin/flights/FL-001/events")).status_code == 401
        assert (await http.get("/admin/flights/FL-001/events?token=nope")).status_code == 403
        admin = await Watch(http, "/admin/flights/FL-001/events?token=admin-secret").open()
        public = await Watch(http, "/flights/FL-001/events").open()
        try:
            first = await admin.until(bool)
            assert first[0].event == "snapshot" and first[0].json()["seats"]["1A"]["orderId"] == order_id
            swapped = await http.post(f"/orders/{order_id}/seats", json={"seats": ["1B"]}, headers=headers)
            assert swapped.status_code == 200
            blocked = await http.post("/admin/flights/FL-001/seats/block", json={"reason": "r", "seats": ["3C"]},
                                      headers=ADMIN)
            assert blocked.status_code == 200
            admin_seen = apply({}, await admin.until(lambda events: len(events) >= 3))
            public_seen = apply({}, await public.until(lambda events: len(events) >= 3))
            assert admin_seen["1B"] == {"status": "held", "expiresAt": swapped.json()["holdExpiresAt"],
                                        "orderId": order_id}
            assert admin_seen["1A"] == {"status": "available"} and admin_seen["3C"] == {"status": "blocked"}
            assert public_seen["3C"] == {"status": "blocked"} and "orderId" not in public_seen["1B"]
            assert all(order_id not in event.data for event in public.data_events())
        finally:
            await admin.close()
            await public.close()


def test_the_history_benchmark_runs() -> None:
    """README's `python -m loadtest.bench_history` runs (a tiny round) and reports both of its figures."""
    done = subprocess.run([sys.executable, "-m", "loadtest.bench_history", "--swaps", "64", "--rounds", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "µs per 4-seat swap" in done.stdout and "bytes per seat change" in done.stdout
