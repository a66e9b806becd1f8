"""TLS and ACL users are honoured (spec §12): ``seats api`` and ``seats worker`` run a whole order against a
redis-server that only speaks TLS, as an ACL user that may not run ``CLIENT`` (so no ``CLIENT SETNAME``),
with the CA given in the URL the way redis-py reads it (``rediss://user:pass@host:port/0?ssl_ca_certs=…``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import trustme

from tests.conftest import Processes, _die_with_parent, free_port
from tests.sse import Watch, apply

pytestmark = pytest.mark.e2e
USER, PASSWORD = "seats-app", "s3cret/with:odd@chars"


class TlsRedis:
    """A redis-server with TLS only (no plain port) and one ACL user, its CA file and its URL."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1")
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert, key = directory / "server.pem", directory / "server.key"
        server_cert.cert_chain_pems[0].write_to_path(str(cert))
        server_cert.private_key_pem.write_to_path(str(key))
        self.port = free_port()
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required for the tests (.ci/run installs it)"
        config = directory / "redis.conf"
        # the default user is off; ours may do anything but CLIENT (so no CLIENT SETNAME)
        config.write_text(f"user default off\nuser {USER} on >{PASSWORD} ~* &* +@all -client\n")
        self.process = subprocess.Popen(
            [binary, str(config), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no", "--dir", str(directory),
             "--logfile", str(directory / "redis.log")],
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call in the child
        )
        self.log = directory / "redis.log"

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        quoted = password.replace("/", "%2F").replace(":", "%3A").replace("@", "%40")
        return f"rediss://{user}:{quoted}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca_file}&ssl_cert_reqs=required"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url())

    def wait_up(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"the TLS redis-server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def tls_redis() -> Iterator[TlsRedis]:
    with tempfile.TemporaryDirectory(prefix="seats-tls-") as directory:
        server = TlsRedis(Path(directory))
        try:
            server.wait_up()
            yield server
        finally:
            server.stop()


async def test_an_order_is_paid_over_tls_as_an_acl_user_without_client_setname(
        tls_redis: TlsRedis, processes: Processes) -> None:
    """The API (scripts, reads, the shard-channel subscription) and the worker (arq's queue, the payment)
    reach a TLS-only Redis as a restricted ACL user: an order is held, paid and confirmed, and a stream
    watching the flight sees the sale."""
    with tls_redis.client() as client:
        assert client.acl_whoami() == USER
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.client_setname("not-allowed")  # the user really cannot name its connection
    env = {"SEATS_REDIS_URL": tls_redis.url(), "SEATS_QUEUE_REDIS_URL": tls_redis.url()}
    base = processes.api(env=env)
    processes.worker(env=env)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=30)) as http:
        watch = await Watch(http, "/flights/FL-001/events").open()
        try:
            await watch.until(lambda events: any(e.event == "snapshot" for e in events))
            order = (await http.post("/orders", json={"flightId": "FL-001"})).json()
            auth = {"Authorization": f"Bearer {order['token']}"}
            held = await http.post(f"/orders/{order['orderId']}/seats", json={"seats": ["3C"]}, headers=auth)
            assert held.status_code == 200, held.text
            paid = await http.post(f"/orders/{order['orderId']}/payment", json={"code": "12345"}, headers=auth)
            assert paid.status_code == 202, paid.text
            try:
                await watch.until(lambda events: apply({}, events).get("3C", {}).get("status") == "confirmed",
                                  timeout=15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{processes.output()}") from None
        finally:
            await watch.close()
        confirmed = (await http.get(f"/orders/{order['orderId']}", headers=auth)).json()
        assert confirmed["state"] == "CONFIRMED", confirmed
        ready = (await http.get("/readyz")).json()
        assert not ready.get("failing"), ready
    assert PASSWORD not in processes.output() and "s3cret%2F" not in processes.output(), "a password was logged"


def test_a_wrong_password_is_a_clear_failure_not_a_hang(tls_redis: TlsRedis, processes: Processes) -> None:
    """The API started with a wrong ACL password never becomes ready, and says why in /readyz."""
    env = {"SEATS_REDIS_URL": tls_redis.url(password="wrong"), "SEATS_QUEUE_REDIS_URL": tls_redis.url()}
    with pytest.raises(AssertionError) as failure:
        processes.api(env=env)
    assert "WRONGPASS" in str(failure.value) or "invalid username-password" in str(failure.value), \
        str(failure.value)[-2000:]
