"""LineRepository: the only SQL that writes or lists a conversation's lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from psycopg import errors as pg_errors

from app.domain import ids
from app.domain.errors import (
    ConversationMissing,
    LimitReached,
    MoodMissing,
    UserGone,
    WriteRaced,
)
from app.domain.models import Line, NewLine
from app.domain.pages import Page
from app.domain.unit_of_work import UnitOfWork
from app.store import new_lines
from app.store.conversations import line_from_row
from app.store.events import (
    INSERT,
    LOCK_OWNER,
    OWNER_LOCKED,
    counter,
    line_data,
    one_event,
    take_seq,
)
from app.store.keyset import KeysetResult, keyset_sql, run_keyset
from app.store.reading import fetch_one

_LINE_COLUMNS = ("l.rid, l.animal, l.think, l.text, l.created_at, "
                 "m.name, m.eyes, m.tongue, m.user_id IS NOT NULL")
_OWNED_CONVERSATION = "SELECT id FROM conversations WHERE rid = %(conversation)s " \
                      "AND user_id = %(user_id)s"
_LIST_ITEMS = (f"SELECT l.id, {_LINE_COLUMNS} FROM lines l JOIN moods m ON m.id = l.mood_id "
               f"WHERE l.conversation_id = ({_OWNED_CONVERSATION}) {{bound}}")
_LIST_CURSOR = ("SELECT id FROM lines WHERE rid = %(cursor)s "
                f"AND conversation_id = ({_OWNED_CONVERSATION})")
_MOOD_OF_USER = ("SELECT id, name, eyes, tongue, user_id IS NOT NULL AS user_defined "
                 "FROM moods WHERE (user_id IS NULL OR user_id = %(user_id)s) "
                 "AND lower(name) = lower(%(mood)s)")

# One statement: lock the user's row, resolve the mood, bump the conversation's
# line counter under its cap, insert the line and its event, and return it with
# its mood.
_CREATE = f"""
WITH {LOCK_OWNER},
     mood AS ({_MOOD_OF_USER}),
     convo AS (UPDATE conversations SET line_count = line_count + 1
               WHERE rid = %(conversation)s AND user_id = %(user_id)s
                 AND line_count < %(cap)s AND EXISTS (SELECT 1 FROM mood) AND {OWNER_LOCKED}
               RETURNING id),
     line AS (INSERT INTO lines (rid, conversation_id, mood_id, animal, think, text)
              SELECT %(rid)s, convo.id, mood.id, %(animal)s, %(think)s, %(text)s
              FROM convo, mood
              RETURNING rid, animal, think, text, created_at),
     {take_seq("1", "EXISTS (SELECT 1 FROM line)")},
     logged AS ({INSERT}
                SELECT {one_event("next_seq.event_seq", "line.created", "%(conversation)s",
                                  line_data("line", "mood"))}
                FROM next_seq, line, mood)
SELECT line.rid, line.animal, line.think, line.text, line.created_at,
       mood.name, mood.eyes, mood.tongue, mood.user_defined
FROM line, mood
"""

# One statement for a batch: resolve every line's mood, bump the conversation's
# line counter by the batch's size under its cap (only when every mood
# resolved), insert the lines in order, and return them with their moods.
# The counter's row lock serialises concurrent batches: the second one
# re-checks the cap against the first's count.
_CREATE_MANY = f"""
WITH {LOCK_OWNER},
{new_lines.RESOLVED_LINES},
convo AS (UPDATE conversations SET line_count = line_count + %(n)s
          WHERE rid = %(conversation)s AND user_id = %(user_id)s
            AND line_count + %(n)s <= %(cap)s AND {new_lines.ALL_RESOLVED} AND {OWNER_LOCKED}
          RETURNING id),
{new_lines.INSERT_RESOLVED},
{take_seq("%(n)s", "EXISTS (SELECT 1 FROM inserted)")},
logged AS ({INSERT}
           SELECT %(user_id)s, next_seq.event_seq - %(n)s + 1, next_seq.event_seq,
                  'line.created', %(conversation)s,
                  jsonb_agg({line_data("inserted", "resolved", "mood_name")}
                            ORDER BY resolved.ord)
           FROM next_seq, inserted JOIN resolved ON resolved.rid = inserted.rid
           GROUP BY next_seq.event_seq)
SELECT {new_lines.INSERTED_COLUMNS}
FROM inserted JOIN resolved ON resolved.rid = inserted.rid
ORDER BY inserted.id
"""

# One statement: lock the user's row, delete the line, lower the conversation's
# counter, and log the line as it was (with its mood, for its output).
_DELETE = f"""
WITH {LOCK_OWNER},
gone AS (DELETE FROM lines WHERE rid = %(rid)s AND {OWNER_LOCKED}
           AND conversation_id = ({_OWNED_CONVERSATION})
         RETURNING conversation_id, rid, animal, think, text, created_at, mood_id),
counted AS (UPDATE conversations SET line_count = line_count - 1
            WHERE id IN (SELECT conversation_id FROM gone) RETURNING id),
{take_seq("1", "EXISTS (SELECT 1 FROM gone)")},
logged AS ({INSERT}
           SELECT {one_event("next_seq.event_seq", "line.deleted", "%(conversation)s",
                             line_data("gone", "mood"))}
           FROM next_seq, gone
           JOIN (SELECT id, name, eyes, tongue, user_id IS NOT NULL AS user_defined
                 FROM moods) mood ON mood.id = gone.mood_id)
SELECT id FROM counted
"""


class LineRepository:
    def __init__(self, db, on_events: Callable[[str, int], None] | None = None):
        self.db = db
        self.events_written = counter(on_events)

    def create(self, user_id: int, conversation: int, animal: str, think: bool, mood: str,
               text: str, cap: int, uow: UnitOfWork | None = None) -> Line:
        params = {"user_id": user_id, "conversation": conversation, "animal": animal,
                  "think": think, "mood": mood, "text": text, "cap": cap,
                  "rid": ids.new_number()}
        # One atomic statement: no BEGIN/COMMIT round trips unless it joins a
        # unit of work (an idempotent request's).
        with self.db.write(user_id, uow) as conn:
            try:
                row = conn.execute(_CREATE, params).fetchone()
            except pg_errors.ForeignKeyViolation as exc:
                # The mood (or conversation) went in a write this one waited for, after its
                # snapshot found it; outside a unit of work the connection can still ask why,
                # inside one the transaction is spoiled: its owner runs it again.
                if uow is not None:
                    raise WriteRaced() from exc
                row = None
            if row is None:
                self._explain_refusal(conn, params)
        self.events_written("line.created", 1)
        return line_from_row(row)

    def _explain_refusal(self, conn, params: dict) -> None:
        found = conn.execute(
            "SELECT (SELECT 1 FROM users WHERE id = %(user_id)s), "
            f"({_OWNED_CONVERSATION}), EXISTS ({_MOOD_OF_USER})", params).fetchone()
        user, conversation, mood = found
        if user is None:
            raise UserGone()
        if conversation is None:
            raise ConversationMissing()
        if not mood:
            raise MoodMissing()
        raise LimitReached(LimitReached.LINES, params["cap"])

    def create_many(self, user_id: int, conversation: int, lines: Sequence[NewLine], cap: int,
                    uow: UnitOfWork | None = None) -> list[Line]:
        """Insert all of `lines`, in order, or none (one statement, one round trip).

        Refused (nothing inserted): UserGone, ConversationMissing,
        MoodMissing(positions) naming every line whose mood is missing, or
        LimitReached when the conversation would hold more than `cap` lines.
        """
        params = {**new_lines.line_params(user_id, lines), "conversation": conversation, "cap": cap}
        with self.db.write(user_id, uow) as conn:
            try:
                rows = conn.execute(_CREATE_MANY, params).fetchall()
            except pg_errors.ForeignKeyViolation as exc:  # as in create()
                if uow is not None:
                    raise WriteRaced() from exc
                rows = []
            if not rows:
                self._explain_batch_refusal(conn, params)
        self.events_written("line.created", len(rows))
        return [line_from_row(row) for row in rows]

    def _explain_batch_refusal(self, conn, params: dict) -> None:
        user, conversation, missing = conn.execute(
            "SELECT (SELECT 1 FROM users WHERE id = %(user_id)s), "
            f"({_OWNED_CONVERSATION}), {new_lines.MISSING_MOODS}", params).fetchone()
        if user is None:
            raise UserGone()
        if conversation is None:
            raise ConversationMissing()
        if missing:
            raise MoodMissing(tuple(missing))
        raise LimitReached(LimitReached.LINES, params["cap"])

    def known_moods(self, user_id: int, names: Sequence[str],
                    uow: UnitOfWork | None = None) -> set[str]:
        """Which of `names` are built-in moods or the user's, as lower-case names."""
        with self.db.connection(uow) as conn:
            rows = conn.execute(
                "SELECT lower(name) FROM moods WHERE coalesce(user_id, 0) IN (0, %(user_id)s) "
                "AND lower(name) = ANY(%(names)s::text[])",
                {"user_id": user_id, "names": [name.lower() for name in names]}).fetchall()
        return {row[0] for row in rows}

    def mood_exists(self, user_id: int, mood: str, uow: UnitOfWork | None = None) -> bool:
        with self.db.connection(uow) as conn:
            return conn.execute(f"SELECT EXISTS ({_MOOD_OF_USER})",
                                {"user_id": user_id, "mood": mood}).fetchone()[0]

    def get(self, user_id: int, conversation: int, rid: int) -> Line | None:
        row = self.db.read(
            user_id, fetch_one,
            f"SELECT {_LINE_COLUMNS} FROM lines l JOIN moods m ON m.id = l.mood_id "
            f"WHERE l.rid = %(rid)s AND l.conversation_id = ({_OWNED_CONVERSATION})",
            {"rid": rid, "conversation": conversation, "user_id": user_id})
        return line_from_row(row) if row else None

    def list(self, user_id: int, conversation: int, page: Page) -> KeysetResult:
        """A page of lines; scope_exists says whether the user's conversation exists."""
        cursor = _LIST_CURSOR if page.cursor is not None else None
        rid = ids.decode(ids.LINE, page.cursor) if page.cursor is not None else None
        sql = keyset_sql(_LIST_ITEMS, cursor, page, key="l.id",
                         scope_exists=f"EXISTS ({_OWNED_CONVERSATION})")
        result = self.db.read(user_id, run_keyset, sql,
                              {"user_id": user_id, "conversation": conversation,
                               "cursor": rid or 0}, page)
        lines = [line_from_row(r[1:]) for r in result.rows]
        return KeysetResult(result.scope_exists, result.cursor_found, lines, result.has_more)

    def delete(self, user_id: int, conversation: int, rid: int) -> bool:
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(_DELETE, {"rid": rid, "conversation": conversation,
                                         "user_id": user_id}).fetchone()
        if row is not None:
            self.events_written("line.deleted", 1)
        return row is not None
