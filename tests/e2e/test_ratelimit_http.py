"""Rate limits, client addresses and CORS end to end, across workers and instances."""

from __future__ import annotations

import re
import threading

import httpx
import psycopg
import pytest

from app.client import Client
from tests.conftest import run_threads

POLICY = re.compile(r'^"(user|ip)";q=(\d+);w=(\d+)$')
STATE = re.compile(r'^"(user|ip)";r=(\d+);t=(\d+)$')


def limited(start_server, url=None, **settings):
    env = {"RATE_LIMIT_USER_PER_MINUTE": "6", "RATE_LIMIT_USER_BURST": "5",
           "RATE_LIMIT_IP_PER_MINUTE": "0", **settings}
    return start_server(url, **env)


def token_for(server) -> str:
    return Client(server.url).create_user()["token"]


def get(server, token: str, path: str = "/conversations") -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}"})


def test_burst_admits_exactly_the_quota_then_429_with_headers(start_server):
    server = limited(start_server)
    token = token_for(server)
    responses = [get(server, token) for _ in range(7)]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 2
    first, refused = responses[0], responses[5]
    assert POLICY.match(first.headers["ratelimit-policy"]).groups() == ("user", "5", "50")
    name, remaining, _ = STATE.match(first.headers["ratelimit"]).groups()
    assert (name, remaining) == ("user", "4")
    assert STATE.match(responses[4].headers["ratelimit"]).group(2) == "0"
    body = refused.json()
    assert body["code"] == "rate_limited"
    reset = int(STATE.match(refused.headers["ratelimit"]).group(3))
    assert refused.headers["retry-after"] == str(reset) == str(body["data"]["retry_after"])
    assert 1 <= reset <= 10


def test_sixteen_concurrent_threads_get_exactly_the_burst(start_server):
    server = limited(start_server, RATE_LIMIT_USER_BURST="10", THREADS="8", DB_POOL_MAX="8")
    token = token_for(server)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(3):
                status = http.get("/conversations",
                                  headers={"Authorization": f"Bearer {token}"}).status_code
                with lock:
                    statuses.append(status)

    run_threads(hammer, [()] * 16)
    assert statuses.count(200) == 10 and statuses.count(429) == 38


def test_two_instances_share_one_users_limit(start_server, postgres):
    url = postgres.new_database()
    first = limited(start_server, url)
    second = limited(start_server, url)
    token = token_for(first)
    statuses = [get(server, token).status_code for server in (first, second) * 4]
    assert statuses.count(200) == 5 and statuses.count(429) == 3


def test_unauthenticated_requests_are_limited_per_address(start_server):
    server = start_server(RATE_LIMIT_IP_PER_MINUTE="6", RATE_LIMIT_IP_BURST="2",
                          RATE_LIMIT_USER_PER_MINUTE="0")
    statuses = [httpx.post(server.url + "/users").status_code for _ in range(2)]
    statuses.append(httpx.get(server.url + "/conversations",
                              headers={"Authorization": "Bearer forged"}).status_code)
    assert statuses == [201, 201, 429]
    response = httpx.post(server.url + "/users")
    assert response.status_code == 429
    assert POLICY.match(response.headers["ratelimit-policy"]).group(1) == "ip"
    for path in ("/health/live", "/health/ready", "/health/quick", "/health/detailed",
                 "/metrics"):
        for _ in range(3):
            assert httpx.get(server.url + path).status_code == 200, path


def test_forwarded_for_counts_only_behind_a_trusted_proxy(start_server):
    limits = {"RATE_LIMIT_IP_PER_MINUTE": "6", "RATE_LIMIT_IP_BURST": "1",
              "RATE_LIMIT_USER_PER_MINUTE": "0"}
    untrusted = start_server(**limits)
    spoofed = [httpx.post(untrusted.url + "/users",
                          headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
               for i in range(2)]
    assert spoofed == [201, 429]
    behind_proxy = start_server(TRUSTED_PROXIES="127.0.0.0/8", **limits)
    distinct = [httpx.post(behind_proxy.url + "/users",
                           headers={"X-Forwarded-For": f"198.51.100.7, 203.0.113.{i}"}
                           ).status_code for i in range(3)]
    assert distinct == [201, 201, 201]
    same = httpx.post(behind_proxy.url + "/users",
                      headers={"X-Forwarded-For": "203.0.113.0"}).status_code
    assert same == 429


def test_store_failure_fails_open_and_is_reported(start_server, postgres):
    url = postgres.new_database()
    # One worker: health is per worker, and this one must have seen the failures.
    server = limited(start_server, url, HEALTH_CACHE_SECONDS="0", WEB_CONCURRENCY="1")
    token = token_for(server)
    assert get(server, token).status_code == 200
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE rate_limits")
    statuses = [get(server, token).status_code for _ in range(8)]
    assert statuses == [200] * 8
    detailed = httpx.get(server.url + "/health/detailed").json()
    assert detailed["checks"]["rate_limit_store"]["status"] == "degraded"
    scrape = httpx.get(server.url + "/metrics").text
    errors = [float(line.split()[-1]) for line in scrape.splitlines()
              if line.startswith("rate_limit_store_errors_total")]
    assert errors and errors[0] >= 8
    assert any("fail open" in line and "WARNING" in line for line in server.log_lines())


@pytest.fixture
def cors_server(start_server):
    return start_server(CORS_ORIGINS="https://app.example")


def test_cors_preflight_and_actual_requests(cors_server):
    preflight = httpx.options(cors_server.url + "/conversations", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    actual = httpx.get(cors_server.url + "/health/live", headers={"Origin": "https://app.example"})
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(cors_server.url + "/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(shared_server):
    response = httpx.get(shared_server.url + "/health/live",
                         headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_renders_missing_the_cache_cost_more_admissions(start_server):
    """A read that renders many lines the cache misses costs one admission per
    RATE_LIMIT_RENDERS_PER_ADMISSION renders more (JSON and text/plain alike), so a user
    cannot make the workers render at the rate of cheap requests."""
    server = limited(start_server, RATE_LIMIT_USER_PER_MINUTE="6",  # nothing refills
                     RATE_LIMIT_USER_BURST="30", RENDER_CACHE_SIZE="0",
                     RATE_LIMIT_RENDERS_PER_ADMISSION="10")
    token = token_for(server)
    lines = [{"text": f"line {i} of a conversation that is rendered again and again"}
             for i in range(50)]
    created = httpx.post(server.url + "/conversations", json={"heading": "h", "lines": lines},
                         headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201
    # the 50 renders of the creation cost 5 admissions more than the request's own
    assert int(STATE.match(created.headers["ratelimit"]).group(2)) <= 30 - 6 + 1
    path = f"/conversations/{created.json()['id']}"
    responses = []
    for i in range(10):
        headers = {"Authorization": f"Bearer {token}",
                   "Accept": "text/plain" if i % 2 else "application/json"}
        responses.append(httpx.get(server.url + path, headers=headers))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 4 + [429] * 6, statuses  # 6 admissions a read, 24 left
    first = int(STATE.match(responses[0].headers["ratelimit"]).group(2))
    second = int(STATE.match(responses[1].headers["ratelimit"]).group(2))
    assert first - second >= 5, (first, second)  # the text/plain read was charged too
    assert responses[1].text.startswith("h\n\n")
    assert int(responses[-1].headers["retry-after"]) >= 1
    # a request that renders nothing is charged one admission, as before
    other = token_for(server)
    assert [get(server, other).status_code for _ in range(10)] == [200] * 10
