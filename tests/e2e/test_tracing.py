"""Tracing end to end: SayPI started through run() exporting to a real OTLP/HTTP receiver.

The receiver (tests/e2e/otlp_receiver.py) decodes what the SDK's exporter sends,
as a collector would. Spans are exported on a short schedule
(OTEL_BSP_SCHEDULE_DELAY), except where a test shows that the flush at
shutdown is what sends them.
"""

from __future__ import annotations

import json
import secrets

import httpx

from app.client import Client
from app.http.trace_context import parse_traceparent
from harness.saypi import SECRET
from tests.conftest import eventually, metric_total
from tests.e2e.otlp_receiver import CLIENT_KIND, SERVER_KIND, STATUS_ERROR, OtlpReceiver

CONVERSATION_ROUTE = "GET /conversations/<conversation_id>"


def traced(start_server, receiver: OtlpReceiver, **overrides: str):
    settings = {"OTEL_BSP_SCHEDULE_DELAY": "100", **overrides}
    return start_server(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, **settings)


def caller(token: str) -> tuple[str, str, dict[str, str]]:
    """A new calling span: its trace id, its span id, and the headers of its request."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, {"traceparent": f"00-{trace_id}-{parent_id}-01",
                                 "Authorization": f"Bearer {token}"}


def user_with_conversation(server) -> tuple[str, str]:
    client = Client(server.url)
    user = client.create_user(name="Tracer")
    convo = client.with_token(user["token"]).create_conversation("Traced")
    return user["token"], convo["id"]


def server_span(spans, trace_id: str):
    found = [s for s in spans if s.trace_id == trace_id and s.kind == SERVER_KIND]
    return found[0] if len(found) == 1 else None


def request_trace(receiver: OtlpReceiver, trace_id: str, child_names=()):
    """The spans of one trace once its server span (and the named children) arrived."""
    def complete(spans) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        names = {s.name for s in mine}
        return server_span(spans, trace_id) is not None and set(child_names) <= names
    return [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]


def statements(spans) -> list:
    """The SQL statement spans (transactions are database spans without a statement)."""
    return [s for s in spans if s.attributes.get("db.system") == "postgresql"
            and "db.query.text" in s.attributes]


def json_lines(server) -> list[dict]:
    """The server's JSON log lines (read from its file: also after the server stopped)."""
    return [json.loads(line) for line in server.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{")]


def test_a_request_continues_the_callers_trace(start_server, receiver):
    # One worker: creating the conversation made it confirm the user exists (the AUTHED
    # guard's presence cache), so the traced read below is the read's own statement alone.
    server = traced(start_server, receiver, WEB_CONCURRENCY="1")
    token, cid = user_with_conversation(server)
    trace_id, parent_id, headers = caller(token)
    response = httpx.get(f"{server.url}/conversations/{cid}?limit=1&secret=query",
                         headers={**headers, "tracestate": "vendor=opaque,other@tenant=1",
                                  "User-Agent": "tracing-test/1.0"})
    assert response.status_code == 200

    returned = parse_traceparent(response.headers["traceparent"])
    assert returned is not None and f"{returned.trace_id:032x}" == trace_id and returned.sampled

    spans = request_trace(receiver, trace_id)
    root = server_span(spans, trace_id)
    assert root.name == CONVERSATION_ROUTE
    assert root.parent_span_id == parent_id
    assert f"{returned.span_id:016x}" == root.span_id
    assert root.trace_state == "vendor=opaque,other@tenant=1"
    assert root.attributes["http.request.method"] == "GET"
    assert root.attributes["http.route"] == "/conversations/<conversation_id>"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["user_agent.original"] == "tracing-test/1.0"
    assert root.status_code != STATUS_ERROR
    assert root.resource["service.name"] == "saypi"
    # No query string anywhere, no token, no secret.
    for span in spans:
        for text in span.texts():
            assert "secret=query" not in text and token not in text and SECRET not in text
            assert token.split(".")[1] not in text

    # One statement for a conversation with its lines: one child span (the pool's check of a
    # connection that sat idle, when there was one, is its own round trip, named "ping").
    sql = statements(spans)
    queries = [s for s in sql if s.name != "ping"]
    assert len(queries) == 1, [s.name for s in sql]
    (query,) = queries
    assert query.kind == CLIENT_KIND and query.parent_span_id == root.span_id
    assert query.name == "SELECT conversations"
    assert query.attributes["db.operation.name"] == "SELECT"
    assert "%s" in query.attributes["db.query.text"] and cid not in query.attributes[
        "db.query.text"]
    for ping in sql:
        assert ping.parent_span_id == root.span_id

    # Probes and scrapes are not traced (the readiness wait sent many before).
    assert "traceparent" not in httpx.get(f"{server.url}/health/ready").headers
    assert not [s for s in receiver.received()
                if str(s.attributes.get("url.path")).startswith(("/health/", "/metrics"))]


def test_log_lines_carry_the_trace(start_server, receiver):
    server = traced(start_server, receiver)
    token, _ = user_with_conversation(server)
    trace_id, _, headers = caller(token)
    request_id = "trace-log-" + secrets.token_hex(4)
    response = httpx.get(f"{server.url}/debug/fail",
                         headers={**headers, "X-Request-ID": request_id})
    assert response.status_code == 500
    spans = request_trace(receiver, trace_id)
    root = server_span(spans, trace_id)
    assert root.status_code == STATUS_ERROR
    assert [name for name, _ in root.events] == ["exception"]
    for span in spans:
        for text in span.texts():
            assert token.split(".")[1] not in text

    def mine() -> list[dict]:
        return [line for line in json_lines(server) if line.get("request_id") == request_id]

    assert eventually(lambda: any(line.get("message") == "request" for line in mine()))
    lines = mine()
    assert {line["message"] for line in lines} >= {"request", "unhandled exception"}
    for line in lines:
        assert line["trace_id"] == trace_id
        assert line["span_id"] == root.span_id


def test_user_errors_do_not_mark_the_span(start_server, receiver):
    server = traced(start_server, receiver)
    token, _ = user_with_conversation(server)
    trace_id, _, headers = caller(token)
    response = httpx.get(f"{server.url}/conversations/cv_0000000000000001", headers=headers)
    assert response.status_code == 404
    root = server_span(request_trace(receiver, trace_id), trace_id)
    assert root.attributes["http.response.status_code"] == 404
    assert root.status_code != STATUS_ERROR and root.events == []


def test_rate_limit_and_idempotency_spans(start_server, receiver):
    server = traced(start_server, receiver, RATE_LIMIT_USER_PER_MINUTE="600",
                    RATE_LIMIT_IP_PER_MINUTE="600")
    token, cid = user_with_conversation(server)
    trace_id, _, headers = caller(token)
    response = httpx.post(f"{server.url}/conversations/{cid}/lines",
                          json={"text": "Moo " + secrets.token_hex(6), "animal": "owl"},
                          headers={**headers, "Idempotency-Key": secrets.token_hex(8)})
    assert response.status_code == 201
    spans = request_trace(receiver, trace_id, ("rate_limit", "idempotency.lookup",
                                               "idempotency.store", "cowsay.render",
                                               "transaction"))
    by_name = {s.name: s for s in spans}
    root = server_span(spans, trace_id)
    limit = by_name["rate_limit"]
    assert limit.parent_span_id == root.span_id
    assert limit.attributes["saypi.rate_limit.policy"] == "user"
    assert limit.attributes["saypi.rate_limit.allowed"] is True
    # The limiter's one statement is its child.
    assert [s.parent_span_id for s in statements(spans)
            if "rate_limit" in s.attributes["db.query.text"]] == [limit.span_id]
    # The key, the write and the stored response: one transaction (BEGIN to COMMIT).
    transaction = by_name["transaction"]
    assert transaction.parent_span_id == root.span_id
    lookup = by_name["idempotency.lookup"]
    assert lookup.parent_span_id == transaction.span_id
    assert len([s for s in statements(spans) if s.parent_span_id == lookup.span_id]) == 2
    assert by_name["idempotency.store"].parent_span_id == transaction.span_id
    assert [s.name for s in spans if s.name in ("transaction", "savepoint")] == ["transaction"]
    assert all(s.status_code != STATUS_ERROR for s in spans)
    assert by_name["cowsay.render"].attributes["saypi.cowsay.animal"] == "owl"


def test_malformed_traceparent_starts_a_new_trace(start_server, receiver):
    server = traced(start_server, receiver)
    bad = ["", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
           "00-" + "A" * 32 + "-" + "1" * 16 + "-01", "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
           "00-" + "1" * 32 + "-" + "1" * 16 + "-01-extra", "00-" + "1" * 2000,
           "01-" + "1" * 32 + "-" + "0" * 16 + "-01", "00-" + "1" * 32 + "-" + "1" * 16 + "-0"]
    for value in bad:
        response = httpx.get(f"{server.url}/animals", headers={
            "traceparent": value, "tracestate": "x" * 8000})  # under gunicorn's field limit
        assert response.status_code in (200, 401), value
        fresh = parse_traceparent(response.headers["traceparent"])
        assert fresh is not None and fresh.trace_id != int("1" * 32, 16)


def test_spans_of_a_request_just_before_sigterm_are_exported(start_server, receiver):
    # A schedule far longer than the test: only the flush at shutdown can send them.
    server = traced(start_server, receiver, OTEL_BSP_SCHEDULE_DELAY="600000")
    token, cid = user_with_conversation(server)
    trace_id, _, headers = caller(token)
    response = httpx.get(f"{server.url}/conversations/{cid}", headers=headers)
    assert response.status_code == 200
    assert server.stop() == 0
    root = server_span(receiver.received(), trace_id)
    assert root is not None and root.name == CONVERSATION_ROUTE
    assert statements(receiver.trace(trace_id))


def test_tracing_off_sends_nothing(start_server, receiver):
    server = start_server()  # no OTEL_EXPORTER_OTLP_ENDPOINT
    token, cid = user_with_conversation(server)
    _, _, headers = caller(token)
    response = httpx.get(f"{server.url}/conversations/{cid}", headers=headers)
    assert response.status_code == 200
    assert "traceparent" not in response.headers
    assert server.stop() == 0
    assert receiver.requests == 0
    for line in json_lines(server):
        assert "trace_id" not in line


def test_sampled_out_requests_export_nothing_but_still_answer(start_server, receiver):
    server = traced(start_server, receiver, OTEL_TRACES_SAMPLER="parentbased_always_off")
    token, cid = user_with_conversation(server)
    response = httpx.get(f"{server.url}/conversations/{cid}",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    returned = parse_traceparent(response.headers["traceparent"])
    assert returned is not None and not returned.sampled
    assert server.stop() == 0
    assert receiver.received() == []


def test_an_unreachable_collector_costs_no_request(start_server, receiver):
    receiver.refuse()
    server = traced(start_server, receiver, OTEL_BSP_EXPORT_TIMEOUT="1000")
    token, cid = user_with_conversation(server)
    for _ in range(5):
        response = httpx.get(f"{server.url}/conversations/{cid}",
                             headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200

    assert eventually(lambda: metric_total(server, "tracing_spans_dropped_total",
                                           reason="export_failed") > 0, seconds=30)
