"""The API docs page at ``/schema``: rendered on the server from the OpenAPI document.

Litestar's bundled UIs load their JavaScript from CDNs and render blank on a closed network; this
page needs no asset at all.
"""

from __future__ import annotations

from html import escape
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.openapi.plugins import OpenAPIRenderPlugin

METHODS = ("get", "post", "put", "delete", "patch")


class LocalDocsPlugin(OpenAPIRenderPlugin):
    """A plain HTML list of operations with their descriptions; no CDN, no script."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")

    def render(self, request: Request[Any, Any, State], openapi_schema: dict[str, Any]) -> bytes:
        """Render every path and method of ``openapi_schema``."""
        info = openapi_schema.get("info", {})
        rows = []
        for path, item in sorted(openapi_schema.get("paths", {}).items()):
            for method in METHODS:
                operation = item.get(method)
                if operation is None:
                    continue
                summary = operation.get("summary") or ""
                description = operation.get("description") or ""
                rows.append(
                    f"<tr><td class=m>{method.upper()}</td><td><code>{escape(path)}</code></td>"
                    f"<td><b>{escape(summary)}</b> {escape(description)}</td></tr>"
                )
        page = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<title>{escape(str(info.get("title", "API")))} API</title>
<style>body{{font:15px system-ui,sans-serif;margin:2rem;color:#1a1a1a}}td{{padding:.3rem .6rem;
vertical-align:top;border-bottom:1px solid #ddd}}.m{{font-weight:700}}</style></head><body>
<h1>{escape(str(info.get("title", "API")))} {escape(str(info.get("version", "")))}</h1>
<p>Machine-readable: <a href="openapi.json">openapi.json</a></p>
<table>{"".join(rows)}</table></body></html>"""
        return page.encode()
