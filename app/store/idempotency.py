"""IdempotencyRepository: the only SQL about idempotency keys.

Every method but the purge joins the unit of work that the idempotency
wrapper opened, so the key, the business write and the stored response
commit together.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.types.json import Jsonb

from app.store.db import UnitOfWork


@dataclass(frozen=True)
class StoredResponse:
    method: str
    path: str
    params_hash: bytes
    status: int
    headers: dict[str, str]
    body: bytes


class IdempotencyRepository:
    def __init__(self, db):
        self.db = db

    def try_lock(self, scope: str, key: str, uow: UnitOfWork) -> bool:
        """Take the key's transaction-scoped lock without waiting; False if another has it."""
        with self.db.connection(uow) as conn:
            return conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                                (f"{scope}\x1f{key}",)).fetchone()[0]

    def find(self, scope: str, key: str, ttl_seconds: int,
             uow: UnitOfWork) -> StoredResponse | None:
        with self.db.connection(uow) as conn:
            row = conn.execute(
                "SELECT method, path, params_hash, status, headers, body FROM idempotency_keys "
                "WHERE scope = %s AND key = %s "
                "AND created_at > now() - make_interval(secs => %s)",
                (scope, key, ttl_seconds)).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], bytes(row[2]), row[3], row[4], bytes(row[5]))

    def store(self, scope: str, key: str, response: StoredResponse, uow: UnitOfWork) -> None:
        """Record the response; an expired row with the same key is replaced."""
        with self.db.connection(uow) as conn:
            conn.execute(
                "INSERT INTO idempotency_keys "
                "(scope, key, method, path, params_hash, status, headers, body) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (scope, key) DO UPDATE SET method = excluded.method, "
                "path = excluded.path, params_hash = excluded.params_hash, "
                "status = excluded.status, headers = excluded.headers, body = excluded.body, "
                "created_at = now()",
                (scope, key, response.method, response.path, response.params_hash,
                 response.status, Jsonb(response.headers), response.body))

    def purge_expired(self, ttl_seconds: int, batch: int = 1000) -> int:
        with self.db.connection() as conn:
            cursor = conn.execute(
                "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY("
                "SELECT ctid FROM idempotency_keys "
                "WHERE created_at < now() - make_interval(secs => %s) LIMIT %s))",
                (ttl_seconds, batch))
            return cursor.rowcount
