"""The Redis rate-limit store against a real redis-server: the same GCRA as the SQL store.

Time in Redis cannot be injected, so, as for the SQL store, the tests use
long intervals and move time by shifting the stored TAT into the past.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from app.http.ratelimit import MICROS, Policy, RateLimiter, gcra, gcra_take
from app.store.redis_link import RedisDown, RedisLink
from app.store.redis_ratelimits import KEY_PREFIX, RedisRateLimitStore
from harness.services import RedisServer, free_port
from tests.unit.test_ratelimit import FakeMetrics

LOG = logging.getLogger("test.ratelimit.redis")
SLOW = Policy("user", 1, 5)  # T = 60 s: nothing replenishes during a test


@pytest.fixture
def link(redis_server) -> Iterator[RedisLink]:
    link = RedisLink(redis_server.url, timeout=1.0, max_connections=32, logger=LOG)
    link.client.flushdb()
    yield link
    link.close()


def shift(link: RedisLink, key: str, seconds: float) -> None:
    """Move `key`'s TAT `seconds` into the past, as if that much time had gone by."""
    stored = int(link.client.get(KEY_PREFIX + key))
    link.client.set(KEY_PREFIX + key, stored - round(seconds * MICROS), keepttl=True)


def test_burst_admits_exactly_b_back_to_back(link):
    store = RedisRateLimitStore(link)
    answers = [store.decide("user:a", SLOW.interval_us, SLOW.tolerance_us) for _ in range(8)]
    assert [allowed for allowed, _ in answers] == [True] * 5 + [False] * 3
    for k, (_, after) in enumerate(answers[:5], start=1):
        assert abs(after - k * SLOW.interval_us) < 2 * MICROS, (k, after)
    for _, after in answers[5:]:
        assert abs(after - 5 * SLOW.interval_us) < 2 * MICROS
    assert store.decide("user:b", SLOW.interval_us, SLOW.tolerance_us)[0] is True
    # the key lives exactly as long as its state matters
    assert 0 < link.client.pttl(KEY_PREFIX + "user:a") <= 5 * 60_000 + 1


def test_script_agrees_with_the_pure_arithmetic(link):
    store = RedisRateLimitStore(link)
    policy = Policy("user", 2, 4)  # T = 30 s, tau = 90 s
    T, tau = policy.interval_us, policy.tolerance_us
    script = [0, 0, 0, 0, 0, 0, 17, 0, 13.5, 0, 0, 40, 0, 0, 0, 200, 0, 0, 0, 0, 0, 28, 32, 0]
    tat, now = None, 0
    for pause in script:
        if pause and link.client.exists(KEY_PREFIX + "user:script"):
            shift(link, "user:script", pause)
        if pause:
            now += round(pause * MICROS)
        expected_allowed, tat = gcra(tat, now, T, tau)
        allowed, after = store.decide("user:script", T, tau)
        assert allowed == expected_allowed, (pause, now)
        if link.client.exists(KEY_PREFIX + "user:script"):
            assert abs(after - (tat - now)) < MICROS, (after, tat - now)


def test_take_script_agrees_with_gcra_take(link):
    """Leases: several admissions per call, a reserve kept, unused admissions given back."""
    store = RedisRateLimitStore(link)
    policy = Policy("user", 2, 64)  # T = 30 s: nothing replenishes during the test
    T, tau = policy.interval_us, policy.tolerance_us
    calls = [(1, 0, 32), (4, 0, 32), (16, 0, 32), (16, 3, 32), (64, 0, 32), (8, 0, 0),
             (64, 0, 0), (1, 0, 0), (1, 5, 0), (3, 0, 0)]
    tat, now = None, 0  # on Redis's clock, relative: the test takes well under a second
    for want, give_back, keep in calls:
        expected, tat_next = gcra_take(tat, now, T, tau, want, give_back, keep)
        granted, after = store.take("user:lease", T, tau, want, give_back, keep)
        assert granted == expected, (want, give_back, keep)
        tat = tat_next
        assert abs(after - (tat - now)) < MICROS
    store.give_back([("user:lease", 10, T), ("user:absent", 3, T)])
    granted, after = store.take("user:lease", T, tau, 1, 0, 0)
    assert granted == 1 and abs(after - (tat - 10 * T + T - now)) < MICROS
    assert not link.client.exists(KEY_PREFIX + "user:absent")
    store.give_back([("user:lease", 1000, T)])  # more than was ever taken: the fresh state
    assert not link.client.exists(KEY_PREFIX + "user:lease")


def test_sixteen_threads_on_one_key_admit_exactly_the_burst(link):
    store = RedisRateLimitStore(link)
    policy = Policy("user", 1, 10)
    admitted: list[int] = []
    start = threading.Barrier(16)

    def hammer() -> None:
        start.wait()
        admitted.append(sum(store.decide("user:race", policy.interval_us,
                                         policy.tolerance_us)[0] for _ in range(25)))

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 10


def test_a_dead_redis_fails_open_at_once_and_is_counted():
    dead = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1, max_connections=4,
                     logger=LOG, pause_seconds=30)
    metrics = FakeMetrics()
    limiter = RateLimiter(Policy("user", 60, 5), Policy("ip", 0, 0), RedisRateLimitStore(dead),
                          metrics, LOG)
    decisions = [limiter.check("user", "1") for _ in range(20)]
    assert all(d.allowed and d.fail_open for d in decisions)
    assert metrics.rate_limit_store_errors.value == 20
    assert dead.failures == 1  # the breaker held the other 19 back without a call
    with pytest.raises(RedisDown):
        dead.execute("PING")
    assert limiter.health()[0] == "degraded"


def test_a_restarted_redis_is_used_again_after_the_pause():
    server = RedisServer().start()
    link = RedisLink(server.url, timeout=0.2, max_connections=4, logger=LOG, pause_seconds=0.2)
    store = RedisRateLimitStore(link)
    try:
        assert store.decide("user:x", SLOW.interval_us, SLOW.tolerance_us)[0]
        server.stop()
        with pytest.raises(RedisDown):
            store.decide("user:x", SLOW.interval_us, SLOW.tolerance_us)
        server.start()  # same port, empty
        deadline = threading.Event()
        for _ in range(50):
            try:
                assert store.decide("user:x", SLOW.interval_us, SLOW.tolerance_us)[0]
                break
            except RedisDown:
                deadline.wait(0.1)
        else:
            pytest.fail("the link never used the restarted redis")
    finally:
        link.close()
        server.stop()


def test_charge_takes_admissions_whatever_is_left(link):
    store = RedisRateLimitStore(link)
    T, tau = SLOW.interval_us, SLOW.tolerance_us
    assert abs(store.charge("user:new", T, 3) - 3 * T) < 2 * MICROS  # no state: from now
    assert store.decide("user:c", T, tau)[0] is True
    assert abs(store.charge("user:c", T, 7) - 8 * T) < 2 * MICROS  # beyond the burst
    allowed, tat = store.decide("user:c", T, tau)
    assert not allowed and abs(tat - 8 * T) < 2 * MICROS
    assert 0 < link.client.pttl(KEY_PREFIX + "user:c") <= 8 * 60_000 + 1
    shift(link, "user:c", 4 * 60)
    assert store.decide("user:c", T, tau)[0] is True
