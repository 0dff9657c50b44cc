"""The whole event log, read in order by one relay at a time: the relay's feeds.

Each feed reads every user's events in (created_at, user_id, seq) order, up to
the watermark that no open transaction can still commit behind; its position
moves in the batch's own transaction. docs/relay.md explains why it is safe.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.domain.events import Event
from app.store.db import Database, UnitOfWork

# Transactions of this database that hold a transaction id: their starts bound what may
# still commit. Without an open writer, the watermark is now.
_WATERMARK = """
SELECT least(clock_timestamp(), min(xact_start)),
       extract(epoch FROM clock_timestamp() - least(clock_timestamp(), min(xact_start)))::float8
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND datname = current_database() AND pid <> pg_backend_pid()
"""

_POSITION = "SELECT created_at, user_id, seq FROM event_feeds WHERE name = %(name)s"
# A new feed starts at the watermark: it hands on what is written from now on.
_START = ("INSERT INTO event_feeds (name, created_at) VALUES (%(name)s, %(at)s) "
          "ON CONFLICT (name) DO NOTHING")
_NEXT = """
SELECT user_id, seq, last_seq, type, conversation, created_at, data FROM events
WHERE created_at >= %(at)s AND created_at < %(watermark)s
  AND (created_at, user_id, last_seq) > (%(at)s, %(user_id)s, %(seq)s)
ORDER BY created_at, user_id, last_seq
LIMIT %(limit)s
"""
# Whether anything follows the feed's position (or the feed has not started): one
# statement, no lock, no watermark, for a relay that polls while nothing is written. Events
# before the position never appear (the feed reads only up to the watermark).
# (A scalar subquery with ORDER BY and LIMIT, not EXISTS, which drops them: the created_at
# index from the position on, not a scan of the table.)
_NEWS = """
SELECT f.name IS NULL OR (f.updated_at <= now() - make_interval(secs => %(gap)s) AND (
    SELECT created_at FROM events
    WHERE created_at >= f.created_at
      AND (created_at, user_id, last_seq) > (f.created_at, f.user_id, f.seq)
    ORDER BY created_at LIMIT 1) IS NOT NULL)
FROM (SELECT 1) one LEFT JOIN event_feeds f ON f.name = %(name)s
"""
_ADVANCE = ("UPDATE event_feeds SET created_at = %(at)s, user_id = %(user_id)s, "
            "seq = %(seq)s, updated_at = now() WHERE name = %(name)s")


@dataclass(frozen=True, slots=True)
class Position:
    created_at: datetime
    user_id: int
    seq: int  # the last event handed on of the row at (created_at, user_id)


@dataclass(slots=True)
class FeedBatch:
    """Events a feed reads next, oldest first, and the transaction they were read in.

    The consumer calls `handed_on(event)` for each event it is done with, in
    order; the feed's position moves to the last one when the batch ends
    without an exception. `work` is the batch's transaction, for the
    consumer's own repository calls that must commit with the position.
    """

    events: list[Event]
    work: UnitOfWork
    lag_seconds: float  # how far the watermark is behind the clock
    last: Position | None = None

    def handed_on(self, event: Event) -> None:
        self.last = Position(event.created_at, event.user_id, event.seq)


class EventFeed:
    """One named reader of every user's events, advanced by one relay at a time."""

    def __init__(self, db: Database, name: str):
        self.db = db
        self.name = name
        self._lock_key = zlib.crc32(f"saypi.event_feed.{name}".encode())

    @contextlib.contextmanager
    def batch(self, limit: int = 500) -> Iterator[FeedBatch | None]:
        """The next events of this feed (None: another relay holds it). The position moves
        to the last event handed on when the block ends without an exception."""
        with self.db.unit_of_work() as work:
            conn = work.conn
            if not _one(conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                     (self._lock_key,)))[0]:
                yield None
                return
            watermark, lag = _one(conn.execute(_WATERMARK))
            position = self._position(work, watermark)
            rows = conn.execute(_NEXT, {
                "at": position.created_at, "user_id": position.user_id, "seq": position.seq,
                "watermark": watermark, "limit": limit}).fetchall()
            batch = FeedBatch(_events(rows, position), work, lag)
            yield batch
            if batch.last is not None:
                conn.execute(_ADVANCE, {"name": self.name, "at": batch.last.created_at,
                                        "user_id": batch.last.user_id,
                                        "seq": batch.last.seq})

    def _position(self, work: UnitOfWork, watermark: datetime) -> Position:
        row = work.conn.execute(_POSITION, {"name": self.name}).fetchone()
        if row is None:
            work.conn.execute(_START, {"name": self.name, "at": watermark})
            row = _one(work.conn.execute(_POSITION, {"name": self.name}))
        return Position(*row)

    def has_news(self, gap_seconds: float = 0.0) -> bool:
        """Whether a batch may find events (False: none follows the position yet, or the
        position moved less than `gap_seconds` ago: relays polling one feed then take a
        batch of a poll's events between them, not one each)."""
        with self.db.connection() as conn:
            return bool(_one(conn.execute(_NEWS, {"name": self.name,
                                                  "gap": gap_seconds}))[0])

    def lag_seconds(self) -> float | None:
        """Seconds between the clock and this feed's position (None: it has not started)."""
        with self.db.connection() as conn:
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp() - created_at)"
                               "::float8 FROM event_feeds WHERE name = %(name)s",
                               {"name": self.name}).fetchone()
        return None if row is None else row[0]


def _one(cursor: Any) -> tuple:
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row


def _events(rows: list[tuple], position: Position) -> list[Event]:
    """The rows' events, without those of the position's own row already handed on (a
    batch may have stopped inside a row of several events)."""
    events = []
    for user_id, seq, _, event_type, conversation, created_at, data in rows:
        for i, item in enumerate(data):
            if (created_at, user_id) == (position.created_at, position.user_id) \
                    and seq + i <= position.seq:
                continue
            events.append(Event(user_id, seq + i, event_type, conversation, created_at, item))
    return events
