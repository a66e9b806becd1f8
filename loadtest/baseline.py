"""The yardstick: a bare Litestar app served exactly like ``seats api``, run as its own process.

One POST handler decodes a small msgspec Struct and returns it (what every order endpoint does
before it touches Redis) and one GET handler returns a small constant Struct (what the seat-map
poll does when nothing changed). The harness loads it with the same client as the service, so
the service's figures can be reported as fractions of it: absolute numbers on a shared 2-core
machine drift from run to run, ratios measured side by side do not.

Run as ``python -m loadtest.baseline PORT``.
"""

from __future__ import annotations

import sys

import msgspec
from litestar import Litestar, get, post


class Selection(msgspec.Struct, forbid_unknown_fields=True):
    """The shape of ``POST /orders/{id}/seats``."""

    seats: list[str]


class Version(msgspec.Struct, rename="camel"):
    """The shape of ``GET /flights/{id}/seats/version``."""

    flight_id: str
    version: int
    hash: str
    last_updated: str


_VERSION = Version("BASE", 1, "0" * 32, "2026-01-01T00:00:00.000Z")


@post("/echo/{item_id:str}", status_code=200)
async def echo(item_id: str, data: Selection) -> Selection:
    """Decode the body into a Struct and send it back."""
    return data


@get("/version/{item_id:str}")
async def version(item_id: str) -> Version:
    """A small constant Struct."""
    return _VERSION


def create_baseline_app() -> Litestar:
    """The bare app: no middleware, no dependencies, no OpenAPI."""
    return Litestar(route_handlers=[echo, version], openapi_config=None, debug=False)


def main(argv: list[str] | None = None) -> None:
    """Serve the bare app on 127.0.0.1:PORT with the uvicorn settings of ``seats api``."""
    import uvicorn

    args = sys.argv[1:] if argv is None else argv
    uvicorn.run(
        create_baseline_app(), host="127.0.0.1", port=int(args[0]),
        timeout_graceful_shutdown=3, access_log=False, log_config=None,
    )


if __name__ == "__main__":
    main()
