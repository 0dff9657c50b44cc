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


def primary_position(conn: psycopg.Connection) -> int:
    """Where the primary's WAL ends now: every transaction committed before is at or below it."""
    return conn.execute(f"SELECT {PRIMARY_POSITION}").fetchone()[0]


def replica_status(conn: psycopg.Connection) -> tuple[bool, int]:
    """(still a replica, how far it has replayed the primary's WAL)."""
    in_recovery, replayed = conn.execute(_REPLICA_STATUS).fetchone()
    return bool(in_recovery), int(replayed)
