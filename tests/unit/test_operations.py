"""Health checks as objects: memory thresholds, hung checks timed out without piling up, the
cache and quick reads, what published details hide, the rate-limit store's view.
"""

from __future__ import annotations

import threading

from app.ops.health import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckResult,
    HealthManager,
    memory_checker,
    public_details,
    rate_limit_store_checker,
)
from tests.conftest import eventually


# --- units: the health manager's logic ------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_checker_thresholds():
    def at(ratio: float) -> str:
        return memory_checker(1000, rss=lambda: int(1000 * ratio))().status

    assert at(0.5) == HEALTHY
    assert at(0.80) == HEALTHY
    assert at(0.85) == DEGRADED
    assert at(0.95) == DEGRADED
    assert at(0.96) == CRITICAL
    assert memory_checker(0, rss=lambda: 10**12)().status == HEALTHY


def test_health_manager_times_out_hung_checks_without_piling_them_up():
    import logging

    release = threading.Event()
    calls = {"hung": 0, "fine": 0}

    def hung() -> CheckResult:
        calls["hung"] += 1
        release.wait(10)
        return CheckResult(HEALTHY, "finally")

    def fine() -> CheckResult:
        calls["fine"] += 1
        return CheckResult(DEGRADED, "slow disk", {"x": 1})

    def broken() -> CheckResult:
        raise RuntimeError("boom")

    manager = HealthManager({"hung": hung, "fine": fine, "broken": broken}, timeout=0.2,
                            cache_seconds=0, logger=logging.getLogger("test"))
    try:
        first = manager.report()
        assert first.checks["hung"].status == UNHEALTHY
        assert "did not finish" in first.checks["hung"].message
        assert first.checks["fine"].status == DEGRADED
        assert first.checks["broken"].status == UNHEALTHY
        assert first.checks["broken"].message == "check failed: RuntimeError"
        assert first.status == UNHEALTHY

        second = manager.report()  # still hung: reported, not started again
        assert "has not finished" in second.checks["hung"].message
        assert calls == {"hung": 1, "fine": 2}

        release.set()
        assert eventually(lambda: manager.report().checks["hung"].status == HEALTHY,
                          seconds=5)
        assert calls["hung"] == 2
    finally:
        release.set()
        manager.close()


def test_health_manager_caches_and_quick_reads_never_run_checks():
    import logging

    clock = FakeClock()
    calls = []
    manager = HealthManager({"one": lambda: calls.append(1) or CheckResult(HEALTHY, "ok")},
                            timeout=1.0, cache_seconds=2.0, logger=logging.getLogger("test"),
                            clock=clock)
    try:
        assert manager.last() is None
        report = manager.report()
        assert manager.report() is report and manager.last() is report
        clock.now += 1.9
        assert manager.report() is report
        assert len(calls) == 1
        clock.now += 0.2
        assert manager.last() is report  # last() never runs anything
        assert len(calls) == 1
        manager.start(interval=3600)
        manager.wake()  # refreshed on the refresher's thread
        assert eventually(lambda: manager.last() is not report, seconds=5)
        assert len(calls) == 2
    finally:
        manager.close()


def test_published_details_hide_hosts_and_versions_unless_allowed_and_never_dsns():
    details = {"host": "db.internal", "server_version": 160004, "size": 3,
               "dsn": "postgresql://u:pw@h/db", "nested": {"address": "10.0.0.1", "ok": 1}}
    assert public_details(details, False) == {"size": 3, "nested": {"ok": 1}}
    assert public_details(details, True) == {"host": "db.internal", "server_version": 160004,
                                             "size": 3,
                                             "nested": {"address": "10.0.0.1", "ok": 1}}


def test_rate_limit_store_checker_reports_the_limiters_view():
    class Limiter:
        answer = (DEGRADED, "store failing; allowing requests",
                  {"store_errors": 4, "host": "redis.internal"})

        def health(self):
            return self.answer

    limiter = Limiter()
    result = rate_limit_store_checker(limiter)()
    assert (result.status, result.message) == (DEGRADED, "store failing; allowing requests")
    assert result.details == {"store_errors": 4}
    limiter.answer = ("bogus", "?", {})
    assert rate_limit_store_checker(limiter)().status == UNHEALTHY
