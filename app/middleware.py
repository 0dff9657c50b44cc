"""What happens around every request: request ids, errors as JSON, headers, access log, metrics.

Kept to what each request needs: it runs thousands of times a second.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from app import respond
from app.client_addr import client_address
from app.db import DatabaseUnavailable
from app.errors import (
    ApiError,
    InternalFailure,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.logs import AccessLog

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"


def install_middleware(app: Flask, config, logger: logging.Logger, access_log: AccessLog,
                       metrics) -> None:
    """Attach the per-request hooks and the error handlers to `app`."""
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    max_body = config.max_body_bytes
    new_request_id = request_ids()
    trusted = config.trusted_proxies

    def forwarded_for() -> str | None:
        return request.headers.get("X-Forwarded-For") if trusted else None

    @app.before_request
    def start_request():
        g.started = time.perf_counter()
        g.client_addr = client_address(request.remote_addr or "", forwarded_for(), trusted)
        incoming = request.headers.get("X-Request-ID")
        g.request_id = incoming if incoming and _REQUEST_ID.fullmatch(incoming) \
            else new_request_id()
        length = request.content_length
        if length is not None and length > max_body:
            _discard_body(request.environ["wsgi.input"], length)
            raise PayloadTooLarge(max_body)

    @app.after_request
    def finish_request(response: Response) -> Response:
        headers = response.headers
        headers["X-Request-ID"] = g.get("request_id", "")
        headers.extend(SECURITY_HEADERS)  # handlers never set these
        if "Content-Security-Policy" not in headers:  # /docs brings its own
            headers["Content-Security-Policy"] = JSON_CSP
        if g.get("user_id") is not None:
            headers["Cache-Control"] = "no-store"
        decision = g.get("rate_limit")
        if decision is not None:
            headers.update(decision.headers())
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        started = g.get("started")
        seconds = time.perf_counter() - started if started is not None else 0.0
        metrics.observe_request(request.method, route, response.status_code, seconds)
        extra = {
            "request_id": g.get("request_id"),
            "method": request.method, "route": route, "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2), "remote_addr": g.get("client_addr"),
            "bytes": response.content_length or 0,
        }
        if g.get("user_id") is not None:
            extra["user_id"] = g.user_public_id
        access_log.write(extra)
        return response

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return respond.error_response(error)

    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(error: DatabaseUnavailable) -> Response:
        logger.warning("database unavailable: %s", error)
        return respond.error_response(ServiceUnavailable(retry_after=1))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return respond.error_response(_translate_http(error, max_body))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        logger.error("unhandled exception", exc_info=error)
        return respond.error_response(InternalFailure())


DISCARD_LIMIT = 1024 * 1024
DISCARD_CHUNK = 64 * 1024


def _discard_body(stream, length: int) -> None:
    """Read a refused body off the socket in small chunks, keeping none of it.

    gunicorn drains at most 64 KiB of an unread body before it silently
    drops a keep-alive connection, which surprises the client's next request
    on it; discarding up to DISCARD_LIMIT here keeps the connection usable.
    Larger bodies are left to gunicorn, which closes the connection.
    """
    if length > DISCARD_LIMIT:
        return
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(DISCARD_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def request_ids():
    """Unique ids without a system call per request: a random per-process prefix and a counter."""
    prefix = uuid.uuid4().hex[:16]
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):016x}"


def _translate_http(error: HTTPException, max_body: int) -> ApiError:
    """Werkzeug's routing and protocol errors as the contract's errors."""
    code = error.code
    if code == 404:
        return NotFound()
    if code == 405:
        allowed = [m for m in (getattr(error, "valid_methods", None) or []) if m != "OPTIONS"]
        return MethodNotAllowed(allowed)
    if code == 413:
        return PayloadTooLarge(max_body)
    if code == 415:
        return UnsupportedMediaType()
    if code == 400:
        return InvalidRequest("the request is malformed")
    if code == 503:
        return ServiceUnavailable()
    return InternalFailure()
