"""What the request envelope reports to: an access log, request metrics, a tracer.

Interfaces only: the envelope is handed objects that have these methods and
never imports the modules that make them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class AccessLogWriter(Protocol):
    def write(self, request_id: str, method: str, route: str, status: int, duration_ms: float,
              remote_addr: str, size: int, user_id: str | None = None,
              client_request_id: bool = True, *, trace_id: str | None = None,
              span_id: str | None = None) -> None: ...


class RequestMetrics(Protocol):
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None: ...


class RequestTrace(Protocol):
    @property
    def trace_id(self) -> str: ...

    @property
    def span_id(self) -> str: ...

    def end(self, route: str | None, status: int) -> None: ...


class RequestTracer(Protocol):
    def start_request(self, environ: Mapping[str, Any], client_addr: str
                      ) -> RequestTrace | None: ...

    def record_exception(self, error: BaseException) -> None: ...
