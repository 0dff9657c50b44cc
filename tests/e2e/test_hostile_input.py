"""Hostile input through real HTTP: no 5xx, every error in the contract's shape, still ready after.

Hypothesis generates hostile values (very long strings, NUL and control
bytes, invalid UTF-8, huge integers, arrays where strings belong, deeply
nested JSON, SQL and path-traversal fragments, look-alike mood names) for
every endpoint. SAYPI_HOSTILE_EXAMPLES sets examples per endpoint.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.client import Client
from app.http.trace_context import parse_traceparent
from harness.saypi import Server, server_env
from tests.e2e.otlp_receiver import OtlpReceiver

EXAMPLES = int(os.environ.get("SAYPI_HOSTILE_EXAMPLES", "150"))
CASES = {"count": 0}

FRAGMENTS = ["' OR 1=1 --", "'; DROP TABLE users; --", "../../etc/passwd", "%00", "\x00",
             "\u202e", "ｄｅｆａｕｌｔ", "dеfault", "DEFAULT", "borg\u200b", "\ud7ff", "😀" * 50,  # noqa: RUF001 - look-alikes on purpose
             "a" * 10_000, "\r\n\r\nHTTP/1.1 200 OK", "${jndi:ldap://x}", "<script>",
             "usr_ffffffffffffffff", "cv_0000000000000000", "-1", "1e309", "NaN"]

hostile_text = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=50),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
hostile_value = st.recursive(
    st.one_of(st.none(), st.booleans(), hostile_text,
              st.integers(min_value=-(2**80), max_value=2**80),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
PARAMS = ["name", "email", "heading", "animal", "think", "mood", "text", "eyes", "tongue",
          "lines"]
LINE_PARAMS = ["animal", "think", "mood", "text"]
# A batch's `lines`: lists of line-like objects with hostile values, or anything else.
hostile_lines = st.one_of(
    st.lists(st.one_of(st.dictionaries(st.sampled_from(LINE_PARAMS), hostile_value, max_size=4),
                       hostile_value), max_size=8),
    st.integers(min_value=0, max_value=150).map(lambda n: [{"text": "moo"}] * n),
    hostile_value,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(PARAMS), hostile_value, max_size=6).map(
        lambda d: ("application/json", json.dumps(d).encode())),
    st.fixed_dictionaries({"lines": hostile_lines},
                          optional={"heading": hostile_text}).map(
        lambda d: ("application/json", json.dumps(d).encode())),
    st.binary(max_size=200).map(lambda b: ("application/json", b)),
    st.binary(max_size=200).map(lambda b: ("application/x-www-form-urlencoded", b)),
    st.integers(min_value=1, max_value=3000).map(
        lambda depth: ("application/json", b"[" * depth + b"]" * depth)),
    st.integers(min_value=1, max_value=3000).map(
        lambda depth: ("application/json", b'{"a":' * depth + b"1" + b"}" * depth)),
    st.tuples(st.sampled_from(["text/plain", "application/xml", "multipart/form-data",
                               "application/json; charset=latin-1"]),
              st.binary(min_size=1, max_size=50)),
)
path_part = st.one_of(hostile_text.filter(lambda s: s and "\x00" not in s),
                      st.sampled_from(["cv_0000000000000001", "ln_0000000000000001",
                                       "..", "%2e%2e", "%FF%FE", "default"]))
query = st.dictionaries(st.sampled_from(["limit", "starting_after", "ending_before", "type",
                                         "conversation"]),
                        hostile_text, max_size=3)

ENDPOINTS = [
    ("POST", "/users"), ("GET", "/users/{a}"), ("PATCH", "/users/{a}"),
    ("DELETE", "/users/{a}"), ("GET", "/animals"), ("GET", "/moods"),
    ("GET", "/moods/{a}"), ("PUT", "/moods/{a}"), ("DELETE", "/moods/{a}"),
    ("GET", "/conversations"), ("POST", "/conversations"), ("GET", "/conversations/{a}"),
    ("PATCH", "/conversations/{a}"), ("DELETE", "/conversations/{a}"),
    ("GET", "/conversations/{a}/lines"), ("POST", "/conversations/{a}/lines"),
    ("GET", "/conversations/{a}/lines/{b}"), ("DELETE", "/conversations/{a}/lines/{b}"),
    ("POST", "/conversations/{a}/lines/batch"), ("POST", "/render"),
    ("GET", "/events"), ("GET", "/events/{a}"),
]


# W3C Trace Context headers: near misses of the grammar, hostile text, oversized states.
_hex = st.text(alphabet="0123456789abcdefABCDEF-", max_size=40)
hostile_traceparent = st.one_of(
    hostile_text,
    st.builds(lambda *parts: "-".join(parts), _hex, _hex, _hex, _hex),
    st.builds(lambda version, flags, tail: f"{version}-{'4b' * 16}-{'0f' * 8}-{flags}{tail}",
              st.sampled_from(["00", "01", "ff", "0", "zz"]), st.sampled_from(["01", "00", "f"]),
              st.sampled_from(["", "-", "-x", "\t", " ", "\x00"])),
    st.sampled_from(["00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-" + "f" * 32 + "-" + "f" * 16
                     + "-ff", "00-" + "1" * 4000, ",".join(["00-" + "2" * 32 + "-" + "3" * 16
                                                            + "-01"] * 3)]),
)
hostile_tracestate = st.one_of(
    hostile_text,
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=40).map(
        lambda members: ",".join(f"{k}={v}" for k, v in members)),
    st.integers(min_value=0, max_value=7000).map(lambda n: "a=" + "x" * n),
    st.integers(min_value=0, max_value=300).map(lambda n: ",".join(f"k{i}=v" for i in range(n))),
)


def assert_contract_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) <= {"code", "message", "data"}
        assert isinstance(body["code"], str) and isinstance(body["message"], str)
        assert "Traceback" not in response.text and "psycopg" not in response.text


@pytest.fixture(scope="module")
def target(shared_server):
    client = Client(shared_server.url)
    user = client.create_user()
    authed = client.with_token(user["token"])
    convo = authed.create_conversation("fuzz target")
    line = authed.create_line(convo["id"], "hello")
    http = httpx.Client(base_url=shared_server.url, timeout=30,
                        headers={"Authorization": f"Bearer {user['token']}"})
    yield {"http": http, "user": user["id"], "convo": convo["id"], "line": line["id"]}
    http.close()
    print(f"\nhostile input cases sent: {CASES['count']}")


@pytest.mark.parametrize("method,template", ENDPOINTS)
def test_hostile_requests_never_fail_the_server(target, method, template):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(a=path_part, b=path_part, body=bodies, params=query, keep_ids=st.booleans(),
           idem=st.one_of(st.none(), hostile_text), traceparent=hostile_traceparent,
           tracestate=hostile_tracestate)
    def run(a, b, body, params, keep_ids, idem, traceparent, tracestate):
        if keep_ids:
            a, b = (target["user"] if template.startswith("/users") else target["convo"]), \
                target["line"]
        path = template.format(a=a.replace("/", "%2F").replace("?", "%3F").replace("#", "%23"),
                               b=b.replace("/", "%2F").replace("?", "%3F").replace("#", "%23"))
        content_type, content = body
        headers = {"Content-Type": content_type, "traceparent": traceparent.encode(),
                   "tracestate": tracestate.encode()}  # raw bytes, as a client may send
        if idem is not None and all(" " <= ch <= "~" or ch == "\t" for ch in idem):
            headers["Idempotency-Key"] = idem  # what an HTTP client can send at all
        try:
            response = target["http"].request(method, path, params=params, content=content,
                                              headers=headers)
        except (httpx.InvalidURL, httpx.LocalProtocolError):  # the client refuses to send it
            return
        CASES["count"] += 1
        assert_contract_error(response)

    run()


@pytest.fixture(scope="module")
def traced_target(postgres, tmp_path_factory):
    """A SayPI with tracing on, exporting to a real OTLP receiver, and a user of its own."""
    tmp = tmp_path_factory.mktemp("traced")
    with OtlpReceiver() as receiver:
        server = Server(server_env(postgres.new_database(), tmp,
                                   OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                                   OTEL_BSP_SCHEDULE_DELAY="200"), tmp / "server.log")
        try:
            server.wait_ready()
            user = Client(server.url).create_user()
            convo = Client(server.url, user["token"]).create_conversation("traced fuzz")
            with httpx.Client(base_url=server.url, timeout=30, headers={
                    "Authorization": f"Bearer {user['token']}"}) as http:
                yield {"http": http, "convo": convo["id"], "server": server,
                       "receiver": receiver}
        finally:
            server.stop()


@pytest.mark.parametrize("method,template", [("GET", "/conversations/{a}"),
                                             ("POST", "/conversations/{a}/lines"),
                                             ("GET", "/animals"), ("GET", "/nowhere")])
def test_hostile_trace_context_never_fails_a_traced_server(traced_target, method, template):
    """With tracing on, malformed traceparents and hostile tracestates start a new trace."""
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(traceparent=hostile_traceparent, tracestate=hostile_tracestate)
    def run(traceparent, tracestate):
        path = template.format(a=traced_target["convo"])
        try:
            response = traced_target["http"].request(
                method, path, json={"text": "moo"} if method == "POST" else None,
                headers={"traceparent": traceparent.encode(), "tracestate": tracestate.encode()})
        except httpx.LocalProtocolError:  # the client refuses to send it
            return
        CASES["count"] += 1
        assert_contract_error(response)
        if response.status_code != 400 or "invalid_request" not in response.text:
            assert parse_traceparent(response.headers.get("traceparent")) is not None

    sent = CASES["count"]
    run()
    assert CASES["count"] - sent >= EXAMPLES // 2  # most of them reached the server
    assert httpx.get(traced_target["server"].url + "/health/ready").status_code == 200
    assert "Traceback" not in traced_target["server"].logs()


def test_requests_gunicorn_refuses_itself_get_contract_errors_too(shared_server):
    """Oversized headers and request lines never reach Flask; they are JSON all the same."""
    for response in (
        httpx.get(shared_server.url + "/health/live", headers={"X-Big": "x" * 20_000}),
        httpx.get(shared_server.url + "/" + "a" * 10_000),
    ):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.json()["code"] == "invalid_request"
        assert response.json()["data"]["reason"]


def test_still_ready_after_the_barrage(shared_server, target):
    assert httpx.get(shared_server.url + "/health/ready").status_code == 200
