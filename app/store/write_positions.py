"""Where each user's last write stands in the primary's WAL, shared by every worker and instance.

Two stores with one interface: a table on the primary, or Redis. Both raise
PositionsUnavailable when they cannot answer, so a store failure never serves a stale read.
See docs/redis.md and docs/read-your-writes.md.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from app.store.redis_link import LuaScript, RedisDown, RedisLink
from app.store.replication import PRIMARY_POSITION, primary_position


class PositionsUnavailable(Exception):
    """The store cannot say where the user's last write stands."""


class PostgresWritePositions:
    """Positions in the primary's write_positions table (logged: a crash keeps them)."""

    def __init__(self, db, ttl_seconds: float):
        self.db = db
        self.ttl_seconds = ttl_seconds

    def record(self, user_id: int, conn: psycopg.Connection) -> bool:
        """Note the primary's WAL position now (after the user's commit), in one statement;
        True: it is recorded (a failure raises)."""
        # synchronous_commit on, whatever the server's: a crash must not lose the
        # position of a write that answered (nor, before it in the WAL, the write)
        conn.execute(
            "INSERT INTO write_positions (user_id, position, expires_at) "
            f"SELECT %(user_id)s, {PRIMARY_POSITION}, now() + make_interval(secs => %(ttl)s) "
            "FROM (SELECT set_config('synchronous_commit', 'on', true)) AS durable "
            "ON CONFLICT (user_id) DO UPDATE "
            "SET position = greatest(write_positions.position, excluded.position), "
            "    expires_at = excluded.expires_at",
            {"user_id": user_id, "ttl": self.ttl_seconds})
        return True

    def get(self, user_id: int) -> int | None:
        try:
            with self.db.connection() as conn:
                row = conn.execute(
                    "SELECT position FROM write_positions "
                    "WHERE user_id = %s AND expires_at > now()", (user_id,)).fetchone()
        except Exception as exc:
            raise PositionsUnavailable(type(exc).__name__) from exc
        return row[0] if row else None

    def trusted(self) -> bool:
        return True

    def purge_expired(self) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                "DELETE FROM write_positions WHERE user_id = ANY (ARRAY("
                "SELECT user_id FROM write_positions WHERE expires_at < now() LIMIT 10000))"
            ).rowcount


# KEYS[1]: the user's key; ARGV: position as 16 hex digits, ttl in ms. Keeps the
# greater position (fixed-width hex compares as the numbers do).
_RECORD = LuaScript("""
local current = redis.call('GET', KEYS[1])
if (not current) or current < ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
""")

KEY_PREFIX = "saypi:wpos:"
# When this Redis began keeping positions (seconds since the epoch): a Redis
# that restarted empty has lost the positions recorded before, so nobody
# trusts it until every replica in rotation must have replayed those writes.
EPOCH_KEY = "saypi:wpos:epoch"


class RedisWritePositions:
    """Positions in Redis, with this worker's unrecorded ones kept until Redis takes them.

    Every write tries, even with the breaker open; an unrecorded position is retried on later
    calls and makes this worker's reads go to the primary meanwhile. An epoch key read with
    every lookup notices a Redis restarted empty. See docs/redis.md.
    """

    def __init__(self, link: RedisLink, ttl_seconds: float, hold_seconds: float,
                 logger: logging.Logger, wall_clock=time.time):
        self.link = link
        self.ttl_ms = int(ttl_seconds * 1000)
        self.ttl_seconds = ttl_seconds
        self.hold_seconds = hold_seconds
        self.logger = logger
        self._unrecorded: dict[int, tuple[int, float]] = {}  # user -> (position, when)
        self._lock = threading.Lock()
        self._wall_clock = wall_clock

    def record(self, user_id: int, conn: psycopg.Connection) -> bool:
        """True once Redis has the position; False when it did not confirm it in time (the
        caller then holds replica reads through the primary; docs/redis.md)."""
        position = primary_position(conn)
        if self._unrecorded:
            self._retry_unrecorded()
        try:
            # even while this worker's breaker is open: if Redis answers the other
            # workers, they must find this position, or they could read a lagging replica
            self._store(user_id, position, despite_breaker=True)
        except RedisDown:
            with self._lock:
                known = self._unrecorded.get(user_id)
                if known is None or known[0] < position:
                    self._unrecorded[user_id] = (position, time.monotonic())
            return False
        return True

    def _store(self, user_id: int, position: int, despite_breaker: bool = False) -> None:
        self.link.run_script(_RECORD, (f"{KEY_PREFIX}{user_id}",),
                             (f"{position:016x}", self.ttl_ms), despite_breaker)

    def _retry_unrecorded(self) -> None:
        with self._lock:
            pending = list(self._unrecorded.items())
        now = time.monotonic()
        for user_id, (position, when) in pending:
            if now - when > self.ttl_seconds:  # every replica in rotation has it by now
                self._forget(user_id, position)
                continue
            try:
                self._store(user_id, position)
            except RedisDown:
                return
            self._forget(user_id, position)

    def _forget(self, user_id: int, position: int) -> None:
        with self._lock:
            if self._unrecorded.get(user_id, (None,))[0] == position:
                del self._unrecorded[user_id]

    def get(self, user_id: int) -> int | None:
        if self._unrecorded:
            self._retry_unrecorded()
        try:
            epoch, value = self.link.execute("MGET", EPOCH_KEY, f"{KEY_PREFIX}{user_id}")
            if epoch is None:
                self._new_epoch()
        except RedisDown as exc:
            raise PositionsUnavailable(str(exc)) from exc
        if epoch is None or self._wall_clock() < float(epoch) + self.hold_seconds:
            raise PositionsUnavailable("redis began keeping positions too recently")
        return int(value, 16) if value is not None else None

    def _new_epoch(self) -> None:
        now = self._wall_clock()
        if self.link.execute("SET", EPOCH_KEY, f"{now:.3f}", "NX"):
            self.logger.warning("redis holds no write positions (new or restarted); reads "
                                "go to the primary for %.1fs", self.hold_seconds)

    def trusted(self) -> bool:
        """False while positions may be missing: some unrecorded here, or Redis failed lately."""
        if self._unrecorded:
            return False
        since = self.link.seconds_since_failure()
        return since is None or since > self.hold_seconds

    def purge_expired(self) -> int:
        """Nothing to do: keys expire by themselves."""
        return 0
