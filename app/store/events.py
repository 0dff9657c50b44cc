"""The event log's SQL: the fragments every write folds into its own statement, and the reads.

A write locks its user's row first (`LOCK_OWNER`), changes what it changes,
then takes the next numbers of the user's `event_seq` and inserts its events,
all in one statement: docs/events.md says why that orders events by commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from app.domain.events import CONVERSATION_TYPES, Event, EventPage
from app.domain.pages import Page

# The user's row, locked before anything else the statement touches: every write of
# one user takes the same first lock, so they run one at a time, in one order.
LOCK_OWNER = "owner_lock AS (SELECT id FROM users WHERE id = %(user_id)s FOR UPDATE)"
OWNER_LOCKED = "EXISTS (SELECT 1 FROM owner_lock)"


def take_seq(count: str, when: str) -> str:
    """`next_seq`: the user's event counter raised by `count` if `when` holds (the change
    happened); its `event_seq` is then the number of the statement's last event."""
    return (f"next_seq AS (UPDATE users SET event_seq = event_seq + {count} "
            f"WHERE id = %(user_id)s AND {when} RETURNING event_seq)")


def micros(column: str) -> str:
    """A timestamp as whole microseconds since the epoch (exact in JSON)."""
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


# What `data` holds per kind of object: its stored fields as a JSON array, read back
# by the event handlers, which encode them as the API shows the object.
def line_data(line: str, mood: str, mood_name: str = "name") -> str:
    return (f"jsonb_build_array({line}.rid, {line}.animal, {line}.think, {line}.text, "
            f"{micros(f'{line}.created_at')}, {mood}.{mood_name}, {mood}.eyes, "
            f"{mood}.tongue, {mood}.user_defined)")


def conversation_data(convo: str) -> str:
    return f"jsonb_build_array({convo}.rid, {convo}.heading, {micros(f'{convo}.created_at')})"


def mood_data(mood: str) -> str:
    return f"jsonb_build_array({mood}.name, {mood}.eyes, {mood}.tongue, {mood}.user_defined)"


def user_data(user: str) -> str:
    return (f"jsonb_build_array({user}.id, {user}.name, {user}.email, "
            f"{micros(f'{user}.created_at')})")


INSERT = "INSERT INTO events (user_id, seq, last_seq, type, conversation, data) "


def one_event(seq: str, event_type: str, conversation: str, data: str) -> str:
    """The columns INSERT takes for a statement's one event, numbered `seq`."""
    return (f"%(user_id)s, {seq}, {seq}, '{event_type}', {conversation}, "
            f"jsonb_build_array({data})")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)






_COLUMNS = "seq, last_seq, type, conversation, created_at, data"
_CUTOFF = "now() - make_interval(hours => %(retention_hours)s)"
# The janitor's deletions, `batch` rows a statement; rows another janitor (of another
# process) is deleting are skipped, not waited for.
_PURGE_EXPIRED = ("DELETE FROM events WHERE ctid = ANY (ARRAY("
                  f"SELECT ctid FROM events WHERE created_at < {_CUTOFF} "
                  "ORDER BY created_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED))")
_PURGE_DELETED_USERS = """
DELETE FROM events WHERE ctid = ANY (ARRAY(
    SELECT gone.ctid FROM deleted_users d
    CROSS JOIN LATERAL (SELECT ctid FROM events WHERE user_id = d.user_id
                        LIMIT %(batch)s FOR UPDATE SKIP LOCKED) gone
    LIMIT %(batch)s))
"""


def _items(filtered: bool, conversation: bool, backward: bool) -> str:
    """The rows holding one page of the user's events after (or before) the cursor.

    Forward: the row that holds the cursor's next events, if the cursor's own
    row holds more, then `limit + 1` rows after it (every row holds at least
    one event). With a filter, that for each type (at most nine), each an
    ordered index scan of its own: the cost depends on the page, not on the log.
    """
    extra, key = "", "seq"
    if filtered:
        # The filters' indexes order by an expression of seq (the events migration), each its
        # own: only that index gives the order the scan asks for, so every plan takes
        # it. With plain seq the primary key gives the order too, and a generic plan,
        # which cannot know that a type's rows are few, may walk the whole log on it.
        extra, key = "AND type = t.type ", "seq + 0"
        if conversation:
            extra, key = "AND type = t.type AND conversation = %(conversation)s ", "seq - 0"
    rows = (f"SELECT {_COLUMNS} FROM events WHERE user_id = %(user_id)s {extra}"
            f"AND created_at >= {_CUTOFF} ")
    if backward:
        page = (f"{rows}AND {key} < %(cursor)s ORDER BY {key} DESC "
                f"LIMIT %(limit_plus_one)s")
    else:
        page = (f"SELECT * FROM ({rows}AND {key} <= %(cursor)s ORDER BY {key} DESC LIMIT 1) "
                f"straddling WHERE last_seq > %(cursor)s UNION ALL "
                f"({rows}AND {key} > %(cursor)s ORDER BY {key} LIMIT %(limit_plus_one)s)")
    if not filtered:
        return page
    return (f"SELECT e.* FROM unnest(%(types)s::text[]) AS t(type) "
            f"CROSS JOIN LATERAL ({page}) e")


def _list_sql(filtered: bool, conversation: bool, backward: bool) -> str:
    return ("SELECT u.event_seq, cur.last_seq >= %(cursor)s, "
            f"cur.created_at >= {_CUTOFF}, page.* FROM (SELECT 1) one "
            "LEFT JOIN users u ON u.id = %(user_id)s "
            "LEFT JOIN LATERAL (SELECT last_seq, created_at FROM events "
            "  WHERE user_id = %(user_id)s AND seq <= %(cursor)s "
            "  ORDER BY seq DESC LIMIT 1) cur ON true "
            f"LEFT JOIN LATERAL ({_items(filtered, conversation, backward)}) page ON true")


_LISTS = {(f, c, b): _list_sql(f, c, b) for f in (False, True) for c in (False, True)
          for b in (False, True) if f or not c}

# The row holding event `seq`, if it is still kept (the caller checks its last_seq).
_GET = (f"SELECT {_COLUMNS} FROM events WHERE user_id = %(user_id)s AND seq <= %(seq)s "
        f"AND created_at >= {_CUTOFF} ORDER BY seq DESC LIMIT 1")


def _run_list(conn: Any, sql: str, params: dict) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def _run_get(conn: Any, params: dict) -> tuple | None:
    return conn.execute(_GET, params).fetchone()


def _run_head(conn: Any, params: dict) -> tuple | None:
    return conn.execute("SELECT event_seq FROM users WHERE id = %(user_id)s", params).fetchone()


def _run_owns(conn: Any, params: dict) -> tuple | None:
    return conn.execute("SELECT 1 FROM conversations WHERE rid = %(conversation)s "
                        "AND user_id = %(user_id)s", params).fetchone()


# The last row of one conversation's events at or before a number: one ordered index scan
# per type an event about a conversation can have (the conversation filter's index).
_CONVERSATION_UPTO = (
    "SELECT least(max(e.last_seq), %(upto)s) FROM unnest(%(types)s::text[]) AS t(type) "
    "CROSS JOIN LATERAL (SELECT last_seq FROM events WHERE user_id = %(user_id)s "
    "AND type = t.type AND conversation = %(conversation)s AND seq - 0 <= %(upto)s "
    "ORDER BY seq - 0 DESC LIMIT 1) e")


def conversation_seq_upto(conn: Any, user_id: int, conversation: int, upto_seq: int) -> int:
    """The number of the conversation's last event at or before `upto_seq` (0: none kept).

    Events at or before a committed number never change (only the purge removes
    them), so this answer agrees with any snapshot that holds `upto_seq`.
    """
    row = conn.execute(_CONVERSATION_UPTO, {
        "user_id": user_id, "conversation": conversation, "upto": upto_seq,
        "types": list(CONVERSATION_TYPES)}).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _events(user_id: int, row: Sequence) -> list[Event]:
    """The events a row holds, in order."""
    seq, _, event_type, conversation, created_at, data = row
    return [Event(user_id, seq + i, event_type, conversation, created_at, item)
            for i, item in enumerate(data)]


class EventRepository:
    """Reads of a user's events (routed like every read of the user) and the retention purge."""

    def __init__(self, db, retention_hours: int):
        self.db = db
        self.retention_hours = retention_hours

    def list(self, user_id: int, page: Page, cursor_seq: int | None,
             types: Sequence[str] | None, conversation: int | None) -> EventPage:
        """A page of events, oldest first; `types` (exact types) and `conversation` filter.

        `cursor_seq` is the cursor's number (None without a cursor; the caller
        has checked that the cursor is one of this user's ids).
        """
        if conversation is not None and types is None:
            types = CONVERSATION_TYPES
        filtered = types is not None
        sql = _LISTS[(filtered, conversation is not None, page.backward)]
        cursor = cursor_seq if cursor_seq is not None else (2**63 - 1 if page.backward else 0)
        rows = self.db.read(user_id, _run_list, sql, {
            "user_id": user_id, "cursor": cursor, "limit_plus_one": page.limit + 1,
            "retention_hours": self.retention_hours, "types": list(types or ()),
            "conversation": conversation})
        event_seq, cursor_found, cursor_fresh = rows[0][0], rows[0][1], rows[0][2]
        events = [event for row in rows if row[3] is not None
                  for event in _events(user_id, row[3:])
                  if (event.seq < cursor if page.backward else event.seq > cursor)]
        events.sort(key=_seq, reverse=page.backward)
        has_more = len(events) > page.limit
        events = events[: page.limit]
        if page.backward:
            events.reverse()
        if cursor_seq is None:
            state = "none"
        elif cursor_found:
            state = "ok" if cursor_fresh else "expired"
        elif event_seq is not None and cursor_seq <= event_seq:
            state = "expired"  # it was written (numbers are never skipped) and purged since
        else:
            state = "missing"
        return EventPage(event_seq is not None, state, events, has_more, event_seq or 0)

    def head(self, user_id: int) -> int | None:
        """The user's last event number (0: none yet; None: no such user)."""
        row = self.db.read(user_id, _run_head, {"user_id": user_id})
        return None if row is None else row[0]

    def owns_conversation(self, user_id: int, conversation: int) -> bool:
        return self.db.read(user_id, _run_owns, {"user_id": user_id,
                                                  "conversation": conversation}) is not None

    def last_in_conversation(self, user_id: int, conversation: int, upto_seq: int) -> int:
        """The number of the conversation's last event at or before `upto_seq` (0: none)."""
        return self.db.read(user_id, conversation_seq_upto, user_id, conversation, upto_seq)

    def get(self, user_id: int, seq: int) -> Event | None:
        row = self.db.read(user_id, _run_get, {"user_id": user_id, "seq": seq,
                                               "retention_hours": self.retention_hours})
        if row is None or row[1] < seq:
            return None
        return _events(user_id, row)[seq - row[0]]

    def purge_expired(self, batch: int = 5000, seconds: float = 1.0) -> int:
        """Delete events older than the retention, oldest first, `batch` rows per statement,
        for about `seconds` at most per call (the janitor calls again)."""
        return self._purge(_PURGE_EXPIRED, {"retention_hours": self.retention_hours,
                                            "batch": batch}, batch, seconds)

    def purge_deleted_users(self, batch: int = 5000, seconds: float = 1.0) -> int:
        """Delete the events of deleted users (`deleted_users`) as purge_expired does; a user
        whose events are all gone then leaves the table."""
        purged = self._purge(_PURGE_DELETED_USERS, {"batch": batch}, batch, seconds)
        with self.db.connection() as conn:
            conn.execute("DELETE FROM deleted_users d WHERE NOT EXISTS "
                         "(SELECT 1 FROM events e WHERE e.user_id = d.user_id)")
        return purged

    def _purge(self, statement: str, params: dict[str, Any], batch: int,
               seconds: float) -> int:
        """Run a deleting statement until it deletes less than `batch` rows (nothing more to
        do now: the rest, if any, is locked by another janitor) or `seconds` have passed.
        A statement's own transaction each, so no lock is held long."""
        purged, deadline = 0, time.monotonic() + seconds
        while True:
            with self.db.connection() as conn:
                count = conn.execute(statement, params).rowcount
            purged += count
            if count < batch or time.monotonic() >= deadline:
                return purged

    def oldest_age(self) -> float | None:
        """Seconds since the oldest event kept was written (None: no events)."""
        with self.db.connection() as conn:
            row = conn.execute("SELECT extract(epoch FROM now() - min(created_at))::float8 "
                               "FROM events").fetchone()
        return row[0]


class EventTally:
    """Events written, by type, counted per thread without a lock; `totals()` sums them
    (the metrics sampler folds the increase into events_written_total every second)."""

    def __init__(self) -> None:
        self._mine = threading.local()
        self._all: list[dict[str, int]] = []
        self._lock = threading.Lock()

    def add(self, event_type: str, count: int) -> None:
        try:
            cells = self._mine.cells
        except AttributeError:
            cells = self._mine.cells = {}
            with self._lock:
                self._all.append(cells)
        cells[event_type] = cells.get(event_type, 0) + count

    def totals(self) -> dict[str, int]:
        with self._lock:
            every = [dict(cells) for cells in self._all]
        out: dict[str, int] = {}
        for cells in every:
            for event_type, count in cells.items():
                out[event_type] = out.get(event_type, 0) + count
        return out


def _seq(event: Event) -> int:
    return event.seq


def counter(on_written: Callable[[str, int], None] | None) -> Callable[[str, int], None]:
    """What a repository calls with (type, count) after writing events; a no-op without one."""
    return on_written if on_written is not None else _ignore


def _ignore(event_type: str, count: int) -> None:
    return None
