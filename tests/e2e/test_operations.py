"""Operations end to end: health endpoints, the pool under failure, metrics across workers.

Servers are started through run() (harness/saypi.py) against a real
PostgreSQL; slow queries are real (`SELECT pg_sleep` through the pool, the
fault-injection route /debug/db-sleep) and so are database restarts.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.ops.health import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
)
from harness.pgcontrol import RestartablePostgres
from tests.conftest import eventually

CHECK_FIELDS = {"status", "message", "duration_ms", "details"}
POOL_FIELDS = {"size", "available", "in_use", "waiting", "max", "acquire_timeouts"}


# --- helpers -----------------------------------------------------------------------------
# One client for the module (building an httpx client costs tens of milliseconds),
# without keep-alive: every request opens its own connection, so the kernel may
# hand it to any worker.
HTTP = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """One /metrics scrape as {(sample name, labels): value}, on a fresh connection."""
    response = HTTP.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def fresh_get(url: str, timeout: float = 10.0) -> httpx.Response:
    """A request on its own connection."""
    return HTTP.get(url, timeout=timeout)


def fresh_status(url: str, timeout: float = 10.0) -> int:
    """The status of a GET on a connection of its own, from any number of threads at once.

    The standard library's client, not the shared httpx one: with a hundred
    threads on one httpx client, about one request in a thousand fails on
    the client side with EBADF (seen against the old server as well as the
    new), which is no fact about SayPI.
    """
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        return conn.getresponse().status
    finally:
        conn.close()


def worker_pids(master_pid: int) -> set[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return {int(pid) for pid in children}


def concurrently(count: int, call) -> list:
    """Run call(i) on `count` threads released together; results in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


# --- health endpoints --------------------------------------------------------------------
def test_health_endpoints_have_the_contract_shape_and_need_no_token(shared_server):
    url = shared_server.url
    for headers in ({}, {"Authorization": "Bearer not-a-real-token"}):
        live = HTTP.get(url + "/health/live", headers=headers)
        assert live.status_code == 200 and live.json() == {"status": "healthy"}
        ready = HTTP.get(url + "/health/ready", headers=headers)
        assert ready.status_code == 200
        assert set(ready.json()) == {"status", "checked_at"}
        quick = HTTP.get(url + "/health/quick", headers=headers)
        assert quick.status_code == 200
        assert set(quick.json()) == {"status", "checked_at"}
        assert quick.json()["status"] == HEALTHY and quick.json()["checked_at"]
    for path in ("/health/live", "/health/ready", "/health/quick", "/health/detailed"):
        response = HTTP.get(url + path)
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        assert "etag" not in response.headers

    detailed = HTTP.get(url + "/health/detailed")
    assert detailed.status_code == 200
    body = detailed.json()
    assert set(body) == {"status", "checked_at", "checks"}
    assert body["status"] == HEALTHY
    assert {"database", "migrations", "memory", "lifecycle"} <= set(body["checks"])
    for name, check in body["checks"].items():
        assert set(check) == CHECK_FIELDS, name
        assert check["status"] in (HEALTHY, DEGRADED, UNHEALTHY, CRITICAL)
        assert isinstance(check["duration_ms"], int | float) and check["duration_ms"] >= 0
    database = body["checks"]["database"]["details"]
    assert POOL_FIELDS <= set(database)
    assert database["max"] == int(shared_server.env["DB_POOL_MAX"])
    assert database["in_use"] == database["size"] - database["available"]
    migrations = body["checks"]["migrations"]["details"]
    assert migrations["current"] == migrations["expected"] >= 1

    # HEALTH_DETAILS is off: no host or version, and never the DSN.
    assert "host" not in database and "server_version" not in database
    dsn = shared_server.env["DATABASE_URL"]
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    assert dsn not in detailed.text and dbname not in detailed.text
    assert "postgresql://" not in detailed.text


def test_health_details_flag_memory_critical_and_no_rate_limit(start_server):
    server = start_server(wait=False, WEB_CONCURRENCY="1", MEMORY_LIMIT_BYTES="1000000",
                          HEALTH_DETAILS="true", RATE_LIMIT_IP_PER_MINUTE="1",
                          RATE_LIMIT_IP_BURST="1", RATE_LIMIT_USER_PER_MINUTE="1",
                          RATE_LIMIT_USER_BURST="1", DB_POOL_MIN="3", DB_POOL_MAX="6")
    assert eventually(lambda: HTTP.get(server.url + "/health/live").status_code == 200,
                      seconds=60)

    # A worker far above its memory budget: critical, so not ready, yet alive.
    detailed = HTTP.get(server.url + "/health/detailed")
    assert detailed.status_code == 503
    body = detailed.json()
    assert body["status"] == CRITICAL
    memory = body["checks"]["memory"]
    assert memory["status"] == CRITICAL
    assert memory["details"]["rss_bytes"] > memory["details"]["limit_bytes"] == 1_000_000
    assert HTTP.get(server.url + "/health/ready").status_code == 503
    quick = HTTP.get(server.url + "/health/quick")
    assert quick.status_code == 503 and quick.json()["status"] == CRITICAL

    # The pool was pre-warmed to DB_POOL_MIN before the worker served: its first
    # health check needs two connections at most, so three were not opened on demand.
    database = body["checks"]["database"]
    assert database["details"]["size"] >= database["details"]["min"] == 3

    # HEALTH_DETAILS=true adds the server's version and host, still never the DSN.
    assert database["status"] == HEALTHY
    assert isinstance(database["details"]["server_version"], int)
    assert "host" in database["details"]
    assert server.env["DATABASE_URL"] not in detailed.text

    # The rate-limit store is a component once limits are configured...
    assert body["checks"]["rate_limit_store"]["status"] == HEALTHY
    # ...and health and metrics are never rate limited (1 request per minute here).
    for _ in range(10):
        for path in ("/health/live", "/health/ready", "/health/quick", "/health/detailed",
                     "/metrics"):
            assert HTTP.get(server.url + path).status_code != 429, path


def test_a_hung_check_is_unhealthy_and_quick_never_waits_for_it(start_server, postgres):
    url = postgres.new_database()
    server = start_server(url, WEB_CONCURRENCY="1", HEALTH_CHECK_TIMEOUT="3",
                          HEALTH_CACHE_SECONDS="0.2")
    assert HTTP.get(server.url + "/health/ready").json()["status"] == HEALTHY
    with psycopg.connect(url) as blocker:
        # The migrations check reads schema_migrations: it now blocks on this lock.
        blocker.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.3)  # past HEALTH_CACHE_SECONDS

        # The last known status: had /health/quick run a check, or waited for
        # one, it would have seen the migrations check hang (unhealthy).
        quick = HTTP.get(server.url + "/health/quick")
        assert quick.status_code == 200 and quick.json()["status"] == HEALTHY

        detailed = HTTP.get(server.url + "/health/detailed", timeout=10)
        assert detailed.status_code == 503
        checks = detailed.json()["checks"]
        assert checks["migrations"]["status"] == UNHEALTHY
        assert "finish" in checks["migrations"]["message"]
        assert checks["database"]["status"] == HEALTHY  # the other checks are not held up
        assert HTTP.get(server.url + "/health/ready", timeout=10).status_code == 503
        assert HTTP.get(server.url + "/health/quick").status_code == 503
        blocker.rollback()
    assert eventually(lambda: HTTP.get(server.url + "/health/ready").status_code == 200)


def test_readiness_is_503_from_the_moment_shutdown_starts(start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="1", GRACEFUL_TIMEOUT="10")
    results: dict[str, httpx.Response] = {}
    paths = ("/health/ready", "/health/quick", "/health/detailed")

    def get(name: str, path: str) -> None:
        results[name] = HTTP.get(server.url + path, timeout=20)

    # Health requests have threads of their own (app/ops/worker.py) and a worker
    # stops listening on SIGTERM, so the probes come after SIGTERM on
    # connections kept alive from before it, while in-flight work drains.
    clients = {path: httpx.Client(base_url=server.url, timeout=20) for path in paths}
    for client in clients.values():
        assert client.get("/health/live").status_code == 200
    busy = threading.Thread(target=get, args=("busy", "/debug/sleep?seconds=3"))
    busy.start()
    time.sleep(1.0)
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    for path, client in clients.items():
        results[path] = client.get(path)
        client.close()
    busy.join(20)
    assert results["busy"].status_code == 200
    for path in ("/health/ready", "/health/quick", "/health/detailed"):
        assert results[path].status_code == 503, path
        assert results[path].json()["status"] == UNHEALTHY
    assert results["/health/detailed"].json()["checks"]["lifecycle"]["message"] == \
        "shutting down"
    assert results["/health/ready"].json()["message"] == "shutting down"
    assert server.process.wait(15) == 0


# --- the pool ----------------------------------------------------------------------------
def test_pool_exhaustion_gives_fast_503s_not_a_pile_up(start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="12", DB_POOL_MIN="2",
                          DB_POOL_MAX="2", DB_POOL_MAX_WAITING="2", DB_POOL_TIMEOUT="0.5")
    sleep_seconds = 3.0
    during: dict[str, httpx.Response] = {}

    def probe_while_busy() -> None:
        time.sleep(1.5)  # the two connections are busy, the two waiters have given up
        during["detailed"] = HTTP.get(server.url + "/health/detailed", timeout=10)
        during["ready"] = HTTP.get(server.url + "/health/ready", timeout=10)

    def slow(i: int):
        if i == 8:
            probe_while_busy()
            return None
        started = time.monotonic()
        response = HTTP.get(server.url + f"/debug/db-sleep?seconds={sleep_seconds}",
                             timeout=30)
        return response, time.monotonic() - started

    results = [r for r in concurrently(9, slow) if r is not None]
    ok = [(r, t) for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code != 200]
    # Two connections: two queries run; two requests wait DB_POOL_TIMEOUT, the
    # other four are refused at once (DB_POOL_MAX_WAITING=2). No pile-up.
    assert len(ok) == 2
    assert len(refused) == 6
    for response, elapsed in refused:
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert elapsed < sleep_seconds  # answered before any slow query finished
    # Saturated but serving: degraded, still ready.
    database = during["detailed"].json()["checks"]["database"]
    assert database["status"] == DEGRADED, database
    assert during["ready"].status_code == 200

    # Afterwards the pool serves again at once, and the refusals were counted.
    assert HTTP.get(server.url + "/debug/db-sleep?seconds=0").status_code == 200
    assert value(scrape(server.url), "db_pool_timeouts_total") >= 6


@pytest.mark.slow
def test_database_restart_under_traffic_recovers_within_2s_with_fast_503s(start_server,
                                                                          tmp_path):
    """pg_ctl restart -m fast kills every pooled connection at once.

    Traffic is steady but light compared with the pools (16 connections per
    worker), so each dead connection would otherwise fail or delay a request of
    its own for seconds: recovery within 2 s needs the first error to purge
    them all.
    """
    pool_timeout = 1.0
    pg = RestartablePostgres(tmp_path / "own-pg")
    try:
        server = start_server(pg.dsn, DB_POOL_TIMEOUT=str(pool_timeout), DB_POOL_MIN="16",
                              DB_POOL_MAX="16", THREADS="8", DB_CONNECT_TIMEOUT="2")
        records: list[tuple[float, float, int, httpx.Response | None]] = []
        stop = threading.Event()

        def traffic() -> None:
            # A new connection per request (the kernel spreads them over the
            # workers), from one client (building an httpx client is slow).
            with httpx.Client(timeout=15, limits=httpx.Limits(max_keepalive_connections=0)
                              ) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        response = client.get(server.url + "/debug/db-sleep?seconds=0")
                        status = response.status_code
                    except httpx.HTTPError:
                        response, status = None, -1
                    records.append((started, time.monotonic(), status, response))
                    time.sleep(0.15)

        clients = [threading.Thread(target=traffic) for _ in range(2)]
        for client in clients:
            client.start()
        time.sleep(0.5)
        pg.restart()  # pg_ctl restart -m fast -w: returns once it accepts connections
        restarted_at = time.monotonic()
        time.sleep(3.2)
        stop.set()
        for client in clients:
            client.join(20)

        statuses = {status for _, _, status, _ in records}
        assert statuses <= {200, 503}, statuses  # never a 500, never a dropped request
        for started, ended, status, response in records:
            assert ended - started < pool_timeout + 1, (status, ended - started)  # no hang
            if status == 503:
                assert response.json()["code"] == "service_unavailable"
                assert int(response.headers["retry-after"]) >= 1
        recovered = [status for started, _, status, _ in records
                     if started >= restarted_at + 2.0]
        assert len(recovered) >= 5
        assert set(recovered) == {200}, recovered
        assert HTTP.get(server.url + "/health/ready").status_code == 200
    finally:
        pg.close()


# --- metrics -----------------------------------------------------------------------------
def _stale_metrics_file(directory: Path) -> None:
    """A counter file as a worker of an earlier run would have left it."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    stale = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key("http_requests_total", "http_requests_total",
                   ["method", "route", "status"], ["GET", "/stale-from-last-run", "200"], "")
    stale.write_value(key, 41.0, 0.0)
    stale.close()


def test_metrics_add_up_across_workers_and_dead_workers_vanish(start_server, tmp_path):
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    _stale_metrics_file(metrics_dir)
    pool_max = 3
    server = start_server(WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                          DB_POOL_MAX=str(pool_max))
    samples = scrape(server.url)
    assert value(samples, "http_requests_total", route="/stale-from-last-run") == 0

    requests = 120
    statuses = concurrently(requests, lambda i: fresh_status(server.url + "/health/live"))
    assert statuses == [200] * requests

    # Each worker counted its own share and folds it into its file within a
    # second; a scrape (by either worker) adds them up.
    def per_worker() -> list[float]:
        counts = []
        for path in metrics_dir.glob("counter_*.db"):
            merged = MultiProcessCollector.merge([str(path)], accumulate=False)
            counts.append(sum(s.value for m in merged for s in m.samples
                              if s.name == "http_requests_total"
                              and s.labels.get("route") == "/health/live"))
        return counts

    assert eventually(lambda: sum(per_worker()) == requests, seconds=5), per_worker()
    assert len([n for n in per_worker() if n > 0]) == 2, per_worker()
    for _ in range(4):
        samples = scrape(server.url)
        assert value(samples, "http_requests_total", method="GET", route="/health/live",
                     status="200") == requests
        assert value(samples, "http_request_duration_seconds_count", method="GET",
                     route="/health/live") == requests
    assert value(samples, "app_info", version="0.1.0") == 1
    for policy in ("user", "ip"):  # present before the first refusal
        assert ("rate_limited_total", frozenset({("policy", policy)})) in samples

    # A worker dies: the master replaces it, and the dead one's gauges vanish.
    old = worker_pids(server.process.pid)
    assert len(old) == 2
    dead = min(old)
    os.kill(dead, signal.SIGKILL)
    assert eventually(lambda: len(worker_pids(server.process.pid) - old) == 1, seconds=30)
    (new,) = worker_pids(server.process.pid) - old

    def sampled_by(pid: int) -> bool:
        path = metrics_dir / f"gauge_livesum_{pid}.db"
        if not path.exists():
            return False
        merged = MultiProcessCollector.merge([str(path)], accumulate=False)
        return any(s.name == "db_pool_max" and s.value == pool_max
                   for m in merged for s in m.samples)

    assert eventually(lambda: sampled_by(new), seconds=30)
    assert not list(metrics_dir.glob(f"gauge_live*_{dead}.db"))
    samples = scrape(server.url)
    assert value(samples, "db_pool_max") == 2 * pool_max
    # Counters keep what the dead worker counted: totals never go backwards.
    assert value(samples, "http_requests_total", route="/health/live") == requests


def test_metric_labels_stay_bounded_whatever_clients_send(shared_server):
    for path in ("/no/such/page-1", "/no/such/page-2"):
        assert HTTP.get(shared_server.url + path).status_code == 404
    assert HTTP.request("BREW", shared_server.url + "/health/live").status_code == 405

    def labels(name: str) -> set[str]:
        return {dict(labels).get(name) for metric, labels in scrape(shared_server.url)
                if metric == "http_requests_total"}

    # Counted within a second by whichever worker served them.
    assert eventually(lambda: "unmatched" in labels("route") and "other" in labels("method"),
                      seconds=5)
    assert not any(r.startswith("/no/") for r in labels("route"))
    assert "BREW" not in labels("method")
