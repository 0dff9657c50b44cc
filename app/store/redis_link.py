"""One worker's connection to Redis, with a short breaker so an outage costs requests nothing.

Every call is bounded by REDIS_TIMEOUT and never retried; after a failure calls fail at once
for a pause, then one tries again. Each thread keeps its own connection. See docs/redis.md.
"""

from __future__ import annotations

import hashlib
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


class LuaScript:
    """A Lua script's text and SHA-1, for EVALSHA."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


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
        self._mine = threading.local()
        self.failures = 0
        self.last_failure = ""
        self.last_failure_at: float | None = None

    def execute(self, *command: Any) -> Any:
        """One command on this thread's own connection: its reply, or RedisDown.

        A Redis error reply (redis.ResponseError) is raised as it is: the
        server answered.
        """
        self._check_breaker()
        return self.attempt(command)

    def _check_breaker(self) -> None:
        if self._closed_until and self._clock() < self._closed_until:
            raise RedisDown("redis failed recently; not trying again yet")

    def attempt(self, command: tuple) -> Any:
        """`execute` even while the breaker is open: for what must not be skipped when this
        worker alone lost Redis for a moment (a write's position), at the price of a
        timeout per call while Redis is really down."""
        mine = self._mine
        conn = getattr(mine, "conn", None)
        reused = conn is not None
        try:
            if conn is None:
                conn = mine.conn = self.client.connection_pool.get_connection()
            try:
                conn.send_command(*command)
                reply = conn.read_response()
            except redis.ConnectionError:
                if not reused:
                    raise
                # A connection Redis dropped while it sat here (Redis restarted): one
                # more try on a fresh one, which costs no timeout, so that each thread's
                # stale connection does not count as a new failure of a Redis that is up.
                conn.disconnect()
                conn.send_command(*command)
                reply = conn.read_response()
        except redis.ResponseError:
            raise
        except (redis.RedisError, OSError) as exc:
            if conn is not None:
                conn.disconnect()
            self._failed(exc)
            raise RedisDown(f"{type(exc).__name__}: {exc}") from exc
        if self._closed_until:
            self._closed_until = 0.0
            self.logger.warning("redis answers again")
        return reply

    def run_script(self, script: LuaScript, keys: tuple, args: tuple,
                   despite_breaker: bool = False) -> Any:
        """EVALSHA the script (loading it first if this Redis does not know it);
        `despite_breaker` tries even while the breaker is open (see `attempt`)."""
        if not despite_breaker:
            self._check_breaker()
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.attempt(command)
        except redis.exceptions.NoScriptError:
            self.attempt(("SCRIPT", "LOAD", script.text))
            return self.attempt(command)

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

    def seconds_since_failure(self) -> float | None:
        at = self.last_failure_at
        return None if at is None else self._clock() - at

    def ping(self) -> bool:
        try:
            return self.execute("PING") in (b"PONG", "PONG", True)
        except (RedisDown, redis.ResponseError):
            return False

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()
