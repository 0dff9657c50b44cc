"""ConversationRepository: the only SQL about conversations (and reading their lines)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from psycopg import errors as pg_errors

from app.domain import ids
from app.domain.errors import LimitReached, MoodMissing, UserGone, WriteRaced
from app.domain.models import Conversation, Line, Mood, NewLine
from app.domain.pages import Page
from app.domain.unit_of_work import UnitOfWork
from app.store.events import (
    INSERT,
    LOCK_OWNER,
    OWNER_LOCKED,
    conversation_data,
    counter,
    line_data,
    one_event,
    take_seq,
)
from app.store.keyset import KeysetResult, keyset_sql, run_keyset
from app.store.new_lines import (
    ALL_RESOLVED,
    INSERT_RESOLVED,
    INSERTED_COLUMNS,
    MISSING_MOODS,
    RESOLVED_LINES,
    line_params,
)
from app.store.reading import fetch_all_binary

# One statement: the conversation and its lines with their moods, oldest first.
_GET_WITH_LINES = """
SELECT c.rid, c.heading, c.created_at,
       l.rid, l.animal, l.think, l.text, l.created_at,
       m.name, m.eyes, m.tongue, m.user_id IS NOT NULL
FROM conversations c
LEFT JOIN lines l ON l.conversation_id = c.id
LEFT JOIN moods m ON m.id = l.mood_id
WHERE c.rid = %s AND c.user_id = %s
ORDER BY l.id
"""

_LIST_ITEMS = ("SELECT id, rid, heading, created_at FROM conversations "
               "WHERE user_id = %(user_id)s {bound}")
_LIST_CURSOR = "SELECT id FROM conversations WHERE rid = %(cursor)s AND user_id = %(user_id)s"

# One statement: a conversation and its first lines. The owner's conversation
# counter goes up under its cap only when every mood resolved and the lines fit
# the line cap; the conversation starts with their count. The owner's row is
# the first one it locks, and its event counter numbers the conversation's
# event and then each line's, in order.
_CREATE = f"""
WITH owner AS (UPDATE users SET conversation_count = conversation_count + 1,
                                event_seq = event_seq + 1
               WHERE id = %(user_id)s AND conversation_count < %(cap)s
               RETURNING id, event_seq),
convo AS (INSERT INTO conversations (rid, user_id, heading)
          SELECT %(rid)s, owner.id, %(heading)s FROM owner
          RETURNING rid, heading, created_at),
logged AS ({INSERT}
           SELECT {one_event("owner.event_seq", "conversation.created", "%(rid)s",
                             conversation_data("convo"))}
           FROM owner, convo)
SELECT rid, heading, created_at FROM convo
"""

_UPDATE_HEADING = f"""
WITH {LOCK_OWNER},
changed AS (UPDATE conversations SET heading = %(heading)s
            WHERE rid = %(rid)s AND user_id = %(user_id)s AND {OWNER_LOCKED}
            RETURNING rid, heading, created_at),
{take_seq("1", "EXISTS (SELECT 1 FROM changed)")},
logged AS ({INSERT}
           SELECT {one_event("next_seq.event_seq", "conversation.updated", "%(rid)s",
                             conversation_data("changed"))}
           FROM next_seq, changed)
SELECT rid FROM changed
"""

# Its lines go with it (by cascade), without an event each: conversation.deleted
# says they are gone (docs/events.md).
_DELETE = f"""
WITH {LOCK_OWNER},
gone AS (DELETE FROM conversations WHERE rid = %(rid)s AND user_id = %(user_id)s
           AND {OWNER_LOCKED}
         RETURNING user_id, rid, heading, created_at),
counted AS (UPDATE users SET conversation_count = conversation_count - 1,
                             event_seq = event_seq + 1
            WHERE id IN (SELECT user_id FROM gone) RETURNING id, event_seq),
logged AS ({INSERT}
           SELECT {one_event("counted.event_seq", "conversation.deleted", "%(rid)s",
                             conversation_data("gone"))}
           FROM counted, gone)
SELECT id FROM counted
"""

_CREATE_WITH_LINES = f"""
WITH {RESOLVED_LINES},
owner AS (UPDATE users SET conversation_count = conversation_count + 1,
                          event_seq = event_seq + 1 + %(n)s
          WHERE id = %(user_id)s AND conversation_count < %(cap)s
            AND %(n)s <= %(line_cap)s AND {ALL_RESOLVED}
          RETURNING id, event_seq),
convo AS (INSERT INTO conversations (rid, user_id, heading, line_count)
          SELECT %(rid)s, owner.id, %(heading)s, %(n)s FROM owner
          RETURNING id, rid, heading, created_at),
{INSERT_RESOLVED},
logged AS ({INSERT}
           SELECT {one_event("owner.event_seq - %(n)s", "conversation.created", "%(rid)s",
                             conversation_data("convo"))}
           FROM owner, convo
           UNION ALL
           SELECT %(user_id)s, owner.event_seq - %(n)s + 1, owner.event_seq, 'line.created',
                  %(rid)s, jsonb_agg({line_data("inserted", "resolved", "mood_name")}
                                     ORDER BY resolved.ord)
           FROM owner, inserted JOIN resolved ON resolved.rid = inserted.rid
           GROUP BY owner.event_seq)
SELECT convo.rid, convo.heading, convo.created_at, {INSERTED_COLUMNS}
FROM convo
LEFT JOIN (inserted JOIN resolved ON resolved.rid = inserted.rid) ON true
ORDER BY inserted.id
"""


def line_from_row(row: tuple) -> Line:
    rid, animal, think, text, created_at, mood_name, eyes, tongue, user_defined = row
    return Line(rid, animal, think, Mood(mood_name, eyes, tongue, user_defined), text,
                created_at)


class ConversationRepository:
    def __init__(self, db, on_events: Callable[[str, int], None] | None = None):
        self.db = db
        self.events_written = counter(on_events)

    def create(self, user_id: int, heading: str, cap: int,
               uow: UnitOfWork | None = None) -> Conversation:
        """Insert unless the user already owns `cap` conversations (race-free counter)."""
        with self.db.write(user_id, uow) as conn:  # one atomic statement
            row = conn.execute(
                _CREATE,
                {"user_id": user_id, "cap": cap, "rid": ids.new_number(), "heading": heading},
            ).fetchone()
            if row is None:
                if conn.execute("SELECT 1 FROM users WHERE id = %s", (user_id,)).fetchone():
                    raise LimitReached(LimitReached.CONVERSATIONS, cap)
                raise UserGone()
        self.events_written("conversation.created", 1)
        return Conversation(row[0], row[1], row[2], ())

    def create_with_lines(self, user_id: int, heading: str, cap: int, lines: Sequence[NewLine],
                          line_cap: int, uow: UnitOfWork | None = None) -> Conversation:
        """A conversation and its first `lines`, all or nothing (one statement).

        Refused: UserGone, MoodMissing(positions) naming every line whose mood
        is missing, LimitReached for more than `line_cap` lines, or for a
        user who already owns `cap` conversations.
        """
        params = {**line_params(user_id, lines), "cap": cap, "line_cap": line_cap,
                  "rid": ids.new_number(), "heading": heading}
        with self.db.write(user_id, uow) as conn:
            try:
                rows = conn.execute(_CREATE_WITH_LINES, params).fetchall()
            except pg_errors.ForeignKeyViolation as exc:
                # A mood went in a write this one waited for, after its snapshot found it
                # (as in LineRepository.create).
                if uow is not None:
                    raise WriteRaced() from exc
                rows = []
            if not rows:
                user, missing = conn.execute(
                    f"SELECT (SELECT 1 FROM users WHERE id = %(user_id)s), {MISSING_MOODS}",
                    params).fetchone()
                if user is None:
                    raise UserGone()
                if missing:
                    raise MoodMissing(tuple(missing))
                if len(lines) > line_cap:
                    raise LimitReached(LimitReached.LINES, line_cap)
                raise LimitReached(LimitReached.CONVERSATIONS, cap)
        self.events_written("conversation.created", 1)
        self.events_written("line.created", len(lines))
        first = rows[0]
        return Conversation(first[0], first[1], first[2],
                            tuple(line_from_row(row[3:]) for row in rows if row[3] is not None))

    def get(self, user_id: int, rid: int) -> Conversation | None:
        rows = self.db.read(user_id, fetch_all_binary, _GET_WITH_LINES, (rid, user_id))
        if not rows:
            return None
        first = rows[0]
        lines = tuple(line_from_row(row[3:]) for row in rows if row[3] is not None)
        return Conversation(first[0], first[1], first[2], lines)

    def list(self, user_id: int, page: Page) -> KeysetResult:
        cursor = None
        if page.cursor is not None:
            cursor = _LIST_CURSOR
        sql = keyset_sql(_LIST_ITEMS, cursor, page)
        rid = ids.decode(ids.CONVERSATION, page.cursor) if page.cursor is not None else None
        result = self.db.read(user_id, run_keyset, sql,
                              {"user_id": user_id, "cursor": rid or 0}, page)
        return KeysetResult(result.scope_exists, result.cursor_found,
                            [Conversation(r[1], r[2], r[3]) for r in result.rows],
                            result.has_more)

    def update_heading(self, user_id: int, rid: int, heading: str) -> Conversation | None:
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(_UPDATE_HEADING, {"heading": heading, "rid": rid,
                                                 "user_id": user_id}).fetchone()
        if row is None:
            return None
        self.events_written("conversation.updated", 1)
        return self.get(user_id, row[0])

    def delete(self, user_id: int, rid: int) -> bool:
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(_DELETE, {"rid": rid, "user_id": user_id}).fetchone()
        if row is not None:
            self.events_written("conversation.deleted", 1)
        return row is not None
