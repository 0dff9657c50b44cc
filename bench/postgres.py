"""The benchmark's own database: a fresh embedded PostgreSQL, or a new database on DATABASE_URL.

The benchmark never seeds into an existing database: with DATABASE_URL set it
creates `saypi_bench_<random>` on that server (the role needs CREATEDB) and
drops it afterwards.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from app.store.db import migrate


@dataclass
class BenchDatabase:
    dsn: str  # the migrated database SayPI and the reference app use
    where: str  # a description for the report (no credentials)
    _cleanup: list = field(default_factory=list, repr=False)
    # `pg_ctl restart` of the server, when the benchmark started it (embedded) itself.
    restart: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        while self._cleanup:
            step = self._cleanup.pop()
            try:
                step()
            except Exception as exc:  # cleanup must go on
                print(f"bench: cleanup step failed: {exc}")

    def server_version(self) -> str:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


def open_database(env, logger: logging.Logger) -> BenchDatabase:
    admin = env.get("DATABASE_URL")
    if admin:
        return _on_server(admin, logger)
    return _embedded(logger)


def open_replicated(logger: logging.Logger) -> tuple[BenchDatabase, dict[str, str]]:
    """A primary with a streaming hot standby and a redis-server of the benchmark's own
    (harness/services.py), a migrated database on the primary, and the SayPI settings that
    use them (DATABASE_REPLICA_URLS, REDIS_URL). `restart` restarts the primary."""
    from harness.services import PgCluster, RedisServer

    cluster = PgCluster().start()
    redis = RedisServer()
    db = BenchDatabase("", "", restart=cluster.primary.restart)
    db._cleanup.append(cluster.close)
    try:
        redis.start()
        db._cleanup.append(redis.stop)
        primary, standby = cluster.create_database("saypi_bench")
        migrate(primary, logger)
    except Exception:
        db.close()
        raise
    db.dsn = primary
    db.where = (f"a primary and a streaming hot standby ({cluster.bin_dir}), redis-server; "
                "reads on the standby, rate limits and write positions in Redis")
    return db, {"DATABASE_REPLICA_URLS": standby, "REDIS_URL": redis.url}


def _embedded(logger: logging.Logger) -> BenchDatabase:
    from app.store.embedded_pg import EmbeddedUnavailable
    from harness.pgcontrol import RestartablePostgres

    directory = Path(tempfile.mkdtemp(prefix="saypi-bench-pg-"))
    try:
        server = RestartablePostgres(directory, logger)
    except EmbeddedUnavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise SystemExit(f"bench: {exc}") from None
    db = BenchDatabase(server.dsn, "embedded PostgreSQL (pgserver), fresh data directory",
                       restart=server.restart)
    db._cleanup.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    db._cleanup.append(server.close)  # whichever postmaster serves it, after a restart too
    migrate(db.dsn, logger)
    return db


def _on_server(admin: str, logger: logging.Logger) -> BenchDatabase:
    name = f"saypi_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise SystemExit(
            f"bench: could not create a database of its own on DATABASE_URL's server "
            f"({type(exc).__name__}); the benchmark never seeds an existing database. "
            f"Grant CREATEDB or unset DATABASE_URL to use an embedded PostgreSQL.") from None
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    db = BenchDatabase(dsn, f"database {name} on DATABASE_URL's server (dropped afterwards)")
    db._cleanup.append(drop)
    migrate(dsn, logger)
    return db
