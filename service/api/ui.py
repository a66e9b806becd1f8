"""The browser UI: ``GET /`` serves the page, ``/static/*`` its modules and styles (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Everything the page needs comes from this origin: a CDN reference would fail here, not on a closed network.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> Response[bytes]:
    """The single page; read per request so an edited file shows on reload (it is a few KB)."""
    return Response(
        (STATIC_DIR / "index.html").read_bytes(),
        media_type=MediaType.HTML,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


static_router = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="ui-static",
    cache_control=CacheControlHeader(no_cache=True),
    include_in_schema=False,
)

ROUTES: list[ControllerRouterHandler] = [index, static_router]
