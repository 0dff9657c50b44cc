"""Health statuses, a check's result and a report: values the checks, the rate limiter,
the cluster and the health endpoints share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
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


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=HEALTHY)


def pool_details(stats: dict[str, int]) -> dict[str, int]:
    """The pool's numbers as /health/detailed shows them (psycopg_pool's stats renamed)."""
    size = stats.get("pool_size", 0)
    available = stats.get("pool_available", 0)
    return {
        "size": size, "available": available, "in_use": size - available,
        "waiting": stats.get("requests_waiting", 0), "min": stats.get("pool_min", 0),
        "max": stats.get("pool_max", 0),
        # psycopg_pool counts both timeouts and "too many waiting" refusals here.
        "acquire_timeouts": stats.get("requests_errors", 0),
        "connection_errors": stats.get("connections_errors", 0),
        "connections_lost": stats.get("connections_lost", 0),
    }
