"""Hostile input against a real ``seats api`` (issue 9, parts 5 and 6): request heads and
connections are bounded by the server, bodies are decoded strictly, errors echo a bounded prefix.

Every row answers its documented 4xx (or closes the connection, for the head bounds) and changes
nothing: the order, the flight's version, the number of orders and the catalogue stay as they were.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import Processes, RedisServer

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 2  # SEATS_HTTP_HEAD_TIMEOUT_SECONDS of the module's server (the default is 10)
KEEPALIVE = 1  # SEATS_HTTP_KEEPALIVE_SECONDS of the module's server
CLOSED = "closed"  # the connection was closed without (or before reading) an answer
BIG = 60_000  # a 60 KB id: under the 64 KiB body limit, far over any echo bound
ECHO_BOUND = 2_000  # an error body quoting a 60 KB value must stay smaller than this


@dataclass
class Api:
    """The module's ``seats api``: its base URL, process id, port and one order holding 1A."""

    base: str
    pid: int
    port: int
    redis_url: str
    order_id: str = ""
    token: str = ""

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)


def _start_api(redis_server: RedisServer, env: dict[str, str]) -> tuple[Processes, str]:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    processes = Processes({
        **os.environ, "SEATS_REDIS_URL": redis_server.url, "SEATS_ADMIN_TOKEN": "admin-secret",
        "PYTHONUNBUFFERED": "1", **env,
    })
    return processes, processes.api()


@pytest.fixture(scope="module")
def api(redis_server: RedisServer) -> Iterator[Api]:
    """One real ``seats api`` with short head and keep-alive timeouts, and an order holding 1A."""
    processes, base = _start_api(redis_server, {
        "SEATS_HTTP_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT), "SEATS_HTTP_KEEPALIVE_SECONDS": str(KEEPALIVE),
        "SEATS_RATE_LIMIT_WRITES": "off",  # the write limiter (main, issue 9): every row comes from one address
    })
    try:
        live = Api(base, processes.started[-1].pid, int(base.rsplit(":", 1)[1]), redis_server.url)
        with live.http() as client:
            created = client.post("/orders", json={"flightId": "FL-001"}).json()
            live.order_id, live.token = created["orderId"], created["token"]
            held = client.post(f"/orders/{live.order_id}/seats", json={"seats": ["1A"]}, headers=_auth(live.token))
            assert held.status_code == 200, held.text
        yield live
    finally:
        processes.stop_all()


def _auth(token: str | bytes) -> dict[str, Any]:
    return {"Authorization": (b"Bearer " + token) if isinstance(token, bytes) else f"Bearer {token}"}


def _state(api: Api) -> tuple[Any, ...]:
    """What a refused request must not change."""
    with api.http() as client:
        order = client.get(f"/orders/{api.order_id}", headers=_auth(api.token)).json()
        flight = client.get("/flights/FL-001/seats/version").json()["version"]
        catalogue = sorted(f["flightId"] for f in client.get("/flights").json())
    store = redis.Redis.from_url(api.redis_url)
    try:
        orders = sum(1 for _ in store.scan_iter("seats:order-flight:*"))
    finally:
        store.close()
    return order["version"], order["state"], order["attemptsLeft"], order["seats"], flight, catalogue, orders


# --- the head: raw sockets --------------------------------------------------------------------


def _exchange(port: int, send: Callable[[socket.socket], None], wait: float = 20) -> tuple[int | str, bytes]:
    """Run ``send`` on a new connection, then read until the server closes it.

    Returns the status of the answer (or CLOSED when none came) and the raw answer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the server closed while we were still sending: what the bounds do
            send(sock)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            raise AssertionError(f"the connection was still open after {wait} s") from None
        except OSError:
            pass  # reset after the server closed with unread input
    if not answer:
        return CLOSED, answer
    return int(answer.split(b" ", 2)[1]), answer


def _head(*lines: bytes, path: bytes = b"/healthz") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n"


def _sender(data: bytes) -> Callable[[socket.socket], None]:
    return lambda sock: sock.sendall(data)


def _huge_header(size: int) -> Callable[[socket.socket], None]:
    def send(sock: socket.socket) -> None:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")

    return send


def _trickle(prefix: bytes, byte: bytes, seconds: float) -> Callable[[socket.socket], None]:
    """Send ``prefix``, then one ``byte`` every 0.25 s for ``seconds`` (a slowloris client)."""

    def send(sock: socket.socket) -> None:
        sock.sendall(prefix)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.25)
            sock.sendall(byte)

    return send


def _keep_alive_then_idle(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive: the server keeps the connection


def _nothing(sock: socket.socket) -> None:
    """Open a connection and send nothing."""


_TRICKLE_SECONDS = 10 * HEAD_TIMEOUT  # without a head timeout the trickle would keep the connection this long

HEAD_ROWS: list[tuple[str, Callable[[socket.socket], None], int | str, bytes]] = [
    ("16 MB header", _huge_header(16 * 1024 * 1024), 431, b"headers_too_large"),
    ("one 17 KiB header", _sender(_head(b"X-Big: " + b"a" * 17 * 1024)), 431, b"headers_too_large"),
    ("90 headers of 200 bytes", _sender(_head(*(b"X-%d: " % i + b"v" * 200 for i in range(90)))), 431,
     b"headers_too_large"),
    ("101 headers", _sender(_head(*(b"X-%d: 1" % i for i in range(99)))), 431, b"too_many_headers"),
    ("20 KiB URL", _sender(_head(path=b"/flights/" + b"F" * 20 * 1024)), 414, b"uri_too_long"),
    ("20 KiB X-Forwarded-For", _sender(_head(b"X-Forwarded-For: " + b"10.0.0.1, " * 2048)), 431,
     b"headers_too_large"),
    ("20 KiB Idempotency-Key", _sender(_head(b"Idempotency-Key: " + b"k" * 20 * 1024)), 431, b"headers_too_large"),
    ("20 KiB of blank lines and no request", _sender(b"\r\n" * 10_240), 431, b"headers_too_large"),
    ("NUL in a header value", _sender(_head(b"X-Evil: a\x00b")), 400, b"invalid_request"),
    ("a request line that is not HTTP", _sender(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"), 400,
     b"invalid_request"),
    ("a head trickled a byte at a time", _trickle(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ", b"a",
                                                  _TRICKLE_SECONDS), CLOSED, b""),
    ("a body trickled a byte at a time", _trickle(
        b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        b" ", _TRICKLE_SECONDS), CLOSED, b""),
    ("a connection that sends nothing", _nothing, CLOSED, b""),
]


@pytest.mark.parametrize(("send", "expected", "code"), [row[1:] for row in HEAD_ROWS],
                         ids=[row[0] for row in HEAD_ROWS])
def test_bad_head_is_refused_or_closed(api: Api, send: Callable[[socket.socket], None], expected: int | str,
                                       code: bytes) -> None:
    """A head over a bound is answered with its 4xx in the JSON error shape (or the connection closed
    when it never completes) and changes nothing."""
    before = _state(api)
    status, answer = _exchange(api.port, send)
    if expected == 431 and status == CLOSED:
        status = 431  # the 16 MB sender can be reset before it reads the 431 the server wrote
    assert status == expected, answer[:300]
    assert code in answer and b"connection: close" in answer if code else not answer
    assert _state(api) == before


def test_limits_leave_ordinary_heads_alone(api: Api) -> None:
    """A 15 KiB cookie, 95 headers, non-ASCII values and an absurd X-Forwarded-For are served as usual."""
    for head in (
        _head(b"Cookie: " + b"c" * 15 * 1024),
        _head(*(b"X-%d: 1" % i for i in range(93))),
        _head("X-Name: Zoë Ünïcødé".encode(), b"X-Latin: caf\xe9"),
        _head(b"X-Forwarded-For: not-an-address, 999.999.1.1, ::zz, " + b"1.2.3.4, " * 500),
    ):
        status, answer = _exchange(api.port, _sender(head))
        assert status == 200 and answer.endswith(b'{"status":"ok"}'), answer[:300]


def test_idle_keep_alive_connection_is_closed(api: Api) -> None:
    """A keep-alive connection idle after its response is closed (SEATS_HTTP_KEEPALIVE_SECONDS)."""
    status, answer = _exchange(api.port, _keep_alive_then_idle)
    assert status == 200 and b"connection: close" not in answer.lower()


def test_oversized_heads_do_not_grow_the_process(api: Api) -> None:
    """Twenty 16 MB heads on connections left open leave the API's resident memory near where it was
    (before the bounds it went from ~50 MB to ~430 MB, and kept it after they closed)."""
    before = _rss_kib(api.pid)
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
            held.append(sock)
            with contextlib.suppress(OSError):  # the server closes after ~16 KiB: sending fails
                _huge_header(16 * 1024 * 1024)(sock)
        grown_mib = (_rss_kib(api.pid) - before) / 1024
    finally:
        for sock in held:
            sock.close()
    assert grown_mib < 32, f"RSS grew by {grown_mib:.0f} MiB"
    with api.http() as client:
        assert client.get("/healthz").status_code == 200


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_connections_past_the_bound_are_closed(redis_server: RedisServer) -> None:
    """With SEATS_HTTP_MAX_CONNECTIONS open, a new connection is closed at once (long before the head
    timeout); once they close, requests are served again."""
    processes, base = _start_api(redis_server, {"SEATS_HTTP_MAX_CONNECTIONS": "8",
                                                "SEATS_HTTP_HEAD_TIMEOUT_SECONDS": "60"})
    port = int(base.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)  # let the server accept them all
        status, _ = _exchange(port, _sender(_head()), wait=30)  # closed by the bound, not the 60 s timeout
        assert status == CLOSED
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 30
        while _exchange(port, _sender(_head()), wait=30)[0] != 200:
            assert time.monotonic() < deadline, "the server did not serve again after the idle connections closed"
            time.sleep(0.2)
    finally:
        for sock in idle:
            sock.close()
        processes.stop_all()


# --- bodies and hostile header values, through HTTP ----------------------------------------------

SEATS = "/orders/{order}/seats"
PAY = "/orders/{order}/payment"
ORDERS = "/orders"
ORDER = "/orders/{order}"
TOKEN = "token"  # placeholder: the module order's token
ADMIN = {"Authorization": "Bearer admin-secret"}

BODY_ROWS: list[tuple[str, str, str, dict[str, Any], bytes, int, str, str | None]] = [
    # id, method, path, headers, body, status, error, details.field
    ("duplicate key", "POST", SEATS, {}, b'{"seats": ["2A"], "seats": ["2B"]}', 422, "validation_failed", "seats"),
    ("duplicate key, escaped", "POST", SEATS, {}, b'{"seats": ["2A"], "\\u0073eats": ["2B"]}', 422,
     "validation_failed", "seats"),
    ("duplicate payment code", "POST", PAY, {}, b'{"code": "12345", "code": "54321"}', 422, "validation_failed",
     "code"),
    ("duplicate flightId", "POST", ORDERS, {}, b'{"flightId": "FL-001", "flightId": "FL-001"}', 422,
     "validation_failed", "flightId"),
    ("duplicate layout key", "PUT", "/flights/DUP-1", ADMIN, b'{"rows": 2, "columns": "AB", "rows": 3}', 422,
     "validation_failed", "rows"),
    ("flightId and flightID differ", "POST", ORDERS, {}, b'{"flightId": "FL-001", "flightID": "FL-002"}', 422,
     "validation_failed", "flightID"),
    ("flightId and flightID equal", "POST", ORDERS, {}, b'{"flightId": "FL-001", "flightID": "FL-001"}', 422,
     "validation_failed", "flightID"),
    ("flightId and a null flightID", "POST", ORDERS, {}, b'{"flightId": "FL-001", "flightID": null}', 422,
     "validation_failed", "flightID"),
    ("orderId and orderID", "POST", ORDERS, {}, b'{"flightId": "FL-001", "orderId": "a1", "orderID": "a2"}', 422,
     "validation_failed", "orderID"),
    ("empty orderId", "POST", ORDERS, {}, b'{"flightId": "FL-001", "orderId": ""}', 422, "validation_failed",
     "orderId"),
    ("empty orderID", "POST", ORDERS, {}, b'{"flightID": "FL-001", "orderID": ""}', 422, "validation_failed",
     "orderId"),
    ("empty flightId", "POST", ORDERS, {}, b'{"flightId": ""}', 422, "validation_failed", "flightId"),
    ("null flightID only", "POST", ORDERS, {}, b'{"flightID": null}', 422, "validation_failed", "flightId"),
    ("60 KB unknown seat id", "POST", SEATS, {}, b'{"seats": ["' + b"9" * BIG + b'A"]}', 422,
     "validation_failed", "seats"),
    ("30 KB seat id twice", "POST", SEATS, {}, b'{"seats": ["' + b"9" * (BIG // 2) + b'A", "' + b"9" * (BIG // 2)
     + b'A"]}', 422, "validation_failed", "seats"),
    ("60 KB unknown field", "POST", SEATS, {}, b'{"' + b"x" * BIG + b'": 1, "seats": ["2A"]}', 400,
     "invalid_request", None),
    ("60 KB orderId", "POST", ORDERS, {}, b'{"flightId": "FL-001", "orderId": "' + b"o" * BIG + b'"}', 422,
     "validation_failed", "orderId"),
    ("60 KB flightId", "POST", ORDERS, {}, b'{"flightId": "' + b"F" * BIG + b'"}', 404, "flight_not_found", None),
    ("10 KB order id in the path", "GET", "/orders/" + "o" * 10_000, {}, b"", 404, "order_not_found", None),
    ("10 KB flight id in the path", "GET", "/flights/" + "F" * 10_000 + "/seats", {}, b"", 404,
     "flight_not_found", None),
    ("malformed JSON", "POST", SEATS, {}, b'{"seats": ["2A"', 400, "invalid_request", None),
    ("wrong JSON type", "POST", SEATS, {}, b'{"seats": "2A"}', 400, "invalid_request", None),
    ("wrong type beside a duplicate", "POST", SEATS, {}, b'{"seats": ["2A"], "seats": 7}', 400, "invalid_request",
     None),
    ("empty body", "POST", SEATS, {}, b"", 400, "invalid_request", None),
    ("UTF-8 bearer token", "GET", ORDER, {"Authorization": "Bearer tökén-ünïcødé".encode()}, b"", 404,
     "order_not_found", None),
    ("Latin-1 bearer token", "DELETE", ORDER, {"Authorization": b"Bearer caf\xe9"}, b"", 404, "order_not_found",
     None),
    ("no admin token and a malformed layout", "PUT", "/flights/NA-2", {"Authorization": ""}, b"{not json", 401,
     "unauthorized", None),
    ("non-ASCII admin token", "PUT", "/flights/NA-1", {"Authorization": "Bearer ädmin-secret".encode()},
     b'{"rows": 2, "columns": "AB"}', 403, "forbidden", None),
    ("absurd X-Forwarded-For on a write", "POST", SEATS,
     {"X-Forwarded-For": b"\xff\xfe, ::zz, 999.1.1.1, " + b"not-an-ip, " * 300 + b"1.2.3.4"}, b'{"seats": ["9Z"]}', 422,
     "validation_failed", "seats"),
    ("300-byte Idempotency-Key on an unauthenticated write", "POST", SEATS, {"Authorization": "",
     "Idempotency-Key": "k" * 300}, b'{"seats": ["2A"]}', 401, "unauthorized", None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "error", "field"),
                         [row[1:] for row in BODY_ROWS], ids=[row[0] for row in BODY_ROWS])
def test_bad_body_or_header_is_refused_without_change(
    api: Api, method: str, path: str, headers: dict[str, Any], body: bytes, status: int, error: str,
    field: str | None,
) -> None:
    """Each bad body or header value answers its documented 4xx with a small JSON error and changes nothing."""
    before = _state(api)
    sent_headers = {**_auth(api.token), "Content-Type": "application/json", **headers}
    with api.http() as client:
        response = client.request(method, path.format(order=api.order_id), content=body, headers=sent_headers)
    assert response.status_code == status, response.text[:500]
    answer = response.json()
    assert answer["error"] == error and answer["message"], answer
    if field is not None:
        assert answer["details"]["field"] == field, answer
    assert len(response.content) < ECHO_BOUND, f"the error echoes {len(response.content)} bytes"
    assert _state(api) == before
