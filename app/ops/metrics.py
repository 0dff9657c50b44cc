"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

prometheus_client picks its storage from PROMETHEUS_MULTIPROC_DIR at its first import, so
the variable is set before anything imports this module. Request counts are tallied per
thread and folded in every second. See docs/observability.md.
"""

from __future__ import annotations

import shutil
import threading
from bisect import bisect_left
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.http.ratelimit import POLICY_NAMES
from app.http.request_state import STANDARD_METHODS
from app.ops.health import SEVERITY

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Buckets for request latency: fine below 100 ms, where this service lives.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)


def reset_directory(path: str) -> None:
    """Empty the multiprocess directory; the master does this once at start."""
    directory = Path(path)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)


def mark_process_dead(pid: int, path: str) -> None:
    """Drop a dead worker's live gauges so they vanish from scrapes."""
    prom_multiprocess.mark_process_dead(pid, path)


class Metrics:
    """Every metric SayPI exports, plus the scrape of all workers' values.

    Counters without labels, and the labelled ones whose label values are
    known in advance, start at 0 so that dashboards and alerts find them
    before the first event (a multiprocess scrape shows only series that
    exist in some worker's file).
    """

    content_type = CONTENT_TYPE  # of what `scrape` returns

    def __init__(self, directory: str | None, version: str):
        self.directory = directory
        registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests_total", "HTTP requests served.", ["method", "route", "status"],
            registry=registry)
        self.duration = Histogram(
            "http_request_duration_seconds", "Time to serve an HTTP request.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.rate_limited = Counter(
            "rate_limited_total", "Requests refused by a rate limit.", ["policy"],
            registry=registry)
        for policy in POLICY_NAMES:
            self.rate_limited.labels(policy)
        self.rate_limit_charged = Counter(
            "rate_limit_charged_total",
            "Admissions charged after a request for the work it caused (renders missed).",
            ["policy"], registry=registry)
        self.rate_limit_store_errors = Counter(
            "rate_limit_store_errors_total",
            "Rate-limit decisions that failed in the store (the request was allowed).",
            registry=registry)
        self.idempotent_replays = Counter(
            "idempotent_replays_total", "Responses replayed for a repeated idempotency key.",
            registry=registry)
        self.render_cache_hits = Counter(
            "cowsay_render_cache_hits_total", "Renders answered from the cache.",
            registry=registry)
        self.render_cache_misses = Counter(
            "cowsay_render_cache_misses_total", "Renders computed.", registry=registry)
        self.pool_size = Gauge(
            "db_pool_size", "Connections open in the pools.", multiprocess_mode="livesum",
            registry=registry)
        self.pool_available = Gauge(
            "db_pool_available", "Idle connections in the pools.", multiprocess_mode="livesum",
            registry=registry)
        self.pool_waiting = Gauge(
            "db_pool_waiting", "Requests waiting for a connection.",
            multiprocess_mode="livesum", registry=registry)
        self.pool_max = Gauge(
            "db_pool_max", "Most connections the pools may open.", multiprocess_mode="livesum",
            registry=registry)
        self.pool_timeouts = Counter(
            "db_pool_timeouts_total",
            "Requests refused a connection (waited too long, or too many already waiting).",
            registry=registry)
        self.pool_connection_errors = Counter(
            "db_pool_connection_errors_total", "Failed attempts to open a connection.",
            registry=registry)
        self.pool_connections_lost = Counter(
            "db_pool_connections_lost_total", "Connections found broken and discarded.",
            registry=registry)
        self.db_reads = Counter(
            "db_reads_total", "Users' reads, by the pool that served them (primary, replicaN).",
            ["pool"], registry=registry)
        self.db_replica_fallbacks = Counter(
            "db_replica_fallbacks_total",
            "Reads that went to the primary although replicas are configured, by reason "
            "(no_replica in rotation, replicas behind the user's last write, "
            "positions_unavailable, replica_failed mid-read).", ["reason"], registry=registry)
        self.db_replica_lag = Gauge(
            "db_replica_lag_seconds", "How far each replica's replay trails the primary.",
            ["replica"], multiprocess_mode="livemax", registry=registry)
        self.db_replica_in_rotation = Gauge(
            "db_replica_in_rotation", "1 while the replica serves reads (the worst worker wins).",
            ["replica"], multiprocess_mode="livemin", registry=registry)
        self.redis_errors = Counter(
            "redis_errors_total", "Redis calls that failed or timed out.", registry=registry)
        self.events_written = Counter(
            "events_written_total", "Events written, by type.", ["type"],
            registry=registry)
        self.events_oldest_age = Gauge(
            "events_oldest_age_seconds", "Age of the oldest event kept (0: none).",
            multiprocess_mode="livemax", registry=registry)
        self.streams_direct_open = Gauge(
            "streams_direct_open", "Event streams the workers serve themselves right now "
            "(each holds an API thread; through Pushpin none does).",
            multiprocess_mode="livesum", registry=registry)
        self.spans_exported = Counter(
            "tracing_spans_exported_total", "Spans accepted by the OTLP collector.",
            registry=registry)
        self.spans_dropped = Counter(
            "tracing_spans_dropped_total",
            "Sampled spans never exported: the worker's export queue was full (queue_full), "
            "the collector refused or could not be reached (export_failed), or the worker "
            "exited before they could be sent (shutdown).",
            ["reason"], registry=registry)
        for reason in ("queue_full", "export_failed", "shutdown"):
            self.spans_dropped.labels(reason)
        self.health_status = Gauge(
            "health_status",
            "Last health check per component (0 healthy, 1 degraded, 2 unhealthy, "
            "3 critical); check=\"overall\" is the worst. The worst worker wins.",
            ["check"], multiprocess_mode="livemax", registry=registry)
        self.app_info = Gauge(
            "app_info", "Build information; the value is always 1.", ["version"],
            multiprocess_mode="livemax", registry=registry)
        self.app_info.labels(version=version).set(1)
        self._sample_lock = threading.Lock()
        self._last_pool: dict[str, int] = {}
        self._last_render = (0, 0)
        self._last_reads: dict[str, int] = {}
        self._last_redis_errors = 0
        self.request_tally = RequestTally(self.requests, self.duration)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one served request (in this worker; see RequestTally). Methods get their
        own label value; anything else is "other", so a client sending made-up methods
        cannot grow the number of series."""
        if method not in STANDARD_METHODS:
            method = "other"
        self.request_tally.observe(method, route, status, seconds)

    def flush_requests(self) -> None:
        """Fold the requests counted since the last flush into the shared metric files."""
        self.request_tally.flush()

    def sample_pool(self, stats: dict[str, int]) -> None:
        """Copy pool stats into gauges, and counter deltas since the last sample.

        Called by the sampler thread and by each scrape, so the deltas are taken
        under a lock (two samplers must not both add the same increase).
        """
        with self._sample_lock:
            self._sample_pool(stats)

    def _sample_pool(self, stats: dict[str, int]) -> None:
        self.pool_size.set(stats.get("pool_size", 0))
        self.pool_available.set(stats.get("pool_available", 0))
        self.pool_waiting.set(stats.get("requests_waiting", 0))
        self.pool_max.set(stats.get("pool_max", 0))
        for key, counter in (("requests_errors", self.pool_timeouts),
                             ("connections_errors", self.pool_connection_errors),
                             ("connections_lost", self.pool_connections_lost)):
            value = stats.get(key, 0)
            delta = value - self._last_pool.get(key, 0)
            if delta > 0:
                counter.inc(delta)
            self._last_pool[key] = value

    def sample_render_cache(self, hits: int, misses: int) -> None:
        with self._sample_lock:
            last_hits, last_misses = self._last_render
            if hits > last_hits:
                self.render_cache_hits.inc(hits - last_hits)
            if misses > last_misses:
                self.render_cache_misses.inc(misses - last_misses)
            self._last_render = (hits, misses)

    def sample_cluster(self, reads: dict[str, int], lags: dict[str, float | None],
                       in_rotation: dict[str, bool]) -> None:
        """Fold the read tallies (totals since start) and each replica's state into metrics."""
        with self._sample_lock:
            for name, total in reads.items():
                delta = total - self._last_reads.get(name, 0)
                self._last_reads[name] = total
                if delta <= 0:
                    continue
                kind, _, reason = name.partition(":")
                if kind == "fallback":
                    self.db_replica_fallbacks.labels(reason).inc(delta)
                else:
                    self.db_reads.labels(name).inc(delta)
            for name, lag in lags.items():
                if lag is not None:
                    self.db_replica_lag.labels(name).set(lag)
            for name, serving in in_rotation.items():
                self.db_replica_in_rotation.labels(name).set(1 if serving else 0)

    def sample_redis(self, failures: int) -> None:
        with self._sample_lock:
            if failures > self._last_redis_errors:
                self.redis_errors.inc(failures - self._last_redis_errors)
            self._last_redis_errors = failures

    def sample_health(self, report) -> None:
        """Export the last health report (a HealthReport or None) as health_status gauges."""
        if report is None:
            return
        for name, result in report.checks.items():
            self.health_status.labels(name).set(SEVERITY[result.status])
        self.health_status.labels("overall").set(SEVERITY[report.status])

    def scrape(self) -> bytes:
        registry = CollectorRegistry()
        if self.directory:
            prom_multiprocess.MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry)


class RequestTally:
    """Request counts and latencies, tallied per thread and folded into the metrics on flush().

    Saves prometheus_client's per-increment lock and file write (~15 us a request); a scrape
    sees other workers' requests up to a second late. See docs/observability.md.
    """

    def __init__(self, requests: Counter, duration: Histogram):
        self._requests = requests
        self._duration = duration
        # The buckets' upper bounds, +Inf last. This and flush() use Histogram's private
        # attributes, so pyproject.toml pins prometheus-client to one minor release.
        self._bounds = tuple(duration._upper_bounds)
        self._mine = threading.local()
        # Every thread's tallies: (method, route, status, cell, cell as last flushed).
        # A cell is [count, sum of seconds, per-bucket counts...], written only by its thread.
        self._cells: list[tuple[str, str, int, list, list]] = []
        # Taken to add a cell (once per thread and key) and for a whole flush.
        self._lock = threading.Lock()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        try:
            cells = self._mine.cells
        except AttributeError:
            cells = self._mine.cells = {}
        key = (method, route, status)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = [0] * (len(self._bounds) + 2)
            with self._lock:
                self._cells.append((method, route, status, cell, [0] * len(cell)))
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(self._bounds, seconds)] += 1

    def flush(self) -> None:
        with self._lock:
            for method, route, status, cell, flushed in self._cells:
                now = list(cell)  # the serving thread may add more meanwhile: next flush
                count = now[0] - flushed[0]
                if not count:
                    continue
                self._requests.labels(method, route, str(status)).inc(count)
                # Histogram has no public call to add many observations at once; its
                # value objects are what observe() itself increments
                # (a unit test keeps the two equal).
                histogram = self._duration.labels(method, route)
                histogram._sum.inc(now[1] - flushed[1])
                for index, (was, is_) in enumerate(zip(flushed[2:], now[2:], strict=True)):
                    if is_ != was:
                        histogram._buckets[index].inc(is_ - was)
                flushed[:] = now
