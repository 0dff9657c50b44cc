"""The service foundation end to end: run(), config, gunicorn, pool, migrations, errors, logs."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import psycopg
import pytest

from harness.pgcontrol import RestartablePostgres
from harness.saypi import SECRET
from harness.services import free_port
from tests.conftest import eventually


# --- errors in the contract's format -----------------------------------------------------
def test_unknown_path_is_json_404(shared_server):
    response = httpx.get(shared_server.url + "/no/such/path")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["code"] == "not_found"


def test_wrong_method_is_json_405_with_allow(shared_server):
    response = httpx.delete(shared_server.url + "/health/live")
    assert response.status_code == 405
    body = response.json()
    assert body["code"] == "method_not_allowed"
    assert "GET" in body["data"]["allowed"]
    assert "GET" in response.headers["allow"]


def test_handler_exception_is_internal_failure_logged_under_request_id(shared_server):
    response = httpx.get(shared_server.url + "/debug/fail",
                         headers={"X-Request-ID": "trace-me-500"})
    assert response.status_code == 500
    body = response.json()
    assert body == {"code": "internal_failure", "message": body["message"]}
    assert "Traceback" not in response.text and "injected" not in response.text
    time.sleep(0.2)
    logged = [json.loads(line) for line in shared_server.log_lines() if line.startswith("{")]
    errors = [r for r in logged if r.get("request_id") == "trace-me-500" and r["level"] == "ERROR"]
    assert errors and "Traceback" in errors[0]["exc_info"]


def test_request_id_is_echoed_when_valid_and_generated_otherwise(shared_server):
    good = httpx.get(shared_server.url + "/health/live", headers={"X-Request-ID": "abc.DEF-1_2"})
    assert good.headers["x-request-id"] == "abc.DEF-1_2"
    bad = httpx.get(shared_server.url + "/health/live", headers={"X-Request-ID": "bad id!"})
    assert bad.headers["x-request-id"] not in ("", "bad id!")
    assert len(bad.headers["x-request-id"]) == 32


def test_security_headers_on_every_response(shared_server):
    for path in ("/health/live", "/missing", "/docs"):
        headers = httpx.get(shared_server.url + path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert len(headers.get_list("content-security-policy")) == 1
        if path == "/docs":  # a page: its own policy, and no referrer leaves it
            assert headers["referrer-policy"] == "no-referrer"
            assert "script-src 'self'" in headers["content-security-policy"]
        else:  # an API answer links nowhere: no referrer policy to pay for
            assert "referrer-policy" not in headers
            assert "default-src 'none'" in headers["content-security-policy"]


# --- logs ----------------------------------------------------------------------------
def test_logs_are_json_carry_request_ids_and_never_a_token(shared_server):
    token = "usr_0123456789abcdef.c2VjcmV0LXRva2VuLXZhbHVlLXh5eg"
    httpx.get(shared_server.url + "/health/live",
              headers={"Authorization": f"Bearer {token}", "X-Request-ID": "log-check-1"})
    httpx.get(shared_server.url + "/nowhere?token=" + token,
              headers={"Authorization": "Bearer plain-secret-value"})
    httpx.get(shared_server.url + "/health/live", headers={"X-Request-ID": token})

    def access_records() -> list[dict]:
        records = [json.loads(line) for line in shared_server.log_lines()
                   if line.startswith("{")]
        return [r for r in records if r.get("request_id") == "log-check-1"]

    # access lines are flushed within about a second, even with no further traffic
    assert eventually(access_records, seconds=5)
    access = access_records()
    assert access[0]["route"] == "/health/live" and access[0]["status"] == 200
    assert access[0]["logger"] == "saypi.access" and access[0]["level"] == "INFO"
    text = shared_server.logs()
    assert token not in text and "plain-secret-value" not in text
    for key in ("method", "duration_ms", "remote_addr", "bytes"):
        assert key in access[0]


# --- pool and lifecycle -----------------------------------------------------------------
def test_pool_connections_belong_to_workers_not_the_master(shared_server, postgres):
    httpx.get(shared_server.url + "/health/detailed")
    dbname = psycopg.conninfo.conninfo_to_dict(shared_server.env["DATABASE_URL"])["dbname"]
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (dbname,))]
    pids = {int(name.rsplit("-", 1)[1]) for name in names if name.startswith("saypi-worker-")}
    assert pids, names
    assert shared_server.process.pid not in pids
    assert len(pids) == int(shared_server.env["WEB_CONCURRENCY"])


def test_each_worker_freezes_what_it_built_before_it_serves(shared_server):
    """A full collection never walks the app's startup objects: each worker freezes them
    (gc.freeze) before its first request, and its log says how many it froze."""
    said = [re.fullmatch(r"Worker (\d+) ready: (\d+) objects frozen out of the collector's "
                         r"sight", json.loads(line).get("message", ""))
            for line in shared_server.log_lines() if line.startswith("{")]
    frozen = {int(match[1]): int(match[2]) for match in said if match}
    assert len(frozen) == int(shared_server.env["WEB_CONCURRENCY"]), frozen
    assert shared_server.process.pid not in frozen
    assert all(count > 10_000 for count in frozen.values()), frozen


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(start_server):
    server = start_server(GRACEFUL_TIMEOUT="8")
    result = {}

    def slow_request():
        result["response"] = httpx.get(server.url + "/debug/sleep?seconds=3", timeout=20)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.process.wait(timeout=8 + 2)
    elapsed = time.monotonic() - started
    thread.join(5)
    assert result["response"].status_code == 200
    assert result["response"].json() == {"slept": 3.0}
    assert code == 0
    assert elapsed < 8 + 2


def test_two_instances_on_one_fresh_database_migrate_once(start_server, postgres):
    url = postgres.new_database(migrated=False)
    first = start_server(url, wait=False)
    second = start_server(url, wait=False)
    first.wait_ready()
    second.wait_ready()
    with psycopg.connect(url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    from app.store.db import load_migrations

    assert sorted(versions) == [m.version for m in load_migrations()]
    applied_lines = [line for s in (first, second) for line in s.log_lines()
                     if "applied migration" in line]
    assert len(applied_lines) == len(versions)


@pytest.mark.slow
def test_readiness_follows_the_database_without_restarting(start_server, tmp_path):
    pg = RestartablePostgres(tmp_path / "own-pg")
    try:
        server = start_server(pg.dsn, DB_POOL_TIMEOUT="1", DB_CONNECT_TIMEOUT="2")
        assert httpx.get(server.url + "/health/ready").status_code == 200
        pg.stop()
        assert eventually(lambda: httpx.get(server.url + "/health/ready",
                                             timeout=10).status_code == 503)
        assert httpx.get(server.url + "/health/live").status_code == 200
        pg.start()
        assert eventually(lambda: httpx.get(server.url + "/health/ready",
                                             timeout=10).status_code == 200, seconds=20)
    finally:
        pg.close()


def test_embedded_database_when_database_url_is_unset(tmp_path):
    """The `make run` path: no DATABASE_URL, so run() starts and later stops its own PostgreSQL."""
    from harness.saypi import Server

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATA_DIR": str(tmp_path / "d"),
           "PORT": str(free_port()), "USER_SECRETS": SECRET}
    for attempt in range(2):  # the second start finds the data kept from the first
        server = Server(env, tmp_path / f"embedded-{attempt}.log").wait_ready()
        assert "Using embedded PostgreSQL" in server.logs()
        assert server.stop() == 0
    assert (tmp_path / "d" / "postgres" / "PG_VERSION").exists()
