"""The PostgreSQL rate-limit store against a real database: bursts, concurrency, instances, purge.

Time in the database cannot be injected, so the tests use long intervals (no
replenishment happens while a test runs) and move time by shifting the stored
TAT into the past, which is exactly what waiting would do to `TAT - now`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import psycopg
import pytest

from app.http.ratelimit import MICROS, Policy, RateLimiter, gcra, gcra_take
from app.http.ratelimit_leases import BURST_SHARE, LeasedStore
from app.store.db import Database, DatabaseUnavailable, PoolSettings
from app.store.ratelimits import RateLimitRepository
from harness.services import free_port
from tests.unit.test_ratelimit import Clock, FakeMetrics

LOG = logging.getLogger("test.ratelimit")


def settings(max_size: int = 4, timeout: float = 5.0) -> PoolSettings:
    return PoolSettings(min_size=1, max_size=max_size, timeout=timeout, max_waiting=0,
                        max_idle=60.0, max_lifetime=3600.0, connect_timeout=5,
                        statement_timeout_ms=5000, check_interval=30.0)


def open_db(dsn: str, max_size: int = 4, timeout: float = 5.0, wait: float = 5.0) -> Database:
    db = Database(dsn, settings(max_size, timeout), LOG, name="saypi-test")
    db.open(wait_seconds=wait)
    return db


@pytest.fixture
def dsn(postgres) -> str:
    return postgres.new_database()


@pytest.fixture
def db(dsn) -> Iterator[Database]:
    database = open_db(dsn, max_size=16)
    yield database
    database.close()


def shift(dsn: str, key: str, seconds: float) -> None:
    """Move `key`'s TAT `seconds` into the past, as if that much time had gone by."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE rate_limits SET tat = tat - %s * interval '1 microsecond'"
                     " WHERE key = %s", (round(seconds * MICROS), key))


def tat_rows(dsn: str) -> dict[str, float]:
    """key -> TAT - now in seconds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT key, extract(epoch FROM tat - clock_timestamp())::float8"
                            " FROM rate_limits").fetchall()
    return dict(rows)


SLOW = Policy("user", 1, 5)  # T = 60 s: nothing replenishes during a test


def test_burst_admits_exactly_b_back_to_back(db):
    repo = RateLimitRepository(db)
    answers = [repo.decide("user:a", SLOW.interval_us, SLOW.tolerance_us) for _ in range(8)]
    assert [allowed for allowed, _ in answers] == [True] * 5 + [False] * 3
    # TAT - now: k * T after the k-th admission, within the milliseconds the test took
    for k, (_, after) in enumerate(answers[:5], start=1):
        assert abs(after - k * SLOW.interval_us) < 2 * MICROS, (k, after)
    for _, after in answers[5:]:  # refused on the unchanged TAT, 5 T
        assert abs(after - 5 * SLOW.interval_us) < 2 * MICROS
    assert repo.decide("user:b", SLOW.interval_us, SLOW.tolerance_us)[0] is True


def test_burst_of_one_and_burst_zero(db):
    repo = RateLimitRepository(db)
    for burst in (1, 0):
        policy = Policy("ip", 1, burst)
        key = f"ip:burst{burst}"
        answers = [repo.decide(key, policy.interval_us, policy.tolerance_us)[0]
                   for _ in range(3)]
        assert answers == [True, False, False]


def test_one_admission_per_interval_after_the_burst(db, dsn):
    repo = RateLimitRepository(db)
    key = "user:steady"
    for _ in range(5):
        assert repo.decide(key, SLOW.interval_us, SLOW.tolerance_us)[0]
    assert not repo.decide(key, SLOW.interval_us, SLOW.tolerance_us)[0]
    for _ in range(3):
        shift(dsn, key, 55)  # most of an interval: still refused, retry in about 5 s
        allowed, after = repo.decide(key, SLOW.interval_us, SLOW.tolerance_us)
        assert not allowed
        assert 0 < after - SLOW.tolerance_us <= 5 * MICROS  # less whatever time went by
        shift(dsn, key, 5.5)  # past the interval: exactly one more
        assert repo.decide(key, SLOW.interval_us, SLOW.tolerance_us)[0]
        assert not repo.decide(key, SLOW.interval_us, SLOW.tolerance_us)[0]


def test_sql_agrees_with_the_pure_arithmetic(db, dsn):
    """The same script of requests and pauses through the SQL store and through gcra()."""
    repo = RateLimitRepository(db)
    policy = Policy("user", 2, 4)  # T = 30 s, tau = 90 s
    T, tau = policy.interval_us, policy.tolerance_us
    # pauses chosen off the boundaries by more than the test's own running time
    script = [0, 0, 0, 0, 0, 0, 17, 0, 13.5, 0, 0, 40, 0, 0, 0, 200, 0, 0, 0, 0, 0, 28, 32, 0]
    tat, now = None, 0
    for pause in script:
        if pause:
            shift(dsn, "user:script", pause)
            now += round(pause * MICROS)
        expected_allowed, tat_after = gcra(tat, now, T, tau)
        tat = tat_after
        allowed, after = repo.decide("user:script", T, tau)
        assert allowed == expected_allowed, (pause, now)
        assert abs(after - (tat - now)) < MICROS, (after, tat - now)


def test_sixteen_threads_on_one_key_admit_exactly_the_burst(db):
    repo = RateLimitRepository(db)
    policy = Policy("user", 1, 10)  # B = 10, T = 60 s
    threads, per_thread = 16, 25
    admitted, waits, errors = [], [], []
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait()
        mine = 0
        try:
            for _ in range(per_thread):
                allowed, after = repo.decide("user:hot", policy.interval_us,
                                             policy.tolerance_us)
                if allowed:
                    mine += 1
                else:
                    waits.append(after - policy.tolerance_us)
        except Exception as exc:  # reported below; a failure must not hang the barrier
            errors.append(exc)
        admitted.append(mine)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    assert len(admitted) == threads
    assert sum(admitted) == policy.quota == 10
    # every refusal read the TAT it was refused on (10 T ahead), not an older snapshot's
    assert len(waits) == threads * per_thread - 10
    assert all(50 * MICROS < wait <= 60 * MICROS for wait in waits), min(waits)
    print(f"\n16 threads x {per_thread} requests on one key: {sum(admitted)} admitted "
          f"(burst {policy.quota})")


def test_two_instances_share_one_limit(dsn):
    one, two = open_db(dsn), open_db(dsn)
    try:
        stores = [RateLimitRepository(one), RateLimitRepository(two)]
        answers = [stores[i % 2].decide("user:shared", SLOW.interval_us, SLOW.tolerance_us)[0]
                   for i in range(10)]
        assert answers == [True] * 5 + [False] * 5
        metrics = FakeMetrics()
        limiters = [RateLimiter(Policy("user", 1, 3), Policy("ip", 1, 3), store, metrics, LOG)
                    for store in stores]
        decisions = [limiters[i % 2].check("ip", "198.51.100.7") for i in range(6)]
        assert [d.allowed for d in decisions] == [True, True, True, False, False, False]
        assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
        assert all(d.retry_after == 60 for d in decisions[3:])
        assert metrics.rate_limited.by_label == {"ip": 3}
    finally:
        one.close()
        two.close()


def test_limiter_on_postgres_reports_headers(db):
    limiter = RateLimiter(Policy("user", 600, 60), Policy("ip", 120, 30),
                          RateLimitRepository(db), FakeMetrics(), LOG)
    decision = limiter.check("user", "usr_headers")
    assert decision.headers() == {"RateLimit-Policy": '"user";q=60;w=6',
                                  "RateLimit": '"user";r=59;t=1'}
    assert limiter.health()[0] == "healthy"


def test_purge_deletes_only_expired_rows_in_batches(db, dsn):
    repo = RateLimitRepository(db, purge_batch=3)
    for i in range(10):
        repo.decide(f"ip:old{i}", SLOW.interval_us, SLOW.tolerance_us)
    for i in range(4):
        repo.decide(f"ip:live{i}", SLOW.interval_us, SLOW.tolerance_us)
    for i in range(10):
        shift(dsn, f"ip:old{i}", 61)
    assert repo.purge_expired() == 10
    assert sorted(tat_rows(dsn)) == [f"ip:live{i}" for i in range(4)]
    assert repo.purge_expired() == 0
    # a purged key is the fresh state again
    answers = [repo.decide("ip:old0", SLOW.interval_us, SLOW.tolerance_us)[0] for _ in range(6)]
    assert answers == [True] * 5 + [False]


def test_purge_is_bounded(db, dsn):
    repo = RateLimitRepository(db, purge_batch=2, purge_max_batches=2)
    for i in range(7):
        repo.decide(f"ip:b{i}", SLOW.interval_us, SLOW.tolerance_us)
        shift(dsn, f"ip:b{i}", 61)
    assert repo.purge_expired() == 4
    assert repo.purge_expired() == 3


# --- failing open ------------------------------------------------------------------------------
def test_unreachable_database_fails_open(caplog):
    dead = open_db(f"postgresql://saypi@127.0.0.1:{free_port()}/nothing", timeout=0.3,
                   wait=0.1)
    try:
        store = RateLimitRepository(dead)
        with pytest.raises(DatabaseUnavailable):
            store.decide("user:x", SLOW.interval_us, SLOW.tolerance_us)
        metrics, clock = FakeMetrics(), Clock()
        limiter = RateLimiter(Policy("user", 1, 1), Policy("ip", 1, 1), store, metrics, LOG,
                              clock=clock)
        with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
            decisions = [limiter.check("user", "usr_1") for _ in range(3)]
        assert all(d.allowed and d.fail_open for d in decisions)
        assert metrics.rate_limit_store_errors.value == 3
        assert metrics.rate_limited.value == 0
        warnings = [r for r in caplog.records if "fail open" in r.getMessage()]
        assert len(warnings) == 1
        assert "DatabaseUnavailable" in warnings[0].getMessage()
        assert limiter.health()[0] == "degraded"
    finally:
        dead.close()


def test_closed_pool_fails_open(dsn):
    db = open_db(dsn)
    store = RateLimitRepository(db)
    assert store.decide("user:y", SLOW.interval_us, SLOW.tolerance_us)[0]
    db.close()
    metrics = FakeMetrics()
    limiter = RateLimiter(Policy("user", 1, 1), Policy("ip", 1, 1), store, metrics, LOG)
    for _ in range(3):
        decision = limiter.check("user", "y")
        assert decision.allowed and decision.fail_open
    assert metrics.rate_limit_store_errors.value == 3
    assert limiter.health()[0] == "degraded"


def test_charge_takes_admissions_whatever_is_left(db, dsn):
    store = RateLimitRepository(db)
    policy = Policy("user", 1, 5)  # T = 60 s, tau = 240 s
    T, tau = policy.interval_us, policy.tolerance_us
    after = store.charge("user:new", T, 3)  # a key without state: from now
    assert abs(after - 3 * T) < MICROS
    assert store.decide("user:c", T, tau)[0] is True
    after = store.charge("user:c", T, 7)  # beyond the burst: a debt
    assert abs(after - 8 * T) < MICROS
    allowed, tat = store.decide("user:c", T, tau)
    assert not allowed and abs(tat - 8 * T) < MICROS
    shift(dsn, "user:c", 4 * 60)  # the debt replenished down to the burst's edge
    assert store.decide("user:c", T, tau)[0] is True


# --- admission leases on PostgreSQL (docs/leases.md) -------------------------------------------
def test_take_agrees_with_gcra_take(db, dsn):
    """Several admissions per statement, a reserve kept, unused admissions given back."""
    store = RateLimitRepository(db)
    policy = Policy("user", 2, 64)  # T = 30 s: nothing replenishes during the test
    T, tau = policy.interval_us, policy.tolerance_us
    calls = [(1, 0, 32), (4, 0, 32), (16, 0, 32), (16, 3, 32), (64, 0, 32), (8, 0, 0),
             (64, 0, 0), (1, 0, 0), (1, 5, 0), (3, 0, 0)]
    tat, now = None, 0  # on the database's clock, relative: the test takes well under a second
    for want, give_back, keep in calls:
        expected, tat_next = gcra_take(tat, now, T, tau, want, give_back, keep)
        granted, after = store.take("user:lease", T, tau, want, give_back, keep)
        assert granted == expected, (want, give_back, keep)
        tat = tat_next
        assert abs(after - (tat - now)) < MICROS
    store.give_back([("user:lease", 10, T), ("user:absent", 3, T)])
    granted, after = store.take("user:lease", T, tau, 1, 0, 0)
    assert granted == 1 and abs(after - (tat - 10 * T + T - now)) < MICROS
    assert "user:absent" not in tat_rows(dsn)
    store.give_back([("user:lease", 1000, T)])  # more than was ever taken: the fresh state
    assert tat_rows(dsn)["user:lease"] < 0
    granted, after = store.take("user:lease", T, tau, 1, 0, 0)
    assert granted == 1 and abs(after - T) < MICROS


def test_take_refuses_as_gcra_does_and_a_refusal_keeps_what_it_gave_back(db, dsn):
    store = RateLimitRepository(db)
    T, tau = SLOW.interval_us, SLOW.tolerance_us  # B = 5, T = 60 s
    assert store.take("user:r", T, tau, 8, 0, 0)[0] == 5  # the whole burst, no more
    granted, after = store.take("user:r", T, tau, 1, 0, 0)
    assert granted == 0 and abs(after - 5 * T) < MICROS  # refused on the unchanged TAT
    assert abs(tat_rows(dsn)["user:r"] * MICROS - 5 * T) < MICROS
    granted, after = store.take("user:r", T, tau, 4, 2, 0)  # two back: 3 T, room for two
    assert granted == 2 and abs(after - 5 * T) < MICROS
    store.charge("user:r", T, 3)  # a debt: 8 T
    granted, after = store.take("user:r", T, tau, 1, 1, 0)  # one back is not enough
    assert granted == 0 and abs(after - 7 * T) < MICROS
    assert abs(tat_rows(dsn)["user:r"] * MICROS - 7 * T) < MICROS  # the give-back stays


def test_sixteen_threads_of_one_worker_with_leases_admit_exactly_the_burst(db):
    policy = Policy("user", 1, 256)  # T = 60 s: leases of up to 32
    worker = LeasedStore(RateLimitRepository(db), 64, 5.0)
    threads, per_thread = 16, 30
    admitted, errors = [], []
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait()
        mine = 0
        try:
            for _ in range(per_thread):
                mine += worker.decide("user:leased", policy.interval_us,
                                      policy.tolerance_us)[0]
        except Exception as exc:  # reported below; a failure must not hang the barrier
            errors.append(exc)
        admitted.append(mine)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert not errors and len(admitted) == threads
    assert sum(admitted) == policy.quota
    assert worker.held() == 0


def test_two_workers_with_leases_charge_every_admission_and_give_back_the_rest(db, dsn):
    policy = Policy("user", 1, 256)  # T = 60 s, burst 256: leases of up to 32
    T, tau = policy.interval_us, policy.tolerance_us
    clock = [0.0]
    one, two = (LeasedStore(RateLimitRepository(db), 64, 1.0, lambda: clock[0])
                for _ in range(2))
    used = 0
    for i in range(60):
        assert (one if i % 3 else two).decide("user:two", T, tau)[0]
        used += 1
    held = one.held() + two.held()
    assert 0 < held <= 2 * policy.quota // BURST_SHARE
    # every admission used or held is charged in the table, no more
    charged = round(tat_rows(dsn)["user:two"] * MICROS / T)
    assert charged == used + held
    clock[0] = 2.0  # both leases end: the unused admissions go back
    assert one.sweep() + two.sweep() == held
    assert round(tat_rows(dsn)["user:two"] * MICROS / T) == used
