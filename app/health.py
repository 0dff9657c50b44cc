"""Health checks: registered checkers run in parallel, each under a timeout, cached briefly.

Statuses, best to worst: healthy, degraded (serving, but impaired), unhealthy
(this component fails), critical (the service cannot serve). The overall
status is the worst component's. `/health/quick` reads the last result
without running anything, so a load balancer never waits on a check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HEALTHY, DEGRADED, UNHEALTHY, CRITICAL = "healthy", "degraded", "unhealthy", "critical"
SEVERITY = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2, CRITICAL: 3}


@dataclass(frozen=True)
class CheckResult:
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message,
                "duration_ms": round(self.duration_ms, 2), "details": self.details}


@dataclass(frozen=True)
class HealthReport:
    status: str
    checked_at: datetime
    checks: dict[str, CheckResult]

    @property
    def serving(self) -> bool:
        return SEVERITY[self.status] <= SEVERITY[DEGRADED]

    def summary(self) -> dict[str, Any]:
        return {"status": self.status,
                "checked_at": self.checked_at.isoformat().replace("+00:00", "Z")}

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(),
                "checks": {name: r.to_json() for name, r in self.checks.items()}}


Checker = Callable[[], CheckResult]


def worst(statuses) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=HEALTHY)


class HealthManager:
    """Runs every registered checker in parallel and keeps the last report."""

    def __init__(self, checkers: dict[str, Checker], timeout: float, cache_seconds: float,
                 logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self.checkers = checkers
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.logger = logger
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=max(2, 2 * len(checkers)),
                                            thread_name_prefix="health")
        self._lock = threading.Lock()
        self._last: HealthReport | None = None
        self._last_at = float("-inf")

    def last(self) -> HealthReport | None:
        """The most recent report, never running a check."""
        return self._last

    def report(self) -> HealthReport:
        """A report at most cache_seconds old; runs the checks when it is older."""
        if self._last is not None and self.clock() - self._last_at < self.cache_seconds:
            return self._last
        with self._lock:
            if self._last is not None and self.clock() - self._last_at < self.cache_seconds:
                return self._last
            report = self._run_all()
            self._last, self._last_at = report, self.clock()
            return report

    def _run_all(self) -> HealthReport:
        started = {name: (self.clock(), self._executor.submit(self._timed, check))
                   for name, check in self.checkers.items()}
        deadline = self.clock() + self.timeout
        results = {}
        for name, (start, future) in started.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - self.clock()))
            except FutureTimeout:
                results[name] = CheckResult(
                    UNHEALTHY, f"check did not finish within {self.timeout:g}s",
                    duration_ms=(self.clock() - start) * 1000)
            except Exception as exc:
                self.logger.warning("health check %s failed: %s", name, type(exc).__name__)
                results[name] = CheckResult(UNHEALTHY, f"check failed: {type(exc).__name__}")
        status = worst(r.status for r in results.values())
        return HealthReport(status, datetime.now(UTC), results)

    def _timed(self, check: Checker) -> CheckResult:
        start = self.clock()
        result = check()
        return CheckResult(result.status, result.message, result.details,
                           (self.clock() - start) * 1000)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- checkers ----------------------------------------------------------------------
def database_checker(db, timeout: float, show_details: bool) -> Checker:
    """SELECT 1 through the pool within the timeout, plus the pool's stats."""

    def check() -> CheckResult:
        stats = db.stats()
        details: dict[str, Any] = {
            "size": stats.get("pool_size", 0), "available": stats.get("pool_available", 0),
            "in_use": stats.get("pool_size", 0) - stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0), "min": stats.get("pool_min", 0),
            "max": stats.get("pool_max", 0), "acquire_timeouts": stats.get("requests_errors", 0),
            "connection_errors": stats.get("connections_errors", 0),
        }
        try:
            with db.pool.connection(timeout=timeout) as conn:
                row = conn.execute("SELECT current_setting('server_version')").fetchone()
        except Exception as exc:
            return CheckResult(CRITICAL, f"database unreachable ({type(exc).__name__})",
                               details)
        if show_details:
            details["server_version"] = row[0]
            details["host"] = db.pool.conninfo and _host_of(db)
        if details["waiting"]:
            return CheckResult(DEGRADED, "requests are waiting for a connection", details)
        return CheckResult(HEALTHY, "database answers", details)

    return check


def _host_of(db) -> str:
    try:
        with db.pool.connection(timeout=0.5) as conn:
            return conn.info.host
    except Exception:
        return "unknown"


def migrations_checker(db, expected_version: int) -> Checker:
    def check() -> CheckResult:
        with db.pool.connection(timeout=1.0) as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations"
                               ).fetchone()
        current = row[0]
        details = {"current": current, "expected": expected_version}
        if current < expected_version:
            return CheckResult(UNHEALTHY, "database schema is behind this build", details)
        return CheckResult(HEALTHY, "schema is current", details)

    return check


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def memory_checker(limit_bytes: int, rss: Callable[[], int] = _rss_bytes) -> Checker:
    def check() -> CheckResult:
        used = rss()
        details: dict[str, Any] = {"rss_bytes": used}
        if not limit_bytes:
            return CheckResult(HEALTHY, "no memory limit configured", details)
        ratio = used / limit_bytes
        details.update(limit_bytes=limit_bytes, used_ratio=round(ratio, 3))
        if ratio > 0.95:
            return CheckResult(CRITICAL, "memory nearly exhausted", details)
        if ratio > 0.80:
            return CheckResult(DEGRADED, "memory above 80% of the limit", details)
        return CheckResult(HEALTHY, "memory within limit", details)

    return check


def lifecycle_checker(lifecycle) -> Checker:
    def check() -> CheckResult:
        if lifecycle.shutting_down:
            return CheckResult(UNHEALTHY, "shutting down")
        return CheckResult(HEALTHY, "serving")

    return check


class Lifecycle:
    """Whether this worker has begun shutting down (readiness turns 503 at once)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def shutting_down(self) -> bool:
        return self._event.is_set()

    def begin_shutdown(self) -> None:
        self._event.set()
