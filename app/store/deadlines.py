"""Client-side deadlines for statements on a server that may hang.

A frozen server never runs statement_timeout nor answers a cancel, so one watchdog thread
per worker cuts the socket of a connection whose statement outlives its deadline; the read
fails at once and the caller falls back as for any failed connection.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator

import psycopg


class Deadlines:
    """Connections under a deadline, and the watchdog that cuts the late ones."""

    def __init__(self, tick_seconds: float = 0.02):
        self.tick_seconds = tick_seconds
        self._active: dict[int, tuple[float, psycopg.Connection]] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections cut so far

    @contextlib.contextmanager
    def bound(self, conn: psycopg.Connection, seconds: float) -> Iterator[None]:
        """The block's statements on `conn` end within about `seconds` (+ one tick)."""
        key = next(self._keys)
        with self._lock:
            self._active[key] = (time.monotonic() + seconds, conn)
        try:
            yield
        finally:
            # under the lock: once removed, the watchdog can no longer cut this
            # connection, which may go back to the pool and serve someone else
            with self._lock:
                self._active.pop(key, None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="db-deadlines",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _watch(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._active.items() if deadline <= now]
                for key in late:
                    _, conn = self._active.pop(key)
                    self._cut(conn)

    def _cut(self, conn: psycopg.Connection) -> None:
        """Shut the connection's socket down for both directions: a thread waiting on it
        wakes to an end of stream (the duplicate descriptor shares the socket)."""
        try:
            fd = conn.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
            self.cut += 1
        except (OSError, psycopg.Error):
            pass  # closed meanwhile: nothing left to cut
