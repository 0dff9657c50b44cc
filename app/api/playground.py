"""The playground: GET /playground, a page where a person tries the API in a browser.

Plain HTML, CSS and JavaScript modules (package data, no build step), read once and served
with ETags under a Content-Security-Policy that allows only this origin and no inline script
or style. Not part of the OpenAPI description.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response

from app.http.respond import Static, serve_named
from app.http.routing import Handler

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"

PLAYGROUND_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                  "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                  "form-action 'none'; frame-ancestors 'none'")

NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate with the ETag every time

# The page's files by suffix; any other file in the folder is not served.
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def handle_playground(folder: Path = PLAYGROUND_DIR) -> Handler:
    """GET /playground: the page, with its own strict Content-Security-Policy."""
    static = Static((folder / "index.html").read_bytes(), "text/html; charset=utf-8",
                    {**NO_CACHE, "Content-Security-Policy": PLAYGROUND_CSP})

    def handler() -> Response:
        return static.response()

    return handler


def handle_playground_asset(folder: Path = PLAYGROUND_DIR) -> Handler:
    """GET /playground/{asset}: the page's scripts, stylesheet and icon."""
    assets = {path.name: Static(path.read_bytes(), ASSET_TYPES[path.suffix], NO_CACHE)
              for path in sorted(folder.iterdir()) if path.suffix in ASSET_TYPES}

    return serve_named(assets)


def handle_root() -> Handler:
    """GET /: a redirect to the playground."""

    def handler() -> Response:
        return Response(status=302, headers={"Location": "/playground"})

    return handler
