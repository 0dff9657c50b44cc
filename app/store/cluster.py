"""The primary and its read replicas: where each repository call runs.

`read(user_id, ...)` runs on a replica that has replayed the user's last write, else on the
primary; `write`/`write_transaction` run on the primary and record the user's position;
`connection`, `transaction`, `unit_of_work` are the primary. See docs/read-your-writes.md.
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

from app.domain import unit_of_work as uow_protocol
from app.domain.health import pool_details
from app.store.db import Checkout, Database, DatabaseUnavailable, UnitOfWork, own_work
from app.store.deadlines import Deadlines
from app.store.replication import hold_replica_reads, primary_sample, replica_status
from app.store.write_positions import PositionsUnavailable

PRIMARY = "primary"
# Why a read that could have gone to a replica went to the primary.
FALLBACK_REASONS = ("no_replica", "behind", "positions_unavailable", "replica_failed",
                    "unsampled", "held")


class WritePositions(Protocol):
    def record(self, user_id: int, conn: psycopg.Connection) -> bool: ...

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
        # The first primary sample seen ahead of the replay, kept while the replay
        # stays behind it (the lag keeps growing past the sample window), and whether
        # an earlier sample proves the replay was level with the primary before it.
        self.behind: tuple[float, int] | None = None
        self.behind_known = True

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
    read_timeout: float = 2.0

    @property
    def check_timeout(self) -> float:
        """The bound of each of the monitor's checks (the primary's sample, a replica's)."""
        return max(0.05, min(1.0, self.check_interval * 2))

    @property
    def sample_fresh_seconds(self) -> float:
        """How old the primary's last sample may be for a replica to serve a read: a
        monitor cycle samples it at least this often while the primary answers."""
        return self.check_interval + self.check_timeout + 0.25

    @property
    def hold_seconds(self) -> float:
        """How long after a write every replica in rotation has replayed it: one in
        rotation lags at most max_lag_seconds, measured with one interval's delay, and
        routing uses replay positions up to one interval old."""
        return self.max_lag_seconds + 2 * self.check_interval + 1


class ReplicaDatabase(Database):
    """A replica's pool whose checks of idle connections run under a deadline: a frozen
    server answers no ping, whatever its statement_timeout."""

    def __init__(self, *args: Any, deadlines: Deadlines, check_seconds: float, **kwargs: Any):
        self.deadlines = deadlines
        self.check_seconds = check_seconds
        super().__init__(*args, **kwargs)

    def _check_connection(self, conn: psycopg.Connection) -> None:
        with self.deadlines.bound(conn, self.check_seconds):
            super()._check_connection(conn)


class Cluster:
    """Routes repository calls between the primary and the replicas (see the module)."""

    def __init__(self, primary: Database, replicas: Sequence[Replica] = (),
                 positions: WritePositions | None = None,
                 settings: ReplicaSettings | None = None,
                 logger: logging.Logger | None = None,
                 deadlines: Deadlines | None = None):
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
        self._sampled_at = float("-inf")  # when the last good sample of the primary began
        self._held_until = float("-inf")  # no replica read before then (the primary's hold)
        self.deadlines = deadlines or Deadlines()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- the primary, as before ----------------------------------------------------
    def connection(self, uow: uow_protocol.UnitOfWork | None = None
                   ) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return self.primary.connection(uow)

    def transaction(self, uow: uow_protocol.UnitOfWork | None = None
                    ) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return self.primary.transaction(uow)

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """The primary's unit of work; its writers' positions are recorded once it commits."""
        with self.primary.unit_of_work() as uow:
            yield uow
        if self.routing and uow.writers and self._record(uow.writers, None):
            self._settle()

    def dedicated_connection(self) -> psycopg.Connection:
        return self.primary.dedicated_connection()

    # --- one user's writes --------------------------------------------------------------
    def write(self, user_id: int, uow: uow_protocol.UnitOfWork | None = None
              ) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A primary connection for one statement changing the user's data (autocommit),
        or the unit of work's; the user's position is recorded after the commit."""
        if not self.routing:
            return self.primary.connection(uow)
        return self._recording(user_id, own_work(uow), transaction=False)

    def write_transaction(self, user_id: int, uow: uow_protocol.UnitOfWork | None = None
                          ) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A transaction (or a savepoint in the unit of work) changing the user's data."""
        if not self.routing:
            return self.primary.transaction(uow)
        return self._recording(user_id, own_work(uow), transaction=True)

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
            unsettled = self._record((user_id,), conn)
        if unsettled:
            self._settle()  # with the connection back in the pool

    def _record(self, user_ids, conn: psycopg.Connection | None) -> bool:
        """Record the primary's position now for each user (their commit is behind it)
        before the write answers; True if the write must `_settle` first (`_record_on`)."""
        try:
            if conn is None:
                with Checkout(self.primary, None, translate=True) as fresh:
                    return self._record_on(user_ids, fresh)
            return self._record_on(user_ids, conn)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # The write committed, but neither the store nor the primary holds its
            # position: a 2xx could be followed by a stale read, so it answers 503
            # (a retry with its Idempotency-Key replays the outcome).
            self.logger.error("write position not recorded for %d user(s): %s",
                              len(user_ids), type(exc).__name__)
            raise DatabaseUnavailable("write position not recorded") from exc

    def _positions(self) -> WritePositions:
        if self.positions is None:  # only routing reads or records them; __init__ checks
            raise RuntimeError("no write-position store")
        return self.positions

    def _record_on(self, user_ids, conn: psycopg.Connection) -> bool:
        """A position the store did not confirm (Redis hung or down) holds every replica
        read of every worker for hold_seconds, durably, on the primary. Unless the hold
        already stood when every monitor last sampled it (a later write of the same
        outage), the write must wait until they have (True)."""
        positions = self._positions()
        confirmed = [positions.record(user_id, conn) for user_id in user_ids]
        if all(confirmed):
            return False
        settle = self.settings.sample_fresh_seconds + 0.05
        return not hold_replica_reads(conn, 2 * self.settings.hold_seconds, settle)

    def _settle(self) -> None:
        """Wait until every worker's last sample of the primary is younger than the hold:
        a read with an older sample goes to the primary, one with a newer sees the hold."""
        time.sleep(self.settings.sample_fresh_seconds + 0.05)

    # --- one user's reads --------------------------------------------------------------
    def read(self, user_id: int, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(conn, *args) on a replica that has the user's writes, else on the primary."""
        if self.routing:
            replica = self._choose(user_id)
            if replica is not None:
                timeout = self.settings.read_timeout
                try:
                    with Checkout(replica.db, timeout, translate=True) as conn, \
                            self.deadlines.bound(conn, timeout):
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
        now = time.monotonic()
        if now - self._sampled_at > self.settings.sample_fresh_seconds:
            # this worker may not know of a hold a write set elsewhere
            self.tally.add("fallback:unsampled")
            return None
        if now < self._held_until:
            self.tally.add("fallback:held")
            return None
        positions = self._positions()
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
        self.deadlines.start()
        self.check_replicas()
        self._monitor = threading.Thread(target=self._monitor_loop, name="replica-monitor",
                                         daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
        self.deadlines.close()
        for replica in self.replicas:
            replica.db.close()

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.settings.check_interval):
            try:
                self.check_replicas()
            except Exception:  # the monitor must outlive anything a check raises
                self.logger.exception("replica check failed")

    def check_replicas(self) -> None:
        """Sample the primary's position (before each replica, so a hung one delays the
        next sample by one bounded check), read each replica's replay, set the rotation."""
        timeout = self.settings.check_timeout
        for replica in self.replicas:
            self._sample_primary(timeout)
            self._check(replica, time.monotonic(), timeout)
        rotation = tuple(r for r in self.replicas if r.in_rotation)
        if rotation != self._rotation:
            self._rotation = rotation

    def _sample_primary(self, timeout: float) -> None:
        started = time.monotonic()
        try:
            with self.primary.pooled(timeout=timeout) as conn, \
                    self.deadlines.bound(conn, timeout):
                position, hold = primary_sample(conn)
        except Exception:  # the primary's own checker reports it
            return
        # the hold's end on this clock, from after the answer: never earlier than it is
        self._held_until = max(self._held_until, time.monotonic() + hold)
        samples = self._primary_samples
        samples.append((started, position))  # a time before the read: lag over-estimated
        window = self.settings.max_lag_seconds + 2 * self.settings.check_interval + 1
        while len(samples) > 1 and started - samples[1][0] > window:
            samples.popleft()
        self._sampled_at = started

    def _check(self, replica: Replica, now: float, timeout: float) -> None:
        was = replica.in_rotation
        try:
            with replica.db.pooled(timeout=timeout) as conn, \
                    self.deadlines.bound(conn, timeout):
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
        replica.lag_seconds = self._lag(replica, now)
        if not replica.behind_known:
            replica.in_rotation, replica.state = False, "lagging"
            replica.last_error = (f"behind the first primary position this worker saw, "
                                  f"{replica.lag_seconds:.1f}s ago: lag unknown")
            if was:
                self.logger.warning("replica %s lag unknown; out of rotation", replica.name)
            return
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

    def _lag(self, replica: Replica, now: float) -> float:
        """Seconds since the primary first stood past the replica's replay, as sampled.

        Lag is known only if a sample at or below the replay precedes the first one
        past it: a worker that has just started and finds the replay behind its first
        sample cannot tell one second of lag from an hour's (`behind_known` False)."""
        replayed = replica.replayed
        if replica.behind is not None and replica.behind[1] <= replayed:
            replica.behind = None  # it got past that sample: measure again
        samples = self._primary_samples
        first = next((i for i, (_, position) in enumerate(samples) if position > replayed),
                     None)
        if first is None:
            replica.behind, replica.behind_known = None, True
            return 0.0
        if replica.behind is None:
            replica.behind = samples[first]
            # the oldest sample is past the replay: behind since before this worker
            # looked, or since before the window (then far beyond the maximum lag)
            replica.behind_known = first > 0
        return now - replica.behind[0]

    def describe(self, show_hosts: bool) -> dict[str, Any]:
        return {replica.name: replica.describe(show_hosts) for replica in self.replicas}

    def lags(self) -> dict[str, float | None]:
        return {replica.name: replica.lag_seconds for replica in self.replicas}
