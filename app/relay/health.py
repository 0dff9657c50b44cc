"""The relay's own small HTTP port (RELAY_PORT): liveness, readiness, details and metrics.

The checks are the servers' (app/ops/health.py) plus one per task: a task whose
step has run far past the grace bound is stuck. See docs/relay.md ("Health").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.domain.health import HEALTHY, UNHEALTHY, CheckResult
from app.ops import health as health_mod
from app.relay.runner import Relay

JSON = "application/json"
METRICS = "text/plain; version=0.0.4; charset=utf-8"


class RelayCollector(Collector):
    """The relay loop's own figures, read at each scrape."""

    def __init__(self, relay: Relay):
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        steps = CounterMetricFamily("saypi_relay_steps", "Steps each relay task finished.",
                                    labels=["task"])
        failures = CounterMetricFamily("saypi_relay_step_failures",
                                       "Steps of each relay task that raised.", labels=["task"])
        idle = GaugeMetricFamily("saypi_relay_step_age_seconds",
                                 "Seconds since each relay task last finished a step.",
                                 labels=["task"])
        now = time.monotonic()
        for task in self.relay.tasks:
            steps.add_metric([task.name], self.relay.steps[task.name])
            failures.add_metric([task.name], self.relay.failures[task.name])
            idle.add_metric([task.name], now - self.relay.last_step[task.name])
        yield steps
        yield failures
        yield idle


def tasks_checker(relay: Relay, stuck_seconds: float) -> health_mod.Checker:
    """Unhealthy while a task has not finished a step for `stuck_seconds`."""
    def check() -> CheckResult:
        now = time.monotonic()
        ages = {name: round(now - at, 1) for name, at in relay.last_step.items()}
        stuck = sorted(name for name, age in ages.items() if age > stuck_seconds)
        if stuck:
            return CheckResult(UNHEALTHY, f"stuck: {', '.join(stuck)}", {"step_age": ages})
        return CheckResult(HEALTHY, f"{len(ages)} tasks stepping", {"step_age": ages})

    return check


class RelayHttp:
    """/health/live, /health/ready, /health/detailed and /metrics on a thread of its own."""

    def __init__(self, host: str, port: int, health: health_mod.HealthManager,
                 registry: CollectorRegistry, stopping: Callable[[], bool],
                 logger: logging.Logger):
        self.logger = logger
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/health/live": lambda: _live(health, stopping),
            "/health/ready": lambda: _ready(health, stopping),
            "/health/detailed": lambda: _detailed(health),
            "/metrics": lambda: (200, METRICS, generate_latest(registry)),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, content_type, body = route() if route else (
                    404, JSON, b'{"error":{"code":"not_found","message":"no such path"}}')
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # probes every few seconds: not worth a log line each

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="relay-http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.logger.info("relay health and metrics on port %d", self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _live(health: health_mod.HealthManager, stopping: Callable[[], bool]
          ) -> tuple[int, str, bytes]:
    """Live unless a task is stuck (a restart would free it); a stopping relay is live."""
    report = health.last() or health.report()
    stuck = report.checks.get("tasks")
    if stuck is not None and stuck.status != HEALTHY:
        return 503, JSON, _body({"status": "stuck", "message": stuck.message})
    return 200, JSON, _body({"status": "stopping" if stopping() else "ok"})


def _ready(health: health_mod.HealthManager, stopping: Callable[[], bool]
           ) -> tuple[int, str, bytes]:
    report = health.report()
    ready = report.serving and not stopping()
    return (200 if ready else 503), JSON, _body(report.summary())


def _detailed(health: health_mod.HealthManager) -> tuple[int, str, bytes]:
    report = health.report()
    return (200 if report.serving else 503), JSON, _body(
        {**report.summary(), "checks": {name: result.to_json()
                                        for name, result in report.checks.items()}})
