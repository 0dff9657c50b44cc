"""UserRepository: the only SQL about users."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from psycopg import errors as pg_errors

from app.domain import ids
from app.domain.errors import EmailTaken
from app.domain.models import User
from app.domain.unit_of_work import UnitOfWork
from app.store.events import INSERT, counter, one_event, user_data
from app.store.reading import fetch_one

_COLUMNS = "id, name, email, created_at"
UPDATABLE = ("name", "email")  # the columns update() may set
DELETED_CHANNEL = "saypi_user_deleted"


class UserRepository:
    def __init__(self, db, on_events: Callable[[str, int], None] | None = None):
        self.db = db
        self.events_written = counter(on_events)

    def create(self, name: str | None, email: str | None,
               uow: UnitOfWork | None = None) -> User:
        user_id = ids.new_number()
        with self.db.write_transaction(user_id, uow) as conn:
            try:
                row = conn.execute(
                    f"INSERT INTO users (id, name, email) VALUES (%s, %s, %s) "
                    f"RETURNING {_COLUMNS}", (user_id, name, email)).fetchone()
            except pg_errors.UniqueViolation as exc:
                raise EmailTaken(email) from exc
        return User(*row)

    def get(self, user_id: int) -> User | None:
        row = self.db.read(user_id, fetch_one, f"SELECT {_COLUMNS} FROM users WHERE id = %s",
                           (user_id,))
        return User(*row) if row else None

    def exists(self, user_id: int) -> bool:
        """Asked of the primary: a lagging replica could still show a user just deleted,
        and the answer is cached until a deletion notice (it is asked once per worker)."""
        with self.db.connection() as conn:
            return conn.execute("SELECT 1 FROM users WHERE id = %s",
                                (user_id,)).fetchone() is not None

    def update(self, user_id: int, changes: Mapping[str, str | None]) -> User | None:
        """Set the given columns (name, email); an empty change reads the user.

        Only the columns named in UPDATABLE ever reach the SQL text; any other
        key is a caller's mistake and raises ValueError.
        """
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise ValueError(f"users have no updatable column {sorted(unknown)}")
        columns = [column for column in UPDATABLE if column in changes]
        if not columns:
            return self.get(user_id)
        assignments = ", ".join(f"{column} = %({column})s" for column in columns)
        with self.db.write_transaction(user_id) as conn:
            try:
                row = conn.execute(
                    f"WITH changed AS (UPDATE users SET {assignments}, "
                    f"  event_seq = event_seq + 1 WHERE id = %(id)s "
                    f"  RETURNING {_COLUMNS}, event_seq), "
                    f"logged AS ({INSERT} SELECT "
                    f"  {one_event('event_seq', 'user.updated', 'NULL', user_data('changed'))} "
                    f"  FROM changed) "
                    f"SELECT {_COLUMNS} FROM changed",
                    {**changes, "id": user_id, "user_id": user_id}).fetchone()
            except pg_errors.UniqueViolation as exc:
                raise EmailTaken(changes.get("email")) from exc
        if row is None:
            return None
        self.events_written("user.updated", 1)
        return User(*row)

    def watch_deletions(self, on_listening: Callable[[], None],
                        on_deleted: Callable[[int], None], stop: threading.Event) -> None:
        """LISTEN for deleted users on a dedicated connection until `stop` or an error."""
        with self.db.dedicated_connection() as conn:
            conn.execute(f"LISTEN {DELETED_CHANNEL}")
            on_listening()
            while not stop.is_set():
                for notify in conn.notifies(timeout=1.0):
                    on_deleted(int(notify.payload))
                    if stop.is_set():
                        return

    def delete(self, user_id: int) -> bool:
        """Delete the user and everything they own.

        Conversations (and with them their lines) go first, then the user and
        by cascade their moods: deleted in one statement, PostgreSQL checks
        lines_mood_id_fkey as the moods' cascade runs, before the lines'
        cascade (two levels down, through conversations) has removed the
        lines that use them. Their events go later, outside the request. The
        user row is locked first, so no conversation can be created in between
        (creation increments its counter).
        """
        with self.db.write_transaction(user_id) as conn:
            if conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE",
                            (user_id,)).fetchone() is None:
                return False
            conn.execute("DELETE FROM conversations WHERE user_id = %s", (user_id,))
            # Events have no foreign key (a check per event row would cost every write),
            # and a busy user's can be millions of rows: no request deletes them, the
            # janitor does (EventLog.purge_deleted_users), in bounded batches. The user's
            # row lock keeps any from being written meanwhile; none is written after.
            conn.execute("WITH gone AS (DELETE FROM users WHERE id = %(id)s RETURNING id) "
                         "INSERT INTO deleted_users (user_id) SELECT id FROM gone "
                         "ON CONFLICT (user_id) DO NOTHING", {"id": user_id})
            conn.execute("SELECT pg_notify(%s, %s)", (DELETED_CHANNEL, str(user_id)))
        return True




class DeletionWatch:
    """The ids of users deleted from now on (LISTEN on a session of its own, opened on first
    use and again after it broke): for work that must follow deletions outside requests."""

    def __init__(self, db):
        self.db = db
        self._conn = None

    def next(self, timeout: float) -> list[int]:
        """Users deleted since the last call, waiting up to `timeout` seconds for the first."""
        if self._conn is None or self._conn.closed:
            self._conn = self.db.dedicated_connection()
            self._conn.autocommit = True
            self._conn.execute(f"LISTEN {DELETED_CHANNEL}")
        try:
            return [int(notify.payload) for notify in self._conn.notifies(timeout=timeout)]
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
