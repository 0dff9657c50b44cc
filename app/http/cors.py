"""CORS for browser clients on other origins; off unless CORS_ORIGINS lists some.

Listed origins get CORS headers and preflights answered before routing; unlisted origins a
204 with no Access-Control-* header; no credentials, `Vary: Origin`. See docs/envelope.md.
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
