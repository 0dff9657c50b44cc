"""SlowQueryRepository: a query that takes as long as asked, for fault-injection tests."""

from __future__ import annotations


class SlowQueryRepository:
    def __init__(self, db):
        self.db = db

    def sleep(self, seconds: float) -> None:
        """Hold a pooled connection for `seconds` in PostgreSQL, as a slow query would."""
        with self.db.connection() as conn:
            conn.execute("SELECT pg_sleep(%s)", (seconds,))
