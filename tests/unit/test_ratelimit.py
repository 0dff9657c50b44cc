"""GCRA arithmetic, decisions, headers, the limiter facade and client addresses, on a fake clock."""

from __future__ import annotations

import logging
import re
from ipaddress import ip_network

import pytest

from app.http.client_addr import client_address, parse_address
from app.http.ratelimit import (
    MICROS,
    Decision,
    MemoryStore,
    Policy,
    RateLimiter,
    decision_from_store,
    gcra,
    policies_from_config,
)
from app.ops.periodic import Periodic


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCounter:
    def __init__(self):
        self.value = 0
        self.by_label: dict[str, int] = {}

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def labels(self, label: str) -> FakeCounter:
        counter = self

        class Child:
            def inc(self, amount: int = 1) -> None:
                counter.value += amount
                counter.by_label[label] = counter.by_label.get(label, 0) + amount

        return Child()


class FakeMetrics:
    def __init__(self):
        self.rate_limited = FakeCounter()
        self.rate_limit_store_errors = FakeCounter()
        self.rate_limit_charged = FakeCounter()


def limiter(user=(60, 5), ip=(60, 5), clock=None, store=None, metrics=None, **kw):
    clock = clock or Clock()
    return RateLimiter(Policy("user", *user), Policy("ip", *ip),
                       store if store is not None else MemoryStore(clock),
                       metrics or FakeMetrics(), logging.getLogger("test.ratelimit"),
                       clock=clock, **kw)


# --- RFC 8941 checker (just the grammar these headers use) ------------------------------
_SF_KEY = r"[a-z*][a-z0-9_.*-]*"
_SF_BARE = r'(?:-?[0-9]{1,15}(?:\.[0-9]{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"' \
           r"|[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]*|\?[01])"
_SF_ITEM = re.compile(rf"{_SF_BARE}(?:;{_SF_KEY}(?:={_SF_BARE})?)*")


def parse_sf_item(text: str) -> tuple[str, dict[str, object]]:
    """Parse an RFC 8941 Item whose bare item is a string; params as ints where they are."""
    assert _SF_ITEM.fullmatch(text), f"not an RFC 8941 item: {text!r}"
    bare, *params = text.split(";")
    assert bare.startswith('"') and bare.endswith('"')
    parsed: dict[str, object] = {}
    for param in params:
        key, _, value = param.partition("=")
        assert key not in parsed, f"duplicate parameter {key}"
        parsed[key] = int(value) if re.fullmatch(r"-?[0-9]+", value) else value
    return bare[1:-1], parsed


# --- policies ------------------------------------------------------------------------------
def test_policy_derives_interval_tolerance_quota_and_window():
    p = Policy("user", 600, 60)
    assert p.interval_us == 100_000  # T = 0.1 s
    assert p.tolerance_us == 59 * 100_000
    assert (p.quota, p.window) == (60, 6)
    p = Policy("ip", 7, 3)  # T = 8.571428 s, 3 T = 25.7 s
    assert p.interval_us == 8_571_429
    assert (p.quota, p.window) == (3, 26)


def test_burst_zero_means_one_and_rate_zero_disables():
    assert Policy("user", 60, 0).quota == 1
    assert Policy("user", 60, 0).tolerance_us == 0
    assert not Policy("user", 0, 10).enabled
    assert Policy("user", 1, 1).enabled
    with pytest.raises(ValueError):
        Policy("nobody", 1, 1)
    with pytest.raises(ValueError):
        Policy("user", -1, 1)


def test_policies_from_config():
    class Config:
        rate_limit_user_per_minute, rate_limit_user_burst = 600, 60
        rate_limit_ip_per_minute, rate_limit_ip_burst = 0, 30

    user, ip = policies_from_config(Config)
    assert (user.name, user.per_minute, user.burst) == ("user", 600, 60)
    assert (ip.name, ip.enabled) == ("ip", False)


# --- the pure step ---------------------------------------------------------------------------
def test_gcra_step():
    T, tau = 1_000_000, 2_000_000
    assert gcra(None, 0, T, tau) == (True, T)
    assert gcra(-5, 0, T, tau) == (True, T)            # a TAT in the past is the fresh state
    assert gcra(tau, 0, T, tau) == (True, tau + T)     # exactly at the tolerance: admitted
    assert gcra(tau + 1, 0, T, tau) == (False, tau + 1)  # one microsecond over: refused


@pytest.mark.parametrize(("per_minute", "burst"), [(60, 1), (60, 5), (600, 60), (7, 3), (1, 10),
                                                   (100_000, 50), (60, 0)])
def test_exactly_burst_admitted_back_to_back_then_one_per_interval(per_minute, burst):
    policy = Policy("user", per_minute, burst)
    clock = Clock()
    store = MemoryStore(clock)
    rl = limiter(user=(per_minute, burst), clock=clock, store=store)
    admitted = [rl.check("user", "u1").allowed for _ in range(policy.quota + 3)]
    assert admitted == [True] * policy.quota + [False] * 3
    for _ in range(5):
        # just short of one interval: still refused; at the interval: exactly one more
        clock.advance((policy.interval_us - 1) / MICROS)
        assert not rl.check("user", "u1").allowed
        clock.advance(1 / MICROS)
        assert rl.check("user", "u1").allowed
        assert not rl.check("user", "u1").allowed


def test_idle_key_earns_back_one_per_interval_up_to_the_burst():
    clock = Clock()
    rl = limiter(user=(60, 5), clock=clock)  # T = 1 s
    for _ in range(5):
        rl.check("user", "u")
    clock.advance(2.0)
    assert [rl.check("user", "u").allowed for _ in range(3)] == [True, True, False]
    clock.advance(3600)
    assert [rl.check("user", "u").allowed for _ in range(6)] == [True] * 5 + [False]


def test_keys_and_policies_are_independent():
    clock = Clock()
    rl = limiter(user=(60, 1), ip=(60, 1), clock=clock)
    assert rl.check("user", "a").allowed
    assert not rl.check("user", "a").allowed
    assert rl.check("user", "b").allowed
    assert rl.check("ip", "a").allowed  # same key string, other policy


# --- decisions and headers ---------------------------------------------------------------------
def test_remaining_and_reset_through_a_burst():
    clock = Clock()
    rl = limiter(user=(60, 3), clock=clock)  # T = 1 s, B = 3, w = 3
    d = [rl.check("user", "u") for _ in range(4)]
    assert [(x.allowed, x.remaining, x.reset) for x in d] == [
        (True, 2, 1), (True, 1, 2), (True, 0, 3), (False, 0, 1)]
    assert [x.retry_after for x in d] == [None, None, None, 1]
    assert all((x.limit, x.window, x.policy) == (3, 3, "user") for x in d)
    clock.advance(0.25)
    refused = rl.check("user", "u")
    assert (refused.allowed, refused.reset) == (False, 1)  # 0.75 s rounds up to 1
    clock.advance(0.75)
    admitted = rl.check("user", "u")
    assert (admitted.allowed, admitted.remaining, admitted.reset) == (True, 0, 3)
    clock.advance(1.5)  # half an interval past one more
    partial = rl.check("user", "u")
    assert (partial.allowed, partial.remaining, partial.reset) == (True, 0, 3)  # 2.5 s -> 3
    assert rl.check("user", "u").allowed is False


def test_retry_after_rounds_up_whole_seconds():
    clock = Clock()
    rl = limiter(user=(7, 1), clock=clock)  # T = 8.571429 s
    assert rl.check("user", "u").allowed
    refused = rl.check("user", "u")
    assert (refused.allowed, refused.reset, refused.retry_after) == (False, 9, 9)
    clock.advance(8.5)
    refused = rl.check("user", "u")
    assert refused.retry_after == 1  # 0.071429 s still a whole second
    clock.advance(0.071429)
    assert rl.check("user", "u").allowed


def test_long_waits_are_exact():
    policy = Policy("ip", 1, 1)  # T = 60 s
    d = decision_from_store(policy, False, 60 * MICROS)
    assert d.reset == 60
    d = decision_from_store(policy, False, 60 * MICROS + 1)
    assert d.reset == 61
    d = decision_from_store(policy, True, 60 * MICROS)
    assert (d.remaining, d.reset) == (0, 60)


def test_headers_are_the_contracts_structured_fields():
    clock = Clock()
    rl = limiter(user=(600, 60), ip=(120, 30), clock=clock)
    headers = rl.check("user", "u").headers()
    assert headers == {"RateLimit-Policy": '"user";q=60;w=6', "RateLimit": '"user";r=59;t=1'}
    assert parse_sf_item(headers["RateLimit-Policy"]) == ("user", {"q": 60, "w": 6})
    assert parse_sf_item(headers["RateLimit"]) == ("user", {"r": 59, "t": 1})
    for _ in range(29):
        rl.check("ip", "1.2.3.4")
    last = rl.check("ip", "1.2.3.4").headers()  # the 30th: the end of the burst
    assert last == {"RateLimit-Policy": '"ip";q=30;w=15', "RateLimit": '"ip";r=0;t=15'}
    headers = rl.check("ip", "1.2.3.4").headers()
    assert headers == {"RateLimit-Policy": '"ip";q=30;w=15', "RateLimit": '"ip";r=0;t=1',
                       "Retry-After": "1"}
    assert parse_sf_item(headers["RateLimit"]) == ("ip", {"r": 0, "t": 1})
    assert headers["Retry-After"] == str(Decision(False, "ip", 30, 15, 0, 1).reset)


def test_sf_checker_rejects_malformed_items():
    for bad in ['user;q=1', '"user";Q=1', '"user";q=1.2345', '"user" ;q=1', '"user";q=1;']:
        with pytest.raises(AssertionError):
            parse_sf_item(bad)


def test_disabled_policy_returns_none_and_touches_no_store():
    class Exploding:
        def decide(self, *args):
            raise AssertionError("store used for a disabled policy")

    rl = limiter(user=(0, 10), ip=(0, 5), store=Exploding())
    assert rl.check("user", "u") is None
    assert rl.check("ip", "1.2.3.4") is None
    assert rl.policy("user") is None
    assert not rl.enabled
    assert rl.health()[0] == "healthy"


def test_refusals_are_counted_per_policy():
    metrics = FakeMetrics()
    rl = limiter(user=(60, 2), ip=(60, 1), metrics=metrics)
    for _ in range(5):
        rl.check("user", "u")
        rl.check("ip", "a")
    assert metrics.rate_limited.by_label == {"user": 3, "ip": 4}
    assert metrics.rate_limit_store_errors.value == 0


# --- failing open -------------------------------------------------------------------------------
class BrokenStore:
    def __init__(self):
        self.broken = True
        self.inner = MemoryStore()

    def decide(self, key, interval_us, tolerance_us):
        if self.broken:
            raise ConnectionError("store down")
        return self.inner.decide(key, interval_us, tolerance_us)


def test_store_failure_fails_open_counts_logs_rarely_and_reports_degraded(caplog):
    clock, metrics, store = Clock(), FakeMetrics(), BrokenStore()
    rl = limiter(user=(60, 1), clock=clock, store=store, metrics=metrics, log_every=10.0)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        decisions = [rl.check("user", "u") for _ in range(50)]
    assert all(d.allowed and d.fail_open for d in decisions)
    assert decisions[0].headers() == {"RateLimit-Policy": '"user";q=1;w=1',
                                      "RateLimit": '"user";r=0;t=1'}
    assert metrics.rate_limit_store_errors.value == 50
    assert metrics.rate_limited.value == 0
    assert len(caplog.records) == 1
    assert "fail open" in caplog.records[0].getMessage()
    status, message, details = rl.health()
    assert status == "degraded" and "fail open" in message
    assert details["store_errors"] == 50 and details["last_error"] == "ConnectionError"

    clock.advance(11)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        rl.check("user", "u")
    assert len(caplog.records) == 2
    assert "49 earlier failures not logged" in caplog.records[1].getMessage()

    store.broken = False
    assert rl.check("user", "u").fail_open is False
    assert rl.health()[0] == "degraded"  # an error 0 s ago
    clock.advance(61)
    assert rl.health()[0] == "healthy"


def test_health_when_all_is_well():
    status, _message, details = limiter().health()
    assert status == "healthy"
    assert details["policies"] == {"user": {"per_minute": 60, "burst": 5},
                                   "ip": {"per_minute": 60, "burst": 5}}


def test_the_periodic_purge_survives_a_failing_job():
    """The janitor app/wiring.py runs (Periodic) logs a failing purge and still runs the
    others, then and on later rounds."""
    clock = Clock()
    store = MemoryStore(clock)
    failures = []

    def failing_purge():
        failures.append(1)
        raise OSError("down")

    janitor = Periodic("janitor", 60, [failing_purge, store.purge_expired],
                       logging.getLogger("test.ratelimit"))
    store.decide("a", MICROS, 0)
    clock.advance(2)
    janitor.run_once()
    assert store.purge_expired() == 0  # the janitor purged it despite the failure before
    store.decide("b", MICROS, 0)
    clock.advance(2)
    janitor.run_once()
    assert store.purge_expired() == 0
    assert len(failures) == 2


def test_memory_store_purges_only_the_past():
    clock = Clock()
    store = MemoryStore(clock)
    store.decide("a", MICROS, 0)
    store.decide("b", 10 * MICROS, 0)
    clock.advance(2)
    assert store.purge_expired() == 1
    assert store.decide("b", 10 * MICROS, 0)[0] is False


# --- client address ---------------------------------------------------------------------------
TRUSTED = (ip_network("10.0.0.0/8"), ip_network("192.168.1.1/32"), ip_network("fd00::/8"))


@pytest.mark.parametrize(("peer", "xff", "trusted", "expected"), [
    # no trusted proxies: the header is never believed
    ("203.0.113.9", "1.1.1.1", (), "203.0.113.9"),
    # an untrusted peer: header ignored
    ("203.0.113.9", "1.1.1.1", TRUSTED, "203.0.113.9"),
    # trusted peer, no header
    ("10.0.0.1", None, TRUSTED, "10.0.0.1"),
    ("10.0.0.1", "", TRUSTED, "10.0.0.1"),
    # the right-most untrusted entry; the client's own (spoofable) entries are ignored
    ("10.0.0.1", "6.6.6.6, 1.1.1.1", TRUSTED, "1.1.1.1"),
    ("10.0.0.1", "6.6.6.6, 1.1.1.1, 10.2.3.4, 192.168.1.1", TRUSTED, "1.1.1.1"),
    # every entry trusted: the left-most
    ("10.0.0.1", "10.9.9.9, 192.168.1.1", TRUSTED, "10.9.9.9"),
    # malformed entries: the walk stops at the nearest vouched-for address
    ("10.0.0.1", "1.1.1.1, garbage", TRUSTED, "10.0.0.1"),
    ("10.0.0.1", "1.1.1.1, unknown, 10.5.5.5", TRUSTED, "10.5.5.5"),
    ("10.0.0.1", "garbage, 1.1.1.1", TRUSTED, "1.1.1.1"),
    ("10.0.0.1", "1.1.1.1,,", TRUSTED, "10.0.0.1"),
    ("10.0.0.1", "999.1.1.1", TRUSTED, "10.0.0.1"),
    # ports, brackets, IPv6, IPv4-mapped
    ("10.0.0.1", "1.1.1.1:5555", TRUSTED, "1.1.1.1"),
    ("10.0.0.1", "[2001:db8::1]:443", TRUSTED, "2001:db8::1"),
    ("10.0.0.1", "2001:DB8:0::1", TRUSTED, "2001:db8::1"),
    ("fd00::5", "::ffff:198.51.100.7", TRUSTED, "198.51.100.7"),
    ("::ffff:10.0.0.1", "198.51.100.7", TRUSTED, "198.51.100.7"),
    ("10.0.0.1", "[2001:db8::1", TRUSTED, "10.0.0.1"),
    ("10.0.0.1", "1.1.1.1:http", TRUSTED, "10.0.0.1"),
    # an unparseable peer (unix socket): as given
    ("", "1.1.1.1", TRUSTED, ""),
])
def test_client_address(peer, xff, trusted, expected):
    assert client_address(peer, xff, trusted) == expected


def test_parse_address_bounds_its_input():
    assert parse_address("1" * 1000) is None
    assert parse_address(" 1.2.3.4 ") is not None


class CountingMemoryStore(MemoryStore):
    def __init__(self, clock):
        super().__init__(clock)
        self.decisions = 0

    def decide(self, key, interval_us, tolerance_us):
        self.decisions += 1
        return super().decide(key, interval_us, tolerance_us)


def test_a_remembered_refusal_skips_the_store_until_its_retry_after():
    clock = Clock()
    store = CountingMemoryStore(clock)
    metrics = FakeMetrics()
    limits = limiter(user=(60, 2), clock=clock, store=store, metrics=metrics,
                     remember_refusals=True)
    assert [limits.check("user", "u").allowed for _ in range(3)] == [True, True, False]
    asked = store.decisions
    again = [limits.check("user", "u") for _ in range(5)]
    assert not any(d.allowed for d in again) and store.decisions == asked  # no store call
    assert {d.retry_after for d in again} == {1} and metrics.rate_limited.value == 6
    clock.advance(1.0)  # T = 1 s: the next admission is due
    assert limits.check("user", "u").allowed and store.decisions == asked + 1
    assert limits.check("user", "other").allowed  # other keys are not affected


def test_a_charge_is_a_debt_the_next_requests_wait_for():
    clock = Clock()
    metrics = FakeMetrics()
    limits = limiter(user=(60, 5), clock=clock, metrics=metrics)
    assert limits.check("user", "u").allowed
    after = limits.charge("user", "u", 9)  # the request's work: 9 more admissions
    assert after.allowed and after.remaining == 0 and after.reset == 10
    refused = limits.check("user", "u")
    assert not refused.allowed and refused.retry_after == 6  # 10 s of TAT, 4 of tolerance
    assert metrics.rate_limit_charged.by_label == {"user": 9}
    clock.advance(6.0)
    assert limits.check("user", "u").allowed
    assert limits.charge("ip", "u", 0) is None
