"""What the head bounds cost per request: uvicorn's httptools protocol against ``BoundedHttpToolsProtocol``.

Feeds the same keep-alive POST (the shape of a hold) through each protocol with an in-memory
transport and a minimal ASGI app, so only the protocol's own work differs; alternates the two
for several rounds and prints the median and minimum µs per request of each. No sockets, no
Redis: the figure is the protocol's share, not a request's.

Run as ``python -m loadtest.bench_http [--requests 20000] [--rounds 9]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.server import BoundedConfig, BoundedHttpToolsProtocol, HeadLimits
from service.settings import Settings

BODY = b'{"seats":["1A","1B","1C"]}'
REQUEST = (
    b"POST /orders/abc/seats HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"User-Agent: Python/3.11 aiohttp/3.9\r\nAuthorization: Bearer 0123456789abcdefghijkl\r\n"
    b"Content-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    """Counts writes; never closes unless told to."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _per_request_us(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    config = BoundedConfig(_app, HeadLimits.from_settings(Settings()), log_config=None, access_log=False)  # type: ignore[arg-type]
    config.load()
    protocol = protocol_class(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        for _ in range(3):  # the app's task: receive, start, body
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    assert transport.writes >= requests and not transport.closed, "a request was not answered"
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


async def _compare(requests: int, rounds: int) -> None:
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for protocol_class in (HttpToolsProtocol, BoundedHttpToolsProtocol):
            results.setdefault(protocol_class.__name__, []).append(await _per_request_us(protocol_class, requests))
    for name, values in results.items():
        print(f"{name:26s} median {statistics.median(values):6.2f} µs/request, min {min(values):6.2f}")


def main(argv: list[str] | None = None) -> None:
    """Print both protocols' µs per keep-alive request, alternating ``--rounds`` times."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_http", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    uvloop.run(_compare(args.requests, args.rounds))


if __name__ == "__main__":
    main()
