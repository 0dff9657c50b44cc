"""Builds one worker's dependencies and app, after fork, and takes them down again.

Everything that holds a connection or a thread is created here, inside the
gunicorn worker, never in the master: a pool opened before fork would share
sockets between processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from app.cowsay import CowLibrary, Renderer, cow_search_path
from app.http.auth import Authenticator
from app.http.idempotency import TTL_SECONDS as IDEMPOTENCY_TTL_SECONDS
from app.http.idempotency import Idempotency
from app.http.presence import UserPresence
from app.http.ratelimit import RateLimiter, policies_from_config
from app.http.tokens import TokenSigner
from app.platform import health as health_mod
from app.platform.db import Database, expected_schema_version, pool_settings
from app.platform.logs import AccessLog
from app.platform.metrics import Metrics
from app.platform.periodic import Periodic
from app.repo.conversations import ConversationRepository
from app.repo.idempotency import IdempotencyRepository
from app.repo.lines import LineRepository
from app.repo.moods import MoodRepository
from app.repo.ratelimits import RateLimitRepository
from app.repo.users import UserRepository
from app.server import new_server

VERSION = "0.1.0"


@dataclass
class WorkerResources:
    """What a worker must close when it exits."""

    db: Database
    health: health_mod.HealthManager
    sampler: Periodic
    lifecycle: health_mod.Lifecycle
    janitor: Periodic
    presence: UserPresence
    access_log: AccessLog
    metrics: Metrics

    def close(self) -> None:
        self.lifecycle.begin_shutdown()
        self.presence.stop()
        self.sampler.stop()
        self.janitor.stop()
        self.health.close()
        self.db.close()
        self.metrics.flush_requests()
        self.access_log.flush()


def build_worker_app(config, logger: logging.Logger, dsn: str) -> tuple[Flask, WorkerResources]:
    db = Database(dsn, pool_settings(config), logger.getChild("db"))
    db.open(wait_seconds=max(config.db_pool_timeout, config.db_connect_timeout))
    lifecycle = health_mod.Lifecycle()
    metrics = Metrics(config.prometheus_multiproc_dir, VERSION)

    rate_limit_state = RateLimitRepository(db)
    limiter = RateLimiter(*policies_from_config(config), rate_limit_state, metrics,
                          logger.getChild("ratelimit"))
    checkers = {
        "database": health_mod.database_checker(db, config.health_check_timeout,
                                                config.health_details),
        "migrations": health_mod.migrations_checker(db, expected_schema_version(),
                                                    config.health_check_timeout),
        "memory": health_mod.memory_checker(config.memory_limit_bytes),
        "lifecycle": health_mod.lifecycle_checker(lifecycle),
    }
    if limiter.enabled:
        checkers["rate_limit_store"] = health_mod.rate_limit_store_checker(
            limiter, config.health_details)
    health = health_mod.HealthManager(checkers, config.health_check_timeout,
                                      config.health_cache_seconds, logger.getChild("health"))

    library = CowLibrary.load(cow_search_path(config.cowpath), logger.getChild("cowsay"))
    renderer = Renderer(library, max_entries=config.render_cache_size)
    users = UserRepository(db)
    presence = UserPresence(users, logger.getChild("presence"))
    auth = Authenticator(TokenSigner(config.user_secrets), limiter)
    idempotency_keys = IdempotencyRepository(db)
    idempotent = Idempotency(db, idempotency_keys, metrics, config.fault_injection)
    janitor = Periodic("janitor", config.purge_interval_seconds,
                       [lambda: idempotency_keys.purge_expired(IDEMPOTENCY_TTL_SECONDS),
                        rate_limit_state.purge_expired],
                       logger.getChild("janitor"))

    def sample_metrics() -> None:
        metrics.flush_requests()
        metrics.sample_pool(db.stats())
        metrics.sample_render_cache(*renderer.cache_stats())

    def sample_health() -> None:
        metrics.sample_health(health.last())

    access_log = AccessLog(logger)
    sampler = Periodic("metrics-sampler", 1.0, [sample_metrics, sample_health, access_log.flush],
                       logger)
    app = new_server(config, logger, access_log, lifecycle, health, metrics, sample_metrics,
                     auth, idempotent, presence, renderer, users,
                     MoodRepository(db), ConversationRepository(db), LineRepository(db), db)
    metrics.sample_health(health.report())  # a first status before this worker takes traffic
    health.start(interval=max(0.1, config.health_cache_seconds))
    db.watch(health.wake)
    sampler.start()
    janitor.start()
    presence.start()
    return app, WorkerResources(db, health, sampler, lifecycle, janitor, presence, access_log,
                                metrics)
