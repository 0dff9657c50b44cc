"""Rate limiting: GCRA arithmetic, policies, decisions, response headers, the limiter.

`gcra`/`gcra_take` are the arithmetic every store runs, `Policy` and `Decision` give it
meaning and the IETF RateLimit headers, `RateLimiter` is what the request path calls
(failing open), `MemoryStore` the same arithmetic in-process for tests. See docs/rate-limits.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.domain.health import DEGRADED, HEALTHY

MICROS = 1_000_000
# The policies' names: in RateLimit headers, metrics labels and store keys.
USER_POLICY, IP_POLICY = "user", "ip"
POLICY_NAMES = (USER_POLICY, IP_POLICY)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- policies ------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """A rate (per minute) and a burst for one kind of key; per_minute 0 disables it."""

    name: str
    per_minute: int
    burst: int
    interval_us: int = field(init=False, repr=False)   # T
    tolerance_us: int = field(init=False, repr=False)  # tau = (B - 1) * T
    quota: int = field(init=False, repr=False)         # B (q)
    window: int = field(init=False, repr=False)        # ceil(B * T) seconds (w)

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"policy name must be one of {POLICY_NAMES}, not {self.name!r}")
        if self.per_minute < 0 or self.burst < 0:
            raise ValueError("per_minute and burst must not be negative")
        quota = max(1, self.burst)
        interval = max(1, (60 * MICROS + self.per_minute // 2) // self.per_minute) \
            if self.per_minute else 0
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", (quota - 1) * interval)
        object.__setattr__(self, "quota", quota)
        object.__setattr__(self, "window", max(1, _ceil_div(quota * interval, MICROS)))

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0


def policies_from_config(config) -> tuple[Policy, Policy]:
    """(user policy, ip policy) from the RATE_LIMIT_* settings."""
    return (Policy(USER_POLICY, config.rate_limit_user_per_minute,
                   config.rate_limit_user_burst),
            Policy(IP_POLICY, config.rate_limit_ip_per_minute, config.rate_limit_ip_burst))


# --- the arithmetic --------------------------------------------------------------------
def gcra(tat_us: int | None, now_us: int, interval_us: int,
         tolerance_us: int) -> tuple[bool, int | None]:
    """One GCRA step: (admitted, TAT after the decision), all in microseconds.

    `tat_us` None is a key without state. A refusal returns the TAT unchanged.
    The SQL store implements exactly this; keep the two in step. It is
    `gcra_take` asking for one admission.
    """
    granted, tat_after = gcra_take(tat_us, now_us, interval_us, tolerance_us)
    return granted == 1, tat_after


def gcra_take(tat_us: int | None, now_us: int, interval_us: int, tolerance_us: int,
              want: int = 1, give_back: int = 0, keep: int = 0) -> tuple[int, int | None]:
    """Several GCRA steps at once: (admissions granted, TAT after), all in microseconds.

    Gives back `give_back` unused admissions, decides one request as `gcra` does, and when it
    is admitted takes up to `want - 1` more while `keep` stay available. The Redis store
    implements exactly this; keep the two in step. See docs/leases.md.
    """
    if tat_us is not None and give_back:
        tat_us -= give_back * interval_us
    base = now_us if tat_us is None or tat_us < now_us else tat_us
    if base - now_us > tolerance_us:
        return 0, tat_us
    available = (tolerance_us - (base - now_us)) // interval_us + 1
    granted = max(1, min(want, available - keep))
    return granted, base + granted * interval_us


def gcra_charge(tat_us: int | None, now_us: int, interval_us: int, count: int) -> int:
    """Charge `count` admissions after the fact, whatever is left: the TAT after, in
    microseconds. It is `count` requests arriving at `now` and admitted beyond the
    tolerance, so the key's next requests are refused until the debt has replenished.
    The SQL and Redis stores implement exactly this; keep the three in step."""
    base = now_us if tat_us is None or tat_us < now_us else tat_us
    return base + count * interval_us


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, with what the response headers report."""

    allowed: bool
    policy: str
    limit: int       # q: the burst
    window: int      # w: seconds to refill the whole burst
    remaining: int   # r: requests admissible right now after this one
    reset: int       # t: seconds to full replenishment (admitted) or to the next admission
    fail_open: bool = False  # the store failed; admitted without consulting it

    @property
    def retry_after(self) -> int | None:
        """Whole seconds a refused client should wait (equals `reset`); None when admitted."""
        return None if self.allowed else self.reset

    def headers(self) -> dict[str, str]:
        """RateLimit-Policy and RateLimit (RFC 8941 items), plus Retry-After when refused."""
        name = self.policy
        headers = {
            "RateLimit-Policy": f'"{name}";q={self.limit};w={self.window}',
            "RateLimit": f'"{name}";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset)
        return headers


def decision_from_store(policy: Policy, allowed: bool, tat_after_us: int) -> Decision:
    """Turn a store's answer (admitted?, TAT - now after the decision) into a Decision."""
    interval = policy.interval_us
    if allowed:
        remaining = (policy.tolerance_us + interval - tat_after_us) // interval
        return Decision(True, policy.name, policy.quota, policy.window,
                        remaining if remaining > 0 else 0,
                        max(1, _ceil_div(tat_after_us, MICROS)))
    wait = tat_after_us - policy.tolerance_us
    return Decision(False, policy.name, policy.quota, policy.window, 0,
                    max(1, _ceil_div(wait, MICROS)))


def fresh_decision(policy: Policy) -> Decision:
    """What an admitted first request of a fresh key reports; used when failing open."""
    return Decision(True, policy.name, policy.quota, policy.window, policy.quota - 1,
                    max(1, _ceil_div(policy.interval_us, MICROS)), fail_open=True)


# --- stores ------------------------------------------------------------------------------
class Store(Protocol):
    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        """Admit or refuse one request for `key`: (admitted, TAT after - now, microseconds)."""

    def charge(self, key: str, interval_us: int, count: int) -> int:
        """Take `count` more admissions of `key` whatever is left (`gcra_charge`): TAT after
        - now, microseconds."""


class MemoryStore:
    """GCRA state in this process, on an injected clock (seconds). For tests and tools only:
    it is not shared between workers or instances, which the contract requires."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._lock = threading.Lock()

    def decide(self, key: str, interval_us: int, tolerance_us: int) -> tuple[bool, int]:
        granted, tat_after = self.take(key, interval_us, tolerance_us, 1, 0, 0)
        return granted == 1, tat_after

    def take(self, key: str, interval_us: int, tolerance_us: int, want: int, give_back: int,
             keep: int) -> tuple[int, int]:
        """`gcra_take` on this store's state: (admissions granted, TAT after - now)."""
        now = round(self._clock() * MICROS)
        with self._lock:
            granted, tat = gcra_take(self._tats.get(key), now, interval_us, tolerance_us,
                                     want, give_back, keep)
            if tat is None:  # refused without state: impossible, tau >= 0
                return 0, tolerance_us + interval_us
            self._tats[key] = tat
        return granted, tat - now

    def charge(self, key: str, interval_us: int, count: int) -> int:
        """`gcra_charge` on this store's state: the TAT after - now."""
        now = round(self._clock() * MICROS)
        with self._lock:
            tat = self._tats[key] = gcra_charge(self._tats.get(key), now, interval_us, count)
        return tat - now

    def give_back(self, returns: list[tuple[str, int, int]]) -> None:
        """Return unused admissions, (key, count, interval_us) each: TAT moves back."""
        now = round(self._clock() * MICROS)
        with self._lock:
            for key, count, interval_us in returns:
                tat = self._tats.get(key)
                if tat is None:
                    continue
                tat -= count * interval_us
                if tat > now:
                    self._tats[key] = tat
                else:
                    del self._tats[key]

    def purge_expired(self) -> int:
        now = round(self._clock() * MICROS)
        with self._lock:
            expired = [key for key, tat in self._tats.items() if tat < now]
            for key in expired:
                del self._tats[key]
        return len(expired)


# --- the facade --------------------------------------------------------------------------
class RateLimiter:
    """Per-request checks against the store, failing open when the store fails.

    `check(policy_name, key)` returns None for a disabled policy, else a Decision. Call it
    outside any database transaction. A failing store admits, counts, logs at most once per
    `log_every` and degrades health; with `remember_refusals` a refused key is refused again
    locally until its Retry-After. See docs/rate-limits.md.
    """

    REMEMBERED_MAX = 10_000  # refused keys one process remembers at most

    def __init__(self, user_policy: Policy, ip_policy: Policy, store: Store, metrics,
                 logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 log_every: float = 10.0, degraded_for: float = 60.0, tracing=None,
                 remember_refusals: bool = False):
        self._refused: dict[str, int] | None = {} if remember_refusals else None
        self._tracing = tracing  # app.ops.tracing.Tracing, or None when off
        self._policies = {p.name: (p if p.enabled else None) for p in (user_policy, ip_policy)}
        self.store = store
        self._metrics = metrics
        self._logger = logger
        self._clock = clock
        self._log_every = log_every
        self._degraded_for = degraded_for
        self._lock = threading.Lock()
        self._errors_total = 0
        self._unlogged = 0
        self._last_error_at: float | None = None
        self._last_logged_at: float | None = None
        self._last_error = ""

    @property
    def enabled(self) -> bool:
        """Whether any policy limits anything."""
        return any(p is not None for p in self._policies.values())

    def policy(self, name: str) -> Policy | None:
        """The enabled policy of that name, or None when it is disabled."""
        return self._policies[name]

    def check(self, policy_name: str, key: str) -> Decision | None:
        """Count one request of `key` under the named policy ("user" or "ip")."""
        policy = self._policies[policy_name]
        if policy is None:
            return None
        if self._tracing is None:
            return self._decide(policy_name, policy, key)
        with self._tracing.span("rate_limit", {"saypi.rate_limit.policy": policy_name}) as span:
            decision = self._decide(policy_name, policy, key)
            span.set_attributes({"saypi.rate_limit.allowed": decision.allowed,
                                 "saypi.rate_limit.fail_open": decision.fail_open})
        return decision

    def _decide(self, policy_name: str, policy: Policy, key: str) -> Decision:
        full_key = f"{policy_name}:{key}"
        refused = self._refused
        if refused is not None and full_key in refused:
            now = round(self._clock() * MICROS)
            tat = refused.get(full_key)
            if tat is not None and tat - policy.tolerance_us > now:
                self._metrics.rate_limited.labels(policy_name).inc()
                return decision_from_store(policy, False, tat - now)
            refused.pop(full_key, None)
        try:
            allowed, tat_after = self.store.decide(full_key, policy.interval_us,
                                                   policy.tolerance_us)
        except Exception as exc:  # fail open: any store failure admits the request
            self._store_failed(exc)
            return fresh_decision(policy)
        if not allowed:
            self._metrics.rate_limited.labels(policy_name).inc()
            if refused is not None:
                self._remember(refused, full_key, tat_after)
        return decision_from_store(policy, allowed, tat_after)

    def _remember(self, refused: dict[str, int], key: str, tat_after: int) -> None:
        now = round(self._clock() * MICROS)
        if len(refused) >= self.REMEMBERED_MAX:
            with self._lock:  # forget the refusals that have passed (or all, if none has)
                for old, tat in list(refused.items()):
                    if tat <= now:
                        refused.pop(old, None)
                if len(refused) >= self.REMEMBERED_MAX:
                    refused.clear()
        refused[key] = now + tat_after

    def charge(self, policy_name: str, key: str, count: int) -> Decision | None:
        """Charge `count` more admissions to a request already admitted, for the work it
        caused (renders missed): the key's next requests pay for it. The Decision reports
        the state after the charge; None when the policy is disabled or the store failed
        (the charge is then forgiven, as a failing store admits)."""
        policy = self._policies[policy_name]
        if policy is None or count < 1:
            return None
        try:
            tat_after = self.store.charge(f"{policy_name}:{key}", policy.interval_us, count)
        except Exception as exc:
            self._store_failed(exc)
            return None
        self._metrics.rate_limit_charged.labels(policy_name).inc(count)
        return decision_from_store(policy, True, tat_after)

    def _store_failed(self, exc: Exception) -> None:
        self._metrics.rate_limit_store_errors.inc()
        now = self._clock()
        with self._lock:
            self._errors_total += 1
            self._last_error_at = now
            self._last_error = type(exc).__name__
            if self._last_logged_at is not None and now - self._last_logged_at < self._log_every:
                self._unlogged += 1
                return
            self._last_logged_at = now
            suppressed, self._unlogged = self._unlogged, 0
        self._logger.warning(
            "rate-limit store failed, request allowed (fail open): %s: %s "
            "(%d earlier failures not logged)", type(exc).__name__, exc, suppressed,
            extra={"rate_limit_store_error": type(exc).__name__})

    def health(self) -> tuple[str, str, dict[str, Any]]:
        """(status, message, details) for the health checker's "rate_limit_store" component."""
        with self._lock:
            errors, last_at, last_error = self._errors_total, self._last_error_at, \
                self._last_error
        details: dict[str, Any] = {
            "policies": {name: ({"per_minute": p.per_minute, "burst": p.quota}
                                if p is not None else "disabled")
                         for name, p in self._policies.items()},
            "store_errors": errors,
        }
        if not self.enabled:
            return HEALTHY, "rate limiting is disabled", details
        if last_at is not None:
            ago = self._clock() - last_at
            details["last_error"] = last_error
            details["last_error_seconds_ago"] = round(ago, 1)
            if ago < self._degraded_for:
                return (DEGRADED, "the rate-limit store is failing; requests are allowed "
                        "(fail open)", details)
        return HEALTHY, f"no store errors in the last {self._degraded_for:g}s", details
