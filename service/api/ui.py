"""The browser UI: ``GET /`` the customer page, ``GET /admin`` the admin console, ``/static/*`` their modules
and styles (no build step, no CDN)."""

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


def _page(name: str) -> Response[bytes]:
    """A page of ``static/``, read per request so an edited file shows on reload (a few KB), under the CSP."""
    return Response(
        (STATIC_DIR / name).read_bytes(),
        media_type=MediaType.HTML,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> Response[bytes]:
    """The customer page."""
    return _page("index.html")


@get("/admin", media_type=MediaType.HTML, include_in_schema=False)
async def admin_console() -> Response[bytes]:
    """The admin console (spec §13): the page itself is public; everything it shows needs the admin
    token, which the operator types into it."""
    return _page("admin.html")


static_router = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="ui-static",
    cache_control=CacheControlHeader(no_cache=True),
    include_in_schema=False,
)

ROUTES: list[ControllerRouterHandler] = [index, admin_console, static_router]
