"""`python -m bench webhooks`: how fast relays deliver webhooks to a local receiver.

Deliveries per second with one relay and with two (a backlog of events made while no relay
runs) and what each delivery costs PostgreSQL and the relays; commit-to-delivery latency
while lines are written at a steady rate; what idle relays cost; and the API's GET and POST
rows with 0, 1 and 2 relays running, the deliveries queue drained before each row. Each load
phase is bounded; writes bench-results/webhooks.md and webhooks.json.
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

from bench.scenarios import SCENARIOS
from bench.servers import CpuSnapshot, Server
from bench.session import Bench, publish, summarize, with_bench
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


def throughput(bench: Bench, env: dict[str, str], users, receiver: Receiver,
               relays: int) -> dict[str, Any]:
    """A backlog made while no relay runs, then `relays` relays deliver it. CPU per delivery
    (PostgreSQL's backends, the relays) counts from the first arrival (the relays' start-up
    apart) to the last: fan-out, claims, attempts and records."""
    before = len(receiver.arrivals)
    made = _backlog(users, f"r{relays}")
    started = time.monotonic()
    running = [Relay(env, bench.work / f"relay-{relays}-{n}.log") for n in range(relays)]
    roots = {relay.process.pid: "relays" for relay in running}
    if bench.postmaster:
        roots[bench.postmaster] = "postgres"
    _wait(lambda: len(receiver.arrivals) > before, PHASE_LIMIT)
    first, cpu_before = time.monotonic(), CpuSnapshot(roots)
    at_first = len(receiver.arrivals)
    done = _wait(lambda: len(receiver.arrivals) - before >= made, PHASE_LIMIT)
    cpu_after, last = CpuSnapshot(roots), time.monotonic()
    elapsed = last - started
    for relay in running:
        relay.stop()
    delivered = len(receiver.arrivals) - before
    counted = max(1, len(receiver.arrivals) - at_first)
    return {"relays": relays, "events": made, "delivered": delivered, "complete": done,
            "seconds": round(elapsed, 2), "per_second": round(delivered / elapsed, 1),
            "steady_per_second": round(counted / max(1e-6, last - first), 1),
            "postgres_us_per_delivery": round(
                1e6 * group_cpu(cpu_before, cpu_after, "postgres") / counted, 1),
            "relays_us_per_delivery": round(
                1e6 * group_cpu(cpu_before, cpu_after, "relays") / counted, 1)}


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


# The API's rows: each with 0, 1 and 2 relays running (1 and 2 first: the rows without
# relays leave events no relay hands on). Paced POSTs at a rate the relays follow show the
# whole cost of a request and its delivery.
API_ROWS = (("get", "get", None), ("get_paced", "get", "get"),
            ("post_line", "post_line", None), ("post_paced", "post_line", "post"))
API_RELAYS = (1, 2, 0)
PACED_RATE = 300.0  # requests/s of the paced POST row (BENCH_WEBHOOK_RATE)
PACED_GET_RATE = 600.0  # requests/s of the paced GET row (BENCH_WEBHOOK_GET_RATE)
TITLES = {"get_paced": "2. GET /conversations/{{id}} at {rate:g}/s",
          "post_paced": "4. POST /conversations/{{id}}/lines at {rate:g}/s"}
DRAIN_LIMIT = 120.0  # seconds a drain may take before the row runs anyway
IDLE_SECONDS = 5.0


def backlog(dsn: str) -> tuple[int, int]:
    """(pending deliveries, events the fan-out has not read yet)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'), "
            "(SELECT count(*) FROM events WHERE created_at > "
            " (SELECT created_at FROM event_feeds WHERE name = 'webhooks'))").fetchone()
    return int(row[0]), int(row[1] or 0)


def drain(bench: Bench, limit: float = DRAIN_LIMIT) -> dict[str, Any]:
    """Wait until no delivery is pending and the fan-out has read every event."""
    started = time.monotonic()
    left = backlog(bench.db.dsn)
    while any(left) and time.monotonic() - started < limit:
        time.sleep(0.2)
        left = backlog(bench.db.dsn)
    return {"seconds": round(time.monotonic() - started, 1), "left": sum(left)}


def group_cpu(before: CpuSnapshot, after: CpuSnapshot, group: str) -> float:
    cpu = after.since(before)
    return cpu.get(f"{group}_user", 0.0) + cpu.get(f"{group}_system", 0.0)


def idle_cost(bench: Bench, server: Server, seconds: float = IDLE_SECONDS) -> dict:
    """CPU milliseconds per second of PostgreSQL's backends, the relays and the server while
    nothing is sent (after a drain): what idle relays cost."""
    roots = bench.cpu_roots(server)
    before = CpuSnapshot(roots)
    time.sleep(seconds)
    after = CpuSnapshot(roots)
    return {group: round(1000 * group_cpu(before, after, group) / seconds, 2)
            for group in ("postgres", "relays", "app")}


def api_row(bench: Bench, server: Server, receiver: Receiver, file: str,
            rate: float | None, relays: int) -> dict[str, Any]:
    """Drain (when relays run), warm up, then the timed runs; deliveries made during each run
    and what was left behind at its end."""
    drained = drain(bench) if relays else {"seconds": 0.0, "left": sum(backlog(bench.db.dsn))}
    s = bench.settings
    bench.measure(server, file, s.warmup_seconds, rate)
    runs, deliveries, left = [], [], []
    for _ in range(s.runs):
        sent = receiver.requests
        result = bench.measure(server, file, s.seconds, rate)
        deliveries.append(round((receiver.requests - sent) / result.seconds, 1))
        left.append(sum(backlog(bench.db.dsn)))
        runs.append(result)
    summary = summarize(runs, os.cpu_count() or 1)
    return {**summary, "drained": drained, "deliveries_per_second": deliveries,
            "backlog_after": left}


def api_beside_relays(bench: Bench, receiver: Receiver, settings: dict[str, str],
                      rates: dict[str, float]) -> dict:
    """Scenarios 2 (GET) and 4 (POST line, at full speed and paced), every writer with an
    endpoint (each POST makes a delivery), with 1, 2 and 0 relays running: req/s and CPU
    per request, each row after the deliveries queue drained."""
    server = bench.start("saypi", extra=settings)
    for _, token in bench.seeded.writers:
        httpx.post(server.url + "/webhook_endpoints", json={"url": receiver.url},
                   headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    for key in ("get", "post_line"):
        bench.check(server, key)
    env = bench.server_env(bench.db.dsn, free_port(), settings)
    out: dict[str, Any] = {}
    try:
        for count in API_RELAYS:
            bench.say(f"webhooks: the API's rows with {count} relay(s)")
            relays = [Relay(env, bench.work / f"relay-api-{count}-{n}.log")
                      for n in range(count)]
            for relay in relays:
                bench.extra_roots[relay.process.pid] = "relays"
            try:
                time.sleep(2)  # started
                drained = drain(bench) if count else {"seconds": 0.0, "left": 0}
                rows: dict[str, Any] = {"idle": idle_cost(bench, server),
                                        "idle_drained": drained}
                for key, file, pace in API_ROWS:
                    rate = rates[pace] if pace else None
                    row = api_row(bench, server, receiver, file, rate, count)
                    row["title"] = (TITLES[key].format(rate=rate) if key in TITLES
                                    else SCENARIOS[key].title)
                    rows[key] = row
                    cpu = row["cpu_us_per_request"]
                    bench.say(f"  {count} relay(s) {key:<10} {row['rps']:8.1f} req/s  app "
                              f"{cpu['app']} us  postgres {cpu['postgres']} us  deliveries/s "
                              f"{row['deliveries_per_second']}  left {row['backlog_after']}")
                out[str(count)] = rows
            finally:
                for relay in relays:
                    bench.extra_roots.pop(relay.process.pid, None)
                    relay.stop()
    finally:
        bench.stop(server)
    return out


def webhooks(env: Mapping[str, str]) -> int:
    bench_settings = BenchSettings.from_env(env)
    # The receiver is plain http on loopback, which production refuses whatever
    # WEBHOOK_ALLOW_PRIVATE says: the servers and relays here run in development mode,
    # whose delivery path is the same.
    settings = {"APP_ENV": "development", "WEBHOOK_ALLOW_PRIVATE": "true",
                "WEBHOOK_THREADS": "4", "LOG_LEVEL": "WARNING",
                "MAX_LINES_PER_CONVERSATION": "100000"}

    try:
        rates = {"post": float(env.get("BENCH_WEBHOOK_RATE", PACED_RATE)),
                 "get": float(env.get("BENCH_WEBHOOK_GET_RATE", PACED_GET_RATE))}
    except ValueError:
        raise SystemExit("bench: BENCH_WEBHOOK_RATE and BENCH_WEBHOOK_GET_RATE must be "
                         "requests per second") from None

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
                rows.append(throughput(bench, relay_env, users, receiver, relays))
            bench.say("webhooks: commit to delivery at a steady rate")
            steady = latency(relay_env, bench.work, users, receiver)
            bench.stop(server)
            bench.say("webhooks: the API's figures without and with relays")
            api = api_beside_relays(bench, receiver, settings, rates)
        finally:
            receiver.close()
        data = {"throughput": rows, "latency": steady, "api": api, "cpus": os.cpu_count(),
                "settings": settings, "paced_rates": rates,
                "bench": bench_settings.as_dict()}
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
             "", "A backlog made while no relay runs, then delivered. CPU per delivery counts "
             "from the first arrival to the last (fan-out, claim, attempt, record; not the "
             "relays' start-up).", "",
             "| relays | events | delivered | seconds | deliveries/s | steady deliveries/s | "
             "postgres CPU us/delivery | relays CPU us/delivery |",
             "|---|---|---|---|---|---|---|---|"]
    for row in data["throughput"]:
        lines.append(f"| {row['relays']} | {row['events']} | {row['delivered']} | "
                     f"{row['seconds']} | {row['per_second']} | {row['steady_per_second']} | "
                     f"{row['postgres_us_per_delivery']} | {row['relays_us_per_delivery']} |")
    steady = data["latency"]
    lines += ["", f"Commit to delivery, one relay, {steady['rate_per_second']} lines/s for "
                  f"{STEADY_SECONDS} s ({steady['delivered']} of {steady['events']} "
                  "delivered): event `created_at` to the receiver's arrival.", "",
              "| p50 ms | p99 ms | max ms |", "|---|---|---|",
              f"| {steady['p50_ms']} | {steady['p99_ms']} | {steady['max_ms']} |"]
    lines += ["", "Idle, after a drain: CPU milliseconds per second while nothing is sent.",
              "", "| relays | postgres ms/s | relays ms/s | app ms/s |", "|---|---|---|---|"]
    for count, rows in data["api"].items():
        idle = rows["idle"]
        lines.append(f"| {count} | {idle['postgres']} | {idle['relays']} | {idle['app']} |")
    lines += ["", "The API beside the relays: scenarios 2 and 4 at full speed and paced (the "
                  "same request rate with and without relays, so CPU per request compares "
                  "like with like), every writer with an endpoint (each POST makes a "
                  "delivery), with 0, 1 and 2 relays; the deliveries queue drained before "
                  "each row, and the row's warm-up run with the relays delivering before "
                  "the timed runs. CPU is microseconds per request; postgres includes the "
                  "relays' transactions, `relays` is the relay processes' own. Deliveries/s "
                  "and the backlog left (pending deliveries and events not yet fanned out) are "
                  "per timed run.", "",
              "| scenario | relays | req/s | p99 ms | app CPU us | postgres CPU us | "
              "relays CPU us | deliveries/s | backlog after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, _, _ in API_ROWS:
        for count in sorted(data["api"], key=int):
            row = data["api"][count][key]
            cpu = row["cpu_us_per_request"]
            deliveries = ", ".join(f"{d:g}" for d in row["deliveries_per_second"])
            left = ", ".join(str(n) for n in row["backlog_after"])
            lines.append(f"| {row['title']} | {count} | {row['rps']} | {row['p99_ms']} | "
                         f"{cpu['app']} | {cpu['postgres']} | {relays_cpu(row)} | "
                         f"{deliveries} | {left} |")
    return "\n".join(lines) + "\n"
