"""The pieces of `python -m bench fleet` (the whole run is `make fleet`, not part of the suite).

- deploy/haproxy/haproxy.cfg renders into a fleet (one server line per
  instance, a stats socket) that `haproxy -c` accepts;
- a real HAProxy with that configuration in front of two real SayPIs: both
  UP on the stats socket, and one of them stopped with SIGTERM while
  requests go on costs none of them (the retry and redispatch settings).
"""

from __future__ import annotations

import http.client
import signal
import threading
import uuid

import pytest

from harness.haproxy import CONFIG, Backend, HAProxy, check_config, find_haproxy, render_config
from harness.services import free_port
from tests.conftest import eventually

HAPROXY = find_haproxy()
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


def test_the_fleet_config_is_the_deployed_one_with_a_server_line_per_instance(tmp_path):
    backends = [Backend(f"saypi{i}", f"127.0.0.1:{9000 + i}", 8) for i in (1, 2, 3)]
    text = render_config(backends, tmp_path / "haproxy.sock")
    deployed = CONFIG.read_text()
    servers = [line.split() for line in text.splitlines()
               if line.strip().startswith("server saypi")]
    assert [s[1:3] for s in servers] == [["saypi1", "127.0.0.1:9001"],
                                          ["saypi2", "127.0.0.1:9002"],
                                          ["saypi3", "127.0.0.1:9003"]]
    assert all(s[3:] == ["maxconn", "8"] for s in servers)
    assert f"stats socket {tmp_path / 'haproxy.sock'} mode 600 level admin" in text
    # Everything else is the deployed file, line for line.
    rest = [line for line in text.splitlines()
            if not line.strip().startswith(("server saypi", "stats socket"))]
    assert rest == [line for line in deployed.splitlines()
                    if not line.strip().startswith("server saypi")]
    for directive in ("option redispatch", "retry-on conn-failure empty-response",
                      "disable-l7-retry", "http-check send meth GET uri /health/ready",
                      "default-server check inter 500ms", "slowstart", "option forwardfor"):
        assert directive in text, directive
    if HAPROXY:
        path = tmp_path / "fleet.cfg"
        path.write_text(text)
        checked = check_config(HAPROXY, path)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_haproxy
@pytest.mark.slow
def test_a_stopping_instance_costs_no_request_through_haproxy(start_server, postgres,
                                                                 tmp_path):
    from app.client import Client

    database = postgres.new_database()  # one database: a key's replay is seen by either
    servers = [start_server(database, TRUSTED_PROXIES="127.0.0.1/32") for _ in range(2)]
    backends = [Backend(f"saypi{i + 1}", f"127.0.0.1:{s.port}", 8)
                for i, s in enumerate(servers)]
    proxy = HAProxy(HAPROXY, backends, free_port(), tmp_path)
    try:
        assert eventually(lambda: set(proxy.server_states().values()) == {"UP"}, seconds=15), \
            proxy.server_states()
        token = Client(proxy.url).create_user()["token"]
        convo = Client(proxy.url, token).create_conversation("fleet")["id"]
        results: list[tuple[str, int | None]] = []
        stop = threading.Event()

        def traffic() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            while not stop.is_set() and len(results) < 2000:
                for method, target, body, extra in (
                        ("GET", f"/conversations/{convo}", None, {}),
                        ("POST", f"/conversations/{convo}/lines",
                         b'{"text": "moo", "animal": "default", "mood": "default"}',
                         {"Idempotency-Key": uuid.uuid4().hex})):
                    try:
                        conn.request(method, target, body=body, headers={**headers, **extra})
                        response = conn.getresponse()
                        response.read()
                        results.append((method, response.status))
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        results.append((method, None))

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            assert eventually(lambda: len(results) > 20, seconds=10)
            servers[0].signal(signal.SIGTERM)
            assert servers[0].process.wait(30) == 0
            assert eventually(lambda: proxy.server_states()["saypi1"] == "DOWN", seconds=10)
            seen = len(results)
            assert eventually(lambda: len(results) > seen + 20, seconds=10)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        failed = [r for r in results if r[1] not in (200, 201)]
        print(f"\n{len(results)} requests through HAProxy, saypi1 stopped meanwhile: "
              f"{len(failed)} failed")
        assert not failed, (failed[:10], len(results), proxy.log_tail())
    finally:
        proxy.stop()
