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


# The primary's position and the floor every replica must have replayed before it
# serves any read: the highest position of a write the shared store did not confirm.
_PRIMARY_SAMPLE = (f"SELECT {PRIMARY_POSITION}, coalesce((SELECT position FROM "
                   "unconfirmed_write_position WHERE id = 1), 0)")
# Committed with synchronous_commit on whatever the server's setting, so that
# neither this row nor the write before it in the WAL can be lost to a crash
# once the write has answered.
_NOTE_UNCONFIRMED = (
    "INSERT INTO unconfirmed_write_position (id, position) "
    f"SELECT 1, {PRIMARY_POSITION} FROM (SELECT set_config('synchronous_commit', 'on', true)) "
    "AS durable ON CONFLICT (id) DO UPDATE "
    "SET position = greatest(unconfirmed_write_position.position, excluded.position), "
    "    noted_at = now()")


def primary_position(conn: psycopg.Connection) -> int:
    """Where the primary's WAL ends now: every transaction committed before is at or below it."""
    return conn.execute(f"SELECT {PRIMARY_POSITION}").fetchone()[0]


def replica_status(conn: psycopg.Connection) -> tuple[bool, int]:
    """(still a replica, how far it has replayed the primary's WAL)."""
    in_recovery, replayed = conn.execute(_REPLICA_STATUS).fetchone()
    return bool(in_recovery), int(replayed)


def primary_sample(conn: psycopg.Connection) -> tuple[int, int]:
    """(the primary's position now, the floor of unconfirmed writes' positions)."""
    position, floor = conn.execute(_PRIMARY_SAMPLE).fetchone()
    return int(position), int(floor)


def note_unconfirmed(conn: psycopg.Connection) -> None:
    """Raise the floor to the primary's position now (past the write just committed)."""
    conn.execute(_NOTE_UNCONFIRMED)
