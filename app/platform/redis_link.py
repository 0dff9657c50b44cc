"""One worker's connection to Redis, with a short breaker so an outage costs requests nothing.

redis-py keeps a connection pool per client; the client is made inside the
gunicorn worker (app/deps.py), after fork, like the PostgreSQL pool. Every
call is bounded by REDIS_TIMEOUT and never retried here: the callers have a
fallback that is better than waiting (rate limits fail open, reads go to the
primary). After a failure the link answers `RedisDown` at once for
`pause_seconds`, then lets one call through to try again, so an outage
costs one timeout per pause per worker, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


class RedisDown(Exception):
    """Redis did not answer in time (or the breaker is open after a recent failure)."""


class RedisLink:
    """A redis-py client bounded by a timeout, with the breaker described in the module."""

    def __init__(self, url: str, timeout: float, max_connections: int,
                 logger: logging.Logger, pause_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            client_name="saypi")
        self.client = redis.Redis(connection_pool=pool)
        self.timeout = timeout
        self.logger = logger
        self.pause_seconds = pause_seconds
        self._clock = clock
        self._closed_until = 0.0  # the breaker is open before this time
        self._lock = threading.Lock()
        self.failures = 0
        self.last_failure = ""
        self.last_failure_at: float | None = None

    def call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        """fn(client), or RedisDown if it failed now or failed less than a pause ago."""
        if self._closed_until and self._clock() < self._closed_until:
            raise RedisDown("redis failed recently; not trying again yet")
        try:
            result = fn(self.client)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise RedisDown(f"{type(exc).__name__}: {exc}") from exc
        if self._closed_until:
            self._closed_until = 0.0
            self.logger.warning("redis answers again")
        return result

    def _failed(self, exc: Exception) -> None:
        now = self._clock()
        with self._lock:
            first = not self._closed_until
            self._closed_until = now + self.pause_seconds
            self.failures += 1
            self.last_failure = type(exc).__name__
            self.last_failure_at = now
        if first:
            self.logger.error("redis failed (%s: %s); falling back for %.1fs before trying "
                              "again", type(exc).__name__, exc, self.pause_seconds)

    @property
    def available(self) -> bool:
        """False while the breaker is open."""
        return not self._closed_until or self._clock() >= self._closed_until

    def seconds_since_failure(self) -> float | None:
        at = self.last_failure_at
        return None if at is None else self._clock() - at

    def ping(self) -> bool:
        try:
            return bool(self.call(lambda client: client.ping()))
        except RedisDown:
            return False

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()
