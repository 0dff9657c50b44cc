"""Admission leases: a worker takes several GCRA admissions of a busy key in one store call.

A `LeasedStore` admits a key's next requests from admissions already charged, saving a
Redis round trip each, at a bounded cost in exactness (an eighth of a key's burst per
worker at most). What is kept of exact GCRA and what is given up: see docs/leases.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.http.ratelimit import MICROS

# A lease used up while live is followed by one this many times larger. Unused
# admissions go back, so asking for too many costs little: a client's burst
# of requests should need few round trips.
GROWTH = 4
# One lease holds at most this share of its key's burst (1/8).
BURST_SHARE = 8


class TakingStore(Protocol):
    """A store that can grant several admissions at once (`gcra_take` semantics)."""

    def take(self, key: str, interval_us: int, tolerance_us: int, want: int, give_back: int,
             keep: int) -> tuple[int, int]: ...

    def give_back(self, returns: list[tuple[str, int, int]]) -> None: ...

    def charge(self, key: str, interval_us: int, count: int) -> int: ...

    def purge_expired(self) -> int: ...


@dataclass(slots=True)
class Lease:
    credits: int      # admissions taken and not used yet
    tat_us: int       # the key's TAT right after the lease, on this worker's clock
    expires: float    # when unused credits go back (this worker's clock, seconds)
    size: int         # admissions asked for at the last store call
    interval_us: int  # the policy's T, to give credits back
    refilling: bool = False  # a thread is asking the store for the key's next lease

    def end(self, now_us: int) -> int:
        """Empty the lease: the next one is the size this one used, and the credits to
        give back are those still charged (giving back an admission whose charge has
        replenished would make room that was never taken)."""
        if self.credits:
            self.size = max(1, self.size - self.credits)
        returnable = min(self.credits, max(0, (self.tat_us - now_us) // self.interval_us))
        self.credits = 0
        return returnable


class LeasedStore:
    """The limiter's store for one worker: leases from `store` (docs/leases.md).

    Every change to a lease happens under one lock, and one thread at a time
    asks the store for a key's next lease: another thread that finds the key's
    lease empty meanwhile asks for its own request alone.
    """

    def __init__(self, store: TakingStore, max_lease: int, lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        if max_lease < 1 or lease_seconds <= 0:
            raise ValueError("max_lease must be at least 1 and lease_seconds positive")
        self.store = store
        self.max_lease = max_lease
        self.lease_seconds = lease_seconds
        self.forget_seconds = 10 * lease_seconds  # how long a key's lease size is remembered
        self.max_keys = max_keys
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        """Admit or refuse one request: from the key's live lease if it has credits, else
        by asking the store (and maybe taking a new lease)."""
        now = self._clock()
        lease = self._leases.get(key)
        if lease is not None and lease.credits and now < lease.expires:
            with self._lock:
                if lease.credits:  # a refill empties the lease it replaces, under the lock
                    lease.credits -= 1
                    lease.expires = now + self.lease_seconds
                    # what GCRA would answer with the unused credits not charged yet
                    seen = lease.tat_us - lease.credits * interval_us - round(now * MICROS)
                    return True, max(seen, interval_us)
        return self._ask(key, interval_us, tolerance_us, now)

    def _ask(self, key: str, interval_us: int, tolerance_us: int,
             now: float) -> tuple[bool, int]:
        quota = tolerance_us // interval_us + 1
        keep = quota // 2
        want, give_back = 1, 0
        with self._lock:
            lease = self._leases.get(key)
            refilled_elsewhere = lease is not None and lease.refilling
            if lease is not None and not refilled_elsewhere:
                live = now < lease.expires  # and used up: the key is busy here, ask for more
                give_back = lease.end(round(now * MICROS))
                most = max(1, min(self.max_lease, quota // BURST_SHARE))
                want = min(most, GROWTH * lease.size if live else lease.size)
                lease.refilling = True
        if refilled_elsewhere:  # another thread is taking the key's next lease
            granted, tat_after = self.store.take(key, interval_us, tolerance_us, 1, 0, keep)
            return granted > 0, tat_after
        try:
            granted, tat_after = self.store.take(key, interval_us, tolerance_us, want,
                                                 give_back, keep)
        except Exception:
            if lease is not None:
                lease.refilling = False
            raise
        with self._lock:
            if not granted:
                if self._leases.get(key) is lease:
                    self._leases.pop(key, None)
                return False, tat_after
            unused = granted - 1
            taken_at = self._clock()
            # a key's first request (no lease to refill) leaves alone what another thread
            # stored meanwhile: it took one admission, this request's own
            if lease is not None or (key not in self._leases
                                     and len(self._leases) < self.max_keys):
                self._leases[key] = Lease(unused, round(taken_at * MICROS) + tat_after,
                                          taken_at + self.lease_seconds, want, interval_us)
        return True, tat_after - unused * interval_us

    def charge(self, key: str, interval_us: int, count: int) -> int:
        """Charge `count` admissions after the fact: first from the key's leased credits
        (already charged in the store), the rest in the store; TAT after - now."""
        with self._lock:
            lease = self._leases.get(key)
            spent = 0
            if lease is not None and not lease.refilling and lease.credits:
                spent = min(lease.credits, count)
                lease.credits -= spent
        if spent < count or lease is None:
            return self.store.charge(key, interval_us, count - spent)
        return max(interval_us, lease.tat_us - lease.credits * interval_us
                   - round(self._clock() * MICROS))

    def sweep(self) -> int:
        """Give back the unused credits of ended leases (one store call for all of them)
        and forget keys not seen for a while; the number of admissions given back."""
        now = self._clock()
        now_us = round(now * MICROS)
        returns = []
        with self._lock:
            for key, lease in list(self._leases.items()):
                if now < lease.expires or lease.refilling:
                    continue
                if lease.credits:
                    returnable = lease.end(now_us)
                    if returnable:
                        returns.append((key, returnable, lease.interval_us))
                elif now - lease.expires > self.forget_seconds:
                    del self._leases[key]
        if returns:
            try:
                self.store.give_back(returns)
            except Exception:  # a failing store is reported where requests use it
                return 0  # the admissions stay charged: the limit is only stricter
        return sum(count for _, count, _ in returns)

    def held(self) -> int:
        """Admissions this worker holds and has not used."""
        with self._lock:
            return sum(lease.credits for lease in self._leases.values())

    def purge_expired(self) -> int:
        return self.store.purge_expired()
