"""deploy/haproxy/haproxy.cfg, run for real: a buffering HAProxy in front of a real SayPI.

HAProxy is the Debian `haproxy` package (.ci/run installs it); these tests
skip only when it is not installed. Each test starts its own HAProxy on a
free port, pointed at a SayPI started through run().
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from harness.haproxy import CONFIG, ERRORS, config_env, find_haproxy
from harness.services import free_port, stop_process
from tests.conftest import eventually
from tests.e2e.test_slow_clients import (
    Tricklers,
    get,
    is_open,
    raw_request,
    read_response,
    summary,
    timed_fresh_requests,
)

HAPROXY = find_haproxy()

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


def haproxy_env(listen_port: int, backend_port: int, pushpin_port: int = 1) -> dict[str, str]:
    """Port 1 for Pushpin: none listens there, so streams go to SayPI."""
    return {**config_env(f"127.0.0.1:{listen_port}"),
            "SAYPI_BACKEND": f"127.0.0.1:{backend_port}",
            "SAYPI_PUSHPIN": f"127.0.0.1:{pushpin_port}"}


class HAProxy:
    def __init__(self, backend_port: int, log_path: Path, pushpin_port: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(CONFIG)],
            env=haproxy_env(self.port, backend_port, pushpin_port),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

        def accepting() -> bool:
            assert self.process.poll() is None, log_path.read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        assert eventually(accepting, seconds=10), log_path.read_text()

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture
def behind_haproxy(start_server, tmp_path):
    """A SayPI that trusts 127.0.0.1 as its proxy, and an HAProxy in front of it."""
    proxies = []

    def start(**overrides: str):
        server = start_server(TRUSTED_PROXIES="127.0.0.1/32", **overrides)
        proxy = HAProxy(server.port, tmp_path / f"haproxy-{len(proxies)}.log")
        proxies.append(proxy)
        return server, proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def test_haproxy_config_is_valid_and_sets_the_protections():
    result = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=haproxy_env(1, 2),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    text = CONFIG.read_text()
    for directive in ("timeout http-request", "option http-buffer-request", "maxconn",
                      "option forwardfor", "/health/ready", "errorfile 503"):
        assert directive in text, directive


def test_haproxy_error_pages_are_the_contracts_json():
    from app.http.errors import InternalFailure, InvalidRequest, ServiceUnavailable

    expected = {"400": InvalidRequest("the request is malformed"), "500": InternalFailure(),
                "503": ServiceUnavailable(1)}
    for name, error in expected.items():
        head, _, body = (ERRORS / f"{name}.http").read_bytes().partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {error.status} ".encode())
        assert json.loads(body) == error.body()
        assert f"Content-Length: {len(body)}".encode() in head
        for header, value in error.headers.items():
            assert f"{header}: {value}".encode() in head


def test_through_haproxy_fresh_clients_are_answered_while_slow_ones_are_held(behind_haproxy):
    _server, proxy = behind_haproxy()
    idle = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(200)]
    tricklers = Tricklers(proxy.port, 32)
    try:
        time.sleep(1.5)
        live = timed_fresh_requests(proxy.url, "/health/live", 60, timeout=5)
        print(f"\nthrough HAProxy, 200 idle + 32 trickling held: /health/live {summary(live)}")
        assert sum(is_open(s) for s in idle) == len(idle)
    finally:
        tricklers.close()
        for sock in idle:
            sock.close()


def test_haproxy_cuts_off_slow_heads_and_refuses_oversized_ones(behind_haproxy):
    server, proxy = behind_haproxy()
    tricklers = Tricklers(proxy.port, 2, every=0.5)
    try:
        started = time.monotonic()
        # timeout http-request 5s, answered by closing (errorfile 408 /dev/null)
        assert eventually(lambda: tricklers.closed_by_server == 2, seconds=10), \
            proxy.log_path.read_text()
        print(f"\nHAProxy closed trickling heads after {time.monotonic() - started:.1f}s")
    finally:
        tricklers.close()
    big = "".join(f"X-Big-{i}: {'a' * 8000}\r\n" for i in range(60))
    status, headers, body = raw_request(
        proxy.port, f"GET /health/live HTTP/1.1\r\nX-Request-ID: too-big\r\nHost: x\r\n"
                    f"{big}\r\n".encode())
    assert status == 400
    # HAProxy before 3.2 answers parsing errors with its built-in HTML page,
    # whatever `errorfile 400` says (haproxy/haproxy#3032); later ones use ours.
    if headers["content-type"].startswith("application/json"):
        assert json.loads(body)["code"] == "invalid_request"
    assert "too-big" not in server.logs()  # never reached SayPI


def test_haproxy_forwards_the_client_address_and_saypi_believes_only_that(behind_haproxy):
    server, proxy = behind_haproxy()
    request_id = f"proxy-{uuid.uuid4().hex}"
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.5", 0))  # any 127/8 address is loopback on Linux
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
                     f"X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n".encode())
        assert read_response(sock)[0] == 200

    def access_line():
        for line in server.log_lines():
            if request_id in line and line.startswith("{"):
                return json.loads(line)
        return None

    assert eventually(lambda: access_line() is not None, seconds=5)
    assert access_line()["remote_addr"] == "127.0.0.5"


def test_haproxy_checks_readiness_and_answers_503_json_without_a_backend(behind_haproxy):
    server, proxy = behind_haproxy()

    def ready_checks() -> int:
        return sum(1 for line in server.log_lines()
                   if '"route": "/health/ready"' in line and '"remote_addr": "127.0.0.1"' in line)

    before = ready_checks()
    assert eventually(lambda: ready_checks() > before, seconds=8), "no health check seen"
    server.stop()
    deadline = time.monotonic() + 10
    while True:  # down after `fall 2` failed checks, or at once on a refused connection
        status, headers, body = raw_request(proxy.port, get("/health/live"))
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["code"] == "service_unavailable"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])  # HAProxy's own
    status, headers, _ = raw_request(
        proxy.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: mine-42\r\n\r\n")
    assert status == 503 and headers["x-request-id"] == "mine-42"


def test_streams_go_through_pushpin_while_it_is_up_and_to_saypi_without_it(start_server,
                                                                            tmp_path):
    """HAProxy sends /events/stream to Pushpin, which holds it past SayPI's own limit for a
    direct stream, while the API goes to SayPI; with Pushpin stopped, streams are SayPI's
    direct ones again, ended after STREAM_DIRECT_SECONDS."""
    from app.client import Client
    from harness.pushpin import Pushpin, PushpinUnavailable, ensure_pushpin
    from tests.e2e.test_streams import Reader

    try:
        binary = ensure_pushpin(print)
    except PushpinUnavailable as exc:
        pytest.skip(str(exc))
    key = uuid.uuid4().hex
    server = start_server(TRUSTED_PROXIES="127.0.0.1/32", GRIP_KEY=key,
                          STREAM_DIRECT_SECONDS="1", STREAM_HEARTBEAT_SECONDS="1")
    pushpin = Pushpin(binary, [f"127.0.0.1:{server.port}"], key, tmp_path)
    proxy = HAProxy(server.port, tmp_path / "haproxy.log", pushpin.port)
    token = Client(proxy.url).create_user("streams")["token"]

    def stream_outlives_the_direct_limit() -> bool | None:
        """True: still open 2.5 s after its first message; False: ended; None: no answer."""
        client = Client(proxy.url, token)
        reader = Reader(client)
        try:
            reader.wait_for_first(5)
            if not reader.messages:
                return None
            return not reader.ended.wait(2.5)
        finally:
            client.close()

    try:
        assert eventually(lambda: stream_outlives_the_direct_limit() is True, seconds=20), \
            proxy.log_path.read_text()[-2000:]
        metrics = Client(server.url).request("GET", "/metrics").text
        assert "streams_direct_open 0.0" in metrics
        assert Client(proxy.url, token).create_conversation("via HAProxy")["id"]

        pushpin.stop()
        assert eventually(lambda: stream_outlives_the_direct_limit() is False, seconds=20), \
            proxy.log_path.read_text()[-2000:]
    finally:
        proxy.stop()
        pushpin.stop()
