"""The primary and its read replicas: where each repository call runs.

Repositories say what a call is, and this module decides where it goes:

- `read(user_id, fn, *args)`: a read on behalf of one user. With replicas
  configured it runs on a replica in rotation that has replayed the user's
  last write, else on the primary. A replica that fails the read is taken
  out of rotation and the read runs again on the primary, so a replica
  failure is never a 5xx.
- `write(user_id, uow)` / `write_transaction(user_id, uow)`: a change to
  one user's data, on the primary. After it commits (or after its unit of
  work commits), the user's write position is recorded in the shared store,
  so every later read by that user, in any worker of any instance, sees it.
- `connection`, `transaction`, `unit_of_work`: the primary, for everything
  that is not one user's data (idempotency keys, rate limits, migrations).

Read-your-writes, step by step: a write commits on the primary at WAL
position P; the user's position becomes P (never lowered); a replica
reports, every REPLICA_CHECK_INTERVAL, how far it has replayed (R); a read
of the user goes to a replica only if R >= P. R only grows while the replica
runs, so a stale R is a safe under-estimate. Replica lag in seconds is
measured against the primary's positions sampled over time: a replica whose
replay stands behind a position the primary passed more than
REPLICA_MAX_LAG_SECONDS ago is out of rotation until it catches up.

Without replicas none of this runs: `read` is a checkout from the primary
and `write` is the primary's connection, as before.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from app.domain.health import pool_details
from app.store.db import Checkout, Database, DatabaseUnavailable, UnitOfWork
from app.store.replication import primary_position, replica_status
from app.store.write_positions import PositionsUnavailable

PRIMARY = "primary"
# Why a read that could have gone to a replica went to the primary.
FALLBACK_REASONS = ("no_replica", "behind", "positions_unavailable", "replica_failed")


class WritePositions(Protocol):
    def record(self, user_id: int, conn: psycopg.Connection) -> None: ...

    def get(self, user_id: int) -> int | None: ...

    def trusted(self) -> bool: ...

    def purge_expired(self) -> int: ...


class Replica:
    """One replica's pool and what the monitor last saw of it."""

    def __init__(self, name: str, db: Database, host: str):
        self.name = name
        self.db = db
        self.host = host
        self.in_rotation = False
        self.replayed = 0  # WAL position replayed, as last read
        self.lag_seconds: float | None = None
        self.state = "starting"  # starting, ok, lagging, down, promoted
        self.last_error = ""

    def describe(self, show_host: bool) -> dict[str, Any]:
        details: dict[str, Any] = {"state": self.state, "in_rotation": self.in_rotation,
                                   "lag_seconds": None if self.lag_seconds is None
                                   else round(self.lag_seconds, 3)}
        if self.last_error and not self.in_rotation:
            details["last_error"] = self.last_error
        details["pool"] = pool_details(self.db.stats())
        if show_host:
            details["host"] = self.host
        return details


class ReadTally:
    """Reads per pool and fallbacks per reason, counted per thread without a lock."""

    def __init__(self, pools: Sequence[str]):
        self.names = (*pools, *(f"fallback:{reason}" for reason in FALLBACK_REASONS))
        self._index = {name: i for i, name in enumerate(self.names)}
        self._mine = threading.local()
        self._all: list[list[int]] = []
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        try:
            cells = self._mine.cells
        except AttributeError:
            cells = self._mine.cells = [0] * len(self.names)
            with self._lock:
                self._all.append(cells)
        cells[self._index[name]] += 1

    def totals(self) -> dict[str, int]:
        with self._lock:
            rows = [list(cells) for cells in self._all]
        return {name: sum(row[i] for row in rows) for i, name in enumerate(self.names)}


@dataclass(frozen=True)
class ReplicaSettings:
    max_lag_seconds: float
    check_interval: float


class Cluster:
    """Routes repository calls between the primary and the replicas (see the module)."""

    def __init__(self, primary: Database, replicas: Sequence[Replica] = (),
                 positions: WritePositions | None = None,
                 settings: ReplicaSettings | None = None,
                 logger: logging.Logger | None = None):
        self.primary = primary
        self.replicas = tuple(replicas)
        self.positions = positions
        self.settings = settings or ReplicaSettings(5.0, 0.25)
        self.logger = logger or logging.getLogger("saypi.cluster")
        self.routing = bool(self.replicas)
        if self.routing and positions is None:
            raise ValueError("replicas need a write-position store")
        self.tally = ReadTally([PRIMARY, *(r.name for r in self.replicas)])
        self._rotation: tuple[Replica, ...] = ()
        self._turn = itertools.count()
        self._primary_samples: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- the primary, as before ----------------------------------------------------
    def connection(self, uow: UnitOfWork | None = None):
        return self.primary.connection(uow)

    def transaction(self, uow: UnitOfWork | None = None):
        return self.primary.transaction(uow)

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """The primary's unit of work; its writers' positions are recorded once it commits."""
        with self.primary.unit_of_work() as uow:
            yield uow
        if self.routing and uow.writers:
            self._record(uow.writers, None)

    def dedicated_connection(self) -> psycopg.Connection:
        return self.primary.dedicated_connection()

    # --- one user's writes --------------------------------------------------------------
    def write(self, user_id: int, uow: UnitOfWork | None = None):
        """A primary connection for one statement changing the user's data (autocommit),
        or the unit of work's; the user's position is recorded after the commit."""
        if not self.routing:
            return self.primary.connection(uow)
        return self._recording(user_id, uow, transaction=False)

    def write_transaction(self, user_id: int, uow: UnitOfWork | None = None):
        """A transaction (or a savepoint in the unit of work) changing the user's data."""
        if not self.routing:
            return self.primary.transaction(uow)
        return self._recording(user_id, uow, transaction=True)

    @contextlib.contextmanager
    def _recording(self, user_id: int, uow: UnitOfWork | None,
                   transaction: bool) -> Iterator[psycopg.Connection]:
        if uow is not None:
            uow.writers.add(user_id)
            with (uow.conn.transaction() if transaction else contextlib.nullcontext()):
                yield uow.conn
            return
        with Checkout(self.primary, None, translate=True) as conn:
            with (conn.transaction() if transaction else contextlib.nullcontext()):
                yield conn
            self._record((user_id,), conn)

    def _record(self, user_ids, conn: psycopg.Connection | None) -> None:
        """Record the primary's position now for each user; their commit is behind it."""
        try:
            if conn is None:
                with Checkout(self.primary, None, translate=True) as fresh:
                    for user_id in user_ids:
                        self.positions.record(user_id, fresh)
                return
            for user_id in user_ids:
                self.positions.record(user_id, conn)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # The write committed; only its position is unknown. Readers of this user
            # may see a replica that lags it until the replica catches up (bounded by
            # REPLICA_MAX_LAG_SECONDS); say so loudly.
            self.logger.error("write position not recorded for %d user(s): %s",
                              len(user_ids), type(exc).__name__)

    # --- one user's reads --------------------------------------------------------------
    def read(self, user_id: int, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(conn, *args) on a replica that has the user's writes, else on the primary."""
        if self.routing:
            replica = self._choose(user_id)
            if replica is not None:
                try:
                    with Checkout(replica.db, None, translate=True) as conn:
                        result = fn(conn, *args)
                except (DatabaseUnavailable, psycopg.Error) as exc:
                    self._replica_failed(replica, exc)
                    self.tally.add("fallback:replica_failed")
                else:
                    self.tally.add(replica.name)
                    return result
            self.tally.add(PRIMARY)
        with Checkout(self.primary, None, translate=True) as conn:
            return fn(conn, *args)

    def _choose(self, user_id: int) -> Replica | None:
        rotation = self._rotation
        if not rotation:
            self.tally.add("fallback:no_replica")
            return None
        positions = self.positions
        if not positions.trusted():
            self.tally.add("fallback:positions_unavailable")
            return None
        try:
            position = positions.get(user_id)
        except PositionsUnavailable:
            self.tally.add("fallback:positions_unavailable")
            return None
        start = next(self._turn)
        for step in range(len(rotation)):
            replica = rotation[(start + step) % len(rotation)]
            if position is None or replica.replayed >= position:
                return replica
        self.tally.add("fallback:behind")
        return None

    def _replica_failed(self, replica: Replica, exc: Exception) -> None:
        if replica.in_rotation:
            self.logger.warning("replica %s failed a read (%s); out of rotation, reads go "
                                "to the primary", replica.name, type(exc).__name__)
        replica.in_rotation = False
        replica.state = "down"
        replica.last_error = type(exc).__name__
        self._rotation = tuple(r for r in self.replicas if r.in_rotation)

    # --- the monitor ---------------------------------------------------------------------
    def start(self) -> None:
        if not self.routing:
            return
        self.check_replicas()
        self._monitor = threading.Thread(target=self._monitor_loop, name="replica-monitor",
                                         daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
        for replica in self.replicas:
            replica.db.close()

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.settings.check_interval):
            try:
                self.check_replicas()
            except Exception:  # the monitor must outlive anything a check raises
                self.logger.exception("replica check failed")

    def check_replicas(self) -> None:
        """Sample the primary's position, read each replica's replay, and set the rotation."""
        now = time.monotonic()
        timeout = max(0.05, min(1.0, self.settings.check_interval * 2))
        try:
            with self.primary.pooled(timeout=timeout) as conn:
                self._primary_samples.append((now, primary_position(conn)))
        except Exception:  # noqa: S110 - the primary's own checker reports it
            pass
        window = self.settings.max_lag_seconds + 2 * self.settings.check_interval + 1
        samples = self._primary_samples
        while len(samples) > 1 and now - samples[1][0] > window:
            samples.popleft()
        for replica in self.replicas:
            self._check(replica, now, timeout)
        rotation = tuple(r for r in self.replicas if r.in_rotation)
        if rotation != self._rotation:
            self._rotation = rotation

    def _check(self, replica: Replica, now: float, timeout: float) -> None:
        was = replica.in_rotation
        try:
            with replica.db.pooled(timeout=timeout) as conn:
                in_recovery, replayed = replica_status(conn)
        except Exception as exc:
            replica.db.connection_failed()
            replica.in_rotation, replica.state = False, "down"
            replica.last_error = type(exc).__name__
            if was:
                self.logger.warning("replica %s is down (%s); its reads go to the primary",
                                    replica.name, type(exc).__name__)
            return
        if not in_recovery:
            replica.in_rotation, replica.state = False, "promoted"
            replica.last_error = "not in recovery: promoted, or not a replica"
            if was:
                self.logger.error("replica %s is no longer in recovery; out of rotation",
                                  replica.name)
            return
        replica.replayed = replayed
        behind_since = next((at for at, position in self._primary_samples
                             if position > replayed), None)
        replica.lag_seconds = 0.0 if behind_since is None else now - behind_since
        if replica.lag_seconds > self.settings.max_lag_seconds:
            replica.in_rotation, replica.state = False, "lagging"
            replica.last_error = f"{replica.lag_seconds:.1f}s behind the primary"
            if was:
                self.logger.warning("replica %s lags %.1fs; out of rotation", replica.name,
                                    replica.lag_seconds)
            return
        replica.in_rotation, replica.state, replica.last_error = True, "ok", ""
        if not was:
            self.logger.warning("replica %s in rotation (lag %.2fs)", replica.name,
                                replica.lag_seconds)

    def describe(self, show_hosts: bool) -> dict[str, Any]:
        return {replica.name: replica.describe(show_hosts) for replica in self.replicas}

    def lags(self) -> dict[str, float | None]:
        return {replica.name: replica.lag_seconds for replica in self.replicas}
