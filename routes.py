"""Every route of the SayPI API, in one file.

Middleware that applies to one route (authentication, rate limiting,
idempotency) is visible on that route's line.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from app.api import debug, ops


def route(app: Flask, method: str, path: str, handler: Callable) -> None:
    """Register one handler for one method and path."""
    endpoint = f"{method} {path}"
    app.add_url_rule(path, endpoint=endpoint, view_func=handler, methods=[method],
                     provide_automatic_options=False)


def add_routes(app: Flask, config, logger, lifecycle, health, metrics, sample_metrics) -> None:
    route(app, "GET", "/health/live", ops.handle_live())
    route(app, "GET", "/health/ready", ops.handle_ready(health, lifecycle))
    route(app, "GET", "/health/quick", ops.handle_quick(health, lifecycle))
    route(app, "GET", "/health/detailed", ops.handle_detailed(health, lifecycle))
    route(app, "GET", "/metrics", ops.handle_metrics(metrics, sample_metrics))

    if config.fault_injection:
        route(app, "GET", "/debug/sleep", debug.handle_debug_sleep())
        route(app, "GET", "/debug/fail", debug.handle_debug_fail())
