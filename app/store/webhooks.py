"""Webhooks' SQL: the endpoints API's (WebhookRepository) and the relay's (WebhookQueue).

Deliveries are rows claimed with FOR UPDATE SKIP LOCKED and a lease; each endpoint's
breaker lives in its row, so every relay sees it. docs/webhooks.md explains both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from app.domain import ids
from app.domain.errors import LimitReached, UserGone
from app.domain.pages import KeysetResult, Page
from app.domain.webhooks import (
    ENDPOINT,
    GONE_REASON,
    SECRET_OVERLAP,
    Claimed,
    Claims,
    Delivery,
    Endpoint,
    Outcome,
    Recorded,
    disable_reason,
)
from app.store.db import UnitOfWork
from app.store.keyset import keyset_sql, run_keyset
from app.store.reading import fetch_all, fetch_one

_ENDPOINT_COLUMNS = "rid, url, events, description, disabled, disabled_reason, created_at"
_DELIVERY_COLUMNS = ("d.rid, d.event_id, d.attempts, d.status, d.response_status, d.error, "
                     "d.duration_ms, CASE WHEN d.status = 'pending' THEN d.next_attempt_at "
                     "END, d.created_at")

_CREATE = f"""
INSERT INTO webhook_endpoints (rid, user_id, url, events, description, secret)
SELECT %(rid)s, %(user_id)s, %(url)s, %(events)s, %(description)s, %(secret)s
WHERE (SELECT count(*) FROM webhook_endpoints WHERE user_id = %(user_id)s) < %(cap)s
RETURNING {_ENDPOINT_COLUMNS}
"""
_GET = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE rid = %s AND user_id = %s"
_LIST_ITEMS = (f"SELECT id, {_ENDPOINT_COLUMNS} FROM webhook_endpoints "
               "WHERE user_id = %(user_id)s {bound}")
_LIST_CURSOR = "SELECT id FROM webhook_endpoints WHERE rid = %(cursor)s AND user_id = %(user_id)s"
_ROTATE = f"""
UPDATE webhook_endpoints SET previous_secret = secret, previous_until = now() + %(overlap)s,
                             secret = %(secret)s
WHERE rid = %(rid)s AND user_id = %(user_id)s
RETURNING {_ENDPOINT_COLUMNS}
"""
_PING = f"""
INSERT INTO webhook_deliveries (rid, endpoint_id, event_id, body, next_attempt_at)
SELECT %(rid)s, id, %(event_id)s, %(body)s, CASE WHEN disabled THEN NULL ELSE now() END
FROM webhook_endpoints
WHERE rid = %(endpoint)s AND user_id = %(user_id)s
RETURNING {_DELIVERY_COLUMNS.replace("d.", "")}
"""
# A disabled endpoint's pending deliveries wait with no due time (out of the claims' way);
# enabling makes those due at once.
_PARK_DISABLED = """
UPDATE webhook_deliveries SET next_attempt_at = CASE WHEN %(disabled)s THEN NULL ELSE now() END
WHERE endpoint_id = (SELECT id FROM webhook_endpoints WHERE rid = %(rid)s
                                                        AND user_id = %(user_id)s)
  AND status = 'pending' AND (%(disabled)s OR next_attempt_at IS NULL)
"""
# Newest first: `starting_after` goes to older deliveries, `ending_before` to newer ones.
_DELIVERIES = f"""
SELECT e.id IS NOT NULL, cur.id IS NOT NULL, page.*
FROM (SELECT 1) one
LEFT JOIN webhook_endpoints e ON e.rid = %(endpoint)s AND e.user_id = %(user_id)s
LEFT JOIN webhook_deliveries cur ON cur.rid = %(cursor)s AND cur.endpoint_id = e.id
LEFT JOIN LATERAL (
    SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d
    WHERE d.endpoint_id = e.id {{bound}}
    ORDER BY d.id {{direction}} LIMIT %(limit_plus_one)s) page ON true
"""


def endpoint_from_row(row: Sequence[Any]) -> Endpoint:
    rid, url, events, description, disabled, reason, created_at = row
    return Endpoint(rid, url, tuple(events), description, disabled, reason, created_at)


class WebhookRepository:
    """The endpoints API's reads and writes; `db` is the cluster (reads may go to replicas)."""

    def __init__(self, db: Any):
        self.db = db

    def create(self, user_id: int, url: str, events: Sequence[str], description: str | None,
               secret: str, cap: int, uow: Any = None) -> Endpoint:
        """A new endpoint, unless the user already has `cap` (LimitReached) or is gone."""
        with self.db.write_transaction(user_id, uow) as conn:
            # The user's row lock makes the count and the insert one step (as creation does).
            if conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE",
                            (user_id,)).fetchone() is None:
                raise UserGone()
            row = conn.execute(_CREATE, {"rid": ids.new_number(), "user_id": user_id,
                                         "url": url, "events": list(events),
                                         "description": description, "secret": secret,
                                         "cap": cap}).fetchone()
        if row is None:
            raise LimitReached(LimitReached.WEBHOOK_ENDPOINTS, cap)
        return endpoint_from_row(row)

    def get(self, user_id: int, rid: int) -> Endpoint | None:
        row = self.db.read(user_id, fetch_one, _GET, (rid, user_id))
        return None if row is None else endpoint_from_row(row)

    def list(self, user_id: int, page: Page) -> KeysetResult:
        sql = keyset_sql(_LIST_ITEMS, _LIST_CURSOR if page.cursor is not None else None, page)
        rid = ids.decode(ENDPOINT, page.cursor) if page.cursor is not None else None
        result = self.db.read(user_id, run_keyset, sql,
                              {"user_id": user_id, "cursor": rid or 0}, page)
        return KeysetResult(result.scope_exists, result.cursor_found,
                            [endpoint_from_row(r[1:]) for r in result.rows], result.has_more)

    def update(self, user_id: int, rid: int, changes: Mapping[str, object]
               ) -> Endpoint | None:
        """Set the given fields (url, events, description, disabled). Enabling clears the
        reason and the breaker; disabling by hand leaves no reason."""
        sets: list[str] = []
        params: dict[str, Any] = {"rid": rid, "user_id": user_id}
        for name in ("url", "events", "description"):
            if name in changes:
                sets.append(f"{name} = %({name})s")
                value = changes[name]
                params[name] = list(value) if isinstance(value, (list, tuple)) else value
        if "disabled" in changes:
            params["disabled"] = changes["disabled"]
            sets.append("disabled_reason = CASE WHEN %(disabled)s AND disabled "
                        "THEN disabled_reason END")
            sets.append("failures = CASE WHEN %(disabled)s THEN failures ELSE 0 END")
            sets.append("failing_since = CASE WHEN %(disabled)s THEN failing_since END")
            sets.append("open_until = CASE WHEN %(disabled)s THEN open_until END")
            sets.append("disabled = %(disabled)s")
        if not sets:
            return self.get(user_id, rid)
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(f"UPDATE webhook_endpoints SET {', '.join(sets)} "
                               f"WHERE rid = %(rid)s AND user_id = %(user_id)s "
                               f"RETURNING {_ENDPOINT_COLUMNS}", params).fetchone()
            if row is not None and "disabled" in changes:
                conn.execute(_PARK_DISABLED, params)
        return None if row is None else endpoint_from_row(row)

    def delete(self, user_id: int, rid: int) -> bool:
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute("DELETE FROM webhook_endpoints WHERE rid = %s AND user_id = %s "
                               "RETURNING id", (rid, user_id)).fetchone()
        return row is not None

    def rotate_secret(self, user_id: int, rid: int, secret: str) -> Endpoint | None:
        """`secret` signs from now on; the one it replaces signs beside it for 24 h."""
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(_ROTATE, {"rid": rid, "user_id": user_id, "secret": secret,
                                         "overlap": SECRET_OVERLAP}).fetchone()
        return None if row is None else endpoint_from_row(row)

    def add_ping(self, user_id: int, rid: int, event_id: str, body: str) -> Delivery | None:
        """A delivery of a `ping` event to the endpoint, due now (None: no such endpoint)."""
        with self.db.write_transaction(user_id) as conn:
            row = conn.execute(_PING, {"rid": ids.new_number(), "endpoint": rid,
                                       "user_id": user_id, "event_id": event_id,
                                       "body": body}).fetchone()
        return None if row is None else Delivery(*row)

    def deliveries(self, user_id: int, rid: int, page: Page,
                   cursor: int | None) -> KeysetResult:
        """The endpoint's deliveries, newest first (scope_exists: the endpoint is yours)."""
        older = not page.backward
        bound = "" if page.cursor is None else ("AND d.id < cur.id" if older
                                                else "AND d.id > cur.id")
        sql = _DELIVERIES.format(bound=bound, direction="DESC" if older else "ASC")
        rows = self.db.read(user_id, fetch_all, sql, {
            "endpoint": rid, "user_id": user_id, "cursor": cursor or 0,
            "limit_plus_one": page.limit + 1})
        scope_exists, cursor_found = rows[0][0], rows[0][1]
        items = [Delivery(*row[2:]) for row in rows if row[2] is not None]
        has_more = len(items) > page.limit
        items = items[:page.limit]
        if not older:
            items.reverse()
        return KeysetResult(scope_exists, cursor_found, items, has_more)


# --- the relay's side ---------------------------------------------------------------------

_MATCHING = ("SELECT id, user_id, events FROM webhook_endpoints "
             "WHERE user_id = ANY(%(users)s) AND NOT disabled")
# A fan-out batch's deliveries in one statement (one row per array element).
_ADD = """
INSERT INTO webhook_deliveries (rid, endpoint_id, event_id, body, next_attempt_at)
SELECT rid, endpoint_id, event_id, body, now()
FROM unnest(%(rids)s::bigint[], %(endpoints)s::bigint[], %(events)s::text[], %(bodies)s::text[])
     AS d(rid, endpoint_id, event_id, body)
"""
# Every due time, lease and breaker interval is on the database's clock (now()): the clocks
# of relay hosts do not matter. Due deliveries of enabled endpoints whose breaker is closed,
# or half open (its interval over: one probe may go). Rows another relay is claiming are
# skipped, not waited for.
_DUE = """
SELECT d.id, d.endpoint_id, e.open_until IS NOT NULL
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND d.next_attempt_at <= now()
  AND NOT e.disabled AND (e.open_until IS NULL OR e.open_until <= now())
ORDER BY d.next_attempt_at
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED
"""
# The probe's claim re-arms the breaker. An endpoint row another transaction holds (a
# relay's probe claim, a record, the owner's deletion) is skipped, not waited for: no
# probe this round, and no claim waits on a lock while holding delivery rows.
_PROBE = """
UPDATE webhook_endpoints SET open_until = now() + make_interval(secs => %(open)s)
WHERE id IN (SELECT id FROM webhook_endpoints
             WHERE id = ANY(%(ids)s) AND open_until <= now()
             FOR NO KEY UPDATE SKIP LOCKED)
RETURNING id
"""
_CLAIM = """
UPDATE webhook_deliveries d SET attempts = d.attempts + 1, claim = %(claim)s,
       next_attempt_at = now() + make_interval(secs => %(lease)s), updated_at = now()
FROM webhook_endpoints e
WHERE d.id = ANY(%(ids)s) AND e.id = d.endpoint_id
RETURNING d.id, d.attempts, d.endpoint_id, e.url, d.event_id, d.body, e.secret,
          CASE WHEN e.previous_until > now() THEN e.previous_secret END, d.created_at
"""
# When the next pending delivery is due (in seconds; negative: overdue), for an idle claim.
_NEXT_DUE = """
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at IS NOT NULL
"""
# Claimed deliveries a relay will not attempt (it stopped the batch, or their endpoint just
# failed): the claim and its counted attempt are undone; they are due again at once, or
# when their endpoint's open breaker allows, or never while it is disabled.
_RELEASE = """
UPDATE webhook_deliveries d SET claim = NULL, attempts = d.attempts - 1,
       next_attempt_at = CASE WHEN e.disabled THEN NULL
                              WHEN e.open_until > now() THEN e.open_until ELSE now() END
FROM webhook_endpoints e
WHERE d.id = ANY(%(ids)s) AND d.claim = %(claim)s AND e.id = d.endpoint_id
"""
# A success, in one statement. An endpoint with a clean record (no failures, breaker closed:
# nearly always) is not locked at all: the delivery's row is all it writes. One with
# failures or a breaker is locked first (the order a deletion of it takes the rows in, so the
# two never deadlock), its breaker closed, and what the breaker held back made due at once.
# (`(SELECT count(*) FROM e) >= 0` makes the delivery's update wait for that lock.)
_RECORD_SUCCESS = """
WITH e AS (
    SELECT open_until FROM webhook_endpoints
    WHERE id = %(endpoint)s AND (failures > 0 OR open_until IS NOT NULL)
    FOR KEY SHARE
), d AS (
    UPDATE webhook_deliveries SET status = 'succeeded', claim = NULL, next_attempt_at = NULL,
           response_status = %(response_status)s, error = NULL,
           duration_ms = %(duration_ms)s, updated_at = now()
    WHERE id = %(id)s AND claim = %(claim)s AND (SELECT count(*) FROM e) >= 0
    RETURNING endpoint_id
), closed AS (
    UPDATE webhook_endpoints SET failures = 0, failing_since = NULL, open_until = NULL
    WHERE id = %(endpoint)s AND EXISTS (SELECT FROM e) AND EXISTS (SELECT FROM d)
), unparked AS (
    UPDATE webhook_deliveries SET next_attempt_at = now()
    WHERE (SELECT open_until FROM e) IS NOT NULL AND EXISTS (SELECT FROM d)
      AND endpoint_id = %(endpoint)s AND status = 'pending' AND next_attempt_at > now()
      AND next_attempt_at <= (SELECT open_until FROM e) AND claim IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM unparked)
"""
_RECORD = """
UPDATE webhook_deliveries SET status = %(status)s, claim = NULL,
       next_attempt_at = now() + make_interval(secs => %(delay)s::float8),
       response_status = %(response_status)s, error = %(error)s,
       duration_ms = %(duration_ms)s, updated_at = now()
WHERE id = %(id)s AND claim = %(claim)s
RETURNING endpoint_id
"""
# An open breaker's (or a disabled endpoint's) deliveries are moved out of the due index's
# way: to the end of the interval (rows a claim is taking are skipped), or to no due time.
_PARK_OPEN = """
UPDATE webhook_deliveries d SET next_attempt_at = e.open_until
FROM webhook_endpoints e
WHERE e.id = %(id)s AND d.id IN (
    SELECT id FROM webhook_deliveries
    WHERE endpoint_id = %(id)s AND status = 'pending' AND next_attempt_at < e.open_until
    FOR UPDATE SKIP LOCKED)
"""
_PARK_PROBED = """
UPDATE webhook_deliveries d SET next_attempt_at = e.open_until
FROM webhook_endpoints e
WHERE e.id = d.endpoint_id AND d.id IN (
    SELECT id FROM webhook_deliveries
    WHERE endpoint_id = ANY(%(endpoints)s) AND status = 'pending'
      AND next_attempt_at <= now() AND id <> ALL(%(probes)s)
    FOR UPDATE SKIP LOCKED)
"""
_PARK_NULL = ("UPDATE webhook_deliveries SET next_attempt_at = NULL "
              "WHERE endpoint_id = %s AND status = 'pending'")
_FAILED = """
UPDATE webhook_endpoints SET failures = failures + 1,
       failing_since = coalesce(failing_since, now()),
       open_until = CASE WHEN failures + 1 >= %(threshold)s
                         THEN greatest(open_until, now() + make_interval(secs => %(open)s))
                         ELSE open_until END,
       disabled = disabled OR %(reason)s::text IS NOT NULL,
       disabled_reason = CASE WHEN disabled THEN disabled_reason ELSE %(reason)s END
WHERE id = %(id)s
RETURNING disabled, open_until > now()
"""
_STATS = """
SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
       (SELECT extract(epoch FROM now() - min(created_at))::float8
        FROM webhook_deliveries WHERE status = 'pending'),
       (SELECT extract(epoch FROM now() - min(d.next_attempt_at))::float8
        FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND NOT e.disabled
          AND (e.open_until IS NULL OR e.open_until <= now())),
       (SELECT count(*) FROM webhook_endpoints WHERE open_until > now() AND NOT disabled)
"""


# Finished deliveries are kept as long as events are (EVENTS_RETENTION_HOURS).
_PURGE = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status <> 'pending' AND updated_at < %(before)s
    ORDER BY updated_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
"""


class Breaker(NamedTuple):
    failures: int  # failures in a row that open it
    open_seconds: float  # how long it stays open before one probe
    disable_after: timedelta  # failing this long disables the endpoint


class QueueStats(NamedTuple):
    pending: int
    oldest_pending_seconds: float | None  # since the oldest pending delivery was created
    oldest_due_seconds: float | None  # how late the most overdue claimable delivery is
    breakers_open: int


class WebhookQueue:
    """The relay's deliveries: fanned out with a feed's batch, claimed, recorded."""

    def __init__(self, db: Any, breaker: Breaker):
        self.db = db
        self.breaker = breaker

    def matching_endpoints(self, work: UnitOfWork, users: Sequence[int]
                           ) -> list[tuple[int, int, tuple[str, ...]]]:
        """(endpoint id, user id, event patterns) of the users' enabled endpoints."""
        rows = work.conn.execute(_MATCHING, {"users": list(users)}).fetchall()
        return [(row[0], row[1], tuple(row[2])) for row in rows]

    def add(self, work: UnitOfWork, deliveries: Sequence[tuple[int, str, str]]) -> None:
        """Insert (endpoint id, event id, body) deliveries, due now, in the feed's batch: one
        statement for the whole batch."""
        if deliveries:
            work.conn.execute(_ADD, {
                "rids": [ids.new_number() for _ in deliveries],
                "endpoints": [endpoint for endpoint, _, _ in deliveries],
                "events": [event_id for _, event_id, _ in deliveries],
                "bodies": [body for _, _, body in deliveries]})

    def claim(self, limit: int, lease_seconds: float, claim: int) -> Claims:
        """Up to `limit` due deliveries, each leased for one attempt until now + lease (a relay
        killed mid-attempt leaves it due again then); one per endpoint whose breaker is half
        open, and that one's claim re-arms the breaker. With none due, when the next one is
        (`due_in`, seconds)."""
        with self.db.transaction() as conn:
            due = conn.execute(_DUE, {"limit": limit}).fetchall()
            if not due:
                row = conn.execute(_NEXT_DUE).fetchone()
                return Claims([], None if row is None else row[0])
            chosen, probes = [], {}
            for delivery_id, endpoint_id, half_open in due:
                if not half_open:
                    chosen.append(delivery_id)
                elif endpoint_id not in probes:
                    probes[endpoint_id] = delivery_id
            probing: set[int] = set()
            if probes:
                won = conn.execute(_PROBE, {"open": self.breaker.open_seconds,
                                            "ids": list(probes)}).fetchall()
                probing = {row[0] for row in won}
                chosen.extend(probes[endpoint] for endpoint in probing)
                if probing:  # the rest of the probed endpoints' deliveries wait again
                    conn.execute(_PARK_PROBED, {
                        "endpoints": list(probing),
                        "probes": [probes[endpoint] for endpoint in probing]})
            if not chosen:
                return Claims([], 0.0)
            rows = conn.execute(_CLAIM, {"claim": claim, "ids": chosen,
                                         "lease": lease_seconds}).fetchall()
        claimed = {row[0]: row for row in rows}
        # In the order the claim read them: soonest due first.
        return Claims([Claimed(row_id, claim, attempt, endpoint, url, event_id, body,
                               (secret,) if previous is None else (secret, previous),
                               endpoint in probing, created_at)
                       for row_id, attempt, endpoint, url, event_id, body, secret, previous,
                       created_at in (claimed[d[0]] for d in due if d[0] in claimed)], 0.0)

    def release(self, claimed: Sequence[Claimed]) -> None:
        """Give back claimed deliveries without an attempt (their claim and attempt undone)."""
        if claimed:
            with self.db.connection() as conn:
                conn.execute(_RELEASE, {"ids": [c.id for c in claimed],
                                        "claim": claimed[0].claim})

    def record(self, claimed: Claimed, outcome: Outcome, next_delay: float | None
               ) -> Recorded:
        """Record the attempt's outcome (unless its lease passed and another relay took the
        delivery over); a success closes the endpoint's breaker (what it held back is due at
        once), a failure moves it and may disable the endpoint. A success is one statement."""
        if outcome.succeeded:
            with self.db.connection() as conn:
                row = conn.execute(_RECORD_SUCCESS, {
                    "endpoint": claimed.endpoint_id, "id": claimed.id, "claim": claimed.claim,
                    "response_status": outcome.response_status,
                    "duration_ms": outcome.duration_ms}).fetchone()
            return Recorded(bool(row and row[0]), False, bool(row and row[1]))
        if next_delay is None or outcome.gone:
            status, delay = "failed", None
        else:
            status, delay = "pending", next_delay
        with self.db.transaction() as conn:
            # The endpoint's row first, then the delivery's: the order a deletion of the
            # endpoint (or of its owner) takes them in, so the two never deadlock.
            since = conn.execute(
                "SELECT failing_since, disabled, open_until, now() FROM webhook_endpoints "
                "WHERE id = %s FOR NO KEY UPDATE", (claimed.endpoint_id,)).fetchone()
            if since is not None and since[1]:
                delay = None  # disabled meanwhile: waits, with no due time, to be enabled
            row = conn.execute(_RECORD, {
                "status": status, "delay": delay, "response_status": outcome.response_status,
                "error": outcome.error, "duration_ms": outcome.duration_ms,
                "id": claimed.id, "claim": claimed.claim}).fetchone()
            if row is None:
                return Recorded(False, False)  # taken over, or the endpoint was deleted
            reason = GONE_REASON if outcome.gone else disable_reason(
                since[0] if since else None, since[3] if since else datetime.now(UTC),
                self.breaker.disable_after)
            disabled = conn.execute(_FAILED, {
                "threshold": self.breaker.failures, "reason": reason,
                "open": self.breaker.open_seconds,
                "id": claimed.endpoint_id}).fetchone()
            if disabled is not None and disabled[0]:
                conn.execute(_PARK_NULL, (claimed.endpoint_id,))
            elif disabled is not None and disabled[1]:
                conn.execute(_PARK_OPEN, {"id": claimed.endpoint_id})
        return Recorded(True, reason is not None and disabled is not None)

    def purge_finished(self, older_than: datetime, limit: int = 1000) -> int:
        """Delete up to `limit` succeeded or failed deliveries last changed before
        `older_than`, oldest first; how many went."""
        with self.db.connection() as conn:
            cursor = conn.execute(_PURGE, {"before": older_than, "limit": limit})
            return cursor.rowcount

    def stats(self) -> QueueStats:
        with self.db.connection() as conn:
            row = conn.execute(_STATS).fetchone()
        return QueueStats(*row)
