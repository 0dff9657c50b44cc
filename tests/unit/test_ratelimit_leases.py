"""Admission leases (app/http/ratelimit_leases.py) over the in-process store, on a fake clock.

Several LeasedStores sharing one MemoryStore stand for several workers
sharing Redis; the exact answers they are compared with come from `gcra`.
"""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.ratelimit import MICROS, MemoryStore, Policy, decision_from_store, gcra, gcra_take
from app.http.ratelimit_leases import BURST_SHARE, GROWTH, LeasedStore
from tests.unit.test_ratelimit import Clock

BIG = Policy("user", 60, 1024)  # T = 1 s, burst 1024: leases of up to 128
LEASE_SECONDS = 1.0


class CountingStore:
    """A MemoryStore that remembers every take (want, granted) and give-back."""

    def __init__(self, clock: Clock):
        self.inner = MemoryStore(clock)
        self.takes: list[tuple[int, int]] = []
        self.returned = 0

    def take(self, key, interval_us, tolerance_us, want, give_back, keep):
        granted, after = self.inner.take(key, interval_us, tolerance_us, want, give_back, keep)
        self.takes.append((want, granted))
        return granted, after

    def give_back(self, returns):
        self.returned += sum(count for _, count, _ in returns)
        self.inner.give_back(returns)

    def charge(self, key, interval_us, count):
        self.charged = getattr(self, "charged", 0) + count
        return self.inner.charge(key, interval_us, count)

    def purge_expired(self) -> int:
        return self.inner.purge_expired()


def workers(count: int, clock: Clock, max_lease: int = 64):
    store = CountingStore(clock)
    return store, [LeasedStore(store, max_lease, LEASE_SECONDS, clock) for _ in range(count)]


def decide(worker: LeasedStore, policy: Policy = BIG, key: str = "user:1"):
    return worker.decide(key, policy.interval_us, policy.tolerance_us)


# --- the arithmetic ---------------------------------------------------------------------------
@given(tat=st.one_of(st.none(), st.integers(0, 10**9)), now=st.integers(0, 10**9),
       per_minute=st.integers(1, 6000), burst=st.integers(1, 200), want=st.integers(1, 50),
       keep=st.integers(0, 100))
def test_take_grants_what_gcra_admits_at_that_instant_and_keeps_the_reserve(
        tat, now, per_minute, burst, want, keep):
    policy = Policy("user", per_minute, burst)
    T, tau = policy.interval_us, policy.tolerance_us
    granted, after = gcra_take(tat, now, T, tau, want, 0, keep)
    # the same requests one by one, at the same instant
    state, admitted = tat, 0
    while admitted < want:
        allowed, state_after = gcra(state, now, T, tau)
        if not allowed:
            break
        state, admitted = state_after, admitted + 1
    if admitted == 0:
        assert (granted, after) == (0, tat)
        return
    assert granted == max(1, min(want, _available(tat, now, T, tau) - keep))
    assert 1 <= granted <= admitted
    assert after == max(now, tat if tat is not None else now) + granted * T


def _available(tat, now, T, tau):
    """Admissions GCRA gives back to back at `now`."""
    base = now if tat is None or tat < now else tat
    return (tau - (base - now)) // T + 1


def test_give_back_moves_the_tat_back_and_a_refusal_keeps_it():
    T, tau = BIG.interval_us, BIG.tolerance_us
    granted, tat = gcra_take(None, 0, T, tau, 10, 0, 0)
    assert (granted, tat) == (10, 10 * T)
    assert gcra_take(tat, 0, T, tau, 1, 4, 0) == (1, 7 * T)  # 4 back, 1 taken
    full = tau + T
    assert gcra_take(full, 0, T, tau, 1, 0, 0) == (0, full)
    assert gcra_take(full, 0, T, tau, 1, 1, 0) == (1, full)  # one back, then admitted


# --- leases -------------------------------------------------------------------------------
def test_a_keys_first_request_asks_for_one_and_busy_keys_ask_for_more():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    for _ in range(100):
        assert decide(worker)[0]
        clock.advance(0.001)
    wants = [want for want, _ in store.takes]
    cap = min(64, BIG.quota // BURST_SHARE)
    assert wants[:4] == [1, GROWTH, GROWTH**2, min(cap, GROWTH**3)]
    assert len(store.takes) < 10


def test_small_bursts_and_light_keys_are_exact():
    clock = Clock()
    small = Policy("user", 60, BURST_SHARE * 2 - 1)  # an eighth of the burst is 1
    store, (worker,) = workers(1, clock)
    tat, now = None, round(clock() * MICROS)
    for _ in range(20):
        allowed, after = decide(worker, small)
        expected, tat_next = gcra(tat, now, small.interval_us, small.tolerance_us)
        assert allowed == expected
        if expected:
            tat = tat_next
            assert after == tat - now
    assert all(want == 1 for want, _ in store.takes) and len(store.takes) == 20
    # a key seen once a lease time apart always asks the store, for one
    store, (worker,) = workers(1, clock)
    for _ in range(5):
        assert decide(worker)[0]
        clock.advance(LEASE_SECONDS * 1.5)
    assert store.takes == [(1, 1)] * 5


def test_one_worker_admits_exactly_the_burst_and_reports_what_gcra_would():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    answers = [decide(worker) for _ in range(BIG.quota + 10)]
    assert [allowed for allowed, _ in answers] == [True] * BIG.quota + [False] * 10
    for k, (allowed, after) in enumerate(answers[:BIG.quota], start=1):
        decision = decision_from_store(BIG, allowed, after)
        assert (decision.remaining, after) == (BIG.quota - k, k * BIG.interval_us)
    assert len(store.takes) < BIG.quota  # and most of them came from leases


def test_no_lease_takes_a_key_below_half_its_burst():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    for _ in range(BIG.quota):
        assert decide(worker)[0]
    available = BIG.quota  # the clock stands still: nothing replenishes
    for _, granted in store.takes:
        assert granted <= BIG.quota // BURST_SHARE
        assert granted == 1 or available - granted >= BIG.quota // 2
        available -= granted
    assert available == 0


def test_unused_admissions_go_back_when_the_lease_ends():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    for _ in range(6):
        decide(worker)  # takes 1, 4, then 16: 15 of them unused
    assert worker.held() > 0
    held = worker.held()
    clock.advance(LEASE_SECONDS / 2)
    assert worker.sweep() == 0  # still live
    clock.advance(LEASE_SECONDS)
    assert worker.sweep() == held and worker.held() == 0 and store.returned == held
    # the store now holds exactly the six admissions that were used, less what replenished
    exact = MemoryStore(clock)
    fresh = exact.take("user:1", BIG.interval_us, BIG.tolerance_us, 6, 0, 0)
    assert fresh[0] == 6
    granted, after = store.inner.take("user:1", BIG.interval_us, BIG.tolerance_us, 1, 0, 0)
    expected_tat = 6 * BIG.interval_us - round(1.5 * LEASE_SECONDS * MICROS) + BIG.interval_us
    assert (granted, after) == (1, expected_tat)


def test_sixteen_threads_of_one_worker_admit_exactly_the_burst():
    clock = Clock()
    _, (worker,) = workers(1, clock)
    start = threading.Barrier(16)
    admitted: list[int] = []

    def hammer() -> None:
        start.wait()
        admitted.append(sum(decide(worker)[0] for _ in range(100)))

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == BIG.quota
    assert worker.held() == 0


class SlowStore(CountingStore):
    """Every take waits a little, so that threads of one worker meet on one key."""

    def take(self, *args):
        time.sleep(0.01)
        return super().take(*args)


def test_one_thread_at_a_time_refills_a_key_and_a_worker_holds_at_most_an_eighth():
    clock = Clock()
    store = SlowStore(clock)
    worker = LeasedStore(store, 64, LEASE_SECONDS, clock)
    assert decide(worker)[0]  # a live lease with nothing left: the next request refills
    store.takes.clear()
    start = threading.Barrier(8)

    def request() -> None:
        start.wait()
        assert decide(worker)[0]

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for want, _ in store.takes if want > 1) == 1, store.takes
    assert worker.held() <= BIG.quota // BURST_SHARE


def test_only_admissions_still_charged_go_back():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    policy = Policy("user", 600, 64)  # T = 0.1 s: a lease's charge replenishes quickly
    for _ in range(2):
        decide(worker, policy)  # takes 1, then 4: 3 unused, charged until 0.5 s from now
    assert worker.held() == 3
    clock.advance(10)  # long after the lease ended: its charge has replenished
    assert worker.sweep() == 0 and worker.held() == 0 and store.returned == 0


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(
    st.integers(0, 2),  # the worker
    st.one_of(st.just(0), st.integers(0, 3000), st.integers(0, 1_500_000)),  # pause, us
    st.integers(1, 80)),  # requests back to back
    min_size=1, max_size=40), sweeps=st.booleans())
def test_what_passes_stays_within_the_burst_plus_what_leases_can_hold(steps, sweeps):
    """Three workers, bursts at random times: the requests admitted also pass an exact
    GCRA whose burst is larger by what the three workers' leases can hold."""
    policy = Policy("user", 60_000, 64)  # T = 1 ms, burst 64: leases of up to 8
    T, tau = policy.interval_us, policy.tolerance_us
    slack = 3 * (policy.quota // BURST_SHARE) * T
    clock = Clock()
    _, fleet = workers(3, clock)
    generous = None  # the TAT of the exact reference with the larger burst
    for worker, pause_us, count in steps:
        clock.advance(pause_us / MICROS)
        if sweeps:
            for member in fleet:
                member.sweep()
        for _ in range(count):
            if decide(fleet[worker], policy)[0]:
                ok, generous = gcra(generous, round(clock() * MICROS), T, tau + slack)
                assert ok, "admitted beyond the burst plus what leases hold"

def test_a_burst_after_a_pause_passes_at_most_what_the_leases_hold_beyond_the_quota():
    """The bounded error, shown: a lease's admissions were charged when it was taken; after a
    pause that replenished the key they pass on top of a full burst from the store."""
    policy = Policy("user", 60_000, 64)  # T = 1 ms, burst 64: leases of up to 8
    clock = Clock()
    _, (first, second) = workers(2, clock)
    for _ in range(2):
        assert decide(first, policy)[0]  # takes 1, then 4: 3 left
    held = first.held()
    assert held == 3
    clock.advance(0.5)  # the store's charge replenishes; the lease is still live
    admitted = sum(decide(second, policy)[0] for _ in range(100))
    admitted += sum(decide(first, policy)[0] for _ in range(held))
    assert admitted == policy.quota + held


def test_a_charge_spends_leased_admissions_first_then_the_store_and_refuses_after():
    clock = Clock()
    store, (worker,) = workers(1, clock)
    for _ in range(3):  # a busy key: the worker holds leased admissions
        assert decide(worker)[0]
    held = worker.held()
    assert held > 0
    worker.charge("user:1", BIG.interval_us, held + 2000)
    assert worker.held() == 0 and store.charged == 2000
    assert not decide(worker)[0]  # the debt is beyond the burst: refused
    clock.advance(2000 + 10)  # T = 1 s: the debt has replenished
    assert decide(worker)[0]


def test_gcra_charge_is_admissions_beyond_the_tolerance():
    from app.http.ratelimit import gcra_charge

    T = BIG.interval_us
    assert gcra_charge(None, 5 * MICROS, T, 3) == 5 * MICROS + 3 * T
    assert gcra_charge(2 * MICROS, 5 * MICROS, T, 3) == 5 * MICROS + 3 * T  # past: from now
    assert gcra_charge(9 * MICROS, 5 * MICROS, T, 3) == 9 * MICROS + 3 * T
