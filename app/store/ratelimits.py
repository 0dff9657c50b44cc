"""The rate-limit store: GCRA state in PostgreSQL, shared by every worker and instance.

One row per key in an UNLOGGED table; a decision is one statement on the database's clock,
in whole microseconds with no day or month part ever entering. See docs/rate-limits.md.
"""

from __future__ import annotations

from datetime import timedelta

_MICROSECOND = timedelta(microseconds=1)

# clock: the database's time, read once (MATERIALIZED: clock_timestamp() is volatile).
# decided: the upsert. A new key is admitted with TAT = now + T. An existing key
#   is admitted when TAT <= now + tau (written as excluded.tat + (tau - T), since
#   excluded.tat = now + T), and then TAT := max(TAT, now) + T
#   = greatest(TAT + T, excluded.tat). ON CONFLICT locks the newest version of
#   the row before the WHERE, so concurrent requests of one key serialise and
#   each decides on its predecessor's TAT. A refusal updates nothing and
#   returns no row, but keeps the row locked until the statement ends.
# The second branch runs only on a refusal (the one-time NOT EXISTS filter) and
#   reads the TAT it was refused on: FOR UPDATE follows the row to its newest
#   version, which this statement already holds locked. It finds nothing only if
#   the row was created after this statement's snapshot; the caller then
#   assumes a fresh key's TAT.
_DECIDE = """
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
), decided AS (
    INSERT INTO rate_limits AS r (key, tat)
    SELECT %(key)s, clock.now + %(interval_us)s::bigint * interval '1 microsecond'
      FROM clock
    ON CONFLICT (key) DO UPDATE
       SET tat = greatest(r.tat + %(interval_us)s::bigint * interval '1 microsecond',
                          excluded.tat)
     WHERE r.tat <= excluded.tat + %(slack_us)s::bigint * interval '1 microsecond'
    RETURNING r.tat
)
SELECT true, decided.tat - clock.now FROM decided, clock
UNION ALL
SELECT false, held.tat - clock.now
  FROM (SELECT tat FROM rate_limits
         WHERE key = %(key)s AND NOT EXISTS (SELECT FROM decided)
           FOR UPDATE) AS held,
       clock
"""

# `app.http.ratelimit.gcra_charge`: TAT := max(TAT, now) + count * T, on the database's
# clock, for a key with or without a row.
_CHARGE = """
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
)
INSERT INTO rate_limits AS r (key, tat)
SELECT %(key)s, clock.now + %(charge_us)s::bigint * interval '1 microsecond' FROM clock
ON CONFLICT (key) DO UPDATE
   SET tat = greatest(r.tat, excluded.tat - %(charge_us)s::bigint * interval '1 microsecond')
             + %(charge_us)s::bigint * interval '1 microsecond'
RETURNING r.tat - (SELECT now FROM clock)
"""

# `app.http.ratelimit.gcra_take` (migration 0008): several admissions at once, for the
# admission leases of app/http/ratelimit_leases.py.
_TAKE = "SELECT granted, tat_after FROM rate_limit_take(%s, %s, %s, %s, %s, %s)"

# Unused leased admissions go back: each key's TAT moves back (count * T, in
# microseconds). A TAT moved into the past is the fresh state; the purge removes it.
_GIVE_BACK = """
UPDATE rate_limits AS r
   SET tat = r.tat - g.back_us * interval '1 microsecond'
  FROM unnest(%(keys)s::text[], %(back_us)s::bigint[]) AS g(key, back_us)
 WHERE r.key = g.key
"""

# Rows whose TAT has passed are the fresh state; deleting them changes no decision.
# Bounded batches on the tat index; SKIP LOCKED leaves rows a request (or another
# worker's purge) holds.
_PURGE = """
DELETE FROM rate_limits
 WHERE key IN (SELECT key FROM rate_limits
                WHERE tat < statement_timestamp()
                ORDER BY tat
                LIMIT %(batch)s
                  FOR UPDATE SKIP LOCKED)
"""


class RateLimitRepository:
    """GCRA decisions, leases of several admissions, and the periodic purge; the only code
    that touches rate_limits."""

    def __init__(self, db, purge_batch: int = 1000, purge_max_batches: int = 100):
        self.db = db
        self.purge_batch = purge_batch
        self.purge_max_batches = purge_max_batches

    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        """Admit or refuse one request of `key`: (admitted, TAT after the decision - now).

        Microseconds in and out; one round trip. Raises DatabaseUnavailable or
        psycopg errors when the database fails (the limiter fails open). Call it
        outside a transaction: inside one, the row lock lasts until it ends.
        """
        params = {"key": key, "interval_us": interval_us,
                  "slack_us": tolerance_us - interval_us}
        with self.db.connection() as conn:
            row = conn.execute(_DECIDE, params).fetchone()
        if row is None:  # refused on a row newer than the snapshot: assume it is fresh
            return False, tolerance_us + interval_us
        return row[0], row[1] // _MICROSECOND

    def charge(self, key: str, interval_us: int, count: int) -> int:
        """Take `count` more admissions of `key` whatever is left: TAT after - now (us).

        One round trip, outside a transaction, failing as `decide` does.
        """
        with self.db.connection() as conn:
            row = conn.execute(_CHARGE, {"key": key, "charge_us": count * interval_us}
                               ).fetchone()
        return row[0] // _MICROSECOND

    def take(self, key: str, interval_us: int, tolerance_us: int, want: int, give_back: int,
             keep: int) -> tuple[int, int]:
        """`gcra_take` in one statement: (admissions granted, TAT after - now, us).

        One round trip, outside a transaction, failing as `decide` does.
        """
        with self.db.connection() as conn:
            row = conn.execute(_TAKE, (key, interval_us, tolerance_us, want, give_back,
                                       keep)).fetchone()
        return row[0], row[1]

    def give_back(self, returns: list[tuple[str, int, int]]) -> None:
        """Return unused admissions, (key, count, interval_us) each, in one statement."""
        with self.db.connection() as conn:
            conn.execute(_GIVE_BACK, {"keys": [key for key, _, _ in returns],
                                      "back_us": [count * interval
                                                  for _, count, interval in returns]})

    def purge_expired(self) -> int:
        """Delete rows whose TAT has passed, in bounded batches; the number deleted."""
        total = 0
        for _ in range(self.purge_max_batches):
            with self.db.connection() as conn:
                deleted = conn.execute(_PURGE, {"batch": self.purge_batch}).rowcount
            total += deleted
            if deleted < self.purge_batch:
                break
        return total
