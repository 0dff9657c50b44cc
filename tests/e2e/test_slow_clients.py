"""Slow, idle, oversized and late clients against a real SayPI (issue #12, items 8-14).

Every test talks raw HTTP/1.1 over sockets to a SayPI started through run(),
so what is measured is the gunicorn worker SayPI ships (app/ops/worker.py).
Figures are printed (run with -s to see them); only generous bounds are
asserted, since the machine is shared.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import statistics
import threading
import time

import httpx
import psycopg

from tests.conftest import eventually


def raw_request(port: int, head: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send `head` on a fresh connection; return status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    status_line, headers, body = read_raw_response(sock)
    return int(status_line.split(" ")[1]), headers, body


def read_raw_response(sock: socket.socket) -> tuple[str, dict, bytes]:
    """One response from `sock`: its status line as sent, its headers (lower-case), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status_line, headers, body


def get(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def timed_fresh_requests(url: str, path: str, count: int, timeout: float,
                         token: str | None = None) -> list[float]:
    """Latencies (ms) of `count` requests, each on a new connection; all must be 200."""
    port = int(url.rsplit(":", 1)[1])
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        status, headers, body = raw_request(port, get(path, token), timeout=timeout)
        latencies.append((time.perf_counter() - started) * 1000)
        assert status == 200, body
        assert headers["x-request-id"]
    return latencies


def summary(latencies: list[float]) -> str:
    return (f"n={len(latencies)} p50={statistics.median(latencies):.1f}ms "
            f"p99={percentile(latencies, 0.99):.1f}ms max={max(latencies):.1f}ms")


class HeldConnections:
    """Connections that each sent `opening(i, sock)`, then `more(sock, n)` every `every`
    seconds until stopped; those the server closed are counted and dropped."""

    def __init__(self, port: int, count: int, every: float):
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.every = every
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for i, sock in enumerate(self.socks):
            sock.sendall(self.opening(i, sock))
        self._thread.start()

    def opening(self, i: int, sock: socket.socket) -> bytes:
        raise NotImplementedError

    def more(self, sock: socket.socket, n: int) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            for sock in list(self.socks):
                try:
                    self.more(sock, n)
                except OSError:
                    self.socks.remove(sock)
                    self.closed_by_server += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


class Tricklers(HeldConnections):
    """Connections that each send one more header line every `every` seconds, for ever."""

    def __init__(self, port: int, count: int, every: float = 1.0):
        super().__init__(port, count, every)
        self.start()

    def opening(self, i: int, sock: socket.socket) -> bytes:
        return b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    def more(self, sock: socket.socket, n: int) -> None:
        sock.sendall(f"X-Trickle-{n}: {n}\r\n".encode())


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds this connection (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def hold_idle_and_trickling(port: int, idle: int = 200, trickling: int = 32):
    idle_socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    return idle_socks, Tricklers(port, trickling)


# --- item 9: slow and idle clients --------------------------------------------------------
def test_fresh_client_answered_while_200_idle_and_32_trickling_connections_are_held(
        start_server):
    server = start_server(HEADER_TIMEOUT="30")  # long enough that nothing is cut off here
    idle, tricklers = hold_idle_and_trickling(server.port)
    try:
        time.sleep(1.5)  # every held connection has reached the server, tricklers have trickled
        live = timed_fresh_requests(server.url, "/health/live", 60, timeout=5)
        api = timed_fresh_requests(server.url, "/openapi.json", 20, timeout=5)
        print(f"\n/health/live, fresh connections, 200 idle + 32 trickling held: "
              f"{summary(live)}\nGET /openapi.json, same: {summary(api)}")
        assert sum(is_open(s) for s in idle) == len(idle), "idle connections were dropped"
        assert tricklers.closed_by_server == 0
    finally:
        tricklers.close()
        for sock in idle:
            sock.close()


def test_slow_and_idle_heads_are_cut_off_after_header_timeout(start_server):
    server = start_server(HEADER_TIMEOUT="1")
    idle = socket.create_connection(("127.0.0.1", server.port))
    tricklers = Tricklers(server.port, 4, every=0.2)
    try:
        started = time.monotonic()
        assert eventually(lambda: tricklers.closed_by_server == 4 and not is_open(idle),
                          seconds=6, every=0.1), "slow heads were not cut off"
        print(f"\nHEADER_TIMEOUT=1: slow and idle connections closed after "
              f"{time.monotonic() - started:.1f}s")
        # A client that sends its head promptly is unaffected.
        status, _, _ = raw_request(server.port, get("/health/live"))
        assert status == 200
    finally:
        tricklers.close()
        idle.close()


def test_kept_alive_connection_trickling_its_next_request_is_cut_off(start_server):
    server = start_server(HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(get("/health/live"))
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        for n in range(30):
            time.sleep(0.2)
            try:
                sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())
            except OSError:
                closed = True
                break
        assert closed or not is_open(sock)
        assert time.monotonic() - started < 5


# --- item 11: a bound on the request head -------------------------------------------------
def test_request_heads_larger_than_max_header_bytes_are_400_invalid_request(start_server):
    server = start_server()
    big = "".join(f"X-Big-{i}: {'a' * 8000}\r\n" for i in range(60))  # 480 KB, as in #12
    status, headers, body = raw_request(
        server.port, f"GET /health/live HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), headers
    error = json.loads(body)
    assert error == {"code": "invalid_request",
                     "message": error["message"],
                     "data": {"reason": "the request headers are too large"}}
    # Just under the default 32 KiB is fine.
    fits = "".join(f"X-Fits-{i}: {'a' * 7000}\r\n" for i in range(4))
    status, _, _ = raw_request(server.port,
                               f"GET /health/live HTTP/1.1\r\nHost: x\r\n{fits}\r\n".encode())
    assert status == 200


def test_max_header_bytes_is_configurable(start_server):
    server = start_server(MAX_HEADER_BYTES="4096")
    head = f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 5000}\r\n\r\n".encode()
    status, _, body = raw_request(server.port, head)
    assert status == 400 and json.loads(body)["code"] == "invalid_request"
    assert raw_request(server.port, get("/health/live"))[0] == 200


# --- item 8: health endpoints never queue behind the API ----------------------------------
def test_health_answered_while_every_api_thread_waits_for_a_database_connection(
        start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="4", DB_POOL_MIN="1",
                          DB_POOL_MAX="2", DB_POOL_TIMEOUT="3")
    stop = threading.Event()
    outcomes: list[int] = []

    def hog() -> None:  # keeps an API thread holding, or waiting for, a connection
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    outcomes.append(client.get("/debug/db-sleep?seconds=4").status_code)
                except httpx.HTTPError:
                    outcomes.append(-1)

    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(10)]
    for thread in hogs:
        thread.start()
    try:
        time.sleep(1.0)  # 2 threads sleep in PostgreSQL, 2 wait in the pool, 6 requests queue
        live = timed_fresh_requests(server.url, "/health/live", 30, timeout=2)
        ready = []
        for _ in range(10):
            started = time.perf_counter()
            response = httpx.get(server.url + "/health/ready", timeout=5)
            ready.append((time.perf_counter() - started) * 1000)
            assert response.status_code in (200, 503)
            assert response.headers["x-request-id"]
        print(f"\nunder pool exhaustion (4 API threads busy, DB_POOL_TIMEOUT=3): "
              f"/health/live {summary(live)}; /health/ready {summary(ready)}; "
              f"API outcomes so far {sorted(set(outcomes))}")
        assert max(live) < 1000
    finally:
        stop.set()
        for thread in hogs:
            thread.join(15)
    # The health requests went through the WSGI app: they have access lines.
    routes = [json.loads(line).get("route") for line in server.log_lines()
              if line.startswith("{") and '"message": "request"' in line]
    assert routes.count("/health/live") >= 30


# --- item 10: connections made while draining ---------------------------------------------
def test_connections_during_a_sigterm_drain_are_refused_or_answered_503_at_once(
        start_server):
    server = start_server(GRACEFUL_TIMEOUT="10")
    in_flight: dict = {}

    def slow() -> None:
        try:
            response = httpx.get(server.url + "/debug/sleep?seconds=3", timeout=15)
            in_flight["status"] = response.status_code
        except httpx.HTTPError as exc:
            in_flight["error"] = repr(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.7)
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    outcomes = []
    for _ in range(10):
        started = time.perf_counter()
        try:
            status, headers, body = raw_request(server.port, get("/health/live"), timeout=2)
        except ConnectionRefusedError:
            outcomes.append(("refused", (time.perf_counter() - started) * 1000))
        else:
            assert status == 503, (status, body)
            assert headers["connection"] == "close"
            assert json.loads(body)["code"] == "service_unavailable"
            assert re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), headers
            outcomes.append(("503", (time.perf_counter() - started) * 1000))
        time.sleep(0.1)
    thread.join(15)
    print(f"\nnew connections during the drain: "
          f"{[(kind, round(ms, 1)) for kind, ms in outcomes]}")
    assert in_flight == {"status": 200}
    assert all(ms < 1000 for _, ms in outcomes)
    assert server.process.wait(15) == 0


# --- item 12 (part): gunicorn's own lines are redacted ------------------------------------
def test_malformed_authorization_line_never_logs_the_token(start_server):
    server = start_server()
    token = httpx.post(server.url + "/users", json={"name": "leaky"}, timeout=10).json()["token"]
    assert token.startswith("usr_")
    ready_at = len(server.log_lines())
    status, _, body = raw_request(
        server.port,
        f"GET /health/live HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {token}\r\n\r\n".encode())
    assert status == 400 and json.loads(body)["code"] == "invalid_request"
    assert eventually(lambda: "Invalid request" in server.logs(), seconds=5)
    server.stop()
    logs = server.log_path.read_text(errors="replace")
    assert token not in logs
    assert token.split(".", 1)[1] not in logs
    for line in logs.splitlines()[ready_at:]:
        assert isinstance(json.loads(line), dict), line


# --- item 14: the startup line names the address ------------------------------------------
def test_startup_line_names_the_listening_address(start_server):
    server = start_server()
    listening = [json.loads(line)["message"] for line in server.log_lines()
                 if line.startswith("{") and "Listening at" in line]
    assert listening, server.logs()
    assert re.fullmatch(rf"Listening at: http://127\.0\.0\.1:{server.port} \(\d+\)",
                        listening[0]), listening


# --- slow request bodies ------------------------------------------------------------------
class SlowBodies(HeldConnections):
    """Connections that each send a complete head, then one more body byte every `every` s."""

    HEADS = (
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n",
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    )

    def __init__(self, port: int, count: int, every: float = 0.5):
        super().__init__(port, count, every)
        self.chunked = {sock: i % 3 == 2 for i, sock in enumerate(self.socks)}
        self.start()

    def opening(self, i: int, sock: socket.socket) -> bytes:
        return self.HEADS[i % 3] + (b"1\r\n{\r\n" if self.chunked[sock] else b"{")

    def more(self, sock: socket.socket, n: int) -> None:
        sock.sendall(b"1\r\n \r\n" if self.chunked[sock] else b" ")
        if not is_open(sock):
            raise ConnectionResetError


def test_fresh_requests_answered_while_slow_bodies_are_held_then_slow_bodies_cut_off(
        start_server):
    server = start_server(BODY_TIMEOUT="4")
    token = httpx.post(server.url + "/users", json={"name": "fresh"}, timeout=10).json()["token"]
    slow = SlowBodies(server.port, 36)  # 12 each: a length to /users, to /nope, chunked
    try:
        time.sleep(1.0)  # every slow connection has sent its head and some body bytes
        api = timed_fresh_requests(server.url, "/animals", 30, timeout=10, token=token)
        created = httpx.post(server.url + "/users", json={"name": "prompt"}, timeout=10)
        assert created.status_code == 201, created.text
        print(f"\nGET /animals, fresh connections, 36 slow bodies held: {summary(api)}")
        assert slow.closed_by_server == 0  # not cut off before BODY_TIMEOUT
        assert eventually(lambda: slow.closed_by_server == 36, seconds=20, every=0.2), \
            f"{36 - slow.closed_by_server} slow bodies still held after BODY_TIMEOUT"
    finally:
        slow.close()


def test_bodies_are_read_whole_before_a_thread_sees_them(start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="1")
    body = json.dumps({"name": "split"}).encode()
    head = (b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    chunked_head = (b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # A length-delimited body in pieces, while the only thread stays free.
        sock.sendall(head + body[:5])
        time.sleep(0.3)
        assert raw_request(server.port, get("/openapi.json"))[0] == 200
        sock.sendall(body[5:])
        status, headers, _ = read_response(sock)
        assert status == 201 and headers["x-request-id"]
        # A chunked one on the same kept-alive connection, with a trailer section.
        sock.sendall(chunked_head + b"%x\r\n%s\r\n" % (5, body[:5]))
        time.sleep(0.3)
        assert raw_request(server.port, get("/openapi.json"))[0] == 200
        sock.sendall(b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (
            len(body) - 5, body[5:]))
        assert read_response(sock)[0] == 201
        # Expect: 100-continue is answered before the body is sent.
        sock.sendall(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_response(sock)[0] == 201


def test_body_over_max_body_bytes_is_413_before_it_is_sent(start_server):
    server = start_server(MAX_BODY_BYTES="1000")
    for framing in (b"Content-Length: 5000", b"Transfer-Encoding: chunked"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + framing + b"\r\n\r\n")
            if b"chunked" in framing:
                sock.sendall(b"%x\r\n%s" % (1500, b"a" * 1200))  # the rest never comes
            status, headers, body = read_response(sock)
            assert status == 413, body
            assert json.loads(body)["code"] == "payload_too_large"
            assert headers["connection"] == "close" and headers["x-request-id"]


# --- load shedding: the wait for a thread counts against DB_POOL_TIMEOUT ------------------
def test_requests_queued_behind_row_locks_get_200_or_503_with_retry_after(start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="4", DB_POOL_MIN="1", DB_POOL_MAX="2",
                          DB_POOL_TIMEOUT="1", DB_STATEMENT_TIMEOUT="30000")
    token = httpx.post(server.url + "/users", json={"name": "locked"}, timeout=10).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    cid = httpx.post(server.url + "/conversations", json={"heading": "h"}, headers=auth,
                     timeout=10).json()["id"]
    patched: list[int] = []

    def patch(n: int) -> None:
        try:
            patched.append(httpx.patch(f"{server.url}/conversations/{cid}", headers=auth,
                                       json={"heading": f"h{n}"}, timeout=60).status_code)
        except httpx.HTTPError:
            patched.append(-1)

    with psycopg.connect(server.env["DATABASE_URL"]) as lock:
        lock.execute("SELECT id FROM conversations FOR UPDATE")  # held until the block ends
        patches = [threading.Thread(target=patch, args=(n,)) for n in range(16)]
        for thread in patches:
            thread.start()
        time.sleep(0.5)  # two PATCHes wait on the lock holding both connections, 14 queue
        outcomes = []
        with httpx.Client(base_url=server.url, headers=auth, timeout=6) as client:
            for path in [f"/conversations/{cid}", "/animals"] * 5:
                started = time.perf_counter()
                response = client.get(path)
                outcomes.append((response.status_code,
                                 round((time.perf_counter() - started) * 1000)))
                assert response.status_code in (200, 503), response.text
                assert response.headers["x-request-id"]
                if response.status_code == 503:
                    assert response.json()["code"] == "service_unavailable"
                    assert int(response.headers["retry-after"]) >= 1
        lock.rollback()
    for thread in patches:
        thread.join(60)
    shed = [line for line in server.log_lines() if "waited 1.0 s for a thread" in line]
    print(f"\nDB_POOL_TIMEOUT=1, 16 PATCHes behind a row lock: fresh GETs (status, ms) "
          f"{outcomes}; PATCH statuses {sorted(patched)}; shedding log lines {len(shed)}")
    assert set(patched) <= {200, 503}


def test_a_request_still_waiting_for_a_thread_after_db_pool_timeout_is_shed_with_503(
        start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="2", DB_POOL_TIMEOUT="1")
    token = httpx.post(server.url + "/users", json={"name": "shed"}, timeout=10).json()["token"]
    busy = [threading.Thread(target=httpx.get, args=(server.url + "/debug/sleep?seconds=4",),
                             kwargs={"timeout": 20}) for _ in range(2)]
    for thread in busy:
        thread.start()
    time.sleep(0.5)  # both API threads sleep; a fresh request can only queue
    status, headers, body = raw_request(server.port, get("/animals", token), timeout=10)
    assert status == 503, body
    assert json.loads(body)["code"] == "service_unavailable"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-request-id"] and headers["connection"] == "close"
    assert raw_request(server.port, get("/health/live"))[0] == 200  # its own lane
    for thread in busy:
        thread.join(20)
    assert raw_request(server.port, get("/animals", token))[0] == 200
    assert any("Shed 1 request(s) that waited 1.0 s for a thread" in line
               for line in server.log_lines())
