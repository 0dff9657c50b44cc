"""The relay's webhook tasks: fan-out (events -> deliveries, in the feed's transaction),
delivery (claim, sign, POST, record) on several threads, and the queue's gauges.

Sent with urllib3, to the address checked at each attempt; docs/webhooks.md says why.
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.api.events import event_id, event_json
from app.cowsay.cache import Renderer
from app.domain.webhooks import Claimed, Outcome, matches, retry_delay, sign
from app.http.outbound import Destination, OutboundPolicy
from app.store.event_feed import EventFeed
from app.store.webhooks import WebhookQueue

MAX_RESPONSE_BYTES = 64 * 1024  # read of a receiver's answer, at most
LEASE_MARGIN_SECONDS = 5.0  # a claim's lease: twice the timeout plus this
MAX_POOLS = 256  # destinations kept with open connections
CLAIM_BATCH = 16  # deliveries a delivery thread claims at once
# A batch's attempts begin within this of its claim; the rest go back for the other threads
# (a fast receiver takes a whole batch in far less; a slow one's is shared out).
BATCH_SECONDS = 0.25
# The queue's gauges are sampled this often at least: their statement reads every pending
# delivery's index entry (with 50,000 pending, about 20 ms), and the alerts wait minutes.
GAUGE_SECONDS = 5.0
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class WebhookMetrics:
    """The relay's webhook figures, in its registry."""

    OUTCOMES = ("succeeded", "failed_retrying", "failed_final", "gone", "taken_over")

    def __init__(self, registry: CollectorRegistry):
        self.deliveries = Counter("saypi_webhook_deliveries", "Delivery attempts, by outcome.",
                                  ["outcome"], registry=registry)
        for outcome in self.OUTCOMES:
            self.deliveries.labels(outcome)
        self.duration = Histogram(
            "saypi_webhook_delivery_duration_seconds",
            "Seconds each delivery attempt took, from resolving the host to the answer read.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.lag = Histogram(
            "saypi_webhook_delivery_lag_seconds",
            "Seconds from an event's fan-out to its successful delivery, retries included.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000,
                     172800), registry=registry)
        self.purged = Counter("saypi_webhook_deliveries_purged",
                              "Finished deliveries deleted after the retention.",
                              registry=registry)
        self.queue_depth = Gauge("saypi_webhook_queue_depth", "Pending deliveries.",
                                 registry=registry)
        self.oldest_pending = Gauge("saypi_webhook_oldest_pending_seconds",
                                    "Age of the oldest pending delivery (0: none).",
                                    registry=registry)
        self.oldest_due = Gauge(
            "saypi_webhook_oldest_due_seconds",
            "How late the most overdue delivery a relay could claim is (0: none): the "
            "relays are behind.", registry=registry)
        self.breakers_open = Gauge("saypi_webhook_breakers_open",
                                   "Endpoints whose circuit breaker is open.", registry=registry)
        self.fanned_out = Counter("saypi_webhook_fanned_out",
                                  "Deliveries created from events.", registry=registry)


class IdleGate:
    """Shared by one relay's delivery threads. Once a claim found nothing, the others skip
    theirs until the next delivery is due (at most `longest`, at least a poll), and when that
    time comes one thread claims for all (the others wait for what it finds): one claim query
    per interval when idle, not one per thread and poll. The fan-out opens it when it adds
    deliveries, a failure's retry brings it forward, and a success that closed a breaker
    opens it (what the breaker held back is due)."""

    def __init__(self, poll_seconds: float, longest: float = 1.0):
        self.poll_seconds = poll_seconds
        self.longest = max(poll_seconds, longest)
        self.quiet_until = 0.0
        self._lock = threading.Lock()

    def quiet(self) -> bool:
        """True: skip this claim. False: claim (the other threads skip theirs meanwhile,
        unless the gate is open: there is work for all)."""
        with self._lock:
            now = time.monotonic()
            if now < self.quiet_until:
                return True
            if self.quiet_until > 0.0:  # idle: this thread looks for all of them
                self.quiet_until = now + self.poll_seconds * 0.9
            return False

    def idle(self, due_in: float | None) -> None:
        """A claim found nothing; the next delivery is due in `due_in` s (None: none is)."""
        wait = self.longest if due_in is None else min(self.longest, due_in)
        with self._lock:
            self.quiet_until = time.monotonic() + max(self.poll_seconds * 0.9, wait)

    def due_in(self, seconds: float) -> None:
        """A delivery is due in `seconds`: claim again by then."""
        with self._lock:
            if self.quiet_until > 0.0:
                self.quiet_until = min(self.quiet_until, time.monotonic() + seconds)

    def open(self) -> None:
        with self._lock:
            self.quiet_until = 0.0


class WebhookFanout:
    """Reads the feed `webhooks` and inserts a delivery per matching enabled endpoint, in the
    batch's transaction (with the feed's position)."""

    name = "webhook-fanout"

    def __init__(self, feed: EventFeed, queue: WebhookQueue, renderer: Renderer,
                 metrics: WebhookMetrics, gate: IdleGate, clock: Clock = utc_now,
                 batch_size: int = 500):
        self.feed, self.queue, self.renderer = feed, queue, renderer
        self.metrics, self.gate, self.clock, self.batch_size = metrics, gate, clock, batch_size
        self.last_full = False  # the last batch was full: more at once

    def step(self) -> bool:
        # One statement when there is nothing to hand on, or when a relay moved the feed
        # less than a poll ago (a full batch goes on at once: it just moved it itself).
        if not (self.last_full or self.feed.has_news(self.gate.poll_seconds * 0.9)):
            return False
        self.last_full = False
        with self.feed.batch(self.batch_size) as batch:
            if batch is None or not batch.events:
                return False
            endpoints: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
            for endpoint, user, patterns in self.queue.matching_endpoints(
                    batch.work, sorted({e.user_id for e in batch.events})):
                endpoints.setdefault(user, []).append((endpoint, patterns))
            rows = []
            for event in batch.events:
                wanted = [endpoint for endpoint, patterns in endpoints.get(event.user_id, ())
                          if matches(patterns, event.type)]
                if wanted:
                    body = json.dumps(event_json(event, self.renderer), separators=(",", ":"),
                                      ensure_ascii=False)
                    rows += [(endpoint, event_id(event.user_id, event.seq), body)
                             for endpoint in wanted]
                batch.handed_on(event)
            self.queue.add(batch.work, rows)
            full = len(batch.events) >= self.batch_size
        self.metrics.fanned_out.inc(len(rows))
        if rows:
            self.gate.open()
        # A full batch: more at once. Otherwise the next poll's, so that under a steady flow
        # of writes a batch carries a poll's events, not the one or two written meanwhile.
        self.last_full = full
        return full

    def close(self) -> None:
        pass


class Attempt:
    """One attempt's hard deadline: at `timeout` its connections' sockets are shut down, so a
    blocking connect, send or read fails at once however slowly a receiver trickles bytes
    (urllib3's timeout bounds each socket operation, not their sum)."""

    def __init__(self, timeout: float, deadlines: Deadlines):
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self.expired = self._ended = False
        deadlines.add(time.monotonic() + timeout, self)

    def watch(self, connection: Any) -> None:
        """Shut `connection` down at the deadline (at once if that has passed)."""
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            if self.expired:
                _shut(connection)

    def expire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.expired = True
            for connection in self._connections:
                _shut(connection)

    def end(self) -> None:
        with self._lock:
            self._ended = True
            self._connections.clear()


class Deadlines:
    """One thread that expires the attempts at their deadlines, earliest first (a timer
    thread of each attempt's own would cost a thread started and stopped per POST)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Attempt]] = []  # a heap
        self._changed = threading.Condition()
        self._order = itertools.count()  # ties in time go in order, never compare attempts
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, deadline: float, attempt: Attempt) -> None:
        with self._changed:
            heapq.heappush(self._due, (deadline, next(self._order), attempt))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="webhook-deadlines",
                                                daemon=True)
                self._thread.start()
            if self._due[0][2] is attempt:
                self._changed.notify()  # the earliest now: the thread waits less

    def _run(self) -> None:
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2].expire()  # an ended attempt ignores it
                self._changed.wait(self._due[0][0] - now if self._due else None)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(5)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:  # the plain socket's shutdown: a TLS socket's would drop its state first
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # closed meanwhile


def watched_connections(current: threading.local) -> tuple[
        type[urllib3.connection.HTTPConnection], type[urllib3.connection.HTTPSConnection]]:
    """urllib3 connection classes that put themselves under the calling thread's Attempt."""

    def watch(connection: Any) -> None:
        attempt = getattr(current, "attempt", None)
        if attempt is not None:
            attempt.watch(connection)

    class Watched:
        """Puts the connection under the attempt before connecting and sending (the socket
        exists only after connect: once more then)."""

        def connect(self) -> None:
            watch(self)
            super().connect()  # type: ignore[misc]
            watch(self)

        def request(self, *args: Any, **kwargs: Any) -> None:
            watch(self)
            super().request(*args, **kwargs)  # type: ignore[misc]

    class Plain(Watched, urllib3.connection.HTTPConnection):
        pass

    class Secure(Watched, urllib3.connection.HTTPSConnection):
        pass

    return Plain, Secure


class Sender:
    """POSTs a signed body to a URL over kept-alive connections, one pool per checked address;
    no redirects, no retries, a deadline for the whole attempt and a bounded read."""

    def __init__(self, outbound: OutboundPolicy, timeout: float, user_agent: str,
                 pool_size: int):
        self.outbound, self.timeout, self.user_agent = outbound, timeout, user_agent
        self.pool_size = pool_size
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._current = threading.local()  # the calling thread's Attempt
        self._plain, self._secure = watched_connections(self._current)
        self._deadlines = Deadlines()

    def _pool(self, dest: Destination, address: str) -> urllib3.HTTPConnectionPool:
        key = (dest.scheme, address, dest.port, dest.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= MAX_POOLS:
                    self._pools.pop(next(iter(self._pools))).close()
                # Each socket operation's bound; the Attempt bounds them all together.
                timeout = urllib3.Timeout(total=self.timeout)
                common: dict[str, Any] = {"port": dest.port, "timeout": timeout,
                                          "maxsize": self.pool_size, "block": False,
                                          "retries": False}
                if dest.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        address, server_hostname=dest.host, assert_hostname=dest.host,
                        cert_reqs="CERT_REQUIRED", **common)
                    pool.ConnectionCls = self._secure
                else:
                    pool = urllib3.HTTPConnectionPool(address, **common)
                    pool.ConnectionCls = self._plain
                self._pools[key] = pool
            return pool

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        dest, problem = self.outbound.destination(url)
        if dest is None:
            return Outcome(False, None, f"The URL {problem}.", took())
        default_port = 443 if dest.scheme == "https" else 80
        host = dest.host if ":" not in dest.host else f"[{dest.host}]"
        headers = {**headers, "Host": host if dest.port == default_port
                   else f"{host}:{dest.port}", "User-Agent": self.user_agent,
                   "Content-Type": "application/json"}
        pool = self._pool(dest, dest.addresses[0])
        attempt = self._current.attempt = Attempt(self.timeout, self._deadlines)
        try:
            try:
                response = pool.urlopen(
                    "POST", dest.target, body=body, headers=headers, redirect=False,
                    retries=False, preload_content=False, assert_same_host=False,
                    release_conn=False)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt.expired or isinstance(exc, urllib3.exceptions.TimeoutError):
                    return Outcome(False, None, f"No answer within {self.timeout:g} s.",
                                   took())
                return Outcome(False, None, f"The request failed: {type(exc).__name__}.",
                               took())
            try:
                read = response.read(MAX_RESPONSE_BYTES + 1, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError):
                read = b"x" * (MAX_RESPONSE_BYTES + 1)  # unusable: the connection is dropped
            if len(read) > MAX_RESPONSE_BYTES or attempt.expired:
                response.close()
            else:
                response.release_conn()
        finally:
            attempt.end()
            self._current.attempt = None
        return outcome_of(response.status, response.headers.get("Retry-After"), took())

    def close(self) -> None:
        self._deadlines.close()
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def outcome_of(status: int, retry_after: str | None, duration_ms: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome(True, status, None, duration_ms)
    if status == 410:
        return Outcome(False, status, "The receiver answered 410 Gone.", duration_ms, gone=True)
    if 300 <= status < 400:
        return Outcome(False, status, f"The receiver answered {status}; redirects are not "
                                      f"followed.", duration_ms)
    wait = parse_retry_after(retry_after) if status in (429, 503) else None
    return Outcome(False, status, f"The receiver answered {status}.", duration_ms, wait)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookDelivery:
    """One delivery thread: claims a batch of due deliveries, and for each makes the attempt
    and records its outcome."""

    def __init__(self, number: int, queue: WebhookQueue, sender: Sender,
                 schedule: tuple[float, ...], metrics: WebhookMetrics, logger: logging.Logger,
                 gate: IdleGate, clock: Clock = utc_now, rng: random.Random | None = None,
                 batch: int = CLAIM_BATCH, batch_seconds: float = BATCH_SECONDS):
        self.name = f"webhook-delivery-{number}"
        self.queue, self.sender, self.schedule, self.gate = queue, sender, schedule, gate
        self.metrics, self.logger, self.clock = metrics, logger, clock
        self.rng = rng or random.Random()
        self.lease_seconds = 2 * sender.timeout + LEASE_MARGIN_SECONDS
        # Every attempt of a batch begins within batch_seconds of its claim and ends within
        # the timeout: well inside the lease, and a step (so SIGTERM's wait) stays bounded.
        self.batch, self.batch_seconds = batch, min(batch_seconds, sender.timeout)

    def step(self) -> bool:
        if self.gate.quiet():
            return False
        claims = self.queue.claim(self.batch, self.lease_seconds, secrets.randbits(63) or 1)
        if not claims.claimed:
            self.gate.idle(claims.due_in)
            return False
        if len(claims.claimed) >= self.batch:
            self.gate.open()  # there may be more: the other threads look too
        else:  # it took every due one: the others wait for the fan-out or the next due
            self.gate.idle(None)
        started, failing, rest = time.monotonic(), set(), []
        for delivery in claims.claimed:
            if delivery.endpoint_id in failing or \
                    time.monotonic() - started >= self.batch_seconds:
                rest.append(delivery)  # its endpoint just failed, or the batch is over time
            elif not self.deliver(delivery):
                failing.add(delivery.endpoint_id)
        if rest:
            self.queue.release(rest)
            self.gate.open()  # what went back is due (unless its breaker is open)
        return True

    def deliver(self, delivery: Claimed) -> bool:
        """Make the attempt and record it; whether it succeeded."""
        timestamp = int(self.clock().timestamp())
        headers = {"webhook-id": delivery.event_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(delivery.secrets, delivery.event_id, timestamp,
                                             delivery.body)}
        outcome = self.attempt(delivery.url, headers, delivery.body.encode())
        self.metrics.duration.observe(outcome.duration_ms / 1000)
        delay = None
        if not outcome.succeeded and not outcome.gone:
            delay = retry_delay(delivery.attempt, self.schedule, self.rng, outcome.retry_after)
        recorded = self.queue.record(delivery, outcome, delay)
        if not recorded.recorded:
            label = "taken_over"
        elif outcome.succeeded:
            label = "succeeded"
            self.metrics.lag.observe(max(0.0, (self.clock() - delivery.created_at)
                                         .total_seconds()))
            if recorded.released:
                self.gate.open()
        elif outcome.gone:
            label = "gone"
        else:
            label = "failed_retrying" if delay is not None else "failed_final"
            if delay is not None:
                self.gate.due_in(delay)
        self.metrics.deliveries.labels(label).inc()
        if recorded.disabled:
            self.logger.info("webhook endpoint %d disabled: %s", delivery.endpoint_id,
                             outcome.error)
        return outcome.succeeded

    def attempt(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        """The sender's outcome; whatever it raises is a failed attempt too, recorded and
        retried on the schedule (else the delivery would stay claimed, re-tried every lease,
        never counted)."""
        started = time.monotonic()
        try:
            return self.sender.send(url, headers, body)
        except Exception as exc:
            self.logger.exception("webhook attempt raised")
            return Outcome(False, None, f"internal error: {type(exc).__name__}",
                           int((time.monotonic() - started) * 1000))

    def close(self) -> None:
        pass


class WebhookGauges:
    """Samples the queue's depth, its oldest pending delivery and the open breakers; purges
    finished deliveries older than the retention."""

    name = "webhook-gauges"

    def __init__(self, queue: WebhookQueue, metrics: WebhookMetrics, every_seconds: float,
                 sender: Sender, retention: timedelta, purge_every_seconds: float,
                 clock: Clock = utc_now):
        self.queue, self.metrics, self.every = queue, metrics, every_seconds
        self.sender, self.clock = sender, clock
        self.retention, self.purge_every = retention, purge_every_seconds
        self._next = self._next_purge = 0.0

    def step(self) -> bool:
        if time.monotonic() >= self._next_purge:
            purged = self.queue.purge_finished(self.clock() - self.retention)
            self.metrics.purged.inc(purged)
            if purged:
                return True  # more may be due: again at once
            self._next_purge = time.monotonic() + self.purge_every
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.every
        stats = self.queue.stats()
        self.metrics.queue_depth.set(stats.pending)
        self.metrics.oldest_pending.set(stats.oldest_pending_seconds or 0.0)
        self.metrics.oldest_due.set(stats.oldest_due_seconds or 0.0)
        self.metrics.breakers_open.set(stats.breakers_open)
        return False

    def close(self) -> None:
        self.sender.close()  # once, after every delivery thread has stopped
