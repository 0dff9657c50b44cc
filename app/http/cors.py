"""CORS for browser clients on other origins; off unless CORS_ORIGINS lists some.

Decisions:
- Only listed origins get CORS headers (compared case-insensitively, without a
  trailing slash); `*` lists every origin and is answered with a literal `*`.
  Credentials (cookies) are never allowed: the API authenticates with a Bearer
  token, which a browser sends only when the page's script adds it.
- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
  answered in a before_request hook, before routing, for any path: routes
  have no automatic OPTIONS, so routing would answer 405. A listed origin gets
  204 with Allow-Origin, Allow-Methods, Allow-Headers and Max-Age. An unlisted
  origin gets 204 without any Access-Control-* header, which a browser treats
  as a refusal; that needs no error code outside the contract's table and
  tells the caller nothing about the list.
- On other responses (errors included) a listed origin gets Allow-Origin and
  Expose-Headers, so scripts can read ids, ETags and rate limits.
- Every response carries `Vary: Origin` while CORS is on (unless the list is
  `*`), so a shared cache never gives one origin's answer to another.
"""

from __future__ import annotations

from flask import Flask, Response, request

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
# traceparent and tracestate: a traced page's requests continue its trace (W3C Trace Context).
ALLOW_HEADERS = ("Authorization, Content-Type, Idempotency-Key, X-Request-ID, traceparent, "
                 "tracestate")
EXPOSE_HEADERS = ("ETag, Location, X-Request-ID, RateLimit, RateLimit-Policy, Retry-After, "
                  "Idempotent-Replayed, traceparent")
MAX_AGE_SECONDS = 600


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def install_cors(app: Flask, origins: tuple[str, ...], max_age: int = MAX_AGE_SECONDS) -> None:
    """Answer preflights and add CORS headers for `origins`; does nothing when it is empty.

    Install it after the middleware that sets request ids and the access log,
    so a preflight answer still gets those (before_request hooks run in order).
    """
    listed = frozenset(_normalise(o) for o in origins if o.strip())
    if not listed:
        return
    any_origin = "*" in listed

    def allowed_origin() -> str | None:
        """The Access-Control-Allow-Origin value for this request, or None."""
        origin = request.headers.get("Origin")
        if not origin:
            return None
        if any_origin:
            return "*"
        return origin if _normalise(origin) in listed else None

    @app.before_request
    def answer_preflight():
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers \
                or "Origin" not in request.headers:
            return None
        response = Response(status=204)
        allow = allowed_origin()
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = str(max_age)
        return response

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        if not any_origin:
            response.vary.add("Origin")
        if "Access-Control-Allow-Methods" in response.headers:
            return response  # a preflight answer, complete already
        allow = allowed_origin()
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response
