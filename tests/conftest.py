"""Fixtures of every tier: the e2e tier's real services (harness/), and the no-I/O guard of
the unit and in-process tiers. With SAYPI_TEST_DATABASE_URL unset (CI), the suite starts
its own embedded PostgreSQL; each server gets a database cloned from a migrated template.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.postgres import Postgres, open_postgres
from harness.saypi import Server, server_env

# The tiers `make test-fast` runs: no socket, no process, so no PostgreSQL either.
FAST_TIERS = ("unit", "inprocess")
# Fixtures that start real services, for the e2e tier only.
SERVICE_FIXTURES = {"postgres", "start_server", "shared_server", "deployed_server",
                    "pg_cluster", "redis_server", "pgbouncer", "receiver"}


def _tier(path) -> str:
    return Path(path).parent.name


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if _tier(item.path) in FAST_TIERS and used:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(used)}: an e2e test, it "
                                    f"belongs in tests/e2e/")


@pytest.fixture(autouse=True)
def no_io_in_fast_tiers(request, monkeypatch) -> None:
    """A unit or in-process test that opens a socket or starts a process fails."""
    if _tier(request.node.path) not in FAST_TIERS:
        return

    def refuse(what: str):
        def refused(*args, **kwargs):
            pytest.fail(f"{what} in a {_tier(request.node.path)} test: that is e2e's, "
                        f"in tests/e2e/", pytrace=False)
        return refused

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starting a process"))
    for name in ("fork", "system", "posix_spawn", "posix_spawnp"):
        monkeypatch.setattr(os, name, refuse(f"os.{name}"))


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    pg = open_postgres(os.environ.get("SAYPI_TEST_DATABASE_URL"), tmp_path_factory.mktemp("pg"))
    yield pg
    pg.close()


@pytest.fixture
def start_server(postgres, tmp_path) -> Iterator:
    """Start SayPI servers on fresh databases; all are stopped after the test."""
    servers: list[Server] = []

    def start(database_url: str | None = None, wait: bool = True, argv=None,
              **overrides: str) -> Server:
        url = database_url or postgres.new_database()
        env = server_env(url, tmp_path, **overrides)
        server = Server(env, tmp_path / f"server-{len(servers)}.log", argv)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(postgres, tmp_path_factory) -> Iterator[Server]:
    """One SayPI per test module; tests isolate themselves with their own users."""
    tmp = tmp_path_factory.mktemp("server")
    server = Server(server_env(postgres.new_database(), tmp), tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def eventually(predicate, seconds: float = 15.0, every: float = 0.1) -> bool:
    """Poll until predicate() is true (HTTP errors count as not yet) or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every)
    return False


def run_inline(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Call run() in this process (for paths that exit before serving)."""
    from run import run

    out = io.StringIO()
    code = run(["run.py", *argv], env, out)
    return code, out.getvalue()


def run_threads(target, arguments) -> None:
    """Call target(*args) for every args tuple of `arguments`, each on a thread, and wait."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator:
    """A PostgreSQL primary with a streaming hot standby (harness/services.py), for the session."""
    from harness.services import PgCluster

    cluster = PgCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator:
    """A redis-server of the suite's own on a free port, for the session."""
    from harness.services import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgbouncer(pg_cluster) -> Iterator:
    """PgBouncer in transaction pooling mode in front of the cluster's primary."""
    from harness.services import PgBouncer

    bouncer = PgBouncer("127.0.0.1", pg_cluster.primary.port).start()
    yield bouncer
    bouncer.stop()


def replicated_env(pg_cluster, redis_url: str) -> dict[str, str]:
    """Settings for a SayPI on a fresh database of the cluster: reads on the standby,
    hot state in the Redis at `redis_url`.

    REDIS_TIMEOUT is 2 s, not the production 0.1: on a loaded machine a healthy Redis
    can take longer than 0.1 s to answer, which SayPI rightly treats as an outage (rate
    limits fail open, reads go to the primary), and a test of exact limits or of replica
    routing would then see the fallback, not what it tests. The outage tests set their
    own timeout."""
    primary, standby = pg_cluster.create_database(f"saypi_r_{uuid.uuid4().hex[:10]}")
    return {"DATABASE_URL": primary, "DATABASE_REPLICA_URLS": standby, "REDIS_URL": redis_url,
            "REDIS_TIMEOUT": "2"}


def pgbouncer_env(pg_cluster, pgbouncer) -> dict[str, str]:
    """Settings for a SayPI that reaches a fresh database only through PgBouncer, but for
    migrations and LISTEN."""
    name = f"saypi_b_{uuid.uuid4().hex[:10]}"
    direct, _ = pg_cluster.create_database(name)
    return {"DATABASE_URL": pgbouncer.dsn(name), "DATABASE_DIRECT_URL": direct,
            "DB_PREPARE": "false"}


def metric_total(server: Server, name: str, **labels: str) -> float:
    """The sum of a metric's samples on one instance's /metrics whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    text = httpx.get(server.url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_replica_reads(server: Server, seconds: float = 60.0) -> None:
    """Block until the instance serves a user's reads from its replica (after start, reads
    stay on the primary while the write-position store is new)."""
    user = httpx.post(server.url + "/users", json={"name": "probe"}, timeout=5).json()
    headers = {"Authorization": f"Bearer {user['token']}"}

    def served_by_replica() -> bool:
        httpx.get(server.url + "/conversations", headers=headers, timeout=5)
        return metric_total(server, "db_reads_total", pool="replica1") > 0

    if not eventually(served_by_replica, seconds, every=0.2):
        raise RuntimeError(f"the replica served no read in {seconds}s:\n{server.logs()}")


@pytest.fixture(scope="module", params=["single", "replica+redis", "pgbouncer"])
def deployed_server(request, postgres, tmp_path_factory) -> Iterator[Server]:
    """A module's SayPI on each of three deployments in turn: one PostgreSQL; reads on a
    streaming replica with hot state in Redis; every statement through PgBouncer in
    transaction mode. A module asks for it as its `shared_server`."""
    tmp = tmp_path_factory.mktemp("server")
    if request.param == "single":
        env = server_env(postgres.new_database(), tmp)
    else:
        cluster = request.getfixturevalue("pg_cluster")
        extra = (replicated_env(cluster, request.getfixturevalue("redis_server").url)
                 if request.param == "replica+redis"
                 else pgbouncer_env(cluster, request.getfixturevalue("pgbouncer")))
        env = server_env(extra.pop("DATABASE_URL"), tmp, **extra)
    server = Server(env, tmp / "server.log")
    server.wait_ready()
    if request.param == "replica+redis":
        wait_for_replica_reads(server)
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator:
    """A real OTLP/HTTP receiver (tests/e2e/otlp_receiver.py) for a test's exported spans."""
    from tests.e2e.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as running:
        yield running
