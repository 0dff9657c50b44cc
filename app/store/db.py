"""PostgreSQL access: the per-worker connection pool, units of work, and the migrations.

`Database` owns the pool, notices an outage and swaps in a fresh pool when the server is
back; `Checkout` lends one connection under the request's `WaitBudget`; `UnitOfWork` is one
transaction several repository calls share (`uow=`). See docs/outage-recovery.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from app.domain import unit_of_work as uow_protocol

MIGRATION_LOCK_ID = 0x5A_59_50_49  # "SAYPI": one advisory lock for migrations
IDLE_CHECK_AFTER_SECONDS = 2.0
CHECK_SPACING_SECONDS = 0.1  # least time between two background pool checks
PROBE_INTERVAL_SECONDS = 0.5  # between connection attempts while the database is unreachable
# What getconn raises when no connection comes: the pool is exhausted, refuses
# more waiters, was replaced after an outage, or cannot connect.
_UNAVAILABLE = (PoolTimeout, TooManyRequests, PoolClosed, psycopg.OperationalError)


class DatabaseUnavailable(Exception):
    """The database could not serve this request (down, pool exhausted, timeout)."""


class WaitBudget:
    """Seconds one request may still spend waiting for pool connections, all checkouts together."""

    __slots__ = ("left",)

    def __init__(self, seconds: float):
        self.left = seconds


_BUDGET: ContextVar[WaitBudget | None] = ContextVar("saypi_db_wait_budget", default=None)


def wait_budget(seconds: float) -> Token:
    """Start a request's wait budget on this thread; give the token to `end_wait_budget`."""
    return _BUDGET.set(WaitBudget(seconds))


def end_wait_budget(token: Token) -> None:
    _BUDGET.reset(token)


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
    prepare: bool = True  # False behind a transaction-pooling proxy (PgBouncer)


def connect_kwargs(settings: PoolSettings, application_name: str) -> dict:
    """psycopg.connect() arguments for every connection of a pool.

    Settings go in the startup packet and statements are prepared, unless `prepare` is False
    (PgBouncer in transaction pooling mode, which allows neither); see docs/outage-recovery.md.
    """
    kwargs: dict = {"autocommit": True, "connect_timeout": settings.connect_timeout,
                    "application_name": application_name}
    if not settings.prepare:
        kwargs["prepare_threshold"] = None
        return kwargs
    # Generic plans: every statement here is parameterised keyset access whose
    # best plan does not depend on the values, and custom plans were replanned
    # on every execution once tables grew (measured by the benchmark).
    options = "-c TimeZone=UTC -c plan_cache_mode=force_generic_plan"
    if settings.statement_timeout_ms:
        options += f" -c statement_timeout={settings.statement_timeout_ms}"
    kwargs["options"] = options
    return kwargs


class UnitOfWork:
    """One open transaction that the repository calls given it join.

    `writers` collects the users whose data the transaction changed, so their
    read-your-writes positions are recorded once it commits.
    """

    __slots__ = ("conn", "writers")

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.writers: set[int] = set()


def own_work(uow: uow_protocol.UnitOfWork | None) -> UnitOfWork | None:
    """The store's own unit of work behind the protocol a handler passed on (only
    `unit_of_work()` makes one); anything else is a wiring error."""
    if uow is not None and not isinstance(uow, UnitOfWork):
        raise TypeError(f"not a unit of work of this store: {type(uow).__name__}")
    return uow


class Database:
    """A connection pool, its checker thread, and the transactions and units of work on it."""

    def __init__(self, dsn: str, settings: PoolSettings, logger: logging.Logger,
                 name: str = "saypi", direct_dsn: str | None = None,
                 connection_class: type[psycopg.Connection] = psycopg.Connection):
        self.settings = settings
        # The pool's connections' class: psycopg's own, or, with tracing on, one whose
        # cursors make a span per statement.
        self._connection_class = connection_class
        self.logger = logger
        self.name = name
        self._dsn = dsn
        self._direct_dsn = direct_dsn or dsn
        self._returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._wake_checker = threading.Event()
        self._stopping = threading.Event()
        self._checker: threading.Thread | None = None
        self._reachable = True
        self._unreachable_since: float | None = None
        self._watchers: list[Callable[[], None]] = []
        self._connect_kwargs = connect_kwargs(settings, f"{name}-worker-{os.getpid()}")
        self.pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self._dsn,
            min_size=self.settings.min_size,
            max_size=self.settings.max_size,
            timeout=self.settings.timeout,
            max_waiting=self.settings.max_waiting,
            max_idle=self.settings.max_idle,
            max_lifetime=self.settings.max_lifetime,
            kwargs=self._connect_kwargs,
            connection_class=self._connection_class,
            check=self._check_connection,
            # No `reset` callback: with one, psycopg_pool hands every returned
            # connection to a worker thread (a thread wake-up and a GIL handoff
            # per request, measured at ~20 us, and the connection unavailable
            # meanwhile). give_back() notes the return time instead.
            open=False,
            name=self.name,
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

    # --- reachability ----------------------------------------------------------
    @property
    def reachable(self) -> bool:
        """False from a failed probe until a probe succeeds again (docs/outage-recovery.md)."""
        return self._reachable

    def unreachable_for(self) -> float:
        """Seconds since the database became unreachable (0 while it is reachable)."""
        since = self._unreachable_since
        return 0.0 if since is None else time.monotonic() - since

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` (on the checker thread) whenever reachability changes."""
        self._watchers.append(on_change)

    def probe(self) -> bool:
        """Whether the server accepts a new connection and answers on it, now."""
        try:
            with psycopg.connect(self._dsn, **self._connect_kwargs) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            # Out of connection slots: the server is up, and the pool's own
            # connections still serve.
            return exc.sqlstate == "53300"
        return True

    def _set_reachable(self, reachable: bool) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        self._unreachable_since = None if reachable else time.monotonic()
        if reachable:
            self.logger.warning("database reachable again; serving with a fresh pool")
        else:
            self.logger.error("database unreachable; answering 503 until it is back")
        for on_change in self._watchers:
            try:
                on_change()
            except Exception:
                self.logger.exception("database reachability watcher failed")

    def _replace_pool(self) -> bool:
        """Open and warm a fresh pool, swap it in and close the old one; False if it failed."""
        fresh = self._new_pool()
        fresh.open(wait=False)
        try:
            fresh.wait(timeout=self.settings.connect_timeout)
        except PoolTimeout:
            fresh.close(timeout=0)
            return False
        old, self.pool = self.pool, fresh
        old.close(timeout=1)  # connections still checked out close when given back
        return True

    # --- connection checks -------------------------------------------------
    def pooled(self, timeout: float | None = None) -> Checkout:
        """A connection from the pool for one `with` block, raising psycopg_pool's own errors
        (health checks want those); its return time is noted for _check_connection."""
        return Checkout(self, timeout, translate=False)

    def give_back(self, pool: ConnectionPool, conn: psycopg.Connection) -> None:
        """Return a connection to the pool it came from, noting when (for _check_connection)."""
        self._returned_at[conn] = time.monotonic()
        pool.putconn(conn)

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
        """The checker thread: pool checks while reachable, probes while not.

        Every check_interval, and at once when woken by a connection error (at most once
        per CHECK_SPACING_SECONDS); while unreachable it probes every PROBE_INTERVAL_SECONDS
        and swaps in a fresh pool once one succeeds. See docs/outage-recovery.md.
        """
        while not self._stopping.is_set():
            interval = self.settings.check_interval if self._reachable \
                else PROBE_INTERVAL_SECONDS
            woken = self._wake_checker.wait(interval)
            self._wake_checker.clear()
            if self._stopping.is_set():
                return
            try:
                if not self._reachable:
                    if self.probe() and self._replace_pool():
                        self._set_reachable(True)
                    continue
                if woken and not self.probe():
                    self._set_reachable(False)
                    continue
                self.pool.check()
            except Exception:  # the loop must survive anything the pool raises
                self.logger.exception("pool check failed")
            self._stopping.wait(CHECK_SPACING_SECONDS)

    # --- use -----------------------------------------------------------------
    def connection(self, uow: uow_protocol.UnitOfWork | None = None
                   ) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """The unit of work's connection, or an autocommit one from the pool."""
        own = own_work(uow)
        if own is not None:
            return contextlib.nullcontext(own.conn)
        return Checkout(self, None, translate=True)

    @contextlib.contextmanager
    def transaction(self, uow: uow_protocol.UnitOfWork | None = None
                    ) -> Iterator[psycopg.Connection]:
        """A transaction of its own, or a savepoint inside the given unit of work."""
        own = own_work(uow)
        if own is not None:
            with own.conn.transaction():
                yield own.conn
            return
        with Checkout(self, None, translate=True) as conn, conn.transaction():
            yield conn

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """One transaction for several repository calls, committed when the block ends."""
        with Checkout(self, None, translate=True) as conn, conn.transaction():
            yield UnitOfWork(conn)

    def dedicated_connection(self) -> psycopg.Connection:
        """A session of its own outside the pool, for a long-lived LISTEN; the caller closes it.

        It goes to DATABASE_DIRECT_URL when set: a transaction-pooling proxy
        would hand each statement to another server session.
        """
        return psycopg.connect(self._direct_dsn, **self._connect_kwargs)

    def stats(self) -> dict[str, int]:
        return self.pool.get_stats()


class Checkout:
    """One connection out of the pool for one `with` block, and back into it after.

    Only getconn/putconn, without psycopg_pool's `connection()` and its commit on exit: this
    runs on every request that touches the database. With `translate`, an outage or exhaustion
    leaves the block as DatabaseUnavailable within the request's WaitBudget.
    See docs/outage-recovery.md.
    """

    __slots__ = ("conn", "db", "pool", "timeout", "translate")

    def __init__(self, db: Database, timeout: float | None, translate: bool):
        self.db = db
        self.timeout = timeout
        self.translate = translate

    def __enter__(self) -> psycopg.Connection:
        db = self.db
        self.pool = pool = db.pool
        if not self.translate:
            self.conn = pool.getconn(self.timeout)
            return self.conn
        if not db._reachable:
            raise DatabaseUnavailable("database unreachable")
        budget = _BUDGET.get()
        timeout = self.timeout
        if budget is not None:
            if budget.left <= 0:
                raise DatabaseUnavailable("this request's wait for the database is spent")
            timeout = min(timeout or db.settings.timeout, budget.left)
            started = time.monotonic()
        try:
            self.conn = pool.getconn(timeout)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        finally:
            if budget is not None:
                budget.left -= time.monotonic() - started
        return self.conn

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.db.give_back(self.pool, self.conn)
        if self.translate and isinstance(exc, _UNAVAILABLE):
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        if isinstance(exc, PoolTimeout | TooManyRequests | PoolClosed):
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
        prepare=config.db_prepare,
    )


# --- migrations -----------------------------------------------------------------
# A rolling deploy runs the previous release next to the new schema, so every
# migration must keep the previous release working ("expand": add tables,
# nullable or defaulted columns, indexes). One that removes or changes what
# the previous release still uses ("contract": drop, rename, retype, a new NOT
# NULL) says so in its leading comment lines (`-- saypi: contract`), and runs
# only as a later step, `run.py migrate --contract`, once no instance of the
# previous release is left.


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def contract(self) -> bool:
        """Whether a leading comment line is `-- saypi: contract` (see above)."""
        for line in self.sql.splitlines():
            text = line.strip()
            if not text:
                continue
            if not text.startswith("--"):
                return False
            if " ".join(text.removeprefix("--").split()).lower() == "saypi: contract":
                return True
        return False

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations() -> list[Migration]:
    """Every app/store/migrations/NNNN_name.sql, in version order."""
    migrations = []
    for entry in resources.files("app.store.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        migrations.append(Migration(int(number), rest.removesuffix(".sql"),
                                    entry.read_text(encoding="utf-8")))
    return sorted(migrations, key=lambda m: m.version)


def pending_migrations(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """The migrations not applied yet, in version order."""
    return [m for m in migrations if m.version not in applied]


def serves_with(migrations: list[Migration], applied: set[int]) -> bool:
    """Whether this build can serve on a schema with `applied` migrations: nothing is
    pending but from a contract migration on, which is where `migrate()` without
    `contract` stops. A contract step only removes what the previous release used,
    so a build serves before its own contract step ran."""
    pending = pending_migrations(migrations, applied)
    return not pending or pending[0].contract


def migrate(dsn: str, logger: logging.Logger, connect_timeout: int = 10, contract: bool = False,
            migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations once each, in a transaction each, under an advisory lock.

    Several instances starting together on one database serialise on the lock;
    the later ones find nothing left to do. Without `contract` the first
    pending contract migration stops the run there (it and every later one
    wait for `run.py migrate --contract`), with a warning naming it.
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
            pending = pending_migrations(migrations or load_migrations(), done)
            for i, migration in enumerate(pending):
                if migration.contract and not contract:
                    waiting = ", ".join(m.label for m in pending[i:])
                    logger.warning(
                        "migration %s is a contract step: not applied (waiting: %s). Run "
                        "`python run.py migrate --contract` once no instance of the previous "
                        "release is left", migration.label, waiting,
                        extra={"migration": migration.version})
                    break
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
                logger.info("applied migration %s", migration.label,
                            extra={"migration": migration.version})
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now
