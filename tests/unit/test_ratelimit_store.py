"""The in-memory rate-limit store keeps the PostgreSQL repository's contract."""

from __future__ import annotations

from app.http.ratelimit import MemoryStore, Policy
from tests.unit.test_ratelimit import Clock

SLOW = Policy("user", 1, 5)  # T = 60 s: nothing replenishes during a test


def test_memory_store_matches_the_repository_contract():
    clock = Clock()
    store = MemoryStore(clock)
    answers = [store.decide("k", SLOW.interval_us, SLOW.tolerance_us) for _ in range(6)]
    assert answers == [(True, k * SLOW.interval_us) for k in range(1, 6)] + \
        [(False, 5 * SLOW.interval_us)]
