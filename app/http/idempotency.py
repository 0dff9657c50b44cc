"""Idempotency keys for POST: replay the first response, never execute twice.

The key's lock, the write and the stored response share one unit of work, handed to the
handler as `uow`; a concurrent duplicate gets 409 at once. See docs/envelope.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Callable

from flask import Response, request
from marshmallow import Schema
from opentelemetry.trace import INVALID_SPAN

from app.domain.errors import DomainError, WriteRaced
from app.http import patterns, respond
from app.http.errors import (
    ApiError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidParams,
    api_error,
)
from app.store.idempotency import StoredResponse

TTL_SECONDS = 24 * 3600
HEADER = "Idempotency-Key"
UNTRACED = contextlib.nullcontext(INVALID_SPAN)  # no state: one serves every call
_KEY = re.compile(patterns.IDEMPOTENCY_KEY)
_REPLAYED_HEADERS = ("Content-Type", "Location", "WWW-Authenticate")


class InjectedFailure(Exception):
    """Raised after the write when a test asks for it (fault injection only)."""


def canonical_params(schema: Schema) -> bytes:
    """The request's parameters after parsing, so JSON and form bodies with equal values match."""
    try:
        params = respond.validate(schema, respond.read_body(request))
    except ApiError:
        params = respond.read_body(request)  # invalid: compare what was sent
        params.pop("__form__", None)
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str).encode()


class Idempotency:
    def __init__(self, db, repo, metrics, fault_injection: bool = False, tracing=None):
        self.tracing = tracing  # app.ops.tracing.Tracing, or None when off
        self.db = db
        self.repo = repo
        self.metrics = metrics
        self.fault_injection = fault_injection

    def __call__(self, schema: Schema, scope: Callable[[], str]) -> Callable:
        """Wrap a POST handler whose parameters follow `schema`; `scope` names the caller."""

        def wrap(handler: Callable) -> Callable:
            @functools.wraps(handler)
            def wrapped(*args, **kwargs):
                key = request.headers.get(HEADER)
                if key is None:
                    return handler(*args, uow=None, **kwargs)
                if not _KEY.fullmatch(key):
                    raise InvalidParams.one(HEADER, "must be 1 to 255 printable ASCII characters")
                return self._run(scope(), key, schema, handler, args, kwargs)

            return wrapped

        return wrap

    def _run(self, scope: str, key: str, schema: Schema, handler, args, kwargs) -> Response:
        digest = hashlib.sha256(canonical_params(schema)).digest()
        try:
            return self._attempt(scope, key, digest, handler, args, kwargs)
        except WriteRaced:
            # Another write of the user changed what this one read while it waited for the
            # user's lock; its transaction is spoiled and rolled back. Once more, afresh.
            return self._attempt(scope, key, digest, handler, args, kwargs)

    def _attempt(self, scope: str, key: str, digest: bytes, handler, args, kwargs
                 ) -> Response:
        method, path = request.method, request.path
        with self.db.unit_of_work() as uow:
            with self._span("idempotency.lookup") as span:
                locked = self.repo.try_lock(scope, key, uow)
                stored = self.repo.find(scope, key, TTL_SECONDS, uow) if locked else None
                span.set_attributes({"saypi.idempotency.locked": locked,
                                     "saypi.idempotency.found": stored is not None})
            if not locked:
                raise IdempotencyKeyInUse()
            if stored is not None:
                if (stored.method, stored.path, stored.params_hash) != (method, path, digest):
                    raise IdempotencyKeyReused()
                self.metrics.idempotent_replays.inc()
                response = Response(stored.body, status=stored.status)
                for name, value in stored.headers.items():
                    response.headers[name] = value
                response.headers["Idempotent-Replayed"] = "true"
                return response
            try:
                response = handler(*args, uow=uow, **kwargs)
            except WriteRaced:
                raise
            except (ApiError, DomainError) as raised:
                error = api_error(raised)
                if error.status >= 500 or error.status == 429:
                    raise
                response = respond.error_response(error)
            if self.fault_injection and request.headers.get("X-Fault-After-Write") == "true":
                raise InjectedFailure("failure injected after the write")
            body = response.get_data()
            headers = {name: response.headers[name] for name in _REPLAYED_HEADERS
                       if name in response.headers}
            with self._span("idempotency.store"):
                self.repo.store(scope, key, StoredResponse(method, path, digest,
                                                           response.status_code, headers, body),
                                uow)
            return response

    def _span(self, name: str):
        """A child span of the request's (a no-op span with tracing off)."""
        return UNTRACED if self.tracing is None else self.tracing.span(name)
