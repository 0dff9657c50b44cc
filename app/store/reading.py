"""The shapes of a read handed to `Cluster.read(user_id, fn, *args)`: fn(conn, *args).

Module-level functions, not lambdas, so a read allocates nothing to say
what it runs; the cluster may run it on a replica and, if that fails, again
on the primary.
"""

from __future__ import annotations

from typing import Any


def fetch_all(conn: Any, sql: str, params: Any) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def fetch_all_binary(conn: Any, sql: str, params: Any) -> list[tuple]:
    """`fetch_all` with the rows in PostgreSQL's binary format: the same Python values,
    with numbers and timestamps loaded without parsing text."""
    return conn.execute(sql, params, binary=True).fetchall()


def fetch_one(conn: Any, sql: str, params: Any) -> tuple | None:
    return conn.execute(sql, params).fetchone()
