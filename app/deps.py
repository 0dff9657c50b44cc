"""One worker's dependencies: built in one place, after fork, and closed at exit.

Everything that holds a connection or a thread is created here, inside the
gunicorn worker, never in the master: a pool opened before fork would share
sockets between processes. `new_server(deps)` (app/server.py) turns a Deps
into the Flask app; `routes(deps)` (routes.py) hands each maker function
exactly the fields its handler needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from flask import Flask

from app.config import Config
from app.cowsay import CowLibrary, Renderer, cow_search_path
from app.http.auth import Authenticator
from app.http.idempotency import TTL_SECONDS as IDEMPOTENCY_TTL_SECONDS
from app.http.idempotency import Idempotency
from app.http.presence import UserPresence
from app.http.ratelimit import RateLimiter, policies_from_config
from app.http.ratelimit_leases import LeasedStore
from app.http.tokens import TokenSigner
from app.platform import health as health_mod
from app.platform.cluster import Cluster, Replica, ReplicaSettings
from app.platform.db import Database, load_migrations, pool_settings
from app.platform.logs import AccessLog, RedactionFilter
from app.platform.metrics import Metrics
from app.platform.periodic import Periodic
from app.platform.redis_link import RedisLink
from app.repo.conversations import ConversationRepository
from app.repo.events import TYPES as EVENT_TYPES
from app.repo.events import EventRepository, EventTally
from app.repo.idempotency import IdempotencyRepository
from app.repo.lines import LineRepository
from app.repo.moods import MoodRepository
from app.repo.protocols import Conversations, Lines, Moods, Users
from app.repo.ratelimits import RateLimitRepository
from app.repo.redis_ratelimits import RedisRateLimitStore
from app.repo.slow_queries import SlowQueryRepository
from app.repo.users import UserRepository
from app.repo.write_positions import PostgresWritePositions, RedisWritePositions

if TYPE_CHECKING:
    from app.platform.tracing import Tracing

VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class Deps:
    """What one worker's handlers, middleware and background jobs are built from."""

    config: Config
    logger: logging.Logger
    access_log: AccessLog
    metrics: Metrics
    sample_metrics: Callable[[], None]  # fold request tallies and gauges into the metrics
    lifecycle: health_mod.Lifecycle
    health: health_mod.HealthManager
    db: Database | None  # None in the in-process test layer, which has no PostgreSQL
    cluster: Cluster | None  # the primary and its replicas: where repository calls run
    redis: RedisLink | None  # with REDIS_URL: rate limits and write positions live there
    auth: Authenticator
    idempotency: Idempotency
    presence: UserPresence
    renderer: Renderer
    users: Users
    moods: Moods
    conversations: Conversations
    lines: Lines
    slow_queries: SlowQueryRepository | None  # the fault-injection routes' slow query
    jobs: tuple[Periodic, ...] = ()  # background work started with the worker
    tracing: Tracing | None = None  # None: OTEL_EXPORTER_OTLP_ENDPOINT unset, tracing off
    events: EventRepository | None = None  # the event log's reads (GET /events)

    def start(self) -> None:
        """A first health report before this worker takes traffic, then the background work."""
        self.metrics.sample_health(self.health.report())
        self.health.start(interval=max(0.1, self.config.health_cache_seconds))
        if self.db is not None:
            self.db.watch(self.health.wake)
        if self.cluster is not None:
            self.cluster.start()
        for job in self.jobs:
            job.start()
        self.presence.start()

    def close(self) -> None:
        """Stop taking work, stop the background threads, close the pool, flush what is left."""
        self.lifecycle.begin_shutdown()
        self.presence.stop()
        for job in self.jobs:
            job.stop()
        self.health.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.db is not None:
            self.db.close()
        if self.redis is not None:
            self.redis.close()
        if self.tracing is not None:
            self.tracing.close()  # exports the spans of every request served
        self.metrics.flush_requests()
        self.access_log.flush()


def build_deps(config: Config, logger: logging.Logger, dsn: str) -> Deps:
    """Open the pool (pre-warmed) and build everything else on it; nothing is started yet."""
    metrics = Metrics(config.prometheus_multiproc_dir, VERSION)
    tracing, connections = build_worker_tracing(config, metrics)
    db = Database(dsn, pool_settings(config), logger.getChild("db"),
                  direct_dsn=config.database_direct_url, connection_class=connections)
    db.open(wait_seconds=max(config.db_pool_timeout, config.db_connect_timeout))
    lifecycle = health_mod.Lifecycle()
    redis = None
    if config.redis_url:
        redis = RedisLink(config.redis_url, config.redis_timeout,
                          max_connections=config.threads + config.health_threads + 8,
                          logger=logger.getChild("redis"))
    cluster = build_cluster(config, logger, db, redis, connections)

    rate_limit_state = RedisRateLimitStore(redis) if redis else RateLimitRepository(db)
    leases = None  # a busy key's admissions, several per Redis call (1: exact, no leases)
    if redis and config.rate_limit_lease_max > 1:
        rate_limit_state = leases = LeasedStore(rate_limit_state, config.rate_limit_lease_max,
                                                config.rate_limit_lease_seconds)
    limiter = RateLimiter(*policies_from_config(config), rate_limit_state, metrics,
                          logger.getChild("ratelimit"), tracing=tracing)
    checkers = {
        "database": health_mod.database_checker(db, config.health_check_timeout,
                                                config.health_details),
        "migrations": health_mod.migrations_checker(db, load_migrations(),
                                                    config.health_check_timeout),
        "memory": health_mod.memory_checker(config.memory_limit_bytes),
        "lifecycle": health_mod.lifecycle_checker(lifecycle),
    }
    if limiter.enabled:
        checkers["rate_limit_store"] = health_mod.rate_limit_store_checker(
            limiter, config.health_details)
    if cluster.routing:
        checkers["replicas"] = health_mod.replicas_checker(cluster, config.health_details)
    if redis is not None:
        checkers["redis"] = health_mod.redis_checker(redis)
    health = health_mod.HealthManager(checkers, config.health_check_timeout,
                                      config.health_cache_seconds, logger.getChild("health"))

    library = CowLibrary.load(cow_search_path(config.cowpath), logger.getChild("cowsay"))
    renderer = Renderer(library, max_entries=config.render_cache_size, tracing=tracing)
    for event_type in EVENT_TYPES:
        metrics.events_written.labels(event_type)

    tally = EventTally()
    events_written = tally.add
    folded: dict[str, int] = {}
    folding = threading.Lock()  # the sampler and a scrape may fold at once

    def fold_events_written() -> None:
        with folding:
            for event_type, total in tally.totals().items():
                if total > folded.get(event_type, 0):
                    metrics.events_written.labels(event_type).inc(
                        total - folded.get(event_type, 0))
                    folded[event_type] = total

    users = UserRepository(cluster, events_written)
    events = EventRepository(cluster, config.events_retention_hours)

    oldest_event = [0.0]  # when the oldest event kept was written (0: none), as last seen

    def purge_events() -> None:
        events.purge_expired()
        age = events.oldest_age()
        oldest_event[0] = 0.0 if age is None else time.time() - age
    idempotency_keys = IdempotencyRepository(db)
    purges = [lambda: idempotency_keys.purge_expired(IDEMPOTENCY_TTL_SECONDS),
              rate_limit_state.purge_expired, purge_events]
    if cluster.positions is not None:
        purges.append(cluster.positions.purge_expired)
    janitor = Periodic("janitor", config.purge_interval_seconds, purges,
                       logger.getChild("janitor"))
    access_log = AccessLog(logger)

    def sample_metrics() -> None:
        metrics.flush_requests()
        metrics.events_oldest_age.set(oldest_event[0] and time.time() - oldest_event[0])
        fold_events_written()
        metrics.sample_pool(db.stats())
        metrics.sample_render_cache(*renderer.cache_stats())
        if cluster.routing:
            metrics.sample_cluster(cluster.tally.totals(), cluster.lags(),
                                   {r.name: r.in_rotation for r in cluster.replicas})
        if redis is not None:
            metrics.sample_redis(redis.failures)

    def sample_health() -> None:
        metrics.sample_health(health.last())

    every_second = [sample_metrics, sample_health, access_log.flush]
    if leases is not None:
        every_second.append(leases.sweep)
    sampler = Periodic("every-second", 1.0, every_second, logger)
    return Deps(
        config=config, logger=logger, access_log=access_log, metrics=metrics,
        sample_metrics=sample_metrics, lifecycle=lifecycle, health=health, db=db,
        cluster=cluster, redis=redis,
        auth=Authenticator(TokenSigner(config.user_secrets), limiter),
        idempotency=Idempotency(cluster, idempotency_keys, metrics, config.fault_injection,
                                tracing=tracing),
        presence=UserPresence(users, logger.getChild("presence")), renderer=renderer,
        users=users, moods=MoodRepository(cluster, events_written),
        conversations=ConversationRepository(cluster, events_written),
        lines=LineRepository(cluster, events_written), slow_queries=SlowQueryRepository(db),
        jobs=(sampler, janitor), tracing=tracing, events=events,
    )


def build_cluster(config: Config, logger: logging.Logger, primary: Database,
                  redis: RedisLink | None,
                  connections: type[psycopg.Connection] = psycopg.Connection) -> Cluster:
    """The primary plus a pre-warmed pool per DATABASE_REPLICA_URLS entry, and the store of
    the users' write positions (Redis when configured, else the primary)."""
    if not config.database_replica_urls:
        return Cluster(primary)
    settings = ReplicaSettings(config.replica_max_lag_seconds, config.replica_check_interval)
    replicas = []
    for number, url in enumerate(config.database_replica_urls, start=1):
        name = f"replica{number}"
        db = Database(url, pool_settings(config), logger.getChild(f"db.{name}"),
                      name=f"saypi-{name}", connection_class=connections)
        # A replica that is down at start must not hold the worker back: its
        # reads go to the primary until the monitor sees it serve.
        db.open(wait_seconds=min(1.0, config.db_connect_timeout))
        replicas.append(Replica(name, db, psycopg.conninfo.conninfo_to_dict(url).get(
            "host", "") or ""))
    # A position matters while a replica in rotation may lag behind it: at most
    # REPLICA_MAX_LAG_SECONDS plus a check interval; kept twice as long, and more.
    ttl = 2 * config.replica_max_lag_seconds + 4 * config.replica_check_interval + 5
    if redis is not None:
        hold = config.replica_max_lag_seconds + 2 * config.replica_check_interval + 1
        positions = RedisWritePositions(redis, ttl, hold_seconds=hold,
                                        logger=logger.getChild("positions"))
    else:
        positions = PostgresWritePositions(primary, ttl)
    return Cluster(primary, replicas, positions, settings, logger.getChild("cluster"))


def build_worker_tracing(config: Config, metrics: Metrics
                         ) -> tuple[Tracing | None, type[psycopg.Connection]]:
    """This worker's tracing and the class of its pool's connections (tracing's, whose
    statements are spans, or psycopg's own). The SDK is imported only when tracing is on."""
    if not config.otel_exporter_otlp_endpoint:
        return None, psycopg.Connection
    from app.platform.traced_sql import traced_connection_class
    from app.platform.tracing import build_tracing

    tracing = build_tracing(config, metrics, RedactionFilter(config.user_secrets).scrub,
                            VERSION)
    return tracing, traced_connection_class(tracing)


def build_worker_app(config: Config, logger: logging.Logger, dsn: str) -> tuple[Flask, Deps]:
    """This worker's app and the Deps it must close at exit (gunicorn's `load`)."""
    from app.server import new_server

    deps = build_deps(config, logger, dsn)
    app = new_server(deps)
    deps.start()
    return app, deps
