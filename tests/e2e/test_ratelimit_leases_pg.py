"""Admission leases on the default store (PostgreSQL, no REDIS_URL), through HTTP.

A read whose user's admissions are already leased by the worker is one
statement, the read's own: the statements are counted as the traced SQL spans
(app/ops/traced_sql.py) of that request. The limit itself stays the documented one
(docs/leases.md): a burst passes whole and the request after it is refused.
"""

from __future__ import annotations

import httpx

from app.client import Client
from tests.e2e.test_tracing import caller, request_trace, statements, traced

LIMITS = {"RATE_LIMIT_USER_PER_MINUTE": "6000", "RATE_LIMIT_USER_BURST": "1000",
          "RATE_LIMIT_IP_PER_MINUTE": "6000", "RATE_LIMIT_IP_BURST": "1000"}


def test_a_read_with_its_admissions_leased_is_one_statement(start_server, receiver):
    server = traced(start_server, receiver, WEB_CONCURRENCY="1", **LIMITS)
    client = Client(server.url)
    token = client.create_user(name="Leased")["token"]
    cid = client.with_token(token).create_conversation("Leased")["id"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(12):  # a busy key: leases of 1, 4, 16 admissions
            assert http.get(f"/conversations/{cid}").status_code == 200
        trace_id, _, headers = caller(token)
        response = http.get(f"/conversations/{cid}", headers=headers)
    assert response.status_code == 200
    assert response.headers["RateLimit-Policy"] == '"user";q=1000;w=10'
    spans = request_trace(receiver, trace_id, ("rate_limit",))
    (limit,) = [s for s in spans if s.name == "rate_limit"]  # authenticated: the user's
    assert limit.attributes["saypi.rate_limit.policy"] == "user"
    assert limit.attributes["saypi.rate_limit.allowed"] is True
    queries = [s for s in statements(spans) if s.name != "ping"]
    assert [s.name for s in queries] == ["SELECT conversations"]


def test_a_burst_passes_whole_and_the_next_request_is_refused(start_server):
    server = start_server(WEB_CONCURRENCY="1", RATE_LIMIT_USER_PER_MINUTE="1",
                          RATE_LIMIT_USER_BURST="64", RATE_LIMIT_IP_PER_MINUTE="0")
    client = Client(server.url)
    token = client.create_user(name="Bursty")["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        answers = [http.get("/conversations") for _ in range(70)]
    statuses = [r.status_code for r in answers]
    assert statuses == [200] * 64 + [429] * 6, statuses
    remaining = [int(r.headers["RateLimit"].split("r=")[1].split(";")[0]) for r in answers[:64]]
    assert remaining == list(range(63, -1, -1))  # what exact GCRA reports, request by request
