"""`python -m bench webhooks`: how fast relays deliver webhooks to a local receiver.

Deliveries per second with one relay and with two (a backlog of events made while no relay
runs), then commit-to-delivery latency while lines are written at a steady rate. Each load
phase is bounded (30 s at most); writes bench-results/webhooks.md and webhooks.json.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.session import Bench, interleave, publish, with_bench
from bench.settings import BenchSettings
from harness import ROOT
from harness.services import free_port

BACKLOG_USERS, BACKLOG_BATCHES, BATCH = 4, 10, 100  # 4,000 events per backlog
STEADY_RATE, STEADY_SECONDS = 40, 15  # lines per second, for the latency phase
PHASE_LIMIT = 30.0


class Receiver:
    """Answers every POST 204 at once and notes when each event id arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, tuple[float, str]] = {}  # id -> (arrival, created_at)
        self.requests = 0
        lock, receiver = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                created = body.split(b'"created_at":"', 1)[1].split(b'"', 1)[0].decode()
                with lock:
                    receiver.requests += 1
                    receiver.arrivals.setdefault(self.headers["webhook-id"], (now, created))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Relay:
    def __init__(self, env: dict[str, str], log: Path):
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "relay"], cwd=ROOT,
            env={**env, "RELAY_PORT": str(free_port())}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _feed_started(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM event_feeds WHERE name = 'webhooks'").fetchone() \
            is not None


def _users(base: str, receiver: Receiver, count: int) -> list[tuple[httpx.Client, str]]:
    users = []
    for _ in range(count):
        token = httpx.post(base + "/users", json={}).json()["token"]
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
        client.post("/webhook_endpoints", json={"url": receiver.url,
                                                "events": ["line.created"]}).raise_for_status()
        convo = client.post("/conversations", json={"heading": "bench"}).json()["id"]
        users.append((client, convo))
    return users


def _backlog(users: list[tuple[httpx.Client, str]], tag: str) -> int:
    made = 0
    for client, convo in users:
        for batch in range(BACKLOG_BATCHES):
            client.post(f"/conversations/{convo}/lines/batch", json={"lines": [
                {"text": f"{tag} {batch} {i}"} for i in range(BATCH)]}).raise_for_status()
            made += BATCH
    return made


def throughput(env: dict[str, str], work: Path, users, receiver: Receiver,
               relays: int) -> dict[str, Any]:
    """A backlog made while no relay runs, then `relays` relays deliver it."""
    before = len(receiver.arrivals)
    made = _backlog(users, f"r{relays}")
    started = time.monotonic()
    running = [Relay(env, work / f"relay-{relays}-{n}.log") for n in range(relays)]
    done = _wait(lambda: len(receiver.arrivals) - before >= made, PHASE_LIMIT)
    elapsed = time.monotonic() - started
    for relay in running:
        relay.stop()
    delivered = len(receiver.arrivals) - before
    return {"relays": relays, "events": made, "delivered": delivered, "complete": done,
            "seconds": round(elapsed, 2), "per_second": round(delivered / elapsed, 1)}


def latency(env: dict[str, str], work: Path, users, receiver: Receiver) -> dict[str, Any]:
    """One relay; lines written at STEADY_RATE for STEADY_SECONDS; commit to arrival."""
    relay = Relay(env, work / "relay-latency.log")
    time.sleep(2)  # started and idle
    before = set(receiver.arrivals)
    interval, made = 1.0 / STEADY_RATE, 0
    started = time.monotonic()
    while time.monotonic() - started < STEADY_SECONDS:
        client, convo = users[made % len(users)]
        client.post(f"/conversations/{convo}/lines", json={"text": "steady"}).raise_for_status()
        made += 1
        time.sleep(max(0.0, started + made * interval - time.monotonic()))
    _wait(lambda: len(receiver.arrivals) - len(before) >= made, 10)
    relay.stop()
    delays = sorted(arrival - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
                    for key, (arrival, created) in receiver.arrivals.items()
                    if key not in before)
    quantiles = statistics.quantiles(delays, n=100)
    return {"events": made, "delivered": len(delays), "rate_per_second": STEADY_RATE,
            "p50_ms": round(quantiles[49] * 1000, 1), "p99_ms": round(quantiles[98] * 1000, 1),
            "max_ms": round(delays[-1] * 1000, 1)}


def api_beside_relays(bench: Bench, receiver: Receiver, settings: dict[str, str]) -> dict:
    """Scenarios 2 (GET) and 4 (POST line) without relays, then with two delivering every
    POST's event to the receiver: req/s and CPU per request (the relays' own apart)."""
    server = bench.start("saypi", extra=settings)
    for _, token in bench.seeded.writers:
        httpx.post(server.url + "/webhook_endpoints", json={"url": receiver.url},
                   headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    for key in ("get", "post_line"):
        bench.check(server, key)
    env = bench.server_env(bench.db.dsn, free_port(), settings)
    plan = [("get", server, None), ("post_line", server, None)]
    without: dict = {}
    interleave(bench, plan, bench.settings.runs, without)
    relays = [Relay(env, bench.work / f"relay-api-{n}.log") for n in range(2)]
    for relay in relays:
        bench.extra_roots[relay.process.pid] = "relays"
    time.sleep(2)
    beside: dict = {}
    try:
        interleave(bench, plan, bench.settings.runs, beside)
    finally:
        for relay in relays:
            bench.extra_roots.pop(relay.process.pid, None)
            relay.stop()
        bench.stop(server)
    return {"without_relays": without, "with_relays": beside}


def webhooks(env: Mapping[str, str]) -> int:
    bench_settings = BenchSettings.from_env(env)
    # The receiver is plain http on loopback, which production refuses whatever
    # WEBHOOK_ALLOW_PRIVATE says: the servers and relays here run in development mode,
    # whose delivery path is the same.
    settings = {"APP_ENV": "development", "WEBHOOK_ALLOW_PRIVATE": "true",
                "WEBHOOK_THREADS": "4", "LOG_LEVEL": "WARNING",
                "MAX_LINES_PER_CONVERSATION": "100000"}

    def work(bench: Bench) -> int:
        receiver = Receiver()
        try:
            relay_env = bench.server_env(bench.db.dsn, free_port(), settings)
            server = bench.start("saypi", extra=settings)
            bench.say("webhooks: starting the feed")
            first = Relay(relay_env, bench.work / "relay-start.log")
            if not _wait(lambda: _feed_started(bench.db.dsn), 60):
                raise RuntimeError("the relay did not start its feed: "
                                   + (bench.work / "relay-start.log").read_text()[-2000:])
            first.stop()
            users = _users(server.url, receiver, BACKLOG_USERS)
            rows = []
            for relays in (1, 2):
                bench.say(f"webhooks: a backlog delivered by {relays} relay(s)")
                rows.append(throughput(relay_env, bench.work, users, receiver, relays))
            bench.say("webhooks: commit to delivery at a steady rate")
            steady = latency(relay_env, bench.work, users, receiver)
            bench.stop(server)
            bench.say("webhooks: the API's figures without and with relays")
            api = api_beside_relays(bench, receiver, settings)
        finally:
            receiver.close()
        data = {"throughput": rows, "latency": steady, "api": api, "cpus": os.cpu_count(),
                "settings": settings, "bench": bench_settings.as_dict()}
        return publish("webhooks", data, render(data))

    return with_bench(env, bench_settings, work)


def relays_cpu(row: dict) -> float | str:
    """Median over the runs of the relays' CPU microseconds per request ('' without)."""
    values = [1e6 * (run["cpu_seconds"].get("relays_user", 0.0)
                     + run["cpu_seconds"].get("relays_system", 0.0)) / run["requests"]
              for run in row["runs"] if run["requests"]]
    if not values or not any(values):
        return ""
    return round(statistics.median(values), 1)


def render(data: dict[str, Any]) -> str:
    lines = ["# Webhooks: deliveries by the relay", "",
             f"A local receiver answering 204 at once; {data['cpus']} CPUs shared by the "
             "server, the relays, PostgreSQL and the receiver; WEBHOOK_THREADS=4 per relay.",
             "", "| relays | events | delivered | seconds | deliveries/s |",
             "|---|---|---|---|---|"]
    for row in data["throughput"]:
        lines.append(f"| {row['relays']} | {row['events']} | {row['delivered']} | "
                     f"{row['seconds']} | {row['per_second']} |")
    steady = data["latency"]
    lines += ["", f"Commit to delivery, one relay, {steady['rate_per_second']} lines/s for "
                  f"{STEADY_SECONDS} s ({steady['delivered']} of {steady['events']} "
                  "delivered): event `created_at` to the receiver's arrival.", "",
              "| p50 ms | p99 ms | max ms |", "|---|---|---|",
              f"| {steady['p50_ms']} | {steady['p99_ms']} | {steady['max_ms']} |"]
    lines += ["", "The API beside the relays: scenarios 2 and 4, every writer with an endpoint "
                  "(each POST makes a delivery), without relays and with two. CPU is "
                  "microseconds per request; postgres includes the relays' transactions, "
                  "`relays` is the relay processes' own.", "",
              "| scenario | relays | req/s | p99 ms | app CPU us | postgres CPU us | "
              "relays CPU us |", "|---|---|---|---|---|---|---|"]
    for label, count in (("without_relays", 0), ("with_relays", 2)):
        for row in data["api"][label].values():
            cpu = row["cpu_us_per_request"]
            lines.append(f"| {row['title']} | {count} | {row['rps']} | {row['p99_ms']} | "
                         f"{cpu['app']} | {cpu['postgres']} | {relays_cpu(row)} |")
    return "\n".join(lines) + "\n"
