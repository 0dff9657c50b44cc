"""The SQL that reads replication positions: the primary's WAL position and a replica's replay.

Positions are WAL byte offsets (pg_lsn minus '0/0') as Python ints, so they
compare with `<` and travel as numbers.
"""

from __future__ import annotations

import psycopg

# The insert position, not pg_current_wal_lsn() (the write position): with
# synchronous_commit off a commit returns before its record is written, so
# only the insert position is sure to be past it.
PRIMARY_POSITION = "(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
# A replica that is no longer in recovery was promoted: it is a primary of its
# own and must not serve this primary's reads.
_REPLICA_STATUS = ("SELECT pg_is_in_recovery(), "
                   "coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)")


# The primary's position and how long replicas must serve no read (seconds; negative
# or -Infinity: no hold).
_PRIMARY_SAMPLE = (f"SELECT {PRIMARY_POSITION}, coalesce((SELECT extract(epoch FROM "
                   "until - now()) FROM replica_reads_hold WHERE id = 1)::float8, -1)")
# Extends the hold to `hold` seconds from now once less than half of that is left
# (so at most one extension in any half-hold), committed with synchronous_commit on
# whatever the server's. Returns how far the hold reached `settle` seconds ago, from
# now: the row as every monitor with a fresh sample has seen it.
_HOLD_REPLICA_READS = """
UPDATE replica_reads_hold SET
    prev_until = CASE WHEN extend THEN until ELSE prev_until END,
    set_at = CASE WHEN extend THEN now() ELSE set_at END,
    until = CASE WHEN extend THEN now() + make_interval(secs => %(hold)s) ELSE until END
FROM (SELECT until < now() + make_interval(secs => %(half)s) AS extend,
             set_config('synchronous_commit', 'on', true)
      FROM replica_reads_hold WHERE id = 1) AS decided
WHERE id = 1
RETURNING extract(epoch FROM CASE
    WHEN set_at <= now() - make_interval(secs => %(settle)s) THEN until
    ELSE prev_until END - now())::float8
"""


def _row(conn: psycopg.Connection, sql: str, params: dict | None = None) -> tuple:
    row = conn.execute(sql, params).fetchone()
    if row is None:  # each statement here selects expressions: always one row
        raise psycopg.DataError("no row")
    return row


def primary_position(conn: psycopg.Connection) -> int:
    """Where the primary's WAL ends now: every transaction committed before is at or below it."""
    return _row(conn, f"SELECT {PRIMARY_POSITION}")[0]


def replica_status(conn: psycopg.Connection) -> tuple[bool, int]:
    """(still a replica, how far it has replayed the primary's WAL)."""
    in_recovery, replayed = _row(conn, _REPLICA_STATUS)
    return bool(in_recovery), int(replayed)


def primary_sample(conn: psycopg.Connection) -> tuple[int, float]:
    """(the primary's position now, seconds the replicas' hold on reads has left)."""
    position, hold = _row(conn, _PRIMARY_SAMPLE)
    return int(position), float(hold)


def hold_replica_reads(conn: psycopg.Connection, hold: float, settle: float) -> bool:
    """Hold every replica read for `hold` seconds (extending a hold with less than half
    left); True if the hold as it stood `settle` seconds ago covers `settle` more."""
    (left,) = _row(conn, _HOLD_REPLICA_READS, {"hold": hold, "half": hold / 2,
                                               "settle": settle})
    return left >= settle
