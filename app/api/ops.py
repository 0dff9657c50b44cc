"""Operations endpoints: health for load balancers and Kubernetes, and metrics.

None of them is authenticated or rate limited. Health responses are never
cached (`Cache-Control: no-store`, no ETag): a probe must see the current state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from flask import Response

from app.domain.health import DEGRADED, HEALTHY, UNHEALTHY, CheckResult, HealthReport, worst
from app.http import respond
from app.http.doc import Component, Doc, Success
from app.http.routing import Handler


class Health(Protocol):
    def last(self) -> HealthReport | None: ...

    def report(self) -> HealthReport: ...


class Lifecycle(Protocol):
    @property
    def shutting_down(self) -> bool: ...


class Metrics(Protocol):
    @property
    def content_type(self) -> str: ...

    def scrape(self) -> bytes: ...


def _status_code(status: str) -> int:
    return 200 if status in (HEALTHY, DEGRADED) else 503


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _health_response(body: dict[str, Any]) -> Response:
    return Response(respond.encode_json(body), status=_status_code(body["status"]),
                    content_type=respond.JSON_TYPE, headers={"Cache-Control": "no-store"})


def handle_live() -> Handler:
    """GET /health/live: the process serves; checks nothing external."""

    def handler() -> Response:
        return _health_response({"status": HEALTHY})

    return handler


def handle_ready(health: Health, lifecycle: Lifecycle) -> Handler:
    """GET /health/ready: database answers, migrations current, not shutting down.

    200 for healthy or degraded, 503 otherwise, and 503 from the moment this
    worker begins shutting down. Answers from the health refresher's last
    report (never waiting on a check), which is at most HEALTH_CACHE_SECONDS
    old and renewed at once when the database's reachability changes.
    """

    def handler() -> Response:
        if lifecycle.shutting_down:
            return _health_response({"status": UNHEALTHY, "checked_at": _now(),
                                     "message": "shutting down"})
        return _health_response((health.last() or health.report()).summary())

    return handler


def handle_quick(health: Health, lifecycle: Lifecycle) -> Handler:
    """GET /health/quick: the last known overall status, never running a check
    (the health refresher keeps it current)."""

    def handler() -> Response:
        report: HealthReport | None = health.last()
        body = report.summary() if report is not None else {"status": UNHEALTHY,
                                                             "checked_at": None}
        if lifecycle.shutting_down:
            body["status"] = UNHEALTHY
        return _health_response(body)

    return handler


def handle_detailed(health: Health, lifecycle: Lifecycle) -> Handler:
    """GET /health/detailed: every component with its status, timing and details."""

    def handler() -> Response:
        body = health.report().to_json()
        if lifecycle.shutting_down:
            body["checks"]["lifecycle"] = CheckResult(UNHEALTHY, "shutting down").to_json()
            body["status"] = worst([body["status"], UNHEALTHY])
        return _health_response(body)

    return handler


def handle_metrics(metrics: Metrics, sample: Callable[[], None]) -> Handler:
    """GET /metrics: Prometheus text format, merged across all workers."""

    def handler() -> Response:
        sample()
        return Response(metrics.scrape(), content_type=metrics.content_type,
                        headers={"Cache-Control": "no-store"})

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------
_STATUS = {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "critical"]}
_CHECKED_AT = {"type": "string", "format": "date-time", "nullable": True,
               "description": "When the status was determined (`null` only before a "
                              "worker's first check)."}
HEALTH_LIVE = Component("HealthLive", {
    "type": "object", "required": ["status"], "additionalProperties": False,
    "properties": {"status": {"type": "string", "enum": ["healthy"]}}},
    lambda renderer: {"status": "healthy"})
HEALTH_SUMMARY = Component("HealthSummary", {
    "type": "object", "required": ["status"], "additionalProperties": False,
    "properties": {"status": _STATUS, "checked_at": _CHECKED_AT,
                   "message": {"type": "string", "description": "Why, when shutting down."}}},
    lambda renderer: {"status": "healthy", "checked_at": "2024-05-01T09:30:00.123456Z"})
HEALTH_CHECK = Component("HealthCheck", {
    "type": "object", "required": ["status", "message", "duration_ms", "details"],
    "additionalProperties": False,
    "properties": {
        "status": _STATUS,
        "message": {"type": "string"},
        "duration_ms": {"type": "number", "minimum": 0},
        "details": {"type": "object", "additionalProperties": True},
    }})
HEALTH_DETAILED = Component("HealthDetailed", {
    "type": "object", "required": ["status", "checked_at", "checks"],
    "additionalProperties": False,
    "properties": {"status": _STATUS, "checked_at": _CHECKED_AT,
                   "checks": {"type": "object",
                              "additionalProperties": {"$ref": "#/components/schemas/"
                                                               "HealthCheck"}}}},
    lambda renderer: {"status": "healthy", "checked_at": "2024-05-01T09:30:00.123456Z",
                      "checks": {"migrations": {
                          "status": "healthy", "message": "schema is current",
                          "duration_ms": 1.52, "details": {"current": 3, "expected": 3}}}},
    requires=(HEALTH_CHECK,))
PROMETHEUS_TEXT = Component(
    "PrometheusText", {"type": "string", "description": "Prometheus text exposition format."},
    lambda renderer: ('# HELP http_requests_total Requests answered.\n'
                      '# TYPE http_requests_total counter\n'
                      'http_requests_total{method="GET",route="/animals",status="200"} 42.0\n'),
    media_type="text/plain")


LIVE_DOC = Doc(
    handle_live, "Operations",
    success=(Success(200, "The process serves.", HEALTH_LIVE),))
READY_DOC = Doc(
    handle_ready, "Operations",
    success=(Success(200, "Ready: `healthy` or `degraded`.", HEALTH_SUMMARY),
             Success(503, "Not ready: `unhealthy` or `critical`, or shutting down "
                          "(then with a `message`).", HEALTH_SUMMARY)))
QUICK_DOC = Doc(
    handle_quick, "Operations",
    success=(Success(200, "Last known status `healthy` or `degraded`.", HEALTH_SUMMARY),
             Success(503, "Last known status `unhealthy` or `critical`.", HEALTH_SUMMARY)))
DETAILED_DOC = Doc(
    handle_detailed, "Operations",
    success=(Success(200, "Overall `healthy` or `degraded`.", HEALTH_DETAILED),
             Success(503, "Overall `unhealthy` or `critical`.", HEALTH_DETAILED)),
    notes="Components: `database` (pool statistics), `migrations`, `memory`, "
          "`lifecycle`, and others as the deployment configures them (read replica, "
          "rate-limit store). Hostnames and versions appear in `details` only with "
          "`HEALTH_DETAILS=true`; credentials never do.")
METRICS_DOC = Doc(
    handle_metrics, "Operations",
    success=(Success(200, "Prometheus text exposition format 0.0.4, merged across the "
                          "workers.", PROMETHEUS_TEXT),))
