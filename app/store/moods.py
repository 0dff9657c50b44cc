"""MoodRepository: the only SQL about moods. Built-ins are rows with no owner (ids 1-8)."""

from __future__ import annotations

from collections.abc import Callable

from psycopg import errors as pg_errors

from app.domain.errors import LimitReached, MoodInUse, UserGone
from app.domain.models import Mood
from app.domain.pages import Page
from app.store.events import (
    INSERT,
    LOCK_OWNER,
    OWNER_LOCKED,
    counter,
    mood_data,
    one_event,
    take_seq,
)
from app.store.keyset import USER_EXISTS, KeysetResult, keyset_sql, run_keyset
from app.store.reading import fetch_one

_VISIBLE = "(user_id IS NULL OR user_id = %(user_id)s)"
_LIST_ITEMS = (f"SELECT id, name, eyes, tongue, user_id IS NOT NULL FROM moods "
               f"WHERE {_VISIBLE} {{bound}}")
_LIST_CURSOR = f"SELECT id FROM moods WHERE {_VISIBLE} AND lower(name) = lower(%(cursor)s)"
_COLUMNS = "name, eyes, tongue, user_id IS NOT NULL"
_RETURNING = "RETURNING name, eyes, tongue, user_id IS NOT NULL AS user_defined"

# The mood's change and its event, in one statement each; the caller holds the
# user's row lock already.
_UPDATE = f"""
WITH changed AS (UPDATE moods SET eyes = coalesce(%(eyes)s, eyes),
                                  tongue = coalesce(%(tongue)s, tongue)
                 WHERE user_id = %(user_id)s AND lower(name) = lower(%(name)s) {_RETURNING}),
{take_seq("1", "EXISTS (SELECT 1 FROM changed)")},
logged AS ({INSERT}
           SELECT {one_event("next_seq.event_seq", "mood.updated", "NULL", mood_data("changed"))}
           FROM next_seq, changed)
SELECT name, eyes, tongue, user_defined FROM changed
"""
_CREATE = f"""
WITH created AS (INSERT INTO moods (user_id, name, eyes, tongue)
                 VALUES (%(user_id)s, %(name)s, %(eyes)s, %(tongue)s) {_RETURNING}),
counted AS (UPDATE users SET mood_count = mood_count + 1, event_seq = event_seq + 1
            WHERE id = %(user_id)s RETURNING event_seq),
logged AS ({INSERT}
           SELECT {one_event("counted.event_seq", "mood.created", "NULL", mood_data("created"))}
           FROM counted, created)
SELECT name, eyes, tongue, user_defined FROM created
"""
_DELETE = f"""
WITH {LOCK_OWNER},
gone AS (DELETE FROM moods WHERE user_id = %(user_id)s AND lower(name) = lower(%(name)s)
           AND {OWNER_LOCKED} {_RETURNING}),
counted AS (UPDATE users SET mood_count = mood_count - 1, event_seq = event_seq + 1
            WHERE id = %(user_id)s AND EXISTS (SELECT 1 FROM gone) RETURNING id, event_seq),
logged AS ({INSERT}
           SELECT {one_event("counted.event_seq", "mood.deleted", "NULL", mood_data("gone"))}
           FROM counted, gone)
SELECT id FROM counted
"""


class MoodRepository:
    def __init__(self, db, on_events: Callable[[str, int], None] | None = None):
        self.db = db
        self.events_written = counter(on_events)

    def list(self, user_id: int, page: Page) -> KeysetResult:
        cursor = _LIST_CURSOR if page.cursor is not None else None
        sql = keyset_sql(_LIST_ITEMS, cursor, page)
        result = self.db.read(user_id, run_keyset, sql,
                              {"user_id": user_id, "cursor": page.cursor}, page)
        return KeysetResult(result.scope_exists, result.cursor_found,
                            [Mood(*r[1:]) for r in result.rows], result.has_more)

    def get(self, user_id: int, name: str) -> Mood | None:
        row = self.db.read(
            user_id, fetch_one,
            f"SELECT {_COLUMNS} FROM moods WHERE lower(name) = lower(%(name)s) "
            f"AND (user_id = %(user_id)s OR (user_id IS NULL AND {USER_EXISTS}))",
            {"user_id": user_id, "name": name})
        return Mood(*row) if row else None

    def upsert(self, user_id: int, name: str, eyes: str | None, tongue: str | None,
               cap: int) -> tuple[Mood, bool]:
        """Create (True) or update (False) the user's mood; the user row serialises creates."""
        with self.db.write_transaction(user_id) as conn:
            owner = conn.execute("SELECT mood_count FROM users WHERE id = %s FOR UPDATE",
                                 (user_id,)).fetchone()
            if owner is None:
                raise UserGone()
            row = conn.execute(
                _UPDATE,
                {"user_id": user_id, "name": name, "eyes": eyes, "tongue": tongue}).fetchone()
            created = row is None
            if created:
                if owner[0] >= cap:
                    raise LimitReached(LimitReached.MOODS, cap)
                row = conn.execute(_CREATE, {"user_id": user_id, "name": name,
                                             "eyes": eyes or "oo",
                                             "tongue": tongue or "  "}).fetchone()
        # Counted once the transaction committed, like every other event.
        self.events_written("mood.created" if created else "mood.updated", 1)
        return Mood(*row), created

    def delete(self, user_id: int, name: str) -> bool:
        """Delete the user's mood; MoodInUse when lines still use it."""
        try:
            with self.db.write_transaction(user_id) as conn:
                row = conn.execute(_DELETE, {"user_id": user_id, "name": name}).fetchone()
        except pg_errors.ForeignKeyViolation:
            raise MoodInUse(self._lines_using(user_id, name)) from None
        if row is not None:
            self.events_written("mood.deleted", 1)
        return row is not None

    def _lines_using(self, user_id: int, name: str) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                "SELECT count(*) FROM lines WHERE mood_id = (SELECT id FROM moods "
                "WHERE user_id = %s AND lower(name) = lower(%s))", (user_id, name)).fetchone()[0]
