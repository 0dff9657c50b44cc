"""One worker's dependencies: built in one place, after fork, and closed at exit.

Everything that holds a connection or a thread is created inside the gunicorn worker, never
in the master, whose sockets would be shared across the fork. `build_deps` builds each part
unless given it (the in-process tests give fakes). See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import psycopg
from prometheus_client import CollectorRegistry

from app.api.streams import StreamSettings, StreamSlots
from app.config import Config
from app.cowsay import CowLibrary, Renderer, cow_search_path
from app.domain.events import TYPES as EVENT_TYPES
from app.domain.repositories import (
    Conversations,
    Events,
    Lines,
    Moods,
    SlowQueries,
    Users,
    Webhooks,
)
from app.domain.unit_of_work import Transactions
from app.http.auth import Authenticator
from app.http.grip import Grip
from app.http.idempotency import TTL_SECONDS as IDEMPOTENCY_TTL_SECONDS
from app.http.idempotency import Idempotency
from app.http.outbound import OutboundPolicy, resolver
from app.http.presence import UserPresence
from app.http.ratelimit import RateLimiter, policies_from_config
from app.http.ratelimit_leases import LeasedStore
from app.http.tokens import TokenSigner
from app.ops import health as health_mod
from app.ops.logs import AccessLog, RedactionFilter
from app.ops.metrics import Metrics
from app.ops.periodic import Periodic
from app.relay.health import RelayCollector, RelayHttp, tasks_checker
from app.relay.process import RelayProcess
from app.relay.pushpin import DeletionCloser, PublishClient, PublishMetrics, PushpinPublisher
from app.relay.runner import Relay, Task
from app.relay.webhooks import (
    GAUGE_SECONDS,
    IdleGate,
    Sender,
    WebhookDelivery,
    WebhookFanout,
    WebhookGauges,
    WebhookMetrics,
)
from app.store.cluster import Cluster, Replica, ReplicaDatabase, ReplicaSettings, WritePositions
from app.store.conversations import ConversationRepository
from app.store.db import Database, load_migrations, pool_settings
from app.store.deadlines import Deadlines
from app.store.event_feed import EventFeed
from app.store.events import EventRepository, EventTally
from app.store.idempotency import IdempotencyRepository
from app.store.lines import LineRepository
from app.store.moods import MoodRepository
from app.store.ratelimits import RateLimitRepository
from app.store.redis_link import RedisLink
from app.store.redis_ratelimits import RedisRateLimitStore
from app.store.slow_queries import SlowQueryRepository
from app.store.users import DeletionWatch, UserRepository
from app.store.webhooks import Breaker, WebhookQueue, WebhookRepository
from app.store.write_positions import PostgresWritePositions, RedisWritePositions

if TYPE_CHECKING:
    from app.ops.tracing import Tracing

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
    auth: Authenticator
    idempotency: Idempotency
    presence: UserPresence
    renderer: Renderer
    users: Users
    moods: Moods
    conversations: Conversations
    lines: Lines
    slow_queries: SlowQueries  # the fault-injection routes' slow query
    tracing: Tracing | None  # None: OTEL_EXPORTER_OTLP_ENDPOINT unset, tracing off
    events: Events  # the event log's reads (GET /events)
    webhooks: Webhooks  # the webhook endpoints API's storage
    outbound: OutboundPolicy  # where webhooks may be sent
    grip: Grip  # Grip-Sig checks and recovery links (GRIP_KEY)
    stream_slots: StreamSlots  # the event streams this worker serves itself
    stream_settings: StreamSettings
    jobs: tuple[Periodic, ...] = ()  # background work started with the worker
    on_start: tuple[Callable[[], None], ...] = ()  # pools and monitors, after the first report
    on_close: tuple[Callable[[], None], ...] = ()  # cluster, pools, Redis, in that order

    def start(self) -> None:
        """A first health report before this worker takes traffic, then the background work."""
        self.metrics.sample_health(self.health.report())
        self.health.start(interval=max(0.1, self.config.health_cache_seconds))
        for start in self.on_start:
            start()
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
        for close in self.on_close:
            close()
        if self.tracing is not None:
            self.tracing.close()  # exports the spans of every request served
        self.metrics.flush_requests()
        self.access_log.flush()


class Parts(TypedDict, total=False):
    """The parts build_deps takes as given, each typed as the part it replaces."""

    metrics: Metrics
    tracing: Tracing | None
    db: Database
    redis: RedisLink | None
    cluster: Cluster
    transactions: Transactions
    lifecycle: health_mod.Lifecycle
    rate_limit_store: Any
    leases: LeasedStore | None
    limiter: RateLimiter
    checkers: dict[str, health_mod.Checker]
    health: health_mod.HealthManager
    library: CowLibrary
    renderer: Renderer
    users: Users
    moods: Moods
    conversations: Conversations
    lines: Lines
    slow_queries: SlowQueries
    events: Events
    webhooks: Webhooks
    outbound: OutboundPolicy
    stream_slots: StreamSlots
    presence: UserPresence
    auth: Authenticator
    idempotency_keys: Any
    idempotency: Idempotency
    access_log: AccessLog
    sample_metrics: Callable[[], None]
    jobs: tuple[Periodic, ...]


def build_deps(config: Config, logger: logging.Logger, dsn: str | None = None,
               **overrides: Unpack[Parts]) -> Deps:
    """Build what one worker needs; nothing is started yet.

    Each keyword names a part (a Deps field, or one it is built from: `db`,
    `cluster`, `redis`, `transactions`, `idempotency_keys`, `rate_limit_store`,
    `checkers`, `library`) to use as given; every other part is built here
    from `config`. The database pool is opened only when a part needs it.
    """
    w = _Wiring(config, logger, dsn, dict(overrides))
    # Keywords are evaluated in order: the parts handlers use first, then what samples,
    # starts and closes whichever of them were built.
    return Deps(
        config=config, logger=logger, metrics=w.metrics, tracing=w.tracing,
        lifecycle=w.lifecycle, health=w.health, auth=w.auth, renderer=w.renderer,
        users=w.users, presence=w.presence, moods=w.moods, conversations=w.conversations,
        lines=w.lines, events=w.events, webhooks=w.webhooks, outbound=w.outbound,
        idempotency=w.idempotency,
        slow_queries=w.slow_queries,
        grip=Grip(config.grip_key), stream_slots=w.stream_slots,
        stream_settings=StreamSettings(config.stream_heartbeat_seconds,
                                       config.stream_direct_seconds, config.stream_poll_seconds,
                                       config.events_retention_hours),
        access_log=w.access_log, sample_metrics=w.sample_metrics, jobs=w.jobs,
        on_start=w.on_start(), on_close=w.on_close())


class _Wiring:
    """The parts of a Deps, each built on first use unless it was given."""

    def __init__(self, config: Config, logger: logging.Logger, dsn: str | None,
                 overrides: dict[str, Any]):
        unknown = sorted(set(overrides) - _PARTS)
        if unknown:
            raise TypeError(f"build_deps: no part named {', '.join(unknown)}")
        self.config, self.logger, self.dsn = config, logger, dsn
        self.__dict__.update(overrides)  # a cached_property reads the instance first

    def built(self, name: str) -> Any:
        """The part `name` if it was given or built, else None (it is not built for this)."""
        return self.__dict__.get(name)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.config.prometheus_multiproc_dir, VERSION)

    @cached_property
    def _tracing_and_connections(self) -> tuple[Tracing | None, type[psycopg.Connection]]:
        return build_worker_tracing(self.config, self.metrics)

    @cached_property
    def tracing(self) -> Tracing | None:
        return self._tracing_and_connections[0]

    @cached_property
    def db(self) -> Database:
        if self.dsn is None:
            raise TypeError("build_deps: a part needs the database, and neither `dsn` nor "
                            "`db` was given")
        config = self.config
        db = Database(self.dsn, pool_settings(config), self.logger.getChild("db"),
                      direct_dsn=config.database_direct_url,
                      connection_class=self._tracing_and_connections[1])
        db.open(wait_seconds=max(config.db_pool_timeout, config.db_connect_timeout))
        return db

    @cached_property
    def redis(self) -> RedisLink | None:
        config = self.config
        if not config.redis_url:
            return None
        return RedisLink(config.redis_url, config.redis_timeout,
                         max_connections=config.threads + config.health_threads + 8,
                         logger=self.logger.getChild("redis"))

    @cached_property
    def cluster(self) -> Cluster:
        return build_cluster(self.config, self.logger, self.db, self.redis,
                             self._tracing_and_connections[1])

    @cached_property
    def transactions(self) -> Transactions:
        return self.cluster  # where units of work run: the primary

    @cached_property
    def lifecycle(self) -> health_mod.Lifecycle:
        return health_mod.Lifecycle()

    @cached_property
    def rate_limit_store(self) -> Any:
        return RedisRateLimitStore(self.redis) if self.redis else RateLimitRepository(self.db)

    @cached_property
    def leases(self) -> LeasedStore | None:
        """A busy key's admissions, several per store call, in Redis or PostgreSQL (1: exact,
        no leases)."""
        config = self.config
        if config.rate_limit_lease_max > 1:
            return LeasedStore(self.rate_limit_store, config.rate_limit_lease_max,
                               config.rate_limit_lease_seconds)
        return None

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(*policies_from_config(self.config),
                           self.leases or self.rate_limit_store, self.metrics,
                           self.logger.getChild("ratelimit"), tracing=self.tracing,
                           remember_refusals=True)

    @cached_property
    def checkers(self) -> dict[str, health_mod.Checker]:
        config, db = self.config, self.db
        checkers = {
            "database": health_mod.database_checker(db, config.health_check_timeout,
                                                    config.health_details),
            "migrations": health_mod.migrations_checker(db, load_migrations(),
                                                        config.health_check_timeout),
            "memory": health_mod.memory_checker(config.memory_limit_bytes),
            "lifecycle": health_mod.lifecycle_checker(self.lifecycle),
        }
        if self.limiter.enabled:
            checkers["rate_limit_store"] = health_mod.rate_limit_store_checker(
                self.limiter, config.health_details)
        if self.cluster.routing:
            checkers["replicas"] = health_mod.replicas_checker(self.cluster,
                                                               config.health_details)
        if self.redis is not None:
            checkers["redis"] = health_mod.redis_checker(self.redis)
        return checkers

    @cached_property
    def health(self) -> health_mod.HealthManager:
        config = self.config
        return health_mod.HealthManager(self.checkers, config.health_check_timeout,
                                        config.health_cache_seconds,
                                        self.logger.getChild("health"))

    @cached_property
    def library(self) -> CowLibrary:
        return CowLibrary.load(cow_search_path(self.config.cowpath),
                               self.logger.getChild("cowsay"))

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.library, max_entries=self.config.render_cache_size,
                        tracing=self.tracing)

    @cached_property
    def users(self) -> Users:
        return UserRepository(self.cluster, self.event_tally.add)

    @cached_property
    def moods(self) -> Moods:
        return MoodRepository(self.cluster, self.event_tally.add)

    @cached_property
    def conversations(self) -> Conversations:
        return ConversationRepository(self.cluster, self.event_tally.add)

    @cached_property
    def lines(self) -> Lines:
        return LineRepository(self.cluster, self.event_tally.add)

    @cached_property
    def events(self) -> Events:
        return EventRepository(self.cluster, self.config.events_retention_hours)

    @cached_property
    def webhooks(self) -> Webhooks:
        return WebhookRepository(self.cluster)

    @cached_property
    def outbound(self) -> OutboundPolicy:
        return outbound_policy(self.config)

    @cached_property
    def event_tally(self) -> EventTally:
        """Events written, counted per thread; the sampler folds them into the metric."""
        for event_type in EVENT_TYPES:
            self.metrics.events_written.labels(event_type)
        return EventTally()

    @cached_property
    def oldest_event(self) -> list[float]:
        """When the oldest event kept was written (0: none), as the janitor last saw it."""
        return [0.0]

    @cached_property
    def stream_slots(self) -> StreamSlots:
        """At most STREAM_DIRECT_MAX direct streams, and never every API thread."""
        limit = max(0, min(self.config.stream_direct_max, self.config.threads - 1))
        return StreamSlots(limit, self.metrics.streams_direct_open.set)

    @cached_property
    def slow_queries(self) -> SlowQueries:
        return SlowQueryRepository(self.db)

    @cached_property
    def presence(self) -> UserPresence:
        return UserPresence(self.users, self.logger.getChild("presence"))

    @cached_property
    def auth(self) -> Authenticator:
        return Authenticator(TokenSigner(self.config.user_secrets), self.presence, self.limiter,
                             self.renderer.take_thread_misses,
                             self.config.rate_limit_renders_per_admission)

    @cached_property
    def idempotency_keys(self) -> Any:
        return IdempotencyRepository(self.db)

    @cached_property
    def idempotency(self) -> Idempotency:
        return Idempotency(self.transactions, self.idempotency_keys, self.metrics,
                           self.config.fault_injection, tracing=self.tracing)

    @cached_property
    def access_log(self) -> AccessLog:
        return AccessLog(self.logger)

    @cached_property
    def sample_metrics(self) -> Callable[[], None]:
        metrics, renderer = self.metrics, self.renderer
        db, cluster, redis = self.built("db"), self.built("cluster"), self.built("redis")
        tally, oldest_event = self.event_tally, self.oldest_event
        folded: dict[str, int] = {}
        folding = threading.Lock()  # the sampler and a scrape may fold at once

        def sample_metrics() -> None:
            metrics.flush_requests()
            metrics.events_oldest_age.set(oldest_event[0] and time.time() - oldest_event[0])
            with folding:
                for event_type, total in tally.totals().items():
                    if total > folded.get(event_type, 0):
                        metrics.events_written.labels(event_type).inc(
                            total - folded.get(event_type, 0))
                        folded[event_type] = total
            if db is not None:
                metrics.sample_pool(db.stats())
            metrics.sample_render_cache(*renderer.cache_stats())
            if cluster is not None and cluster.routing:
                metrics.sample_cluster(cluster.tally.totals(), cluster.lags(),
                                       {r.name: r.in_rotation for r in cluster.replicas})
            if redis is not None:
                metrics.sample_redis(redis.failures)

        return sample_metrics

    @cached_property
    def jobs(self) -> tuple[Periodic, ...]:
        idempotency_keys, store = self.idempotency_keys, self.rate_limit_store
        events, oldest_event = self.events, self.oldest_event

        def purge_events() -> None:
            events.purge_expired()
            events.purge_deleted_users()
            age = events.oldest_age()
            oldest_event[0] = 0.0 if age is None else time.time() - age

        purges = [lambda: idempotency_keys.purge_expired(IDEMPOTENCY_TTL_SECONDS),
                  store.purge_expired, purge_events]
        cluster = self.built("cluster")
        if cluster is not None and cluster.positions is not None:
            purges.append(cluster.positions.purge_expired)
        janitor = Periodic("janitor", self.config.purge_interval_seconds, purges,
                           self.logger.getChild("janitor"))
        health, metrics = self.health, self.metrics

        def sample_health() -> None:
            metrics.sample_health(health.last())

        every_second: list[Callable[[], object]] = [self.sample_metrics, sample_health,
                                                    self.access_log.flush]
        if self.leases is not None:
            every_second.append(self.leases.sweep)
        sampler = Periodic("every-second", 1.0, every_second, self.logger)
        return (sampler, janitor)

    def on_start(self) -> tuple[Callable[[], None], ...]:
        """What starts once the first health report is in: the pool's watch, the cluster."""
        starts: list[Callable[[], None]] = []
        db, cluster = self.built("db"), self.built("cluster")
        if db is not None:
            wake = self.health.wake
            starts.append(lambda: db.watch(wake))
        if cluster is not None:
            starts.append(cluster.start)
        return tuple(starts)

    def on_close(self) -> tuple[Callable[[], None], ...]:
        """What closes after the background threads stopped: cluster, pool, Redis."""
        return tuple(part.close for part in (self.built("cluster"), self.built("db"),
                                             self.built("redis")) if part is not None)


_PARTS = {name for name, value in vars(_Wiring).items() if isinstance(value, cached_property)
          and not name.startswith("_")}


def build_relay(config: Config, logger: logging.Logger, dsn: str) -> RelayProcess:
    """The relay process (`run.py relay`): its tasks on a pool of their own to the primary,
    its health and metrics port (RELAY_PORT). See docs/relay.md."""
    # A connection for each task's thread (webhooks' threads, fan-out and gauges; each
    # Pushpin publisher and the deletion closer) and the health checks', at least.
    settings = pool_settings(config)
    needed = config.webhook_threads + 4 + 2 * len(config.pushpin_publish_urls)
    settings = dataclasses.replace(settings, max_size=max(settings.max_size, needed))
    db = Database(dsn, settings, logger.getChild("db"), name="saypi-relay",
                  direct_dsn=config.database_direct_url)
    db.open(wait_seconds=max(config.db_pool_timeout, config.db_connect_timeout))
    registry = CollectorRegistry(auto_describe=True)
    tasks: list[Task] = []  # each task is built here from the pool, settings and registry
    tasks += webhook_tasks(config, logger, db, registry)
    if config.pushpin_publish_urls:  # live streams: docs/streams.md ("Publishing")
        renderer = Renderer(CowLibrary.load(cow_search_path(config.cowpath),
                                            logger.getChild("cowsay")),
                            max_entries=config.render_cache_size)
        publish_metrics = PublishMetrics()
        registry.register(publish_metrics)
        tasks.extend(PushpinPublisher(db, PublishClient(url), renderer, publish_metrics,
                                      gather_seconds=config.pushpin_gather_seconds)
                     for url in config.pushpin_publish_urls)
        tasks.append(DeletionCloser(DeletionWatch(db),
                                    [PublishClient(url) for url in config.pushpin_publish_urls],
                                    logger.getChild("relay")))
    relay = Relay(tasks, logger.getChild("relay"), config.relay_poll_seconds,
                  config.relay_grace_seconds)
    registry.register(RelayCollector(relay))
    # A step longer than a grace bound plus a minute is stuck: the loop bounds its own work.
    stuck = config.relay_grace_seconds + 60
    checkers = {
        "database": health_mod.database_checker(db, config.health_check_timeout,
                                                config.health_details),
        "migrations": health_mod.migrations_checker(db, load_migrations(),
                                                    config.health_check_timeout),
        "tasks": tasks_checker(relay, stuck),
    }
    health = health_mod.HealthManager(checkers, config.health_check_timeout,
                                      config.health_cache_seconds, logger.getChild("health"))
    http = RelayHttp(config.host, config.relay_port, health, registry,
                     relay.stopping.is_set, logger.getChild("relay"))
    return RelayProcess(relay, health, http, max(0.1, config.health_cache_seconds),
                        on_close=(db.close,))


def webhook_tasks(config: Config, logger: logging.Logger, db: Database,
                  registry: CollectorRegistry) -> list[Task]:
    """The fan-out (feed `webhooks`), WEBHOOK_THREADS delivery threads, the queue's gauges."""
    queue = WebhookQueue(db, Breaker(config.webhook_breaker_failures,
                                     config.webhook_breaker_seconds,
                                     timedelta(hours=config.webhook_disable_after_hours)))
    metrics = WebhookMetrics(registry)
    renderer = Renderer(CowLibrary.load(cow_search_path(config.cowpath),
                                        logger.getChild("cowsay")),
                        max_entries=config.render_cache_size)
    sender = Sender(outbound_policy(config), config.webhook_timeout_seconds,
                    f"SayPI-Webhooks/{VERSION}", config.webhook_threads)
    log, gate = logger.getChild("webhooks"), IdleGate(config.relay_poll_seconds)
    return [WebhookFanout(EventFeed(db, "webhooks"), queue, renderer, metrics, gate),
            *(WebhookDelivery(n, queue, sender, config.webhook_retry_schedule, metrics, log,
                              gate) for n in range(1, config.webhook_threads + 1)),
            WebhookGauges(queue, metrics, max(GAUGE_SECONDS, config.health_cache_seconds),
                          sender, timedelta(hours=config.events_retention_hours),
                          config.purge_interval_seconds)]


def outbound_policy(config: Config) -> OutboundPolicy:
    """Where webhooks may go: https only in production (whatever WEBHOOK_ALLOW_PRIVATE says),
    private addresses only when allowed."""
    return OutboundPolicy(config.production, config.webhook_allow_private,
                          resolver(dict(config.webhook_resolve), config.webhook_dns_seconds))


def build_cluster(config: Config, logger: logging.Logger, primary: Database,
                  redis: RedisLink | None,
                  connections: type[psycopg.Connection] = psycopg.Connection) -> Cluster:
    """The primary plus a pre-warmed pool per DATABASE_REPLICA_URLS entry, and the store of
    the users' write positions (Redis when configured, else the primary)."""
    if not config.database_replica_urls:
        return Cluster(primary)
    settings = ReplicaSettings(config.replica_max_lag_seconds, config.replica_check_interval,
                               config.replica_read_timeout)
    deadlines = Deadlines()
    replicas = []
    for number, url in enumerate(config.database_replica_urls, start=1):
        name = f"replica{number}"
        db = ReplicaDatabase(url, pool_settings(config), logger.getChild(f"db.{name}"),
                             name=f"saypi-{name}", connection_class=connections,
                             deadlines=deadlines, check_seconds=settings.check_timeout)
        # A replica that is down at start must not hold the worker back: its
        # reads go to the primary until the monitor sees it serve.
        db.open(wait_seconds=min(1.0, config.db_connect_timeout))
        replicas.append(Replica(name, db, str(psycopg.conninfo.conninfo_to_dict(url).get(
            "host", "") or "")))
    # A position matters while a replica in rotation may lag behind it: at most
    # REPLICA_MAX_LAG_SECONDS plus a check interval; kept twice as long, and more.
    ttl = 2 * config.replica_max_lag_seconds + 4 * config.replica_check_interval + 5
    if redis is not None:
        hold = config.replica_max_lag_seconds + 2 * config.replica_check_interval + 1
        positions: WritePositions = RedisWritePositions(redis, ttl, hold_seconds=hold,
                                        logger=logger.getChild("positions"))
    else:
        positions = PostgresWritePositions(primary, ttl)
    return Cluster(primary, replicas, positions, settings, logger.getChild("cluster"),
                   deadlines)


def build_worker_tracing(config: Config, metrics: Metrics
                         ) -> tuple[Tracing | None, type[psycopg.Connection]]:
    """This worker's tracing and the class of its pool's connections (tracing's, whose
    statements are spans, or psycopg's own). The SDK is imported only when tracing is on."""
    if not config.otel_exporter_otlp_endpoint:
        return None, psycopg.Connection
    from app.ops.traced_sql import traced_connection_class
    from app.ops.tracing import build_tracing

    tracing = build_tracing(config, metrics, RedactionFilter(config.user_secrets).scrub,
                            VERSION)
    if tracing is None:
        return None, psycopg.Connection
    return tracing, traced_connection_class(tracing)
