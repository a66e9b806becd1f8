"""One log format (spec §13 "Logs"): every line of ``seats api`` and ``seats worker`` is one JSON object,
uvicorn's included; every response carries ``X-Request-Id`` and so does every line of its request; errors
carry their exception; SIGTERM loses no line; no token, pass, code, secret or query string is ever logged."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.request_id import RequestContext, well_formed
from service.logs import JsonLines, RequestIdFilter
from service.subjects import sign_pass
from tests.conftest import REPO, Processes, free_port


def log_lines(processes: Processes) -> list[str]:
    """Every line every started process wrote (stdout and stderr share its log file)."""
    return [line for path in processes.logs for line in Path(path).read_text(errors="replace").splitlines()
            if line.strip()]


def records(processes: Processes) -> list[dict[str, Any]]:
    """The lines as JSON objects; fails naming the first line that is not one."""
    parsed = []
    for line in log_lines(processes):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
        assert isinstance(value, dict), line
        assert {"ts", "level", "logger", "msg"} <= value.keys(), line
        parsed.append(value)
    return parsed


def test_request_ids_are_returned_and_logged(processes: Processes) -> None:
    """A well-formed caller id is echoed and logged with the request's line; a malformed one (too long,
    a space, non-ASCII) is replaced by a fresh one; errors (404, 401, 400) carry the header too; uvicorn's
    start-up lines are JSON at INFO."""
    base = processes.api({"SEATS_ACCESS_LOG": "true"})
    with httpx.Client(base_url=base) as http:
        kept = http.get("/flights", headers={"X-Request-Id": "caller-1.a_b:c"})
        assert kept.headers["x-request-id"] == "caller-1.a_b:c"
        for bad in (b"x" * 129, b"has space", "é".encode()):
            replaced = http.get("/flights", headers={"X-Request-Id": bad})
            assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), bad
        errors = [http.get("/nowhere"), http.get("/orders/abc"), http.post("/orders", json={"flightId": 5})]
        assert [r.status_code for r in errors] == [404, 401, 400]
        ids = {r.headers["x-request-id"] for r in errors}
        assert len(ids) == 3
    processes.stop_all()
    lines = records(processes)
    by_id = {line.get("requestId"): line for line in lines if line["logger"] == "seats.access"}
    assert by_id["caller-1.a_b:c"]["path"] == "/flights" and by_id["caller-1.a_b:c"]["status"] == 200
    assert {by_id[i]["status"] for i in ids} == {404, 401, 400}
    assert any(line["logger"] == "uvicorn.error" and line["level"] == "info" and "Uvicorn running" in line["msg"]
               for line in lines)


def test_access_lines_are_off_by_default(processes: Processes) -> None:
    """Without SEATS_ACCESS_LOG a request still gets its X-Request-Id but writes no line of its own."""
    base = processes.api()
    assert httpx.get(f"{base}/flights", headers={"X-Request-Id": "quiet-1"}).headers["x-request-id"] == "quiet-1"
    processes.stop_all()
    assert not [line for line in records(processes) if line["logger"] == "seats.access"]


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_sigterm_right_after_a_request_keeps_its_line(processes: Processes, attempt: int) -> None:
    """SIGTERM sent the moment a response arrives: the process exits and its request's line is in the log
    (Litestar's queue-backed default handler lost it 4 runs in 8)."""
    base = processes.api({"SEATS_ACCESS_LOG": "true"})
    request_id = f"last-{attempt}-{secrets.token_hex(4)}"
    assert httpx.get(f"{base}/flights", headers={"X-Request-Id": request_id}).status_code == 200
    api = processes.started[0]
    os.killpg(api.pid, signal.SIGTERM)
    assert api.wait(15) in {0, -signal.SIGTERM}  # uvicorn re-raises the signal once it has shut down
    assert any("Finished server process" in line["msg"] for line in records(processes)), "a graceful exit"
    assert any(line.get("requestId") == request_id for line in records(processes)), processes.output()


def test_an_error_line_carries_its_exception_and_the_request_id() -> None:
    """An exception that escapes Litestar's handlers is answered 500 with X-Request-Id, and its line holds
    the formatted exception and the request id."""
    stream: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonLines())
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("seats.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/x", "query_string": b"token=SECRET",
             "headers": [(b"x-request-id", b"req-7")]}
    try:
        asyncio.run(RequestContext(broken, access_log=True)(scope, receive, send))  # type: ignore[arg-type]
    finally:
        access.removeHandler(handler)
    assert sent[0]["status"] == 500 and (b"x-request-id", b"req-7") in sent[0]["headers"]
    error, request = (json.loads(line) for line in stream)
    assert error["requestId"] == "req-7" and "RuntimeError: boom" in error["exc"] and error["level"] == "error"
    assert request["path"] == "/x" and request["status"] == 500 and "SECRET" not in json.dumps(request)


@pytest.mark.parametrize(("value", "ok"), [
    (b"a", True), (b"A-z_0.9:x", True), (b"x" * 128, True), (b"x" * 129, False), (b"", False),
    (b"a b", False), (b"a\n", False), (b"a\x00", False), ("é".encode(), False), (b"a/b", False), (b'a"b', False),
])
def test_well_formed_request_ids(value: bytes, ok: bool) -> None:
    """1-128 characters of A-Z a-z 0-9 . _ : - (echoed in a header and logged, so nothing else)."""
    assert well_formed(value) is ok


def test_a_full_run_logs_no_secret(processes: Processes) -> None:
    """A whole sale against real ``seats api`` and ``seats worker`` processes (buyer pass, order token, a
    hold, the order's SSE stream with its token in the query, a payment, admin actions and the admin stream
    with the admin token in the query, a webhook to an unreachable receiver): every line is JSON, and none
    holds the order token, the pass, the payment code, the admin token, the webhook secret, the receiver's
    URL token, or any query string."""
    admin_token = "adm-" + secrets.token_hex(12)
    buyer_secret = "bs-" + secrets.token_hex(12)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver_key = "rk" + secrets.token_hex(8)
    env = {"SEATS_ADMIN_TOKEN": admin_token, "SEATS_BUYER_SECRET": buyer_secret,
           "SEATS_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hooks?key={receiver_key}",
           "SEATS_WEBHOOK_SECRET": webhook_secret, "SEATS_WEBHOOK_FIRST_RETRY_SECONDS": "0.2",
           "SEATS_WEBHOOK_RELAY_INTERVAL_SECONDS": "0.05", "SEATS_ACCESS_LOG": "true"}
    base = processes.api(env)
    processes.worker(env)
    buyer_pass = sign_pass(buyer_secret, "buyer-77", int(time.time()) + 600)
    code = "99999"
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        created = http.post("/orders", json={"flightId": "FL-001"}, headers={"Seats-Buyer": buyer_pass}).json()
        order_id, token = created["orderId"], created["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert http.post(f"/orders/{order_id}/seats", json={"seats": ["1A"]}, headers=bearer).status_code == 200
        with http.stream("GET", f"/orders/{order_id}/events", params={"token": token}) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())
        assert http.post(f"/orders/{order_id}/payment", json={"code": code}, headers=bearer).status_code in {200, 202}
        deadline = time.monotonic() + 15
        while http.get(f"/orders/{order_id}", headers=bearer).json()["state"] != "CONFIRMED":
            assert time.monotonic() < deadline, "the order was not confirmed"
            time.sleep(0.1)
        other = http.post("/orders", json={"flightId": "FL-001"}).json()
        http.post(f"/orders/{other['orderId']}/seats", json={"seats": ["2A"]},
                  headers={"Authorization": f"Bearer {other['token']}"})
        assert http.post(f"/admin/orders/{other['orderId']}/release", json={"reason": "log test"},
                         headers=admin).status_code == 200
        assert http.post("/admin/flights/FL-001/seats/block", json={"seats": ["3A"], "reason": "log test"},
                         headers=admin).status_code == 200
        with http.stream("GET", "/admin/flights/FL-001/events", params={"token": admin_token}) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())
        time.sleep(1.0)  # the worker's relay and a few webhook attempts (unreachable: retried, logged)
    processes.stop_all()
    lines = records(processes)
    text = "\n".join(log_lines(processes))
    assert any(line["logger"] == "seats.webhooks" for line in lines), "the webhook attempts were logged"
    assert any(line.get("path") == f"/orders/{order_id}/events" for line in lines)
    for secret in (token, other["token"], buyer_pass, buyer_pass.rsplit(".", 1)[1], admin_token, buyer_secret,
                   webhook_secret, webhook_secret.removeprefix("whsec_"), receiver_key):
        assert secret not in text, f"a secret reached the logs: {secret[:6]}…"
    assert not re.search(rf"(?<![0-9]){code}(?![0-9])", text), "the payment code reached the logs"
    assert "?" not in "".join(str(line.get("path", "")) for line in lines)
    assert "token=" not in text and "key=" not in text


def test_a_crash_and_a_refused_setting_are_json_lines_too() -> None:
    """A worker whose Redis cannot be reached exits 1 with its traceback in a JSON line (uncaught
    exceptions go through the log, not raw to stderr); a setting it cannot take is one JSON line, exit 2."""
    env = {**os.environ, "SEATS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    crashed = subprocess.run([sys.executable, "-m", "worker.main"], env=env, capture_output=True, text=True,
                             timeout=60, cwd=REPO)
    refused = subprocess.run([sys.executable, "-m", "service.cli", "api"], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env={**env, "SEATS_REDIS_CLUSTER": "true"})
    assert (crashed.returncode, refused.returncode) == (1, 2)
    for run in (crashed, refused):
        lines = [json.loads(line) for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        assert all(isinstance(line, dict) and "msg" in line for line in lines)
    assert "ConnectionError" in json.loads(crashed.stderr.splitlines()[-1])["exc"]
    assert "SEATS_QUEUE_REDIS_URL" in json.loads(refused.stderr.splitlines()[-1])["msg"]
