"""`python -m bench live`: event streams held by Pushpin, measured on this machine.

The API's GET load with and without LIVE_IDLE idle subscribers held by Pushpin;
commit-to-client latency of LIVE_RATE events/s fanned out to LIVE_FANOUT
subscribers of one conversation; SayPI's threads used by held streams. Every load
is bounded (LIVE_SECONDS each); results go to bench-results/live.md and live.json.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import selectors
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.postgres import open_database
from bench.scenarios import build_request_files
from bench.seed import seed
from bench.servers import Server, base_env, python
from bench.wrk import ensure_wrk, run_wrk
from harness import ROOT
from harness.pushpin import Pushpin, ensure_pushpin
from harness.saypi import Server as Relay
from harness.services import free_port

RESULTS = ROOT / "bench-results"
KNOBS = {"LIVE_IDLE": "10000", "LIVE_FANOUT": "1000", "LIVE_RATE": "50", "LIVE_SECONDS": "10",
         "LIVE_WORKERS": "2", "LIVE_THREADS": "4"}
_CREATED = re.compile(rb'"type":"line\.created","created_at":"([^"]+)"')


def _epoch(text: bytes) -> float:
    return datetime.strptime(text.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp()


class Crowd:
    """Many stream connections on one selector thread: opened in batches, each reading what
    Pushpin sends; fan-out subscribers note when each line.created event arrives."""

    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.answered = 0
        self.failed = 0
        self.refusals: dict[str, int] = {}  # status lines of the streams that were refused
        self.latencies: list[float] = []
        self._buffers: dict[socket.socket, bytes] = {}
        self._watch: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def connect(self, path: str, token: str, watch: bool) -> None:
        sock = socket.create_connection(self.address, timeout=10)
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: live\r\nAccept: text/event-stream\r\n"
                      f"Authorization: Bearer {token}\r\n\r\n").encode())
        sock.setblocking(False)
        with self._lock:
            self._buffers[sock] = b""
            if watch:
                self._watch.add(sock)
            self.selector.register(sock, selectors.EVENT_READ)
            self.open += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ready = self.selector.select(timeout=0.05) if self.open else []
            if not ready:
                time.sleep(0.01)
            now = time.time()
            for key, _ in ready:
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock)
                    continue
                buffered = self._buffers.get(sock, b"")
                if buffered is not None and not buffered.startswith(b"HTTP/1.1 200"):
                    buffered += data
                    if len(buffered) >= 12:
                        if buffered.startswith(b"HTTP/1.1 200"):
                            self.answered += 1
                        else:
                            self.failed += 1
                            status = buffered.split(b"\r\n", 1)[0][9:].decode(errors="replace")
                            self.refusals[status] = self.refusals.get(status, 0) + 1
                            self._drop(sock)
                            continue
                    self._buffers[sock] = buffered[:12]
                if sock in self._watch:
                    for match in _CREATED.finditer(data):
                        self.latencies.append(now - _epoch(match.group(1)))

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            self._buffers.pop(sock, None)
            self._watch.discard(sock)
            self.open -= 1
        sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._buffers):
            sock.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def live(env: Mapping[str, str], argv: list[str] | None = None) -> int:
    knobs = {name: float(env.get(name, default)) for name, default in KNOBS.items()}
    idle, fanout = int(knobs["LIVE_IDLE"]), int(knobs["LIVE_FANOUT"])
    rate, seconds = knobs["LIVE_RATE"], int(knobs["LIVE_SECONDS"])
    workers, threads = int(knobs["LIVE_WORKERS"]), int(knobs["LIVE_THREADS"])
    say = lambda message: print(f"[live] {message}", flush=True)  # noqa: E731
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="saypi-live-"))
    grip_key, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    db = open_database(env, logging.getLogger("bench.live"))
    started: list = []
    try:
        seeded = seed(db.dsn, users=20, conversations=200, lines=10, cap_lines=10,
                      phrase_count=50, secret=secret)
        files = build_request_files(work, seeded)
        port = free_port()
        server_env = base_env(env, set(), str(work))
        server_env.update({"DATABASE_URL": db.dsn, "HOST": "127.0.0.1", "PORT": str(port),
                           "USER_SECRETS": secret, "GRIP_KEY": grip_key,
                           "WEB_CONCURRENCY": str(workers), "THREADS": str(threads),
                           "DB_POOL_MAX": str(threads), "RATE_LIMIT_USER_PER_MINUTE": "0",
                           "RATE_LIMIT_IP_PER_MINUTE": "0", "LOG_FORMAT": "json",
                           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")})
        server = Server("saypi", [python(), str(ROOT / "run.py"), "serve"], server_env, port,
                        work / "saypi.log", "/health/ready", workers)
        started.append(server)
        server.wait_ready()
        pushpin = Pushpin(ensure_pushpin(say), [f"127.0.0.1:{port}"], grip_key, work)
        started.append(pushpin)
        relay_port = free_port()
        relay = Relay({**server_env, "PORT": str(relay_port), "RELAY_PORT": str(relay_port),
                       "PUSHPIN_PUBLISH_URLS": pushpin.publish_url,
                       "RELAY_POLL_SECONDS": "0.01",
                       "PROMETHEUS_MULTIPROC_DIR": str(work / "relay-metrics")},
                      work / "relay.log", ["relay"]).wait_ready()
        started.append(relay)
        wrk = ensure_wrk(say)
        url = f"http://127.0.0.1:{port}"

        say(f"GET load without subscribers ({seconds} s)")
        before = run_wrk(wrk, url, files["get"], seconds, 16, 2)
        crowd = Crowd("127.0.0.1", pushpin.port)
        tokens = [token for _, token in seeded.readers] or [seeded.writers[0][1]]
        say(f"opening {idle} idle subscribers through Pushpin")
        opened_at = time.monotonic()
        for n in range(idle):
            try:
                crowd.connect("/events/stream", tokens[n % len(tokens)], watch=False)
            except OSError:
                crowd.failed += 1
        deadline = time.monotonic() + 120
        while crowd.answered + crowd.failed < idle and time.monotonic() < deadline:
            time.sleep(0.2)
        open_seconds = time.monotonic() - opened_at
        say(f"{crowd.answered} held ({crowd.failed} failed) in {open_seconds:.1f} s")
        time.sleep(2)  # the subscriptions' first recovery fetches pass
        say(f"GET load with {crowd.answered} subscribers held ({seconds} s)")
        during = run_wrk(wrk, url, files["get"], seconds, 16, 2)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        direct_open = re.search(r"^streams_direct_open (\S+)", metrics, re.MULTILINE)

        writer_token = seeded.writers[0][1]
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {writer_token}"},
                           timeout=10)
        convo = api.post("/conversations", json={"heading": "fan-out"}).json()["id"]
        fan = Crowd("127.0.0.1", pushpin.port)
        say(f"opening {fanout} subscribers of one conversation")
        for _ in range(fanout):
            fan.connect(f"/events/stream?conversation={convo}", writer_token, watch=True)
        deadline = time.monotonic() + 60
        while fan.answered + fan.failed < fanout and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        say(f"{rate:g} events/s for {seconds} s to {fan.answered} subscribers")
        written = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            api.post(f"/conversations/{convo}/lines", json={"text": f"fan {written}"})
            written += 1
            pause = start + written / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        time.sleep(3)
        latencies = list(fan.latencies)
        api.close()
        fan.close()
        crowd.close()
        access = (work / "saypi.log").read_text(errors="replace")
        stream_ms = [float(m) for m in re.findall(
            r'"route": "/events/stream", "status": 200, "duration_ms": ([0-9.]+)', access)]
        data = {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {**knobs, "database": db.where},
            "idle": {"wanted": idle, "held": crowd.answered, "failed": crowd.failed,
                     "refusals": crowd.refusals,
                     "open_seconds": round(open_seconds, 1)},
            "api_without": before.as_dict(), "api_with": during.as_dict(),
            "rps_change_percent": round((during.rps / before.rps - 1) * 100, 1)
            if before.rps else None,
            "p99_change_percent": round((during.latency_ms["p99"]
                                         / before.latency_ms["p99"] - 1) * 100, 1)
            if before.latency_ms.get("p99") else None,
            "fanout": {"subscribers": fan.answered, "events": written,
                       "deliveries": len(latencies), "expected": written * fan.answered,
                       "p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
                       "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
                       "max_ms": round(max(latencies, default=0) * 1000, 1)},
            "streams_direct_open": float(direct_open.group(1)) if direct_open else None,
            "stream_request_ms": {"count": len(stream_ms),
                                  "median": round(statistics.median(stream_ms), 1)
                                  if stream_ms else None,
                                  "max": max(stream_ms, default=None)},
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "live.json").write_text(json.dumps(data, indent=2) + "\n")
        text = markdown(data)
        (RESULTS / "live.md").write_text(text)
        print(text)
        return 0
    finally:
        for part in reversed(started):
            part.stop()
        db.close()


def markdown(d: dict) -> str:
    w, x, f = d["api_without"], d["api_with"], d["fanout"]
    p99 = (w["latency_ms"].get("p99"), x["latency_ms"].get("p99"))
    return f"""# Live streams through Pushpin (`python -m bench live`)

Generated {d['generated_at']} on this machine (2 cores, shared); SayPI with
{d['settings']['LIVE_WORKERS']:g} workers x {d['settings']['LIVE_THREADS']:g} threads, one
Pushpin, one relay, all on 127.0.0.1.

| | without subscribers | with {d['idle']['held']} held |
|---|---|---|
| GET /conversations/{{id}} req/s | {w['rps']} | {x['rps']} ({d['rps_change_percent']} %) |
| p99 ms | {p99[0]} | {p99[1]} ({d['p99_change_percent']} %) |

Idle subscribers: {d['idle']['held']} of {d['idle']['wanted']} held
({d['idle']['failed']} failed: {d['idle']['refusals'] or 'none answered'}), opened in
{d['idle']['open_seconds']} s.

Fan-out: {f['events']} events at {d['settings']['LIVE_RATE']:g}/s to {f['subscribers']}
subscribers of one conversation: {f['deliveries']} of {f['expected']} deliveries seen,
commit to client p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms.

SayPI threads held by streams through Pushpin: `streams_direct_open` =
{d['streams_direct_open']} while they were held; each stream request took
{d['stream_request_ms']['median']} ms (median, max {d['stream_request_ms']['max']} ms) of a
thread, over {d['stream_request_ms']['count']} requests, and none in between.
"""
