"""Operations endpoints: health for load balancers and Kubernetes, and metrics."""

from __future__ import annotations

from flask import Response

from app import respond
from app.health import DEGRADED, UNHEALTHY, CheckResult, HealthReport, worst


def _status_code(status: str) -> int:
    return 200 if status in ("healthy", DEGRADED) else 503


def handle_live():
    """GET /health/live: the process serves; checks nothing external."""

    def handler() -> Response:
        return respond.ok({"status": "healthy"})

    return handler


def handle_ready(health, lifecycle):
    """GET /health/ready: database answers, migrations current, not shutting down."""

    def handler() -> Response:
        if lifecycle.shutting_down:
            return respond.ok({"status": UNHEALTHY, "message": "shutting down"}, status=503)
        report = health.report()
        return respond.ok(report.summary(), status=_status_code(report.status))

    return handler


def handle_quick(health, lifecycle):
    """GET /health/quick: the last known overall status, never running a check."""

    def handler() -> Response:
        report: HealthReport | None = health.last()
        if report is None:
            body = {"status": UNHEALTHY, "checked_at": None}
        else:
            body = report.summary()
        if lifecycle.shutting_down:
            body["status"] = UNHEALTHY
        return respond.ok(body, status=_status_code(body["status"]))

    return handler


def handle_detailed(health, lifecycle):
    """GET /health/detailed: every component with its status, timing and details."""

    def handler() -> Response:
        report = health.report()
        body = report.to_json()
        if lifecycle.shutting_down:
            body["checks"]["lifecycle"] = CheckResult(UNHEALTHY, "shutting down").to_json()
            body["status"] = worst([body["status"], UNHEALTHY])
        return respond.ok(body, status=_status_code(body["status"]))

    return handler


def handle_metrics(metrics, sample):
    """GET /metrics: Prometheus text format, merged across all workers."""

    def handler() -> Response:
        sample()
        return Response(metrics.scrape(), content_type=metrics_content_type())

    return handler


def metrics_content_type() -> str:
    from app.metrics import CONTENT_TYPE

    return CONTENT_TYPE
