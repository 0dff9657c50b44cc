"""PostgreSQL access: the per-worker connection pool and the migrations.

`Database` owns one psycopg_pool.ConnectionPool. Reads run on autocommit
connections (one statement, one round trip); writes use `transaction()`,
which also makes the connection ambient for the current thread so that every
repository called inside it (for example an idempotent request's write and
its stored response) shares one transaction. Repositories are the only code
that uses it; handlers never see a connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

MIGRATION_LOCK_ID = 0x5A_59_50_49  # "SAYPI": one advisory lock for migrations
IDLE_CHECK_AFTER_SECONDS = 2.0
CHECK_SPACING_SECONDS = 0.1  # least time between two background pool checks


class DatabaseUnavailable(Exception):
    """The database could not serve this request (down, pool exhausted, timeout)."""


@dataclass(frozen=True)
class PoolSettings:
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_idle: float
    max_lifetime: float
    connect_timeout: int
    statement_timeout_ms: int
    check_interval: float


class Database:
    """A connection pool plus the thread's ambient transaction, if any."""

    def __init__(self, dsn: str, settings: PoolSettings, logger: logging.Logger,
                 name: str = "saypi"):
        self.settings = settings
        self.logger = logger
        self._local = threading.local()
        self._returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._wake_checker = threading.Event()
        self._stopping = threading.Event()
        self._checker: threading.Thread | None = None
        # Generic plans: every statement here is parameterised keyset access whose
        # best plan does not depend on the values, and custom plans were replanned
        # on every execution once tables grew (measured by the benchmark).
        options = (f"-c application_name={name}-worker-{os.getpid()} -c TimeZone=UTC "
                   "-c plan_cache_mode=force_generic_plan")
        if settings.statement_timeout_ms:
            options += f" -c statement_timeout={settings.statement_timeout_ms}"
        self.pool = ConnectionPool(
            dsn,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.timeout,
            max_waiting=settings.max_waiting,
            max_idle=settings.max_idle,
            max_lifetime=settings.max_lifetime,
            kwargs={"autocommit": True, "connect_timeout": settings.connect_timeout,
                    "options": options},
            check=self._check_connection,
            # No `reset` callback: with one, psycopg_pool hands every returned
            # connection to a worker thread (a thread wake-up and a GIL handoff
            # per request, measured at ~20 us, and the connection unavailable
            # meanwhile). give_back() notes the return time instead.
            open=False,
            name=name,
        )

    # --- lifecycle -------------------------------------------------------
    def open(self, wait_seconds: float) -> bool:
        """Open the pool and pre-warm it to min_size; False if that did not finish in time."""
        self.pool.open(wait=False)
        warmed = True
        try:
            self.pool.wait(timeout=wait_seconds)
        except PoolTimeout:
            warmed = False
            self.logger.warning("database pool not warm after %.1fs; serving anyway "
                                "(readiness reports the database)", wait_seconds)
        self._checker = threading.Thread(target=self._check_loop, name="pool-checker",
                                         daemon=True)
        self._checker.start()
        return warmed

    def close(self) -> None:
        """Stop the checker thread and close every connection (waits at most 5 s)."""
        self._stopping.set()
        self._wake_checker.set()
        if self._checker is not None and self._checker is not threading.current_thread():
            self._checker.join(timeout=2)
        self.pool.close(timeout=5)

    # --- connection checks -------------------------------------------------
    def pooled(self, timeout: float | None = None) -> Checkout:
        """A connection from the pool for one `with` block, raising psycopg_pool's own errors
        (health checks want those); its return time is noted for _check_connection."""
        return Checkout(self, timeout, translate=False)

    def give_back(self, conn: psycopg.Connection) -> None:
        """Return a connection to the pool, noting when (for _check_connection)."""
        self._returned_at[conn] = time.monotonic()
        self.pool.putconn(conn)

    def _check_connection(self, conn: psycopg.Connection) -> None:
        """Checked out of the pool: verify with a round trip only if it sat idle.

        Busy connections are proven by the request that just used them, so a
        per-checkout ping would double the round trips of every read. After a
        connection error the background checker purges the rest.
        """
        if conn.broken or conn.closed:
            self.connection_failed()
            raise psycopg.OperationalError("connection is broken")
        idle_since = self._returned_at.get(conn)
        if idle_since is None or time.monotonic() - idle_since > IDLE_CHECK_AFTER_SECONDS:
            try:
                ConnectionPool.check_connection(conn)
            except psycopg.Error:
                # One dead idle connection means the others likely are too
                # (the server restarted): purge them all now, not one per request.
                self.connection_failed()
                raise

    def connection_failed(self) -> None:
        """Ask the checker thread to purge dead connections now."""
        self._wake_checker.set()

    def _check_loop(self) -> None:
        """Every check_interval, and at once when woken by a connection error: pool.check().

        pool.check() pings each idle connection, discards the dead ones and
        opens replacements, and grows the pool back toward min_size; so after a
        database restart the dead connections go in milliseconds instead of
        failing one request each. A storm of errors runs it at most once per
        CHECK_SPACING_SECONDS.
        """
        while not self._stopping.is_set():
            self._wake_checker.wait(self.settings.check_interval)
            self._wake_checker.clear()
            if self._stopping.is_set():
                return
            try:
                self.pool.check()
            except Exception:  # the loop must survive anything the pool raises
                self.logger.exception("pool check failed")
            self._stopping.wait(CHECK_SPACING_SECONDS)

    # --- use -----------------------------------------------------------------
    def connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """The ambient transaction's connection, or an autocommit one from the pool."""
        ambient = getattr(self._local, "conn", None)
        if ambient is not None:
            return contextlib.nullcontext(ambient)
        return Checkout(self, None, translate=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A transaction that every repository call on this thread joins until it ends."""
        ambient = getattr(self._local, "conn", None)
        if ambient is not None:
            with ambient.transaction():
                yield ambient
            return
        with Checkout(self, None, translate=True) as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield conn
            finally:
                self._local.conn = None

    def dedicated_connection(self) -> psycopg.Connection:
        """A connection outside the pool, for a long-lived LISTEN; the caller closes it."""
        return psycopg.connect(self.pool.conninfo, **self.pool.kwargs)

    def stats(self) -> dict[str, int]:
        return self.pool.get_stats()


class Checkout:
    """One connection out of the pool for one `with` block, and back into it after.

    psycopg_pool's own `pool.connection()` also enters the connection's
    context, which on the way out runs `commit()`: nothing to commit on an
    autocommit connection, but still a lock and a trip through psycopg's wait
    loop on every read. Reads here are single autocommit statements and
    writes close their own `conn.transaction()`, so the block only needs
    getconn/putconn (the pool rolls back or discards a connection returned
    in any other state). One small class, not three nested generator-based
    context managers: this runs on every request that touches the database.

    With `translate`, pool exhaustion and lost connections leave the block as
    DatabaseUnavailable (the handler answers 503), and a lost connection
    wakes the checker to purge the others.
    """

    __slots__ = ("conn", "db", "timeout", "translate")

    def __init__(self, db: Database, timeout: float | None, translate: bool):
        self.db = db
        self.timeout = timeout
        self.translate = translate

    def __enter__(self) -> psycopg.Connection:
        try:
            self.conn = self.db.pool.getconn(self.timeout)
        except (PoolTimeout, TooManyRequests, psycopg.OperationalError) as exc:
            if self.translate:
                raise self._unavailable(exc) from exc
            raise
        return self.conn

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.db.give_back(self.conn)
        if self.translate and isinstance(exc, (PoolTimeout, TooManyRequests,
                                               psycopg.OperationalError)):
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        if isinstance(exc, PoolTimeout | TooManyRequests):
            return DatabaseUnavailable(str(exc))
        if not isinstance(exc, psycopg.errors.QueryCanceled):
            self.db.connection_failed()
        return DatabaseUnavailable(type(exc).__name__)


def pool_settings(config) -> PoolSettings:
    return PoolSettings(
        min_size=config.db_pool_min,
        max_size=config.db_pool_max,
        timeout=config.db_pool_timeout,
        max_waiting=config.db_pool_max_waiting,
        max_idle=config.db_pool_max_idle,
        max_lifetime=config.db_pool_max_lifetime,
        connect_timeout=config.db_connect_timeout,
        statement_timeout_ms=config.db_statement_timeout,
        check_interval=config.db_pool_check_interval,
    )


# --- migrations -----------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every app/migrations/NNNN_name.sql, in version order."""
    migrations = []
    for entry in resources.files("app.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        migrations.append(Migration(int(number), rest.removesuffix(".sql"),
                                    entry.read_text(encoding="utf-8")))
    return sorted(migrations, key=lambda m: m.version)


def expected_schema_version() -> int:
    return max(m.version for m in load_migrations())


def migrate(dsn: str, logger: logging.Logger, connect_timeout: int = 10) -> list[int]:
    """Apply pending migrations once each, in a transaction each, under an advisory lock.

    Several instances starting together on one database serialise on the lock;
    the later ones find nothing left to do.
    """
    applied_now = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in load_migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
                logger.info("applied migration %04d_%s", migration.version, migration.name,
                            extra={"migration": migration.version})
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now
