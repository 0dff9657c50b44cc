"""Fault injection for failure tests.

Routed only when FAULT_INJECTION is on, which production refuses.
"""

from __future__ import annotations

import time

from flask import Response, request

from app.domain.repositories import SlowQueries
from app.http import respond
from app.http.errors import InvalidParams
from app.http.routing import Handler


def _seconds() -> float:
    try:
        seconds = float(request.args.get("seconds", "1"))
    except ValueError:
        raise InvalidParams.one("seconds", "must be a number") from None
    if not 0 <= seconds <= 30:
        raise InvalidParams.one("seconds", "must be between 0 and 30")
    return seconds


def handle_debug_sleep() -> Handler:
    """GET /debug/sleep?seconds=S: answer after S seconds (at most 30), to test draining."""

    def handler() -> Response:
        seconds = _seconds()
        time.sleep(seconds)
        return respond.ok({"slept": seconds})

    return handler


def handle_debug_fail() -> Handler:
    """GET /debug/fail: raise an unexpected exception, to test internal_failure."""

    def handler() -> Response:
        raise RuntimeError("injected failure: secret-looking detail that must stay in the log")

    return handler


def handle_debug_db_sleep(slow_queries: SlowQueries) -> Handler:
    """GET /debug/db-sleep?seconds=S: hold a pooled connection for S seconds (at most 30).

    Runs `SELECT pg_sleep(S)` through the Database, the way a slow query
    would, to test pool exhaustion and database restarts; seconds=0 is one
    cheap round trip.
    """

    def handler() -> Response:
        seconds = _seconds()
        slow_queries.sleep(seconds)
        return respond.ok({"slept": seconds})

    return handler
