"""Health checks: registered checkers run in parallel, each under a timeout, cached briefly.

A refresher thread runs them; probes only read its last result, so a probe never waits on a
check, and a hung checker costs one thread, never a pile. See docs/observability.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout, TooManyRequests

from app.domain.health import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    SEVERITY,
    UNHEALTHY,
    Checker,
    CheckResult,
    HealthReport,
    pool_details,
    worst,
)
from app.store.db import Migration, pending_migrations, serves_with

# Detail keys shown only with HEALTH_DETAILS=true (they help an attacker map the
# system), and keys never shown at all (they could carry credentials).
REVEALING_DETAILS = re.compile(r"host|address|addr|version|server|port", re.IGNORECASE)
NEVER_SHOWN = re.compile(r"dsn|url|conninfo|password|passwd|secret|token", re.IGNORECASE)


def public_details(details: dict[str, Any], show_revealing: bool) -> dict[str, Any]:
    """Details safe to publish: never credentials; hosts and versions only when allowed."""
    shown = {}
    for key, value in details.items():
        if NEVER_SHOWN.search(key):
            continue
        if not show_revealing and REVEALING_DETAILS.search(key):
            continue
        if isinstance(value, dict):
            value = public_details(value, show_revealing)
        shown[key] = value
    return shown


class HealthManager:
    """Runs every registered checker in parallel and keeps the last report.

    `report()` answers from the cache while it is younger than `cache_seconds`,
    else runs the checks (concurrent callers share one run). `last()` never
    runs anything; after `start(interval)` a thread of its own refreshes the
    report every `interval` seconds, and at once after `wake()`.
    """

    def __init__(self, checkers: dict[str, Checker], timeout: float, cache_seconds: float,
                 logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self.checkers = dict(checkers)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.logger = logger
        self.clock = clock
        # At most one run of each checker at a time (see docs/observability.md).
        self._executor = ThreadPoolExecutor(max_workers=len(self.checkers) + 1,
                                            thread_name_prefix="health")
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, Future]] = {}
        self._last: HealthReport | None = None
        self._last_at = float("-inf")
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None

    def last(self) -> HealthReport | None:
        """The most recent report, never running a check."""
        return self._last

    def fresh(self) -> bool:
        return self._last is not None and self.clock() - self._last_at < self.cache_seconds

    def report(self) -> HealthReport:
        """A report at most cache_seconds old; runs the checks when it is older."""
        if self.fresh():
            return self._last  # type: ignore[return-value]
        with self._lock:
            if self.fresh():
                return self._last  # type: ignore[return-value]
            return self._refresh()

    def _refresh(self) -> HealthReport:
        report = self._run_all()
        self._last, self._last_at = report, self.clock()
        return report

    def start(self, interval: float) -> None:
        """Refresh the report every `interval` seconds (and on `wake()`) on a thread of its own."""
        def loop() -> None:
            while not self._closed.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._closed.is_set():
                    return
                try:
                    with self._lock:
                        self._refresh()
                except Exception:
                    if not self._closed.is_set():  # closing shuts the executor down
                        self.logger.exception("background health refresh failed")

        self._refresher = threading.Thread(target=loop, name="health-refresher", daemon=True)
        self._refresher.start()

    def wake(self) -> None:
        """Ask the refresher for a new report now (something it checks has changed)."""
        self._wake.set()

    def _run_all(self) -> HealthReport:
        results: dict[str, CheckResult] = {}
        started: dict[str, tuple[float, Future]] = {}
        for name, check in self.checkers.items():
            previous = self._running.get(name)
            if previous is not None and not previous[1].done():
                hung_for = self.clock() - previous[0]
                results[name] = CheckResult(
                    UNHEALTHY, f"the previous check has not finished after {hung_for:.1f}s",
                    duration_ms=0.0)
                continue
            entry = (self.clock(), self._executor.submit(self._timed, check))
            self._running[name] = entry
            started[name] = entry
        wait([future for _, future in started.values()], timeout=self.timeout)
        for name, (start, future) in started.items():
            if not future.done():
                results[name] = CheckResult(
                    UNHEALTHY, f"check did not finish within {self.timeout:g}s",
                    duration_ms=(self.clock() - start) * 1000)
                continue
            exc = future.exception()
            if exc is not None:
                self.logger.warning("health check %s failed: %s", name, type(exc).__name__)
                results[name] = CheckResult(UNHEALTHY, f"check failed: {type(exc).__name__}",
                                            duration_ms=(self.clock() - start) * 1000)
            else:
                results[name] = future.result()
        ordered = {name: results[name] for name in self.checkers}
        status = worst(r.status for r in ordered.values())
        return HealthReport(status, datetime.now(UTC), ordered)

    def _timed(self, check: Checker) -> CheckResult:
        start = self.clock()
        result = check()
        return CheckResult(result.status, result.message, result.details,
                           (self.clock() - start) * 1000)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- checkers ----------------------------------------------------------------------
def database_checker(db, timeout: float, show_details: bool) -> Checker:
    """SELECT 1 through the pool within the timeout, plus the pool's stats.

    critical while the database is unreachable, degraded while requests wait for a connection
    or every one is busy; see docs/outage-recovery.md ("Health").
    """

    # Half the time to get a connection, so a busy pool is reported as such
    # before the manager's own timeout calls the check hung.
    acquire_timeout = timeout / 2

    def unreachable() -> CheckResult:
        details = pool_details(db.stats())
        details["unreachable_seconds"] = round(db.unreachable_for(), 1)
        return CheckResult(CRITICAL, "database unreachable", details)

    def check() -> CheckResult:
        if not db.reachable:
            return unreachable()
        details: dict[str, Any] = pool_details(db.stats())
        try:
            with db.pooled(timeout=acquire_timeout) as conn:
                conn.execute("SELECT 1").fetchone()
                if show_details:
                    details["server_version"] = conn.info.server_version
                    details["host"] = conn.info.host
        except (PoolTimeout, TooManyRequests):
            if not db.probe():
                db.connection_failed()  # the checker confirms and marks it unreachable
                return unreachable()
            return CheckResult(DEGRADED, "every connection is busy; requests are waiting",
                               pool_details(db.stats()))
        except Exception:
            db.connection_failed()  # purge the pool's other dead connections now
            if not db.probe():
                return unreachable()
            return CheckResult(DEGRADED, "a pooled connection failed; the pool is being "
                                         "checked", pool_details(db.stats()))
        if details["waiting"]:
            return CheckResult(DEGRADED, "requests are waiting for a connection", details)
        return CheckResult(HEALTHY, "database answers", details)

    return check


def migrations_checker(db, migrations: list[Migration], timeout: float = 1.0) -> Checker:
    """The migrations applied to the database against those this build ships.

    Pending expand migrations stop the build serving, pending contract ones do not. With every
    connection busy it reuses the versions it read last (saying so).
    """
    expected_version = max(m.version for m in migrations)
    last_read: list[set[int]] = []

    def verdict(applied: set[int], message_suffix: str = "") -> CheckResult:
        current = max(applied, default=0)
        details = {"current": current, "expected": expected_version}
        if not serves_with(migrations, applied):
            return CheckResult(UNHEALTHY, "database schema is behind this build; run the "
                                          "migrations" + message_suffix, details)
        if pending_migrations(migrations, applied):
            return CheckResult(HEALTHY, "contract migrations pending (`run.py migrate "
                                        "--contract` once the previous release is gone)"
                                        + message_suffix, details)
        if current > expected_version:
            return CheckResult(HEALTHY, "schema is ahead of this build (a newer release "
                                        "migrated it)" + message_suffix, details)
        return CheckResult(HEALTHY, "schema is current" + message_suffix, details)

    def check() -> CheckResult:
        try:
            with db.pooled(timeout=timeout / 2) as conn:
                applied = {row[0] for row in conn.execute(
                    "SELECT version FROM schema_migrations")}
        except psycopg.errors.UndefinedTable:
            return verdict(set())  # never migrated
        except (PoolTimeout, TooManyRequests):
            if last_read:
                return verdict(last_read[0], " (as last read: every connection is busy)")
            return CheckResult(UNHEALTHY, "schema version not read yet: every connection "
                                          "is busy", {"expected": expected_version})
        except Exception as exc:
            return CheckResult(UNHEALTHY, f"schema version unreadable ({type(exc).__name__})",
                               {"expected": expected_version})
        last_read[:] = [applied]
        return verdict(applied)

    return check


def rss_bytes() -> int:
    """This process's resident set size."""
    import resource

    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:  # not Linux: the peak is the best portable figure
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def memory_checker(limit_bytes: int, rss: Callable[[], int] = rss_bytes) -> Checker:
    """Process RSS against MEMORY_LIMIT_BYTES: degraded above 80 %, critical above 95 %."""

    def check() -> CheckResult:
        used = rss()
        details: dict[str, Any] = {"rss_bytes": used}
        if not limit_bytes:
            return CheckResult(HEALTHY, "no memory limit configured", details)
        ratio = used / limit_bytes
        details.update(limit_bytes=limit_bytes, used_ratio=round(ratio, 3))
        if ratio > 0.95:
            return CheckResult(CRITICAL, "memory nearly exhausted (above 95% of the limit)",
                               details)
        if ratio > 0.80:
            return CheckResult(DEGRADED, "memory above 80% of the limit", details)
        return CheckResult(HEALTHY, "memory within limit", details)

    return check


def rate_limit_store_checker(limiter, show_details: bool = False) -> Checker:
    """The rate limiter's view of its store: `limiter.health()` -> (status, message, details)."""

    def check() -> CheckResult:
        status, message, details = limiter.health()
        if status not in SEVERITY:
            return CheckResult(UNHEALTHY, f"unknown status from the rate limiter: {status!r}")
        return CheckResult(status, message, public_details(dict(details), show_details))

    return check


def replicas_checker(cluster, show_details: bool = False) -> Checker:
    """Each replica's state and lag as the replica monitor last saw them.

    Degraded at worst: while a replica is out of rotation its reads go to
    the primary, so the instance still serves (readiness stays 200).
    """

    def check() -> CheckResult:
        details = public_details(cluster.describe(show_details), show_details)
        out = sorted(name for name, replica in details.items() if not replica["in_rotation"])
        if not out:
            return CheckResult(HEALTHY, f"{len(details)} replica(s) in rotation", details)
        return CheckResult(DEGRADED, f"out of rotation, reads go to the primary: "
                                     f"{', '.join(out)}", details)

    return check


def redis_checker(link) -> Checker:
    """A PING through the worker's Redis link; degraded when it fails (callers fall back)."""

    def check() -> CheckResult:
        details: dict[str, Any] = {"failures": link.failures}
        since = link.seconds_since_failure()
        if since is not None:
            details["last_failure"] = link.last_failure
            details["last_failure_seconds_ago"] = round(since, 1)
        if link.ping():
            return CheckResult(HEALTHY, "redis answers", details)
        return CheckResult(DEGRADED, "redis does not answer: rate limits fail open and reads "
                                     "go to the primary", details)

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
