"""Webhooks' arithmetic without I/O: signatures (checked by the standardwebhooks package),
the retry schedule, the three-day rule on a clock the test sets, patterns, URL and address
rules, how a receiver's answer reads; and attempts' deadlines, on socket pairs."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook

from app.config import Config
from app.deps import outbound_policy
from app.domain.events import TYPES
from app.domain.webhooks import (
    JITTER,
    RETRY_SCHEDULE,
    Claimed,
    Recorded,
    address_problem,
    disable_reason,
    host_form_problem,
    matches,
    new_secret,
    pattern_ok,
    retry_delay,
    sign,
)
from app.http.outbound import OutboundPolicy, SlowName, resolver
from app.relay.webhooks import (
    Attempt,
    Deadlines,
    IdleGate,
    WebhookDelivery,
    WebhookMetrics,
    outcome_of,
    parse_retry_after,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_signatures_verify_with_an_independent_implementation_for_every_secret():
    old, new = new_secret(), new_secret()
    body = '{"id":"evt_1","type":"ping","data":{"object":{"text":"Moo \\u00e9"}}}'
    timestamp = int(datetime.now(UTC).timestamp())
    header = sign((new, old), "evt_1", timestamp, body)
    assert header.count("v1,") == 2
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(timestamp),
               "webhook-signature": header}
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers)["type"] == "ping"
    assert Webhook(old).sign("evt_1", datetime.fromtimestamp(timestamp, UTC), body) == \
        sign((old,), "evt_1", timestamp, body)


def test_the_schedule_is_the_contracts_with_jitter_and_then_gives_up():
    assert RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000, 36000)
    rng = random.Random(1)
    for attempt, wait in enumerate(RETRY_SCHEDULE, start=1):
        for _ in range(50):
            delay = retry_delay(attempt, RETRY_SCHEDULE, rng)
            assert delay is not None
            assert wait * (1 - JITTER) <= delay <= wait * (1 + JITTER)
    assert retry_delay(len(RETRY_SCHEDULE) + 1, RETRY_SCHEDULE, rng) is None


def test_a_longer_retry_after_is_honoured_and_capped():
    rng = random.Random(2)
    assert retry_delay(1, RETRY_SCHEDULE, rng, retry_after=120) == 120
    assert retry_delay(2, RETRY_SCHEDULE, rng, retry_after=1) >= 300 * (1 - JITTER)
    assert retry_delay(1, RETRY_SCHEDULE, rng, retry_after=10**9) == 36000


def test_an_endpoint_failing_for_three_days_is_disabled_on_the_clock_given():
    assert disable_reason(None, NOW) is None
    assert disable_reason(NOW - timedelta(hours=71, minutes=59), NOW) is None
    assert disable_reason(NOW - timedelta(hours=72), NOW) == \
        "Every delivery failed for 72 hours."
    assert disable_reason(NOW - timedelta(hours=2), NOW, timedelta(hours=1)) == \
        "Every delivery failed for 1 hours."


def test_patterns():
    for good in ("*", "line.*", "line.created", "mood.deleted"):
        assert pattern_ok(good, TYPES), good
    for bad in ("line.exploded", "x.*", "line", "*.created", "line.**", ""):
        assert not pattern_ok(bad, TYPES), bad
    assert matches(("line.*",), "line.deleted") and matches(("*",), "ping")
    assert not matches(("line.*", "mood.created"), "mood.deleted")


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1",
                                  "017700000001", "0x7f000001", "127.000.0.1"])
def test_numbers_that_are_not_dotted_quads_are_refused(host):
    assert host_form_problem(host) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "93.184.216.34", "example.com", "1e100.net",
                                  "deadbeef.cafe", "::1", "123.example"])
def test_names_and_dotted_quads_pass_the_form_check(host):
    assert host_form_problem(host) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1",
                                     "172.16.5.4", "192.168.1.1", "224.0.0.1", "0.0.0.0", "::",
                                     "::ffff:127.0.0.1", "fe80::1", "fc00::1", "100.64.0.1",
                                     "ff02::1", "240.0.0.1"])
def test_inside_addresses_are_refused_unless_allowed(address):
    assert address_problem(address, allow_private=False) is not None
    assert address_problem(address, allow_private=True) is None


def test_public_addresses_pass():
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"):
        assert address_problem(address, allow_private=False) is None


def static(table: dict[str, str]):
    return lambda host, port: [table[host]] if host in table else []


def test_production_wants_https_and_every_address_checked():
    policy = OutboundPolicy(https_only=True, allow_private=False,
                            resolve=static({"hooks.example": "93.184.216.34",
                                            "inside.example": "10.0.0.1"}))
    assert policy.problem("https://hooks.example/x") is None
    assert policy.problem("http://hooks.example/x") == "must be an absolute https URL"
    assert "10.0.0.1" in policy.problem("https://inside.example/x")
    assert "does not resolve" in policy.problem("https://nowhere.example/x")
    assert policy.problem("https://u:p@hooks.example/") is not None
    dest, problem = policy.destination("https://hooks.example:8443/a/b?c=1")
    assert problem is None and dest is not None
    assert (dest.host, dest.port, dest.target, dest.addresses) == (
        "hooks.example", 8443, "/a/b?c=1", ("93.184.216.34",))


def test_how_answers_read():
    assert outcome_of(204, None, 3).succeeded
    gone = outcome_of(410, None, 3)
    assert gone.gone and not gone.succeeded
    assert "redirects are not followed" in outcome_of(302, None, 3).error
    assert outcome_of(503, "7", 3).retry_after == 7
    assert outcome_of(429, "7", 3).retry_after == 7
    assert outcome_of(500, "7", 3).retry_after is None  # only on 429 and 503
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None


def test_retry_after_takes_only_ascii_digits():
    assert parse_retry_after("²") is None and parse_retry_after("١٢") is None
    assert outcome_of(503, "²", 3).retry_after is None
    assert parse_retry_after(" 12 ") == 12


def test_internationalised_hosts_go_out_in_their_idna_form():
    policy = OutboundPolicy(https_only=True, allow_private=False,
                            resolve=static({"xn--r8jz45g.jp": "93.184.216.34"}))
    assert policy.problem("https://例え.jp/hook") is None
    dest, problem = policy.destination("https://例え.JP:8443/hook")
    assert problem is None and dest is not None
    assert (dest.host, dest.addresses) == ("xn--r8jz45g.jp", ("93.184.216.34",))
    assert policy.problem(f"https://{'例' * 70}.jp/hook") == \
        "must name a host that has an IDNA (ASCII) form"
    assert resolver({"例え.jp": "93.184.216.34"}, 1.0)("xn--r8jz45g.jp", 443) == \
        ["93.184.216.34"]


class StuckLookup:
    """A system resolver that answers only when the test lets it, counting its calls."""

    def __init__(self):
        self.calls = 0
        self.answer = threading.Event()

    def __call__(self, host, port):
        self.calls += 1
        self.answer.wait()
        return ["93.184.216.34"]


def test_a_name_that_resolves_too_slowly_is_refused_and_frees_its_thread_later():
    lookup = StuckLookup()
    resolve = resolver({}, 0.05, at_once=2, lookup=lookup)
    policy = OutboundPolicy(https_only=True, allow_private=False, resolve=resolve)
    assert policy.problem("https://slow.example/hook") == \
        "has a host that does not resolve in time (slow.example)"
    with pytest.raises(SlowName):
        resolve("slow.example", 443)
    # Both threads are held by lookups still under way: a third caller is refused
    # without starting another.
    with pytest.raises(SlowName):
        resolve("slow.example", 443)
    assert lookup.calls == 2
    lookup.answer.set()
    for _ in range(200):  # the stuck lookups finish and hand their threads back
        try:
            assert resolve("slow.example", 443) == ["93.184.216.34"]
            break
        except SlowName:
            continue
    else:
        raise AssertionError("the lookup threads never came back")


def test_a_lookup_error_reads_as_a_host_that_does_not_resolve():
    def failing(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    policy = OutboundPolicy(https_only=False, allow_private=False,
                            resolve=resolver({}, 1.0, lookup=failing))
    assert policy.problem("http://nowhere.example/x") == \
        "has a host that does not resolve (nowhere.example)"


class Recording:
    """A WebhookQueue stand-in that keeps what is recorded."""

    def __init__(self):
        self.records: list[tuple] = []

    def record(self, claimed, outcome, delay, *now):
        self.records.append((claimed, outcome, delay))
        return Recorded(True, False)


class Raising:
    timeout = 1.0

    def send(self, url, headers, body):
        raise UnicodeEncodeError("latin-1", "例", 0, 1, "ordinal not in range(256)")


def test_an_attempt_that_raises_is_recorded_as_a_failure_and_retried():
    queue = Recording()
    delivery = WebhookDelivery(1, queue, Raising(), RETRY_SCHEDULE,
                               WebhookMetrics(CollectorRegistry()), logging.getLogger("test"),
                               IdleGate(1.0), rng=random.Random(3))
    claimed = Claimed(1, 7, 1, 2, "https://hooks.example/x", "evt_1", "{}",
                      (new_secret(),), False, NOW)
    delivery.deliver(claimed)
    [(_, outcome, delay)] = queue.records
    assert not outcome.succeeded and outcome.error == "internal error: UnicodeEncodeError"
    assert delay is not None and delay == pytest.approx(5, rel=JITTER)


def test_production_wants_https_even_where_private_addresses_are_allowed():
    env = {"APP_ENV": "production", "DATABASE_URL": "postgresql://saypi@127.0.0.1/saypi",
           "USER_SECRETS": "k1:" + "a" * 64, "WEBHOOK_ALLOW_PRIVATE": "true",
           "WEBHOOK_RESOLVE": "hooks.inside=10.0.0.1"}
    policy = outbound_policy(Config.from_env(env, ["relay"]))
    assert policy.problem("http://hooks.inside/x") == "must be an absolute https URL"
    assert policy.problem("https://hooks.inside/x") is None  # private, as allowed
    development = outbound_policy(Config.from_env(
        {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_RESOLVE": "hooks.inside=10.0.0.1"}, []))
    assert development.problem("http://hooks.inside/x") is None


@pytest.mark.parametrize("address", ["2002:7f00:1::1", "2002:a00:1::", "2002:a9fe:a9fe::1",
                                     "2001:0:4136:e378:8000:63bf:80ff:fffe",
                                     "2001:0:4136:e378:8000:63bf:f5ff:fffe"])
def test_6to4_and_teredo_addresses_carrying_inside_ones_are_refused(address):
    problem = address_problem(address, allow_private=False)
    assert problem is not None and problem.startswith(f"resolves to {address}")
    assert address_problem(address, allow_private=True) is None


def test_6to4_carrying_a_public_address_passes():
    assert address_problem("2002:5db8:d822::1", allow_private=False) is None
    assert "carrying 127.0.0.1" in address_problem("2002:7f00:1::1", allow_private=False)


def test_an_idle_gate_stays_quiet_until_the_next_delivery_is_due():
    gate = IdleGate(0.05, longest=1.0)
    assert not gate.quiet()
    gate.idle(None)  # nothing pending: the longest wait
    assert gate.quiet() and 0.9 < gate.quiet_until - time.monotonic() <= 1.0
    gate.due_in(0.2)  # a retry recorded meanwhile brings it forward
    assert gate.quiet_until - time.monotonic() <= 0.2
    gate.idle(30.0)  # the next due in 30 s: still the longest wait
    assert gate.quiet_until - time.monotonic() <= 1.0
    gate.idle(-5.0)  # due ones another claim holds: a poll
    assert gate.quiet_until - time.monotonic() <= 0.05
    gate.quiet_until = time.monotonic() - 1.0  # the wait is over:
    assert not gate.quiet()  # one thread claims,
    assert gate.quiet()  # the others wait for what it finds
    gate.open()  # it found work: all of them claim
    assert not gate.quiet() and not gate.quiet()


class Connection:
    """What an Attempt watches: something with a socket (one end of a socketpair)."""

    def __init__(self):
        self.sock, self.peer = socket.socketpair()

    def is_shut(self) -> bool:
        self.peer.setblocking(False)
        try:
            return self.peer.recv(1) == b""  # the other end shut down: end of stream
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


def until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_one_thread_shuts_each_attempt_down_at_its_deadline_and_leaves_ended_ones():
    deadlines = Deadlines()
    threads = threading.active_count()
    try:
        late = [Attempt(1.0 + 0.02 * n, deadlines) for n in range(20)]
        ended = [Attempt(1.0, deadlines) for _ in range(20)]
        connections = [Connection() for _ in range(40)]
        for attempt, connection in zip(late + ended, connections, strict=True):
            attempt.watch(connection)
        for attempt in ended:
            attempt.end()
        assert threading.active_count() == threads + 1  # 40 attempts, one thread
        assert not any(c.is_shut() for c in connections) and not any(a.expired for a in late)
        assert until(lambda: all(a.expired for a in late))
        assert all(c.is_shut() for c in connections[:20])
        assert not any(a.expired for a in ended)
        assert not any(c.is_shut() for c in connections[20:])
        # A deadline earlier than every waiting one is not held up behind them.
        far, near = Attempt(30, deadlines), Attempt(0.1, deadlines)
        watched = Connection()
        near.watch(watched)
        assert until(lambda: near.expired, 5) and watched.is_shut() and not far.expired
        # Past its deadline, a connection is shut as it is watched.
        joining = Connection()
        near.watch(joining)
        assert joining.is_shut()
        for connection in (*connections, watched, joining):
            connection.close()
    finally:
        deadlines.close()
    assert threading.active_count() == threads
