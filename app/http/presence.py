"""Whether the authenticated user still exists, for routes that read no table.

Each worker keeps a bounded set of users it confirmed, emptied by LISTEN/NOTIFY deletion
notices; while the listener is down every check asks the database. See docs/envelope.md.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from app.http.auth import current_user
from app.http.errors import AuthInvalid

RECONNECT_SECONDS = 1.0


class UserPresence:
    def __init__(self, users, logger: logging.Logger, max_entries: int = 100_000):
        self.users = users
        self.logger = logger
        self.max_entries = max_entries
        self._alive: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._noticed = threading.Condition(self._lock)
        self._recent: OrderedDict[int, None] = OrderedDict()  # deletions seen lately
        self._listening = threading.Event()
        self._deletions = 0  # bumps on every deletion, so a racing confirmation is dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="user-deletions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def ensure(self) -> None:
        """Raise auth_invalid if the current user no longer exists."""
        user_id = current_user()
        if user_id in self._alive and self._listening.is_set():
            return
        seen = self._deletions
        if user_id in self._recent or not self.users.exists(user_id):
            raise AuthInvalid()
        with self._lock:
            if user_id in self._recent:
                raise AuthInvalid()
            if self._listening.is_set() and seen == self._deletions:
                self._alive[user_id] = None
                if len(self._alive) > self.max_entries:
                    self._alive.popitem(last=False)

    def _forget_all(self) -> None:
        with self._lock:
            self._listening.clear()
            self._alive.clear()

    def _listening_now(self) -> None:
        with self._lock:
            self._alive.clear()
            self._listening.set()

    def _deleted(self, user_id: int) -> None:
        with self._lock:
            self._deletions += 1
            self._alive.pop(user_id, None)
            self._recent[user_id] = None
            if len(self._recent) > 1000:
                self._recent.popitem(last=False)
            self._noticed.notify_all()

    def deleted(self, user_id: int, wait_seconds: float = 0.2) -> None:
        """The user was just deleted here: forget them, and wait (bounded) for the notice."""
        with self._lock:
            self._alive.pop(user_id, None)
            if self._listening.is_set():
                self._noticed.wait_for(lambda: user_id in self._recent, timeout=wait_seconds)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.users.watch_deletions(self._listening_now, self._deleted, self._stop)
            except Exception as exc:  # connection lost: fall back to asking the database
                self.logger.warning("user deletion listener lost (%s); checking the database "
                                    "until it reconnects", type(exc).__name__)
            self._forget_all()
            self._stop.wait(RECONNECT_SECONDS)
