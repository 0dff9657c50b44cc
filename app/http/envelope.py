"""What happens around every request: request ids, errors as JSON, headers, access log, metrics.

Kept to what each request needs: it runs thousands of times a second.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import time
import uuid

from flask import Flask, Response
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import HTTPException

from app.domain.errors import DomainError
from app.http import admission, patterns, respond
from app.http.client_addr import client_address
from app.http.errors import (
    ApiError,
    InternalFailure,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    from_domain,
)
from app.http.observers import AccessLogWriter, RequestMetrics, RequestTrace, RequestTracer
from app.http.request_state import RequestState, enter, leave
from app.http.tokens import SIGNED_ID
from app.store.db import DatabaseUnavailable, end_wait_budget, wait_budget

_REQUEST_ID = re.compile(patterns.REQUEST_ID)
_TOKEN_START = re.compile(SIGNED_ID, re.IGNORECASE)
# Shorter ids or credentials than this are not compared with each other.
_SHARED_CREDENTIAL_MIN = 8
# The security headers OWASP's REST cheat sheet lists for API responses (with
# Cache-Control: no-store on authenticated ones). Each header costs every
# response ~3 us under load (gunicorn checks and formats each in Python), so
# API answers carry no Referrer-Policy: a JSON or text body links nowhere.
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
API_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", JSON_CSP),
)
# A response with a policy of its own (the /docs page) is a document a browser
# renders: it keeps its policy and gets a referrer policy too.
DOCUMENT_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
NO_STORE = ("Cache-Control", "no-store")


class Envelope:
    """The WSGI layer around the Flask app: what every request gets, whatever answers it.

    Request id, client address, body limits, the wait budget, security and RateLimit headers,
    the access line and metrics, on the environ and header list directly (half the cost of
    Flask hooks). See docs/envelope.md.
    """

    def __init__(self, app, config, access_log: AccessLogWriter, metrics: RequestMetrics,
                 tracing: RequestTracer | None = None):
        self.app = app
        self.tracing = tracing  # None: tracing off, and each request pays one branch for it
        self.access_log = access_log
        self.metrics = metrics
        self.trusted = config.trusted_proxies
        self.max_body = config.max_body_bytes
        self.db_wait = config.db_pool_timeout  # all of a request's waits for connections
        self.new_request_id = request_ids()

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID")
        ours = not (incoming and _REQUEST_ID.fullmatch(incoming)
                    and not holds_a_credential(incoming, environ.get("HTTP_AUTHORIZATION")))
        request_id = self.new_request_id() if ours or not incoming else incoming
        client = environ.get("REMOTE_ADDR") or ""
        if self.trusted:
            client = client_address(client, environ.get("HTTP_X_FORWARDED_FOR"), self.trusted)
        state = RequestState(environ, request_id, client)
        answer: list = []  # status line, Content-Length
        trace = None  # the request's span, current from just before the `try` that ends it

        def start(status: str, headers: list, exc_info=None):
            length, own_policy = "0", False
            for name, value in headers:  # one pass: handlers set these with this spelling
                if name == "Content-Length":
                    length = value
                elif name == "Content-Security-Policy":
                    own_policy = True  # /docs has its own
            headers.append(("X-Request-ID", request_id))
            headers.extend(DOCUMENT_SECURITY_HEADERS if own_policy else API_SECURITY_HEADERS)
            if state.user_id is not None:
                headers.append(NO_STORE)
            if state.rate_limit is not None:
                limits = state.rate_limit.headers()
                headers[:] = [(k, v) for k, v in headers if k not in limits]
                headers.extend(limits.items())
            if trace is not None:
                headers.append(("traceparent", trace.traceparent))
            answer[:] = [status, length]
            return start_response(status, headers, exc_info)

        admitted = admission.current()
        length = environ.get("CONTENT_LENGTH")
        if admitted is not None and admitted.body_too_large:
            # The worker refused it unread and closes the connection after the answer.
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(), "0"
            state.refusal = PayloadTooLarge(self.max_body)
        elif length:
            if length.isdigit() and int(length) > self.max_body:
                # Read it off the connection now; the 413 is answered inside Flask,
                # so the answer gets CORS headers like any other.
                _discard_body(environ["wsgi.input"], int(length))
                environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(), "0"
                state.refusal = PayloadTooLarge(self.max_body)
        elif "HTTP_TRANSFER_ENCODING" in environ:
            state.refusal = _read_chunked(environ, self.max_body)
        # The wait for a thread counts: a request that queued for the whole
        # budget gets 503 at its first checkout instead of waiting again.
        queued = time.monotonic() - admitted.ready_at if admitted is not None else 0.0
        token, budget = enter(state), wait_budget(self.db_wait - queued)
        if self.tracing is not None:
            trace = self.tracing.start_request(environ, client)
        try:
            body = self.app(environ, start)
            self.finish(environ.get("REQUEST_METHOD", ""), state, answer, ours,
                        time.perf_counter() - started, trace)
        finally:
            if trace is not None:
                trace.end(None if state.route == "unmatched" else state.route,
                          int(answer[0][:3]) if answer else 500)
            end_wait_budget(budget)
            leave(token)
        return body

    def finish(self, method: str, state: RequestState, answer: list, our_request_id: bool,
               seconds: float, trace: RequestTrace | None = None) -> None:
        status = int(answer[0][:3]) if answer else 500
        self.metrics.observe_request(method, state.route, status, seconds)
        size = answer[1] if answer else "0"
        self.access_log.write(state.request_id, method, state.route, status,
                              round(seconds * 1000, 2), state.client_addr,
                              int(size) if size.isdigit() else 0, state.user_public_id,
                              client_request_id=not our_request_id,
                              trace_id=None if trace is None else trace.trace_id,
                              span_id=None if trace is None else trace.span_id)


def install_middleware(app: Flask, config, logger: logging.Logger, access_log: AccessLogWriter,
                       metrics: RequestMetrics, tracing: RequestTracer | None = None) -> None:
    """Wrap `app` in the Envelope and answer errors in the contract's shape.

    With `tracing`, the causes of 5xx answers (an unreachable database, an
    unexpected exception) are recorded on the request's span as well.
    """
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes  # bodies without a length
    max_body = config.max_body_bytes
    # Flask's documented way to add WSGI middleware; mypy refuses assigning to a method.
    app.wsgi_app = Envelope(  # type: ignore[method-assign]
        app.wsgi_app, config, access_log, metrics, tracing)

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return respond.error_response(error)

    @app.errorhandler(DomainError)
    def domain_error(error: DomainError) -> Response:
        return respond.error_response(from_domain(error))

    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(error: DatabaseUnavailable) -> Response:
        logger.warning("database unavailable: %s", error)
        if tracing is not None:
            tracing.record_exception(error)
        return respond.error_response(ServiceUnavailable(retry_after=1))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return respond.error_response(_translate_http(error, max_body))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        logger.error("unhandled exception", exc_info=error)
        if tracing is not None:
            tracing.record_exception(error)
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


def _read_chunked(environ: dict, max_body: int) -> ApiError | None:
    """Read a body sent without Content-Length (chunked) whole, or refuse it.

    At most max_body + 1 bytes are read: over the limit is 413, malformed is 400, and a body
    within it is handed on as if it had come with a Content-Length, never truncated.
    """
    stream = environ["wsgi.input"]
    try:
        body = stream.read(max_body + 1)
        if len(body) > max_body:
            _discard_body(stream, DISCARD_LIMIT)
            refusal: ApiError | None = PayloadTooLarge(max_body)
            body = b""
        else:
            refusal = None
    except (ParseException, NoMoreData, ValueError):
        refusal, body = InvalidRequest("the chunked body is malformed"), b""
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
    return refusal


def holds_a_credential(request_id: str, authorization: str | None) -> bool:
    """Whether a client's request id looks like a token or shares the request's credential.

    Such an id is replaced by a generated one: a request id is echoed and
    written on every log line, and the token must never reach the logs.
    """
    if _TOKEN_START.search(request_id) is not None:
        return True
    if not authorization:
        return False
    credential = authorization.rpartition(" ")[2]
    secret = credential.rpartition(".")[2]  # a token's MAC, or the whole credential
    return (len(secret) >= _SHARED_CREDENTIAL_MIN and secret in request_id) or \
        (len(request_id) >= _SHARED_CREDENTIAL_MIN and request_id in credential)


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
